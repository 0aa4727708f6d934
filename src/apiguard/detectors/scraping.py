"""Scraping (OWASP API6; OAT-011): a route read from new addresses far more than usual.

A scraper that sends one request per residential proxy address, with a fresh User-Agent
each time, stays under every per-address, per-principal and per-fingerprint count. What
it cannot hide is the route's own traffic: anonymous reads (GET, HEAD) from addresses
that were first answered moments ago. Per route template, in process (each worker judges
the share of traffic it serves), over a sliding window (two window-long generations, the
older one weighted by the share of it still inside the window):

- **new readers**: addresses that read the route (anonymously: the app identified no
  user; a made-up credential is no exemption) while new, that is first answered less
  than `new_for` ago, each counted once per route; during a surge, also each read refused
  to a new address (each address once per window);
- **people**: new readers with a valid pass (a person who passed the challenge), each
  address counted once;
- **one-shot addresses**: of the new readers, those that sent nothing more within
  `settle` seconds. People browse on, log in, page further; a scraper rotating its
  addresses sends one request from each.

The route's baseline is learned from its own calm periods (an EWMA of the new readers
per window; not from a period most of whose judged addresses were one-shot: a scraper
under the threshold must not teach the route to accept it) and, while it is under a
surge, from the people (a busy site's organic visitors, once they pass, teach the surge
that they are its normal level, so it ends).

A surge starts when the new readers reach `floor` and `factor` times the baseline, and at
least `one_shot_share` of the new addresses judged (at least a third of the floor) were
one-shot, so a busy site's organic visitors do not start one before a baseline is
learned; and only while new readers still come at the threshold's pace (over the last
`settle` seconds), so a burst that ended long ago, judged only later, starts nothing.
While it lasts, anonymous reads of the route from new addresses (or unknown ones) must
pass the challenge; users and API keys the app identified, and addresses known for
longer, never do. Refused reads still count, so a scraper cannot end the surge by being
refused. It ends once the new readers stay under 0.7 of the threshold for a whole window.

One pass answers the challenge from at most `pass_addresses` new addresses: a solved
CAPTCHA's cookie replayed from a botnet's addresses stops helping.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from typing import TYPE_CHECKING

from apiguard.detectors.base import EVERY_REQUEST, RECENT_MAX, Finding, Judge, Outcome
from apiguard.login import PASS_COOKIE, cookie, pass_valid

if TYPE_CHECKING:
    from apiguard.config import ScrapingConfig
    from apiguard.request import RequestContext
    from apiguard.store.base import Observation

READS = frozenset({"GET", "HEAD"})

_ROUTES_MAX = 1024  # routes watched (beyond: new templates are not)
_PASSES_MAX = 16_384  # passes remembered with the new addresses they came from
_EWMA = 0.3  # weight of the newest period in a route's baseline
_JUDGED_MIN = 5  # judged new addresses that make a calm period's one-shot share count
_ROUTES_PER_ADDRESS = 8  # routes a new address is remembered to have read
_PENDING_MAX = 4096  # new addresses a route keeps to judge (beyond: the oldest unjudged)


def _read(method: object) -> bool:
    """Whether a request method is a read (Werkzeug and Django route `get` as GET, and a
    WSGI server may pass the method on as the client wrote it)."""
    return method in READS or (isinstance(method, str) and method.upper() in READS)


class Surge:
    """One route's new readers, people and one-shot addresses over a sliding window, its
    learned baseline, and whether it is under a scraping surge (`since`)."""

    __slots__ = (
        "baseline",
        "factor",
        "floor",
        "now",
        "old",
        "pace",
        "paced",
        "pending",
        "settle",
        "share",
        "since",
        "span",
        "start",
    )

    def __init__(
        self, window: float, floor: int, factor: float, share: float, settle: float
    ) -> None:
        self.span = window
        self.floor = floor
        self.factor = factor
        self.share = share
        self.settle = settle
        # new readers lately: a count decaying with time constant `settle`, and its time
        self.pace = 0.0
        self.paced = 0.0
        self.start: float | None = None
        # new readers without a pass, people, one-shot addresses, returning ones
        self.now = [0, 0, 0, 0]
        self.old = [0, 0, 0, 0]
        self.baseline: float | None = None
        self.since: float | None = None
        # new addresses that read this route: when, and their requests seen by then
        self.pending: deque[tuple[str, float, int]] = deque(maxlen=_PENDING_MAX)

    def _roll(self, now: float) -> float:
        """Move the generations on; the weight of the older one now."""
        if self.start is None:
            self.start = now
        elapsed = now - self.start
        if elapsed >= self.span:
            finished = self.now
            # a calm period teaches its new readers; one most of whose new addresses were
            # one-shot, only the share that came back (a scraper under the floor must not
            # teach the route to accept it); a surge teaches only its people (one per pass)
            one_shot, judged = finished[2], finished[2] + finished[3]
            suspect = judged >= _JUDGED_MIN and one_shot >= self.share * judged
            if self.since is not None:
                level = finished[1]
            elif suspect:  # only its returning share: a bar a CAPTCHA farm raised comes down
                level = round(finished[0] * (1 - one_shot / judged))
            else:
                level = finished[0]
            if self.since is None or level:
                self.baseline = (
                    level if self.baseline is None else (1 - _EWMA) * self.baseline + _EWMA * level
                )
            self.old = finished if elapsed < 2 * self.span else [0, 0, 0, 0]
            self.now = [0, 0, 0, 0]
            self.start = now if elapsed >= 2 * self.span else self.start + self.span
            elapsed = now - self.start
        return 1.0 - elapsed / self.span

    def threshold(self) -> float:
        """The new readers per window at which the route is under a surge."""
        if self.baseline is None:
            return float(self.floor)
        return max(float(self.floor), self.baseline * self.factor)

    def judged(self, now: float, one_shot: bool) -> None:
        """Count a new address judged one-shot or returning."""
        self._roll(now)
        self.now[2 if one_shot else 3] += 1

    def record(self, now: float, person: bool) -> dict[str, float | int | str] | None:
        """Count one new reader (`person`: one with a pass); the evidence when it starts a
        surge."""
        start = self.start  # (within the generation, `_roll` and `threshold` inlined)
        if start is not None and now - start < self.span:
            weight = 1.0 - (now - start) / self.span
        else:
            weight = self._roll(now)
        cur, old = self.now, self.old
        cur[person] += 1
        reads = cur[0] + old[0] * weight
        limit = float(self.floor) if self.baseline is None else self.threshold()
        if self.since is None:
            if person:
                return None
            # and they are still coming at the threshold's pace (the evidence of a burst
            # that ended long ago, judged only now, starts nothing)
            pace = self.pace * math.exp((self.paced - now) / self.settle) + 1.0
            self.pace, self.paced = pace, now
            if reads < limit or pace < limit * self.settle / self.span:
                return None
            one_shot = cur[2] + old[2] * weight
            judged = one_shot + cur[3] + old[3] * weight
            if judged < self.floor / 3 or one_shot < self.share * judged:
                return None
            self.since = now
            return {
                "new_readers": round(reads),
                "threshold": round(limit, 1),
                "baseline": round(self.baseline, 1) if self.baseline is not None else -1,
                "one_shot_share": round(one_shot / judged, 3),
            }
        if reads < 0.7 * limit and now - self.since >= self.span:
            self.since = None
        return None

    def on(self, now: float) -> bool:
        """Whether the route is under a surge now (it ends after a window without reads,
        or, as in `record`, once its new readers stay under 0.7 of the threshold)."""
        if self.since is None:
            return False
        weight = self._roll(now)
        cur, old = self.now, self.old
        if cur[0] + cur[1] + old[0] + old[1] == 0 or (
            now - self.since >= self.span and cur[0] + old[0] * weight < 0.7 * self.threshold()
        ):
            self.since = None
        return self.since is not None


class _Address:
    """What the detector knows of one address: when it was first answered, how many of
    its requests it saw, whether it was counted as a person, the routes it read while new."""

    __slots__ = ("first", "person", "requests", "routes")

    def __init__(self, first: float) -> None:
        self.first = first
        self.requests = 1
        self.person = False
        self.routes: tuple[str, ...] = ()


class Scraping:
    """The scraping detector (see the module docstring)."""

    name = "scraping"
    watches = EVERY_REQUEST  # (anonymous ones: a made-up credential is no exemption)

    def __init__(self, config: ScrapingConfig, enforce: bool, challenge_path: str | None) -> None:
        self.config = config
        self.enforce = enforce
        self.challenge_path = challenge_path
        self._seen: OrderedDict[str, _Address] = OrderedDict()  # oldest first, bounded
        self._surges: dict[str, Surge] = {}
        self.surging: dict[str, Surge] = {}  # routes under a surge (what the gate checks)
        self._passes: OrderedDict[str, set[str]] = OrderedDict()
        # (route, address) refused under a surge -> when last counted (bounded, oldest out)
        self._held: OrderedDict[tuple[str, str], float] = OrderedDict()

    def _surge(self, template: str) -> Surge | None:
        surge = self._surges.get(template)
        if surge is not None:
            return surge
        cfg = self.config
        floor = cfg.routes.get(template, cfg.floor) if cfg.routes else cfg.floor
        if floor == 0 or len(self._surges) >= _ROUTES_MAX or template == self.challenge_path:
            return None
        surge = Surge(cfg.window, floor, cfg.factor, cfg.one_shot_share, cfg.settle)
        self._surges[template] = surge
        return surge

    def _person(self, ctx: RequestContext, now: float) -> bool:
        """Whether the request carries a valid pass that has not answered from more than
        `pass_addresses` new addresses."""
        if not ctx.has_cookie:
            return False
        value = cookie(ctx, PASS_COOKIE)
        if value is None or not pass_valid(ctx.engine.hasher, value, now):
            return False
        passes = self._passes
        places = passes.get(value)
        if places is None:
            if len(passes) >= _PASSES_MAX:
                passes.popitem(last=False)
            places = passes[value] = set()
        if ctx.ip_key not in places:
            if len(places) >= self.config.pass_addresses:
                return False
            places.add(ctx.ip_key)
        return True

    def _first_use(self, ctx: RequestContext) -> bool:
        """Whether the request's (valid) pass was seen at one address only so far: a
        person counts once, however many addresses a replayed pass comes from."""
        places = self._passes.get(cookie(ctx, PASS_COOKIE) or "")
        return places is not None and len(places) == 1

    def _judge_pending(self, surge: Surge, now: float) -> None:
        """Judge the new addresses that read the route at least `settle` seconds ago:
        one-shot unless the address sent anything after that read."""
        pending = surge.pending
        settle = self.config.settle
        seen = self._seen
        while pending and now - pending[0][1] >= settle:
            address, _at, requests = pending.popleft()
            known = seen.get(address)
            if known is not None:  # (forgotten: not judged)
                surge.judged(now, known.requests <= requests)

    def plan(self, outcome: Outcome, ops: list[Observation]) -> Judge | None:
        ctx = outcome.ctx
        if ctx.vouched:
            return None
        address = ctx.ip_key
        now = outcome.now
        seen = self._seen
        known = seen.get(address)
        if known is not None:
            known.requests += 1
            if now - known.first >= self.config.new_for:
                return None  # not new
        elif outcome.status < 400:  # first answered here (else counted, still unknown)
            if len(seen) >= RECENT_MAX:
                seen.popitem(last=False)
            seen[address] = known = _Address(now)
        if not _read(ctx.scope.get("method")):
            return None
        template = outcome.route
        if template is None:
            return None
        if known is not None:
            if template in known.routes:
                return None  # this address read this route before: counted then
            if len(known.routes) < _ROUTES_PER_ADDRESS:
                known.routes = (*known.routes, template)
        surge = self._surges.get(template) or self._surge(template)
        if surge is None:
            return None
        pending = surge.pending
        if pending and now - pending[0][1] >= self.config.settle:
            self._judge_pending(surge, now)
        if known is not None:
            pending.append((address, now, known.requests))
        person = ctx.has_cookie and self._person(ctx, now)
        if person:
            if known is None or known.person or not self._first_use(ctx):
                return None  # a person counts once (per address and per pass)
            known.person = True
        evidence = surge.record(now, person)
        if evidence is None:
            return None
        self.surging[template] = surge
        evidence["route"] = template

        def judge() -> list[Finding]:
            finding = Finding(
                f"{self.name}.surge", "population", "challenge", self.enforce, evidence
            )
            return [finding]

        return judge

    def holds(self, ctx: RequestContext, now: float) -> bool:
        """Whether this request must pass the challenge first: an anonymous read from a
        new address, without a pass, of a route under a surge (counted as a new reader)."""
        if ctx.vouched or not _read(ctx.scope.get("method")):
            return False
        template = ctx.route
        if template is None:
            return False
        surge = self.surging.get(template)
        if surge is None:
            return False
        if not surge.on(now):
            del self.surging[template]
            return False
        known = self._seen.get(ctx.ip_key)
        if known is not None and now - known.first >= self.config.new_for:
            return False
        if self._person(ctx, now):
            return False
        # a refused address counts as a new reader once per window on this route (a
        # rotating scraper's are all new; one client retrying must not keep a surge on)
        key = (template, ctx.ip_key)
        held = self._held
        last = held.get(key)
        if last is None or now - last >= self.config.window:
            if last is None and len(held) >= RECENT_MAX:
                held.popitem(last=False)
            held[key] = now
            held.move_to_end(key)
            surge.record(now, False)
        return True
