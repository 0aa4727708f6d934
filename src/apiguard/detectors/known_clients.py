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
PLACE_V4 = 16  # the place of a known client: its IPv4 /16 ...
PLACE_V6 = 40  # ... or its IPv6 /40


def place_key(ctx: RequestContext) -> str:
    """Keyed hash of the request's place (its /16 or /40)."""
    return ctx.engine.hasher("kp", network_of(ctx.client_ip, PLACE_V4, PLACE_V6))


class KnownClients:
    """(account, client shape, place) triples seen logging in, each until `ttl` seconds
    after its last success, at most `size` of them."""

    __slots__ = ("_seen", "size", "ttl")

    def __init__(self, ttl: float, size: int = KNOWN_MAX) -> None:
        self.ttl = ttl
        self.size = size
        self._seen: OrderedDict[tuple[str, str, str], float] = OrderedDict()

    def logged_in(self, account: str, ctx: RequestContext, now: float) -> None:
        """Remember a successful login to `account` (its device key) from `ctx`'s client."""
        key = (account, ctx.fingerprint, place_key(ctx))
        seen = self._seen
        if key in seen:
            seen.move_to_end(key)
        elif len(seen) >= self.size:
            seen.popitem(last=False)
        seen[key] = now + self.ttl

    def knows(self, account: str, ctx: RequestContext, now: float) -> bool:
        """Whether `ctx`'s client logged in to `account` from its place before."""
        key = (account, ctx.fingerprint, place_key(ctx))
        until = self._seen.get(key)
        if until is None:
            return False
        if until < now:
            del self._seen[key]
            return False
        return True

    def __len__(self) -> int:
        return len(self._seen)


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
    person there solved, and never the person's own (it is taken by whoever comes
    first)."""

    __slots__ = ("_waiting", "size")

    def __init__(self, size: int = KNOWN_MAX) -> None:
        self.size = size
        self._waiting: dict[tuple[str, str], list[float]] = {}

    def passed(self, ctx: RequestContext, now: float) -> None:
        """The person behind `ctx` passed a challenge."""
        waiting = self._waiting
        key = (region_key(ctx), ctx.fingerprint)
        found = waiting.get(key)
        if found is None:
            if len(waiting) >= self.size:
                waiting.clear()
            found = waiting[key] = []
        found[:] = [t for t in found if t >= now][-(_PASSES_PER_PLACE - 1) :]
        found.append(now + PASS_SECONDS)

    def take(self, ctx: RequestContext, now: float) -> float | None:
        """Use up a pass waiting for `ctx`'s shape and region: when it expired (its
        identity), or None."""
        key = (region_key(ctx), ctx.fingerprint)
        found = self._waiting.get(key)
        while found:
            until = found.pop(0)
            if until >= now:
                return until
        self._waiting.pop(key, None)
        return None

    def clear(self) -> None:
        self._waiting.clear()
