"""IP rotation and stolen keys: one principal from more networks than people use.

Per principal that is not an address (a user, an API key, a bearer token): the distinct
provider-sized networks (/16 for IPv4, /32 for IPv6: a phone behind its carrier's NAT pool
changes address and /24 on every connection, not provider) it was seen from within the
window, against the population of principals (a high percentile times a factor, never
below a floor), and the distinct client fingerprints that used it. A principal is flagged
when at least `fingerprints` client shapes used it (its owner's and a thief's, or headers
randomised per request), or from `lone` times as many networks with one shape (a thief
using the key while its owner is idle); and always from at least `spread` regions (/8 for
IPv4, /20 for IPv6: a carrier's NAT pool, however many /16s it spans, sits in a few).

The owner is not refused with the thief. With at most `per_shape` client shapes on the
principal, the ban holds only the principal as used by the shape that rotated (the
thief's HTTP library), so the owner's own software goes on everywhere. With more (headers
randomised per request), the whole principal is banned, except at its home: a place
(principal, /24 or /64 network, client fingerprint) it was used from at least a quarter
window apart. A thief on residential proxies never comes back to one /24 with one client
shape; one who does is held to that place, where limits and the other detectors still
count it.

Places live in one bounded in-process table (per worker): each (principal, place) is sent
to the store at most once per quarter window, so a principal staying where it was costs no
store operation.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING

from apiguard.detectors.base import (
    PRINCIPALS,
    RECENT_MAX,
    Finding,
    Judge,
    Outcome,
    RecentlySent,
)
from apiguard.detectors.population import Population
from apiguard.request import network_of
from apiguard.store.base import Tally

if TYPE_CHECKING:
    from apiguard.config import RotationConfig
    from apiguard.request import RequestContext
    from apiguard.store.base import Ban, Observation

Place = tuple[str, str, str]  # (principal, /24 network key, client fingerprint)
SHAPED = "rs:"  # ban-table prefix of a principal as one client shape uses it
HOME = "rh:"  # ban-table prefix of a banned principal's home, published with its ban
REGION = "r/"  # a home's region, where it stands for a network in a home's key


_TOKEN_SHARE = 4  # networks per token past which a user's rotation is a token's
_TOKENS_APART = 3  # at most this many tokens in the window for a token to be banned apart


def shaped_key(principal: str, fingerprint: str) -> str:
    """The ban-table key of `principal` as used by the client shape `fingerprint`."""
    return f"{SHAPED}{fingerprint}:{principal}"


def home_key(principal: str, network: str, fingerprint: str) -> str:
    """The ban-table key that says (network, fingerprint) is `principal`'s home."""
    return f"{HOME}{network}:{fingerprint}:{principal}"


class PlaceSeen:
    """One of a principal's first places: its network and client fingerprint, when it
    was first answered there, when it was last sent to the store, and its region (the
    /8 or /20 key)."""

    __slots__ = ("fingerprint", "first", "network", "region", "sent")

    def __init__(self, network: str, fingerprint: str, first: float, region: str) -> None:
        self.network = network
        self.fingerprint = fingerprint
        self.first = first
        self.sent = -math.inf
        self.region = region


class Homes:
    """Each principal's first `per_principal` places answered below 400 (network, client
    fingerprint, first seen), in a bounded LRU of principals: a place is home once it was
    first seen `fresh` seconds ago. Places after the first few never become home, so a
    thief's proxies cannot, and a refused request records nothing."""

    def __init__(self, fresh: float, per_principal: int, size: int = RECENT_MAX) -> None:
        self.fresh = fresh
        self.per_principal = per_principal
        self.size = size
        self._places: OrderedDict[str, list[PlaceSeen]] = OrderedDict()

    def note(
        self, principal: str, network: str, fingerprint: str, now: float, ctx: RequestContext
    ) -> PlaceSeen | None:
        """Record an answered request's place; the place, if it is one of the
        principal's first few (home once `now - first >= fresh`). The same client shape
        in the region of one of them is no new place (a phone's next address in its
        carrier's pools would otherwise use up the few before its owner's home Wi-Fi)."""
        places = self._places
        found = places.get(principal)
        if found is None:
            if self.per_principal <= 0:
                return None
            if len(places) >= self.size:
                places.popitem(last=False)
            place = PlaceSeen(network, fingerprint, now, _region(ctx))
            places[principal] = [place]
            return place
        places.move_to_end(principal)
        for place in found:  # (`_first_seen`, inlined: every answered request comes here)
            if place.network == network and place.fingerprint == fingerprint:
                return place
        if len(found) < self.per_principal:
            region = _region(ctx)
            for place in found:
                if place.fingerprint == fingerprint and place.region == region:
                    return None
            place = PlaceSeen(network, fingerprint, now, region)
            found.append(place)
            return place
        return None

    def knows(self, principal: str) -> bool:
        """Whether `principal` was answered below 400 lately (changes nothing)."""
        return principal in self._places

    def is_home(self, principal: str, network: str, fingerprint: str, now: float) -> bool:
        """Whether (network, fingerprint) is `principal`'s home (changes nothing)."""
        first = _first_seen(self._places.get(principal, ()), network, fingerprint)
        return first is not None and now - first >= self.fresh

    def in_region(self, principal: str, region: str, fingerprint: str, now: float) -> bool:
        """Whether `fingerprint` is that of one of `principal`'s homes in `region`."""
        return any(
            p.fingerprint == fingerprint and p.region == region and now - p.first >= self.fresh
            for p in self._places.get(principal, ())
        )

    def of(self, principal: str, now: float) -> list[tuple[str, str]]:
        """`principal`'s homes: (network, fingerprint) pairs, and (region, fingerprint)
        pairs under `REGION` (see `Rotation.excuses`)."""
        homes: list[tuple[str, str]] = []
        for p in self._places.get(principal, ()):
            if now - p.first >= self.fresh:
                homes += ((p.network, p.fingerprint), (REGION + p.region, p.fingerprint))
        return homes


def _region(ctx: RequestContext) -> str:
    """Keyed hash of the request's region: its /8 (IPv4) or /20 (IPv6)."""
    return ctx.engine.hasher("net", network_of(ctx.client_ip, 8, 20))


def _first_seen(places: Iterable[PlaceSeen], network: str, fingerprint: str) -> float | None:
    """When the place (network, fingerprint) among `places` was first seen, if it is one."""
    for place in places:
        if place.network == network and place.fingerprint == fingerprint:
            return place.first
    return None


class Rotation:
    """The rotation / stolen-key detector (see the module docstring)."""

    name = "rotation"
    watches = PRINCIPALS

    def __init__(self, config: RotationConfig, enforce: bool) -> None:
        self.config = config
        self.enforce = enforce
        self.population = Population(
            config.floor,
            config.floor,
            config.percentile,
            config.factor,
            config.min_principals,
            config.ceiling,
        )
        self.homes = Homes(config.window / 4, config.homes)
        self._fresh = config.window / 4  # (a place is sent at most once per)
        self._sent: RecentlySent[Place] = RecentlySent(self._fresh)

    def excuses(self, ctx: RequestContext, ban: Ban, now: float) -> bool:
        """Whether `ban` (a rotation ban on one of the request's keys) does not hold this
        request: it comes from the banned principal's home (as this process knows it, or
        as the ban's worker published it), also under a ban on one client shape (a thief
        that copied the owner's headers shares the owner's shape; homes are only the
        principal's first places, so a thief's proxies are none). Under a ban on the
        whole principal or its token (a thief whose headers change on every request), a
        home's client shape anywhere in that home's region is at home too: a phone moving
        through its carrier's address pools keeps its shape and region, while a thief's
        random shapes from everywhere seldom match both."""
        principal = ban.owner or ban.key
        net, fp = ctx.net_key, ctx.fingerprint
        homes = self.homes
        if homes.is_home(principal, net, fp, now):
            return True
        store = ctx.engine.store
        if store.active_ban(home_key(principal, net, fp), now) is not None:
            return True
        if ban.key.startswith(SHAPED):
            return False
        region = _region(ctx)
        if homes.in_region(principal, region, fp, now):
            return True
        return store.active_ban(home_key(principal, REGION + region, fp), now) is not None

    def plan(self, outcome: Outcome, ops: list[Observation]) -> Judge | None:
        ctx = outcome.ctx
        principal = outcome.principal
        if principal == ctx.ip_key:
            return None
        now = outcome.now
        place, fingerprint = ctx.net_key, ctx.fingerprint
        seen = (
            self.homes.note(principal, place, fingerprint, now, ctx)
            if outcome.status < 400
            else None
        )
        if seen is not None:
            # one of its first places: sent at most once per quarter window, as below
            if now - seen.sent < self._fresh:
                return None
            seen.sent = now
            home = now - seen.first >= self.homes.fresh
        elif not self._sent.due((principal, place, fingerprint), now):
            return None
        else:
            home = False
        window = self.config.window
        network = ctx.provider_key
        tally = Tally(f"rot:{principal}", window, network)
        shapes = Tally(f"rot:f:{principal}", window, fingerprint)
        mine = Tally(f"rot:s:{fingerprint}:{principal}", window, network)
        region = seen.region if seen is not None else _region(ctx)
        spread = Tally(f"rot:w:{principal}", window, region)
        ops.extend((tally, shapes, mine, spread))
        # a user's bearer token: its own networks, and the user's tokens (a stolen token
        # is banned, not its user)
        token = ctx.token_key
        used = tokens = None
        if token is not None and token != principal:
            used = Tally(f"rot:k:{token}", window, network)
            tokens = Tally(f"rot:t:{principal}", window, token)
            ops.extend((used, tokens))
        if home:
            return None  # its owner's place: counted, never what a finding is made of
        population = self.population
        cfg = self.config

        def judge() -> list[Finding]:
            threshold = population.update(principal, tally.count)
            bar = threshold if shapes.count >= cfg.fingerprints else threshold * cfg.lone
            # few shapes: judged on this one's own networks (the owner's stay few)
            scoped = round(shapes.count) <= cfg.per_shape
            judged = mine.count if scoped else tally.count
            if judged < bar:
                return []
            # a carrier's NAT pool sits in a few /8s and never spans 2 x the ceiling's
            # /16s; a thief on one ISP's residential /8 does, in time
            if spread.count < cfg.spread and judged < max(2 * bar, 2 * cfg.ceiling):
                return []
            if scoped:
                subject, scope = shaped_key(principal, fingerprint), "client shape"
            elif (
                used is not None
                and tokens is not None
                and round(tokens.count) <= _TOKENS_APART
                and tokens.count * _TOKEN_SHARE <= judged
            ):
                # few tokens, far more networks: a token was stolen, not a password (a
                # login from every network, or again after each ban, makes more tokens:
                # then the user is banned); the one that went everywhere is banned, the
                # user's other sessions and new logins go on
                if token is None or used.count < bar:
                    return []  # (another session of the user)
                subject, scope = token, "token"
            else:
                subject, scope = principal, "principal"
            return [
                Finding(
                    self.name,
                    subject,
                    cfg.action,
                    self.enforce,
                    {
                        "networks": round(tally.count),
                        "threshold": round(bar, 1),
                        "client_fingerprints": round(shapes.count),
                        "shape_networks": round(mine.count),
                        "regions": round(spread.count),
                        "baseline": round(population.learned, 1)
                        if population.learned is not None
                        else -1,
                        "scope": scope,
                    },
                    owner=principal,
                )
            ]

        return judge
