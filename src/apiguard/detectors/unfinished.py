"""Flows started and never finished: holds that are never paid for (inventory hoarding,
OAT-021: seats, vehicles or stock held by bots that never check out).

A flow declared `@guard.flow("hold", "6/hour", finished_by="checkout", unfinished=3)` is
counted twice per principal (its own `per`: the account, or the address of an anonymous
client) over the flow's longest window: the holds it completed, and the completions of
the flows named in `finished_by` (`checkout`, itself a declared flow). When a hold leaves
`unfinished` or more of them not finished, the principal is refused that flow (429, with
`Retry-After`: a quarter of the window, doubling for a repeat offender, at least
`bans.base`) and nothing else; a finish that brings it back under the bar lifts the
refusal at once. A principal refused it within `bans.memory` (a day) is refused again at
its next unfinished one, for twice as long: the count decays with its window, and would
otherwise give a hoarder `unfinished` more every window. Counts are the detectors'
sliding counts (two generations), so a finish made later than its start may leave the
count below the truth for part of a window: lenient, never stricter than declared.

Nothing is learned: the bar is the declaration's. This is a detector only in where it
runs (after the response, off the request's critical path, in the checkpoint's store
batch), which is what lets the same counts work on every store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from apiguard.detectors.base import EVERY_REQUEST, Finding, Judge, Outcome
from apiguard.rules import FlowRule
from apiguard.store.base import Tally

if TYPE_CHECKING:
    from apiguard.request import RequestContext
    from apiguard.store.base import Observation

UNFINISHED = "fu:"  # ban-table prefix of a principal refused a flow it leaves unfinished


def unfinished_key(flow: str, principal: str) -> str:
    """The ban key that refuses `principal` the flow `flow`."""
    return f"{UNFINISHED}{flow}:{principal}"


class Unfinished:
    """The unfinished-flow rule of `@guard.flow(finished_by=...)` (module docstring)."""

    name = "unfinished"
    watches = EVERY_REQUEST

    def __init__(self, enforce: bool) -> None:
        self.enforce = enforce
        # a finishing flow -> the flows it finishes, with their unfinished bar and window
        self.finishes: dict[str, list[tuple[str, int, float]]] = {}

    def declare(self, flow: str, finished_by: tuple[str, ...], bar: int, window: float) -> None:
        """Record that `flow` is finished by each flow of `finished_by`."""
        for finisher in finished_by:
            known = self.finishes.setdefault(finisher, [])
            entry = (flow, bar, window)
            if entry not in known:
                known.append(entry)

    def plan(self, outcome: Outcome, ops: list[Observation]) -> Judge | None:
        ctx = outcome.ctx
        ran = ctx.ran
        if not ran or not ctx.engine.succeeded(outcome.status):
            return None
        principal = outcome.principal
        judges: list[Judge] = []
        for rules in ran:
            for rule in rules:
                if not isinstance(rule, FlowRule) or not rule.completes:
                    continue
                if rule.finished_by:
                    judges.append(self._started(rule, principal, ctx, ops))
                for flow, bar, window in self.finishes.get(rule.name, ()):
                    judges.append(self._finished(flow, bar, window, principal, ctx, ops))
        if not judges:
            return None
        if len(judges) == 1:
            return judges[0]
        return lambda: [f for judge in judges for f in judge()]

    def _started(
        self, rule: FlowRule, principal: str, ctx: RequestContext, ops: list[Observation]
    ) -> Judge:
        flow, window = rule.name, max(spec.window for spec in rule.specs)
        started = Tally(f"fu:s:{flow}:{principal}", window)
        finished = Tally(f"fu:d:{flow}:{principal}", window, amount=0)
        ops.extend((started, finished))
        bar = rule.unfinished
        enforce = self.enforce if rule.mode is None else rule.mode == "enforce"
        engine = ctx.engine

        def judge() -> list[Finding]:
            left = round(started.count - finished.count)
            key = unfinished_key(flow, principal)
            # a principal refused it within `bans.memory` is held at its next unfinished
            # one (else its count, decaying with the window, gives it `bar` more each time)
            if left < (1 if engine.prior(key, engine.clock()) else bar):
                return []
            evidence: dict[str, float | int | str] = {
                "flow": flow,
                "started": round(started.count),
                "finished": round(finished.count),
                "threshold": bar,
                "window": window,
            }
            return [
                Finding(self.name, key, "throttle", enforce, evidence)
            ]

        return judge

    def _finished(
        self,
        flow: str,
        bar: int,
        window: float,
        principal: str,
        ctx: RequestContext,
        ops: list[Observation],
    ) -> Judge:
        started = Tally(f"fu:s:{flow}:{principal}", window, amount=0)
        finished = Tally(f"fu:d:{flow}:{principal}", window)
        ops.extend((started, finished))
        engine = ctx.engine

        def judge() -> list[Finding]:
            if started.count - finished.count < bar:
                engine.store.lift(unfinished_key(flow, principal))
            return []

        return judge
