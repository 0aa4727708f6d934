"""IP rotation and stolen keys: one principal from more networks than people use.

Per principal that is not an address (a user, an API key, a bearer token): the distinct
provider-sized networks (/16 for IPv4, /32 for IPv6: a phone behind its carrier's NAT pool
changes address and /24 on every connection, not provider) it was seen from within the
window, against the population of principals (a high percentile times a factor, never
below a floor), and the distinct client fingerprints that used it: a principal is flagged
only when at least `fingerprints` client shapes used it (its owner's and a thief's, or
headers randomised per request). Each (principal, network) pair is sent to the store once
per quarter window (a bounded in-process table remembers which were), so a principal
staying on its network costs no store operation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from apiguard.detectors.base import PRINCIPALS, Finding, Judge, Outcome, RecentlySent
from apiguard.detectors.population import Population
from apiguard.store.base import Tally

if TYPE_CHECKING:
    from apiguard.config import RotationConfig
    from apiguard.store.base import Observation


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
        self._sent: RecentlySent[tuple[str, str]] = RecentlySent(config.window / 4)

    def plan(self, outcome: Outcome, ops: list[Observation]) -> Judge | None:
        ctx = outcome.ctx
        principal = outcome.principal
        if principal == ctx.ip_key:
            return None
        net = ctx.provider_key
        pair = (principal, net)
        if not self._sent.due(pair, outcome.now):
            return None
        window = self.config.window
        tally = Tally(f"rot:{principal}", window, net)
        shapes = Tally(f"rot:f:{principal}", window, ctx.fingerprint)
        ops.append(tally)
        ops.append(shapes)
        population = self.population
        min_shapes = self.config.fingerprints

        def judge() -> list[Finding]:
            threshold = population.update(principal, tally.count)
            if tally.count < threshold or shapes.count < min_shapes:
                return []
            return [
                Finding(
                    self.name,
                    principal,
                    self.config.action,
                    self.enforce,
                    {
                        "networks": round(tally.count),
                        "threshold": round(threshold, 1),
                        "client_fingerprints": round(shapes.count),
                        "baseline": round(population.learned, 1)
                        if population.learned is not None
                        else -1,
                    },
                )
            ]

        return judge
