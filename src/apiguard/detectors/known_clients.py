"""Clients that logged in to an account before, remembered without a cookie.

A device cookie (`apiguard.login`) marks the browsers that logged in to an account, but a
mobile app or a script that keeps no cookies never carries one, so during a stuffing
alarm its owner would be asked to pass a challenge at every login (and, keeping no pass
cookie either, asked again). `KnownClients` remembers, in process, each successful
login's account (its device key), client shape (the keyed header fingerprint) and place
(the keyed /16 of IPv4, /40 of IPv6: a carrier's pool, a home's ISP): a login from the
same shape at the same place is not held back by the population alarm.

Only the population alarm: an account under attack, a flagged address, network or shape
hold these clients as before (a brute forcer aiming at one account could pick proxies in
its owner's place and copy the app's headers; a stuffer spraying thousands of accounts
cannot aim at each owner's place). Entries expire after `device_days` and the table is
bounded (oldest first out); it is per process, like the alarm itself.
"""

from __future__ import annotations

from collections import OrderedDict

from apiguard.request import RequestContext, network_of

KNOWN_MAX = 65_536  # (account, shape, place) triples remembered
# failed logins let through as known from one (shape, place) before no client of that
# shape there is known any longer, for `FAILED_FOR` seconds (a stuffer copying the app's
# headers from a carrier's /16 where many owners logged in)
KNOWN_FAILURES = 3
FAILED_FOR = 3600.0
PLACE_V4 = 16  # the place of a known client: its IPv4 /16 ...
PLACE_V6 = 40  # ... or its IPv6 /40


def place_key(ctx: RequestContext) -> str:
    """Keyed hash of the request's place (its /16 or /40)."""
    return ctx.engine.hasher("kp", network_of(ctx.client_ip, PLACE_V4, PLACE_V6))


class KnownClients:
    """(account, client shape, place) triples seen logging in, each until `ttl` seconds
    after its last success, at most `size` of them."""

    __slots__ = ("_failed", "_seen", "size", "ttl")

    def __init__(self, ttl: float, size: int = KNOWN_MAX) -> None:
        self.ttl = ttl
        self.size = size
        self._seen: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        # (shape, place) -> (failures of logins let through as known, since)
        self._failed: dict[tuple[str, str], tuple[int, float]] = {}

    def logged_in(self, account: str, ctx: RequestContext, now: float) -> None:
        """Remember a successful login to `account` (its device key) from `ctx`'s client."""
        key = (account, ctx.fingerprint, place_key(ctx))
        seen = self._seen
        if key in seen:
            seen.move_to_end(key)
        elif len(seen) >= self.size:
            seen.popitem(last=False)
        seen[key] = now + self.ttl

    def failed(self, ctx: RequestContext, now: float) -> None:
        """A login let through as known from `ctx`'s client failed."""
        failed = self._failed
        key = (ctx.fingerprint, place_key(ctx))
        count, since = failed.get(key, (0, now))
        if now - since > FAILED_FOR:
            count, since = 0, now
        if len(failed) >= self.size and key not in failed:
            failed.clear()
        failed[key] = (count + 1, since)

    def knows(self, account: str, ctx: RequestContext, now: float) -> bool:
        """Whether `ctx`'s client logged in to `account` from its place before (and
        logins let through so from its shape and place have not been failing)."""
        place = place_key(ctx)
        key = (account, ctx.fingerprint, place)
        until = self._seen.get(key)
        if until is None:
            return False
        failed = self._failed.get((ctx.fingerprint, place))
        if failed is not None and failed[0] >= KNOWN_FAILURES:
            if now - failed[1] <= FAILED_FOR:
                return False
            del self._failed[(ctx.fingerprint, place)]
        if until < now:
            del self._seen[key]
            return False
        return True

    def __len__(self) -> int:
        return len(self._seen)


COOKIELESS = "cl:"  # prefix of the pass key of a request that took a cookieless pass
PASS_SECONDS = 120.0  # how long a challenge passed without a cookie waits for its login
_PASSES_PER_PLACE = 8  # such passes waiting at once per (region, shape)


def region_key(ctx: RequestContext) -> str:
    """Keyed hash of the request's region (its /8 or /20): where a phone's next request
    may come from on its carrier's pools."""
    return ctx.engine.hasher("kr", network_of(ctx.client_ip, 8, 20))


class CookielessPasses:
    """Challenges passed by clients that may keep no cookie, each good for one login
    from the same client shape in the same region within `PASS_SECONDS`: a phone app
    asked to pass a challenge during the login alarm drops the pass cookie, and its
    retry may come from another address of its carrier. One pass, one login: a stuffer
    sharing the region and the app's headers gets at most one attempt per challenge a
    person there solved (taken by whoever comes first). A client that keeps cookies
    withdraws the one its solve left when it logs in with the pass cookie it got."""

    __slots__ = ("_waiting", "size")

    def __init__(self, size: int = KNOWN_MAX) -> None:
        self.size = size
        # (region, shape) -> [(until, tag of the pass cookie issued with it, the address
        # it was solved from)]
        self._waiting: dict[tuple[str, str], list[tuple[float, str, str]]] = {}

    def passed(self, ctx: RequestContext, now: float, tag: str) -> None:
        """The person behind `ctx` passed a challenge and was given the pass cookie
        whose tag is `tag`."""
        waiting = self._waiting
        key = (region_key(ctx), ctx.fingerprint)
        found = waiting.get(key)
        if found is None:
            if len(waiting) >= self.size:
                waiting.clear()
            found = waiting[key] = []
        found[:] = [p for p in found if p[0] >= now][-(_PASSES_PER_PLACE - 1) :]
        found.append((now + PASS_SECONDS, tag, ctx.ip_key))

    def withdraw(self, ctx: RequestContext, tag: str) -> None:
        """A login showed the pass cookie whose tag is `tag`: its client keeps cookies,
        so the pass its solve left for a cookieless retry is no one's."""
        found = self._waiting.get((region_key(ctx), ctx.fingerprint))
        if found:
            found[:] = [p for p in found if p[1] != tag]

    def take(self, ctx: RequestContext, now: float) -> float | None:
        """Use up a pass waiting for `ctx`'s shape and region: when it expired (its
        identity), or None."""
        key = (region_key(ctx), ctx.fingerprint)
        found = self._waiting.get(key)
        while found:
            until, _, _ = found.pop(0)
            if until >= now:
                return until
        self._waiting.pop(key, None)
        return None

    def take_here(self, ctx: RequestContext, now: float, since: float) -> str | None:
        """Use up a pass solved from `ctx`'s own address, by its shape, at or after
        `since`: its tag (the pass cookie's), or None. (The answer to a challenge on an
        account: a script of the app's shape polling from the carrier's range must not
        take the solves of the people there.)"""
        key = (region_key(ctx), ctx.fingerprint)
        found = self._waiting.get(key)
        if not found:
            return None
        for i, (until, tag, address) in enumerate(found):
            if until >= now and address == ctx.ip_key and until - PASS_SECONDS >= since:
                del found[i]
                return tag
        return None

    def clear(self) -> None:
        self._waiting.clear()
