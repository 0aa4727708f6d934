"""Reconnaissance (OWASP API9; OAT-018 footprinting): one actor asking for many paths no
route serves.

A client that learns an API by probing (a wordlist of `/admin`, `/api/v2/users`,
`/.env`, `/internal/...`, old versions, shadow endpoints) is answered 404 or 405 by the
router again and again; a person mistypes a path now and then, an app's own client
calls the routes it was built for. Per actor (the principal: a user the app vouched
for, an API key, else the client address), within `window`, the distinct paths that no
route matched (answered 404 or 405; the path only, never its query, an id-like segment
as one `{id}`, as a sketch: no path is kept) are counted; an actor at `floor` of them is
flagged: an address or an unvouched credential gets `action` (a ban), a user the app
vouched for `person_action`; a repeat offender at half the floor. An address people log
in from (an office's NAT, as this process saw it) is held at half as many times the floor
as people logged in there (at most four times), and challenged, never banned.

Only unmatched requests are looked at: the requests routes serve cost nothing here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from apiguard.detectors.base import MISSES, SHARED_FACTOR, Finding, Judge, Outcome, shared_factor
from apiguard.detectors.levels import UsualLevel
from apiguard.store.base import Tally

if TYPE_CHECKING:
    from apiguard.config import ReconConfig
    from apiguard.store.base import Observation

_PATH_MAX = 256  # characters of a probed path counted (a longer one is its first 256)
# a /24 whose addresses together probed this many times the floor (the floor of it from
# others) challenges each of them that probed `_NETWORK_OWN` distinct paths itself
_NETWORK_FACTOR = 2
_NETWORK_OWN = 5
# the whole site: a scan dealt over addresses of many networks (each under the floor,
# no /24 shared) shows as distinct unmatched paths site-wide far above their usual
# level: at least `_SITE_FACTOR` times the floor, and `_SITE_OVER_LEVEL` times the
# usual level plus the floor; then an address not vouched for that probed
# `_NETWORK_OWN` distinct paths itself is challenged. The usual level is learned from
# the count of each whole window of the clock (its own paths only, capped at the bar in
# force when it ends): the higher of the lower medians of the last 8 and of the last 4
# windows (`apiguard.detectors.levels`). A scan or a burst in fewer than half of them
# teaches nothing (one above the bar, the bar at most), while steady background noise
# (internet scanners asking every site for `/wp-admin`) and a morning's rise become the
# level. Until three windows were seen, it is the lowest of those under the bar.
_SITE_FACTOR = 4
_SITE_OVER_LEVEL = 2.0
SITE = "recon:site"  # detector-table key: the site's distinct unmatched paths
UNROUTED = "recon:"  # detector-table prefix: an actor's distinct unmatched paths


_HEX = frozenset("0123456789abcdefABCDEF-")
# the route templates of a catch-all mounted at the root (`app.mount("/", StaticFiles(...))`)
_ROOT_CATCH_ALL = frozenset({"/{path}", "/{path:path}", "{path}"})
# what browsers, platforms and crawlers ask every site for: no probe of the API
_ORDINARY = frozenset(
    {
        "/favicon.ico",
        "/robots.txt",
        "/sitemap.xml",
        "/humans.txt",
        "/ads.txt",
        "/security.txt",
        "/browserconfig.xml",
        "/manifest.json",
        "/site.webmanifest",
        "/crossdomain.xml",
        "/service-worker.js",
        "/sw.js",
    }
)


def _ordinary(path: str) -> bool:
    """Whether `path` is one a browser, a platform or a crawler asks every site for
    (`/favicon.ico`, `/robots.txt`, `/apple-touch-icon*.png`, `/.well-known/...`)."""
    lowered = path.lower()
    return (
        lowered in _ORDINARY
        or lowered.startswith(("/.well-known/", "/apple-touch-icon", "/favicon"))
    )


def _shape(path: str) -> str:
    """A path as the detector counts it: an id-like segment (digits, a UUID, 16 hex
    digits or more) is one `{id}`, and a slug-like one (two hyphens or more, or 24
    characters or more) one `{slug}`, so an old client calling a removed
    `/v1/orders/{id}` or `/v1/articles/{slug}` for many objects is one path, not one per
    object (a scanner's words have a hyphen at most: `server-status`); a trailing slash
    aside."""
    parts = path.rstrip("/").split("/")
    for i, part in enumerate(parts):
        if not part:
            continue
        if part.isdecimal() or (len(part) >= 16 and _HEX.issuperset(part)):
            parts[i] = "{id}"
        elif part.count("-") >= 2 or len(part) >= 24:
            parts[i] = "{slug}"
    return "/".join(parts)


class Recon:
    """The reconnaissance detector (see the module docstring)."""

    name = "recon"
    watches = MISSES  # (answered 404 or 405)

    def __init__(self, config: ReconConfig, enforce: bool) -> None:
        self.config = config
        self.enforce = enforce
        # the site's usual distinct unmatched paths per window of the clock (learned in
        # process; see `apiguard.detectors.levels`)
        self.site = UsualLevel(
            float(config.floor * _SITE_FACTOR), _SITE_OVER_LEVEL, float(config.floor)
        )

    @property
    def site_level(self) -> float | None:
        """The site's usual distinct unmatched paths per window (None: not learned)."""
        return self.site.level

    def plan(self, outcome: Outcome, ops: list[Observation]) -> Judge | None:
        status = outcome.status
        if status != 404 and status != 405:
            return None
        route = outcome.route
        # (a routed request is a route's answer, not a probe; but a catch-all mounted at
        # the root, a single-page app's static files, takes every unknown path: its 404
        # is the router's)
        if route is not None and (status != 404 or route not in _ROOT_CATCH_ALL):
            return None
        ctx = outcome.ctx
        path = ctx.scope.get("path")
        if not isinstance(path, str) or not path or _ordinary(path):
            return None
        shape = _shape(path[:_PATH_MAX])
        cfg = self.config
        engine = ctx.engine
        address = ctx.ip_key
        principal = outcome.principal
        prior = outcome.prior
        vouched = ctx.vouched
        token: str | None = None  # (a token taken for the user it was vouched for)
        if not vouched:
            # a signed-in user's token on a path no route serves (no `identify()` ran
            # there): the user it was vouched for, who is challenged, not banned, and
            # the token too (its probes are held until the person passes)
            owner = engine.token_owner(ctx)
            if owner is not None:
                token, principal, vouched = principal, owner, True
        actors = [(principal, vouched)]
        if principal != address and (not vouched or token is not None):
            # a credential the app never vouched for is the client's own string: a scan
            # split over made-up keys (or throwaway accounts' tokens) is still one
            # address's
            actors.append((address, False))
        judges = []
        for actor, person in actors:
            op = Tally(UNROUTED + actor, cfg.window, shape)
            ops.append(op)
            # an address people log in from (an office), or one behind a proxy no
            # setting trusts (its forwarding header says many clients share it)
            many, factor = False, 1
            if actor == address:
                # (an address whose user probed with their token: challenged, so that
                # they can log in again there once they pass)
                many = token is not None
                if engine.forwarding_address(address):
                    many, factor = True, SHARED_FACTOR
                else:  # (two throwaway logins buy a scanner no more than the floor)
                    people = engine.people_at(address)
                    if people > 1:
                        many, factor = True, shared_factor(people)
            floor = cfg.floor * factor
            if prior:  # a repeat offender is judged on half the evidence
                floor = max(2, floor // 2)
            action = cfg.person_action if person else "challenge" if many else cfg.action
            judges.append((op, actor, floor, action))
        network: Tally | None = None
        client = ctx.client_ip
        if not vouched and "." in client and ":" not in client:
            # an IPv4 scan dealt over the addresses of one /24 (an IPv6 /64 is one
            # address here already): the network's distinct paths, with those of each
            # address of it that probed a few itself
            network = Tally(UNROUTED + ctx.net_key, cfg.window, shape)
            ops.append(network)
        site: Tally | None = None
        clock_window: Tally | None = None
        bucket = 0
        if not vouched:
            site = Tally(SITE, cfg.window, shape)
            # (and in this window of the clock alone: what the usual level is learned from)
            bucket = int(outcome.now // cfg.window)
            clock_window = Tally(f"{SITE}:{bucket}", cfg.window, shape)
            ops.append(site)
            ops.append(clock_window)
        name = self.name
        enforce = self.enforce

        def judge() -> list[Finding]:
            found: list[Finding] = []
            for op, actor, floor, action in judges:  # (each actor past its floor)
                if op.count >= floor:
                    evidence: dict[str, float | int | str] = {
                        "unmatched_paths": round(op.count),
                        "threshold": floor,
                    }
                    found.append(Finding(f"{name}.probing", actor, action, enforce, evidence))
                    if token is not None and actor == principal:
                        found.append(Finding(f"{name}.probing", token, action, enforce, evidence))
            if found:
                return found
            if network is not None:
                bar = cfg.floor * _NETWORK_FACTOR
                own = judges[-1][0]  # (the address's own count)
                # (and the floor of it from its other addresses: one address alone is
                # judged on its own count, at its own bar)
                mine = own.count
                others = network.count - mine
                if network.count >= bar and others >= cfg.floor and mine >= _NETWORK_OWN:
                    evidence = {
                        "network_unmatched_paths": round(network.count),
                        "threshold": bar,
                        "unmatched_paths": round(own.count),
                    }
                    # a network holds other people: a challenge, which a person passes
                    finding = Finding(f"{name}.network", address, "challenge", enforce, evidence)
                    return [finding]
            if site is not None and clock_window is not None:
                self.site.learn(clock_window.count, bucket)
                site_bar = self.site.bar()
                own = judges[-1][0]
                if site.count >= site_bar and own.count >= _NETWORK_OWN:
                    evidence = {
                        "site_unmatched_paths": round(site.count),
                        "threshold": round(site_bar, 1),
                        "baseline": round(self.site_level, 1)
                        if self.site_level is not None
                        else -1,
                        "unmatched_paths": round(own.count),
                    }
                    # (evidence of the whole site: a challenge, which a person passes)
                    return [Finding(f"{name}.site", address, "challenge", enforce, evidence)]
            return []

        return judge
