"""Flows started and never finished: holds that are never paid for (inventory hoarding,
OAT-021: seats, vehicles or stock held by bots that never check out).

A flow declared `@guard.flow("hold", "6/hour", finished_by="checkout", unfinished=3)` (on
any of its steps: every step of the flow gets it) is counted twice per principal that
is an account or an API key (an anonymous client's address is everyone's behind it, and
is not counted), over the flow's longest window: the holds it completed, and the
completions of the flows named in `finished_by` (`checkout`, itself a declared flow with
a completing step). When a hold leaves `unfinished` or more of them not finished, the
principal is refused that flow (429, with `Retry-After`: a quarter of the window,
doubling for a repeat offender, at least `bans.base`) and nothing else; a finish that
brings it back under the bar lifts the refusal at once. A principal refused it within
the last window is refused again at its next unfinished one: the count decays with its
window, and would otherwise give a hoarder `unfinished` more every window. A finish
made while none was open (as this process last judged the principal) finishes nothing:
finishes cannot be banked for holds to come. Counts are the detectors' sliding counts
(two generations), so a finish made later than its start may leave the count below the
truth for part of a window: lenient, never stricter than declared.

Starts are also counted as they are admitted, until judged: on a remote store (Redis,
observations flushed every few ms) a burst of concurrent holds is held at the bar by the
worker it reaches (a burst spread over N workers: N times the bar at most, once).

What this does not do: it takes any success of a finisher as a finish, so a finisher must
answer 2xx only for a real, open hold of the caller (an idempotent cancel answering 204
for any id would finish every hold); and a lift made on one worker reaches another that
cached the refusal with its next ban news (or the refusal's end).

Nothing is learned: the bar is the declaration's. This is a detector only in where it
runs (after the response, off the request's critical path, in the checkpoint's store
batch), which is what lets the same counts work on every store.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from apiguard.detectors.base import PRINCIPALS, RECENT_MAX, Finding, Judge, Outcome
from apiguard.rules import FlowRule
from apiguard.store.base import Tally

if TYPE_CHECKING:
    from apiguard.engine import Engine
    from apiguard.request import RequestContext
    from apiguard.store.base import Observation

UNFINISHED = "fu:"  # ban-table prefix of a principal refused a flow it leaves unfinished
_IN_FLIGHT = 30.0  # seconds an admitted start counts before its judgement (a lost flush)


def unfinished_key(flow: str, principal: str) -> str:
    """The ban key that refuses `principal` the flow `flow`."""
    return f"{UNFINISHED}{flow}:{principal}"


class Unfinished:
    """The unfinished-flow rule of `@guard.flow(finished_by=...)` (module docstring)."""

    name = "unfinished"
    watches = PRINCIPALS  # (an address is everyone's behind it: not counted)

    def __init__(self, enforce: bool) -> None:
        self.enforce = enforce
        # a finishing flow -> the flows it finishes, with their unfinished bar and window
        self.finishes: dict[str, list[tuple[str, int, float]]] = {}
        # (flow, principal) -> its holds left unfinished when last judged here (bounded):
        # a finish while none is open finishes nothing (no banking finishes for later)
        self._open: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()
        # (flow, principal) -> when each start admitted since was admitted (not judged)
        self._inflight: OrderedDict[tuple[str, str], list[float]] = OrderedDict()

    def clear(self) -> None:
        """Forget every count kept in process (`Guard.reset`)."""
        self._open.clear()
        self._inflight.clear()

    @staticmethod
    def bar(rule: FlowRule, key: str, engine: Engine, now: float) -> int:
        """The unfinished starts at which `rule`'s flow is refused to the principal of
        ban `key`: its declared bar, or 1 for one refused it within the flow's longest
        window (a hoarder's count, decaying with the window, would otherwise give it the
        bar again each window; a person refused in the morning is no repeat offender)."""
        return 1 if engine.prior(key, now, rule.longest) else rule.unfinished

    def enforces(self, rule: FlowRule) -> bool:
        """Whether `rule`'s refusals are enforced (its own mode, else the guard's)."""
        return self.enforce if rule.mode is None else rule.mode == "enforce"

    def admit(self, rule: FlowRule, principal: str, now: float, bar: int) -> bool:
        """Whether `principal` may start `rule`'s flow now (no refusal of it stands): the
        holds it left open as last judged here within its window, at most `bar - 1` (no
        refusal stands, so it was lifted by a finish or ended: one more start is its
        due), and those admitted since and not yet judged (a burst of concurrent holds,
        whose outcomes a remote store judges after its flush), under `bar` (1 for a
        repeat offender: `bar`). Either way it is counted in flight until judged or ended
        (`settle`), or for `_IN_FLIGHT` seconds at most."""
        key = (rule.name, principal)
        times = self._inflight.get(key)
        if times is not None:
            while times and now - times[0] > _IN_FLIGHT:
                times.pop(0)
        pending = len(times) if times else 0
        window = rule.longest
        judged, when = self._open.get(key, (0.0, -window))
        left = (min(max(judged, 0.0), bar - 1) if now - when <= window else 0.0) + pending
        if times is None:
            table = self._inflight
            if len(table) >= RECENT_MAX:
                table.popitem(last=False)
            times = table[key] = []
        times.append(now)  # (refused too: its end settles it, as a monitored one's judgement)
        return left < bar

    def settle(self, flow: str, principal: str) -> None:
        """One admitted start of `flow` by `principal` is judged (or came to nothing)."""
        times = self._inflight.get((flow, principal))
        if times:
            times.pop(0)
            if not times:
                del self._inflight[(flow, principal)]

    def _note_open(self, flow: str, principal: str, left: float, now: float) -> None:
        table = self._open
        key = (flow, principal)
        table[key] = (left, now)
        table.move_to_end(key)
        if len(table) > RECENT_MAX:
            table.popitem(last=False)

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
        flow, window = rule.name, rule.longest
        started = Tally(f"fu:s:{flow}:{principal}", window)
        finished = Tally(f"fu:d:{flow}:{principal}", window, amount=0)
        ops.extend((started, finished))
        enforce = self.enforces(rule)
        engine = ctx.engine

        def judge() -> list[Finding]:
            left = round(started.count - finished.count)
            now = engine.clock()
            self._note_open(flow, principal, left, now)
            self.settle(flow, principal)
            key = unfinished_key(flow, principal)
            if left < self.bar(rule, key, engine, now):
                return []
            evidence: dict[str, float | int | str] = {
                "flow": flow,
                "started": round(started.count),
                "finished": round(finished.count),
                "threshold": rule.unfinished,
                "window": window,
            }
            return [Finding(self.name, key, "throttle", enforce, evidence)]

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
        # (none open when last judged here: this finish finishes nothing, and is not
        # kept for the holds to come; not known here, another worker's: counted)
        known = self._open.get((flow, principal))
        counted = known is None or known[0] >= 1
        started = Tally(f"fu:s:{flow}:{principal}", window, amount=0)
        finished = Tally(f"fu:d:{flow}:{principal}", window, amount=int(counted))
        ops.extend((started, finished))
        engine = ctx.engine

        def judge() -> list[Finding]:
            left = started.count - finished.count
            self._note_open(flow, principal, left, engine.clock())
            if counted and left < bar:
                engine.store.lift(unfinished_key(flow, principal))
            return []

        return judge
