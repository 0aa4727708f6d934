"""BOLA enumeration (OWASP API1): a principal touching more objects than people do.

Per principal and route template, within the window: the distinct object identifiers
touched (the route's path parameters, and configured query parameters; a linear-counting
sketch in the store, never a list of ids), how many of them were answered 403/404, and the
run of constant-stride steps between integer ids. Flagged (see `BolaConfig`):
- more distinct objects than the route's population (a high percentile of the principals
  seen there, times a factor; a floor before enough principals are seen, and always);
- a sequential walk (`sequential_run` steps of one constant stride);
- a walk mostly answered 403/404 (never required: on the route that is really vulnerable
  every answer is 200).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from apiguard.detectors.base import Finding, Judge, Outcome
from apiguard.detectors.population import Populations
from apiguard.store.base import Run, Tally

if TYPE_CHECKING:
    from apiguard.config import BolaConfig
    from apiguard.store.base import Observation

_MAX_ID = 128  # longer parameter values are not object ids (a path, a blob)


class Bola:
    """The BOLA enumeration detector (see the module docstring)."""

    name = "bola"

    def __init__(self, config: BolaConfig, enforce: bool) -> None:
        self.config = config
        self.enforce = enforce
        self.populations = Populations(
            config.warmup_floor,
            config.floor,
            config.percentile,
            config.factor,
            config.min_principals,
            config.ceiling,
        )
        self._query = tuple(q.encode("latin-1") for q in config.query_params)

    def _object(self, outcome: Outcome) -> tuple[str, int | None] | None:
        """The object the request touched (a text naming it) and its integer id, if any."""
        scope = outcome.ctx.scope
        params = scope.get("path_params")
        parts: list[str] = []
        number: int | None = None
        if params:
            for name, value in params.items():
                text = str(value)
                if len(text) > _MAX_ID or "/" in text:
                    continue
                parts.append(f"{name}={text}")
                number = _integer(value, text, number)
        if self._query:
            query = scope.get("query_string") or b""
            for pair in query.split(b"&"):
                name, _, value = pair.partition(b"=")
                if name in self._query and 0 < len(value) <= _MAX_ID:
                    text = value.decode("latin-1")
                    parts.append(f"{name.decode('latin-1')}={text}")
                    number = _integer(text, text, number)
        if not parts:
            return None
        return "&".join(parts), number

    def plan(self, outcome: Outcome, ops: list[Observation]) -> Judge | None:
        if outcome.status >= 500:
            return None
        found = self._object(outcome)
        if found is None:
            return None
        template = outcome.ctx.route
        if template is None:
            return None
        own_floor = self.config.routes.get(template) if self.config.routes else None
        if own_floor == 0:
            return None
        text, number = found
        item = f"{template}\n{text}"  # only its sketch slot is kept, never the text
        cfg = self.config
        base = f"bola:{outcome.principal}:{template}"
        distinct = Tally(base, cfg.window, item)
        ops.append(distinct)
        errors: Tally | None = None  # judged on an error answer only (a walk has many)
        if outcome.status in (403, 404):
            errors = Tally(base + ":e", cfg.window, item)
            ops.append(errors)
        run: Run | None = None
        if number is not None:
            run = Run(base + ":r", cfg.window, number)
            ops.append(run)
        population = self.populations.get(template)

        # a principal banned for enumeration before is judged on half the evidence: the
        # objects it walked before the ban still count, and its walk restarts elsewhere
        ease = 2 if outcome.prior else 1

        def judge() -> list[Finding]:
            count = distinct.count
            threshold = population.update(outcome.principal, count)
            if own_floor is not None:
                threshold = max(threshold, own_floor)
            threshold /= ease
            evidence: dict[str, float | int | str] = {
                "route": template,
                "objects": round(count),
            }
            if count >= threshold:
                evidence["threshold"] = round(threshold, 1)
                evidence["baseline"] = (
                    round(population.learned, 1) if population.learned is not None else -1
                )
                return [self._finding("distinct", outcome, evidence)]
            if run is not None and run.length >= cfg.sequential_run // ease:
                evidence.update(run=run.length, stride=run.stride, threshold=cfg.sequential_run)
                return [self._finding("sequential", outcome, evidence)]
            if errors is not None and errors.count >= cfg.errors_floor / ease:
                share = errors.count / max(count, errors.count)
                if share >= cfg.error_share:
                    evidence.update(
                        errors=round(errors.count),
                        error_share=round(share, 3),
                        threshold=cfg.errors_floor,
                    )
                    return [self._finding("errors", outcome, evidence)]
            return []

        return judge

    def _finding(
        self, kind: str, outcome: Outcome, evidence: dict[str, float | int | str]
    ) -> Finding:
        return Finding(
            f"{self.name}.{kind}", outcome.principal, self.config.action, self.enforce, evidence
        )


def _integer(value: object, text: str, current: int | None) -> int | None:
    """The integer id of a parameter (the last integer parameter wins)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if text.isdigit() and len(text) <= 18:
        return int(text)
    return current
