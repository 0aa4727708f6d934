"""Scraping (OWASP API6; OAT-011): a route read from new addresses far more than usual.

A scraper that sends one request per residential proxy address, with a fresh User-Agent
each time, stays under every per-address, per-principal and per-fingerprint count. What
it cannot hide is the route's own traffic: anonymous reads (GET, HEAD) from addresses
that were first seen moments ago. Per route template, in process (each worker judges
the share of traffic it serves), over a sliding window (two window-long generations, the
older one weighted by the share of it still inside the window):

- **new readers**: addresses that read the route (anonymously: the app identified no
  user; a made-up credential is no exemption) while new, that is first seen less
  than `new_for` ago, each counted once per route; during a surge, also each read refused
  to a new address (each address once per window);
- **people**: new readers with a valid pass (a person who passed the challenge), each
  address counted once;
- **one-shot addresses**: of the new readers, those that did not move on within
  `settle` seconds (another path answered under 400, or one path polled: `_Address`).
  People browse on, log in, page further; a scraper rotating its addresses sends one
  request from each, and reading its page again (under another query) or a miss is no
  browsing on.

A process that has just started meets every visitor for the first time: its first
windows (those begun within `new_for` of the first watched read) count the site's
regulars as new readers, so the baseline they teach is provisional: less each of their
new readers seen again once no longer new (a regular, not a newcomer), and once those
are a fifth of it, the volume path starts a surge at the threshold itself; the first
window after them teaches from that corrected level.

The route's baseline is learned from its own calm periods (an EWMA of the new readers
per window; not from a period most of whose judged addresses were one-shot: a scraper
under the threshold must not teach the route to accept it) and, while it is under a
surge, from the people (a busy site's organic visitors, once they pass, teach the surge
that they are its normal level, so it ends).

A surge starts when the new readers reach `floor` on top of the baseline and `factor`
times it, and at least `one_shot_share` of the new addresses judged (at least a third of
the floor) were one-shot, so a busy site's organic visitors do not start one before a
baseline is learned. Once a calm window taught the route its usual one-shot and returning new
addresses, the share is that of what came on top of them: the visitors who come back as
they always do (a single-page app's second call) dilute no scraper's share, and a crowd
of new visitors brings its own usual share of one-shot addresses. And only while new
readers still come at the threshold's pace (over the last `settle` seconds), so a burst
that ended long ago, judged only later, starts nothing.
While it lasts, anonymous reads of the route from new addresses (or unknown ones) must
pass the challenge; users and API keys the app identified, and addresses known for
longer, never do. Refused reads still count, so a scraper cannot end the surge by being
refused. It ends once the new readers stay under 0.7 of the threshold for a whole window,
not counting the people (each was held before passing: people keep no surge on, and a
scraper reading under the floor after a burst is not held for hours).

One pass answers the challenge from at most `pass_addresses` new addresses: a solved
CAPTCHA's cookie replayed from a botnet's addresses stops helping.

With `site_wide`, the same count also runs over every watched route together, each new
address counted once (at its first watched read) and judged one-shot if it sent nothing
more: a scraper that deals its reads across templates (a listing, its pages, their
authors' profiles) is one site-wide surge, and while it lasts new anonymous readers of
every watched route must pass the challenge.
"""

from __future__ import annotations

import math
from array import array
from collections import OrderedDict, deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from apiguard.detectors.base import EVERY_REQUEST, RECENT_MAX, Finding, Judge, Outcome
from apiguard.login import PASS_COOKIE, cookie, pass_valid
from apiguard.routes import serves_files

if TYPE_CHECKING:
    from apiguard.config import ScrapingConfig
    from apiguard.request import RequestContext
    from apiguard.store.base import Observation

READS = frozenset({"GET", "HEAD"})

_ROUTES_MAX = 1024  # routes watched (beyond: new templates are not)
_PASSES_MAX = 16_384  # passes remembered with the new addresses they came from
_EWMA = 0.3  # weight of the newest period in a route's baseline
_JUDGED_MIN = 5  # judged new addresses that make a calm period's one-shot share count
_PENDING_MAX = 4096  # new addresses a route keeps to judge (beyond: the oldest unjudged)
_POLLS = 1  # reads of the same path again that are polling (moving on), the last one
_POLL_SPAN = 30.0  # seconds or more after the address was first seen
SITE = "*"  # the site-wide count's name (in `surging`, the evidence's route)
Evidence = dict[str, float | int | str]
_PACE, _PACED = 8, 9  # in `Surge.counts`
# the share of a cold window's new readers seen back once no longer new that shows it
# overstated the route's level (see `Surge.provisional`)
_OVERSTATED = 0.2
_ZEROS = array("d", bytes(8 * 4))  # a generation's counts, none yet (copied, never changed)


def _read(method: object) -> bool:
    """Whether a request method is a read (Werkzeug and Django route `get` as GET, and a
    WSGI server may pass the method on as the client wrote it)."""
    return method in READS or (isinstance(method, str) and method.upper() in READS)


def _step(path: object) -> int:
    """A request's path, a trailing slash aside, as 8 bits of its hash, 1 to 256 (0: no
    path; small ints Python keeps once, so an address costs no object for it: two paths
    taken for one miss one move in 256)."""
    if not isinstance(path, str):
        return 0
    return (hash(path[:-1] if path[-1:] == "/" and len(path) > 1 else path) & 0xFF) + 1


class Surge:
    """One route's new readers, people and one-shot addresses over a sliding window, its
    learned baseline, and whether it is under a scraping surge (`since`)."""

    __slots__ = (
        "baseline",
        "bit",
        "cold_until",
        "counts",
        "factor",
        "floor",
        "oldest",
        "pending",
        "provisional",
        "returned",
        "settle",
        "share",
        "since",
        "span",
        "start",
        "usual",
        "volume",
    )

    def __init__(
        self,
        window: float,
        floor: int,
        factor: float,
        share: float,
        settle: float,
        volume: float = 0.0,
    ) -> None:
        self.span = window
        self.volume = volume
        self.bit = 0  # the route's bit in an address's `_Address.read` (set by `Scraping`)
        self.floor = floor
        self.factor = factor
        self.share = share
        self.settle = settle
        self.start: float | None = None
        # new readers without a pass, people, one-shot addresses, returning ones: in this
        # generation [0:4], in the older one [4:8]; then `_PACE` and `_PACED`, new readers
        # lately (a count decaying with time constant `settle`) and its time. All in one
        # array of doubles (whole numbers are exact in them): a new reader of a route
        # touches one object for them, not two lists, their ints and two floats (at 200
        # routes a route's state is out of the CPU's caches at each new reader)
        self.counts = array("d", bytes(8 * 10))
        self.baseline: float | None = None
        # a generation that began before this counted every returning visitor as new (the
        # process had just started: `Scraping` sets it); while the baseline was taught by
        # such generations only, it is `provisional`, less the `returned`: the new readers
        # of those generations seen again once no longer new (a regular, not a newcomer)
        self.cold_until = -math.inf
        self.provisional = False
        self.returned = 0.0
        # one-shot and returning new addresses judged per calm window (EWMA): what the
        # route's own visitors bring, whatever comes on top of them is judged apart
        self.usual: list[float] | None = None
        self.since: float | None = None
        # new addresses that read this route: (when, the address, its requests seen by
        # then), oldest first (one deque, not three in step: a new reader touches one, and
        # the garbage collector untracks a tuple of a float, a str and an int at its first
        # collection, so what is kept costs it nothing)
        self.pending: deque[tuple[float, str, int]] = deque(maxlen=_PENDING_MAX)
        # when the oldest of them read it (inf: none), kept apart so that a new reader
        # of a route with none settled touches nothing of the queue but its end
        self.oldest = math.inf

    def wait(self, address: str, now: float, requests: int) -> None:
        """Keep a new reader to judge once it settled."""
        if not self.pending:
            self.oldest = now
        self.pending.append((now, address, requests))

    def waited(self) -> tuple[str, int]:
        """The oldest new reader waiting, taken out of the queue: (address, requests)."""
        pending = self.pending
        _, address, requests = pending.popleft()
        self.oldest = pending[0][0] if pending else math.inf
        return address, requests

    def _roll(self, now: float) -> float:
        """Move the generations on; the weight of the older one now."""
        if self.start is None:
            self.start = now
        elapsed = now - self.start
        if elapsed >= self.span:
            counts = self.counts
            finished = counts[0:4]
            # a calm period teaches its new readers; one most of whose new addresses (or
            # most of what came on top of the usual ones) were one-shot, only the share
            # that came back (a scraper under the floor must not teach the route to
            # accept it); a surge teaches only its people (one per pass)
            one_shot, returning = finished[2], finished[3]
            judged = one_shot + returning
            suspect = judged >= _JUDGED_MIN and one_shot >= self.share * judged
            removed = one_shot
            if not suspect:
                extra, extra_back = self._excess(one_shot, returning)
                suspect = extra + extra_back >= self.floor / 3 and extra >= self.share * (
                    extra + extra_back
                )
                removed = round(extra)
            usual = self.usual
            if self.since is not None:
                level = int(finished[1])
            elif suspect:  # only its returning share: a bar a CAPTCHA farm raised comes down
                level = round(finished[0] * (1 - removed / judged))
                if usual is not None:  # (what came back is still learned)
                    usual[1] = (1 - _EWMA) * usual[1] + _EWMA * returning
            else:
                level = int(finished[0])
                if usual is None:
                    self.usual = [float(one_shot), float(returning)]
                else:
                    usual[0] = (1 - _EWMA) * usual[0] + _EWMA * one_shot
                    usual[1] = (1 - _EWMA) * usual[1] + _EWMA * returning
            if self.since is None or level:
                cold = self.start < self.cold_until
                baseline = self.baseline
                if baseline is None:
                    self.baseline, self.provisional = level, cold
                else:
                    if self.provisional and not cold:
                        # (the first window after the cold ones: their level less the
                        # returning visitors they counted as new, then as usual)
                        baseline = max(0.0, baseline - self.returned)
                        self.provisional = False
                    self.baseline = (1 - _EWMA) * baseline + _EWMA * level
            counts[4:8] = finished if elapsed < 2 * self.span else _ZEROS
            counts[0:4] = _ZEROS
            self.start = now if elapsed >= 2 * self.span else self.start + self.span
            elapsed = now - self.start
        return 1.0 - elapsed / self.span

    def _excess(self, one_shot: float, returning: float) -> tuple[float, float]:
        """The one-shot and returning new addresses above the route's usual levels (all of
        them before a calm window taught those): a flash crowd of visitors brings its
        usual share of one-shot addresses on top of them, a scraper nothing but those."""
        usual = self.usual
        if usual is None:
            return one_shot, returning
        return max(0.0, one_shot - usual[0]), max(0.0, returning - usual[1])

    def threshold(self) -> float:
        """The new readers per window at which the route is under a surge."""
        baseline = self.baseline
        if baseline is None:
            return float(self.floor)
        if self.provisional:  # (less the returning visitors a cold window counted)
            baseline = max(0.0, baseline - self.returned)
        return max(self.floor + baseline, baseline * self.factor)

    def judged(self, now: float, one_shot: bool) -> None:
        """Count a new address judged one-shot or returning."""
        self._roll(now)
        self.counts[2 if one_shot else 3] += 1

    def record(self, now: float, person: bool) -> dict[str, float | int | str] | None:
        """Count one new reader (`person`: one with a pass); the evidence when it starts a
        surge."""
        start = self.start  # (within the generation, `_roll` and `threshold` inlined)
        if start is not None and now - start < self.span:
            weight = 1.0 - (now - start) / self.span
        else:
            weight = self._roll(now)
        c = self.counts
        c[person] += 1
        reads = c[0] + c[4] * weight
        limit = float(self.floor) if self.baseline is None else self.threshold()
        if self.since is None:
            if person:
                return None
            # and they are still coming at the threshold's pace (the evidence of a burst
            # that ended long ago, judged only now, starts nothing)
            pace = c[_PACE] * math.exp((c[_PACED] - now) / self.settle) + 1.0
            c[_PACE], c[_PACED] = pace, now
            if reads < limit or pace < limit * self.settle / self.span:
                return None
            # far above the threshold, whatever the addresses did next (a scraper reading
            # a few pages from each address browses on as people do), once a calm window
            # taught the route its usual level
            volume = self.volume
            if self.provisional and self.returned >= _OVERSTATED * (self.baseline or 0.0):
                # (a cold window shown to have counted returning visitors as new: its
                # threshold, less those seen so far, still holds more than the margin)
                volume = min(volume, 1.0)
            if volume and self.usual is not None and reads >= limit * volume:
                self.since = now
                return {
                    "new_readers": round(reads),
                    "threshold": round(limit * volume, 1),
                    "baseline": round(self.baseline, 1) if self.baseline is not None else -1,
                    "one_shot_share": -1,
                }
            # (of what came on top of the usual one-shot and returning addresses: readers
            # who come back as they always do dilute no scraper's share; `_excess` inlined,
            # and nothing to compute while fewer than a third of the floor were judged)
            one_shot = c[2] + c[6] * weight
            returning = c[3] + c[7] * weight
            third = self.floor / 3
            if one_shot + returning < third:
                return None
            usual = self.usual
            if usual is not None:
                one_shot = one_shot - usual[0] if one_shot > usual[0] else 0.0
                returning = returning - usual[1] if returning > usual[1] else 0.0
            judged = one_shot + returning
            if judged < third or one_shot < self.share * judged:
                return None
            self.since = now
            return {
                "new_readers": round(reads),
                "threshold": round(limit, 1),
                "baseline": round(self.baseline, 1) if self.baseline is not None else -1,
                "one_shot_share": round(one_shot / judged, 3),
            }
        # (the people who passed were each held first: they keep no surge on)
        if reads - c[1] - c[5] * weight < 0.7 * limit and now - self.since >= self.span:
            self.since = None
        return None

    def on(self, now: float) -> bool:
        """Whether the route is under a surge now (it ends after a window without reads,
        or, as in `record`, once its new readers, people aside, stay under 0.7 of the
        threshold)."""
        if self.since is None:
            return False
        weight = self._roll(now)
        c = self.counts
        if c[0] + c[1] + c[4] + c[5] == 0 or (
            now - self.since >= self.span
            and c[0] - c[1] + (c[4] - c[5]) * weight < 0.7 * self.threshold()
        ):
            self.since = None
        return self.since is not None


class _Address:
    """What the detector knows of one address: when it was first seen, how many times it
    moved on, whether it was counted as a person, the watched routes it read while new
    (one bit per route, `Surge.bit`: every one of them, exactly).

    Moving on is a request for another path than the address's previous one, answered
    under 400 (the same page read again is no browsing, nor is a miss), or polling: the
    same path read `_POLLS` more times, the last `_POLL_SPAN` seconds or more after the
    address was first seen (a page refreshing its live data)."""

    __slots__ = ("again", "first", "last", "person", "read", "requests", "site")

    def __init__(self, first: float, last: int) -> None:
        self.first = first
        self.requests = 1
        self.last = last  # `_step` of its last answered request (0: none)
        self.again = 0  # its reads of that path again since it moved on
        self.person = False
        self.read = 0
        self.site = False  # counted by the site-wide count (its first watched read)


class Scraping:
    """The scraping detector (see the module docstring)."""

    name = "scraping"
    watches = EVERY_REQUEST  # (anonymous ones: a made-up credential is no exemption)

    def __init__(self, config: ScrapingConfig, enforce: bool, challenge_path: str | None) -> None:
        self.config = config
        self.enforce = enforce
        self.challenge_path = challenge_path
        self._new_for = config.new_for
        self._moves_for = config.new_for + config.settle
        self._settle = config.settle
        self._seen: OrderedDict[str, _Address] = OrderedDict()  # oldest first, bounded
        self._surges: dict[str, Surge] = {}
        # every watched route's new readers together, each address once (at its first
        # watched read): a scraper dealing its reads across a listing, its pages and their
        # authors' profiles is one surge, however it splits them between templates
        self._site = (
            Surge(
                config.window,
                config.floor,
                config.factor,
                config.one_shot_share,
                config.settle,
                config.volume,
            )
            if config.site_wide
            else None
        )
        # a `new_for` after the first watched read (see `Surge.cold_until`; -inf: none yet)
        self._cold_until = -math.inf
        self._routes: list[Surge] = []  # the watched routes' counts, by their bits
        # routes under a surge, and SITE when the site is (what the gate checks)
        self.surging: dict[str, Surge] = {}
        self._passes: OrderedDict[str, set[str]] = OrderedDict()
        # (route, address) refused under a surge -> when last counted (bounded, oldest out)
        self._held: OrderedDict[tuple[str, str], float] = OrderedDict()

    def _surge(self, template: str, scope: Mapping[str, Any], now: float) -> Surge | None:
        """The count of `template` (served in `scope`): made at its first read; None
        for a route not watched (its floor 0, the challenge route, static files: every
        visitor's page reads them)."""
        surge = self._surges.get(template)
        if surge is not None:
            return surge
        cfg = self.config
        floor = cfg.routes.get(template, cfg.floor) if cfg.routes else cfg.floor
        if (
            floor == 0
            or len(self._surges) >= _ROUTES_MAX
            or template == self.challenge_path
            or (template not in cfg.routes and serves_files(scope))
        ):
            return None
        surge = Surge(cfg.window, floor, cfg.factor, cfg.one_shot_share, cfg.settle, cfg.volume)
        if self._cold_until == -math.inf:  # (the first watched read: the process has
            self._cold_until = now + self._new_for  # just started)
            if self._site is not None:
                self._site.cold_until = self._cold_until
        surge.cold_until = self._cold_until
        surge.bit = 1 << len(self._surges)  # (routes are never dropped: bits stay theirs)
        self._surges[template] = surge
        self._routes.append(surge)
        return surge

    def _came_back(self, known: _Address) -> None:
        """An address first seen while the process was new, seen again once no longer
        new: each count it was a new reader for then (while their baseline is still
        `provisional`) takes it for a returning visitor, not a newcomer. Once."""
        bits, routes = known.read, self._routes
        while bits:
            low = bits & -bits
            routes[low.bit_length() - 1].returned += 1
            bits ^= low
        if known.site and self._site is not None:
            self._site.returned += 1
        known.read = 0  # (an address no longer new: neither is read again)
        known.site = False

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
        one-shot unless the address moved on after that read (`_Address`)."""
        settle = self.config.settle
        while now - surge.oldest >= settle:
            self._judge_oldest(surge, now)

    def _judge_due(self, surge: Surge, now: float) -> None:
        """`_judge_pending`, then `_judge_oldest` if the route's queue is still full (a
        new reader is about to wait), inlined: in steady traffic every new reader of a
        route judges one settled address (`Surge.judged` inlined too, and its `_roll`
        only when the generation is over)."""
        pending = surge.pending
        seen = self._seen
        settle = self.config.settle
        while now - surge.oldest >= settle:
            _, address, requests = pending.popleft()  # (`surge.waited`, inlined)
            surge.oldest = pending[0][0] if pending else math.inf
            known = seen.get(address)
            if known is not None:
                start = surge.start
                if start is None or now - start >= surge.span:
                    surge._roll(now)
                surge.counts[2 if known.requests <= requests else 3] += 1
        if len(pending) >= _PENDING_MAX:  # (full: the oldest is judged now, never dropped)
            self._judge_oldest(surge, now)

    def _judge_oldest(self, surge: Surge, now: float) -> None:
        """Judge the oldest new address waiting (settled, or pushed out early: a crawl
        faster than `_PENDING_MAX` new readers per `settle` must not drop its addresses
        unjudged): one-shot unless it moved on by now; a forgotten one is not judged."""
        address, requests = surge.waited()
        known = self._seen.get(address)
        if known is not None:
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
            # (an address moves on with an answered request for another path, or by
            # polling one: a page read again, under any query string, is no browsing, nor
            # is a miss; counted until its last read while new has been judged)
            age = now - known.first
            if age < self._moves_for and outcome.status < 400:
                # (`_step` inlined, and `_Address`'s moving on: every answered request of a
                # new address comes here)
                path = ctx.scope.get("path")
                if isinstance(path, str):
                    step = (
                        hash(path[:-1] if path[-1:] == "/" and len(path) > 1 else path) & 0xFF
                    ) + 1
                    if step != known.last:
                        known.last = step
                        known.requests += 1
                        known.again = 0
                    else:
                        known.again += 1
                        if known.again >= _POLLS and age >= _POLL_SPAN:
                            known.requests += 1
                            known.again = 0
            if age >= self._new_for:
                if known.first < self._cold_until and known.read:
                    self._came_back(known)
                return None  # not new
        else:  # first seen here (an address answered only errors is remembered too: it
            # counts once per route, not as a new reader at each miss)
            if len(seen) >= RECENT_MAX:
                seen.popitem(last=False)
            step = _step(ctx.scope.get("path")) if outcome.status < 400 else 0
            seen[address] = known = _Address(now, step)
        method = ctx.scope.get("method")
        if method != "GET" and not _read(method):
            return None
        template = outcome.route
        if template is None:
            return None
        surge = self._surges.get(template) or self._surge(template, ctx.scope, now)
        if surge is None:
            return None
        if known.read & surge.bit:
            return None  # this address read this route before: counted then
        known.read |= surge.bit
        pending = surge.pending
        if now - surge.oldest >= self._settle or len(pending) >= _PENDING_MAX:
            self._judge_due(surge, now)
        # (`surge.wait`, inlined: every new reader of a route comes here)
        if not pending:
            surge.oldest = now
        pending.append((now, address, known.requests))
        person = ctx.has_cookie and self._person(ctx, now)
        if person:
            if known.person or not self._first_use(ctx):
                return None  # a person counts once (per address and per pass)
            known.person = True
        evidence = surge.record(now, person)
        if evidence is not None:
            self.surging[template] = surge
            evidence["route"] = template
        site = self._site
        found: Evidence | list[Evidence] | None = evidence
        if site is not None and not known.site:
            found = self._count_site(site, known, address, now, person, evidence)
        if found is None:
            return None
        findings = found if isinstance(found, list) else [found]

        def judge() -> list[Finding]:
            return [
                Finding(f"{self.name}.surge", "population", "challenge", self.enforce, e)
                for e in findings
            ]

        return judge

    def _count_site(
        self,
        site: Surge,
        known: _Address | None,
        address: str,
        now: float,
        person: bool,
        evidence: Evidence | None,
    ) -> Evidence | list[Evidence] | None:
        """Count a new address's first watched read site-wide; the evidence found (the
        route's, the site's, or both)."""
        if known is not None:
            known.site = True
        if now - site.oldest >= self.config.settle:
            self._judge_pending(site, now)
        if known is not None:
            if len(site.pending) >= _PENDING_MAX:
                self._judge_oldest(site, now)
            site.wait(address, now, known.requests)
        found = site.record(now, person)
        if found is None:
            return evidence
        self.surging[SITE] = site
        found["route"] = SITE
        return found if evidence is None else [evidence, found]

    def holds(self, ctx: RequestContext, now: float) -> bool:
        """Whether this request must pass the challenge first: an anonymous read from a
        new address, without a pass, of a route under a surge, or of any watched route
        while the site is under one (counted as a new reader)."""
        if ctx.vouched or not _read(ctx.scope.get("method")):
            return False
        template = ctx.route
        if template is None:
            return False
        surging = self.surging
        held: list[tuple[str, Surge]] = []
        for key in (template, SITE):
            surge = surging.get(key)
            if surge is None:
                continue
            if not surge.on(now):
                del surging[key]
            elif (
                key == template
                or self._surges.get(template)
                or self._surge(template, ctx.scope, now)
            ):
                held.append((key, surge))  # (SITE: only on a watched route)
        if not held:
            return False
        known = self._seen.get(ctx.ip_key)
        if known is not None and now - known.first >= self.config.new_for:
            return False
        if self._person(ctx, now) or ctx.engine.cookieless_pass(ctx, now):
            return False  # (a person's pass, or one a phone app that keeps no cookie took)
        # a refused address counts as a new reader once per window on this route and once
        # site-wide (a rotating scraper's are all new; one client retrying must not keep a
        # surge on)
        for key, surge in held:
            self._count_held(key, ctx.ip_key, surge, now)
        return True

    def _count_held(self, key: str, address: str, surge: Surge, now: float) -> None:
        """Count a refused address as a new reader of `surge`, once per window."""
        held = self._held
        mark = (key, address)
        last = held.get(mark)
        if last is None or now - last >= self.config.window:
            if last is None and len(held) >= RECENT_MAX:
                held.popitem(last=False)
            held[mark] = now
            held.move_to_end(mark)
            surge.record(now, False)
