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

from collections import OrderedDict
from typing import TYPE_CHECKING

from apiguard.detectors.base import PRINCIPALS, RECENT_MAX, Finding, Judge, Outcome
from apiguard.detectors.population import Population
from apiguard.request import network_of
from apiguard.store.base import Tally

if TYPE_CHECKING:
    from apiguard.config import RotationConfig
    from apiguard.request import RequestContext
    from apiguard.store.base import Ban, Observation

Place = tuple[str, str, str]  # (principal, /24 network key, client fingerprint)
SHAPED = "rs:"  # ban-table prefix of a principal as one client shape uses it


def shaped_key(principal: str, fingerprint: str) -> str:
    """The ban-table key of `principal` as used by the client shape `fingerprint`."""
    return f"{SHAPED}{fingerprint}:{principal}"


class Places:
    """Where principals were used from: place -> [first seen, last sent] (bounded LRU)."""

    def __init__(self, fresh: float, size: int = RECENT_MAX) -> None:
        self.fresh = fresh
        self.size = size
        self._seen: OrderedDict[Place, list[float]] = OrderedDict()

    def visit(self, place: Place, now: float) -> tuple[bool, bool]:
        """Record a visit: (whether it is due to be sent to the store, whether the place
        is home: first seen at least `fresh` seconds ago)."""
        seen = self._seen
        entry = seen.get(place)
        if entry is None:
            if len(seen) >= self.size:
                seen.popitem(last=False)
            seen[place] = [now, now]
            return True, False
        seen.move_to_end(place)
        home = now - entry[0] >= self.fresh
        if now - entry[1] < self.fresh:
            return False, home
        entry[1] = now
        return True, home


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
        self.places = Places(config.window / 4)

    def excuses(self, ctx: RequestContext, ban: Ban, now: float) -> bool:
        """Whether `ban` (a rotation ban on one of the request's keys) does not hold this
        request: it comes from the banned principal's home."""
        return self.places.visit((ban.owner or ban.key, ctx.net_key, ctx.fingerprint), now)[1]

    def plan(self, outcome: Outcome, ops: list[Observation]) -> Judge | None:
        ctx = outcome.ctx
        principal = outcome.principal
        if principal == ctx.ip_key:
            return None
        due, home = self.places.visit((principal, ctx.net_key, ctx.fingerprint), outcome.now)
        if not due:
            return None
        window = self.config.window
        fingerprint = ctx.fingerprint
        network = ctx.provider_key
        tally = Tally(f"rot:{principal}", window, network)
        shapes = Tally(f"rot:f:{principal}", window, fingerprint)
        mine = Tally(f"rot:s:{fingerprint}:{principal}", window, network)
        region = ctx.engine.hasher("net", network_of(ctx.client_ip, 8, 20))
        spread = Tally(f"rot:w:{principal}", window, region)
        ops.extend((tally, shapes, mine, spread))
        if home:
            return None  # its owner's place: counted, never what a finding is made of
        population = self.population
        cfg = self.config

        def judge() -> list[Finding]:
            threshold = population.update(principal, tally.count)
            bar = threshold if shapes.count >= cfg.fingerprints else threshold * cfg.lone
            # few shapes: judged on this one's own networks (the owner's stay few)
            scoped = shapes.count <= cfg.per_shape
            if (mine.count if scoped else tally.count) < bar or spread.count < cfg.spread:
                return []
            return [
                Finding(
                    self.name,
                    shaped_key(principal, fingerprint) if scoped else principal,
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
                        "scope": "client shape" if scoped else "principal",
                    },
                    owner=principal,
                )
            ]

        return judge
