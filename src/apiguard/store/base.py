"""The store contract: one batch of state operations per request (DESIGN principle 2).

Rules and detectors never talk to a store; they add operations to a `Batch`. The engine
runs the whole batch in one call (a dict walk in memory, one script on Redis); the store
writes each operation's outcome into the operation itself (its result fields), so a `Hit`
is also the rule's verdict for the request.

Batch semantics (every store implements exactly these):
1. If any key in `ban_keys` is banned, the batch is refused with that ban; nothing is
   charged.
2. Every `Hit` is evaluated against its window. If an *enforced* hit does not fit, the
   batch is refused: nothing is charged, and one strike is recorded against the
   `subject` of the first refused enforced hit that has one; enough strikes ban it.
3. Otherwise the batch is admitted and every consuming hit that fits is charged
   (a monitor-mode hit that does not fit is reported but not charged), and the `once`
   markers of charged hits are remembered. A hit whose `once` marker is already
   remembered costs nothing.

Detectors (`apiguard.detectors`) keep their state with two more operations, run in one
`observe` call per request after its response (off the response's critical path):
- `Tally`: a count over a sliding window (`item` None), or an approximate count of the
  DISTINCT items seen in it (a bounded sketch per key: two generations of a linear-counting
  bitmap in memory, HyperLogLog in Redis; never a list of the items);
- `Run`: the length of the current run of equal, non-zero steps between successive
  integer values (a sequential id walk has stride 1);
- `Objects`: BOLA's three per (principal, route) in one operation (a distinct sketch of
  the objects, one of those answered with an error, and the run of their ids), which a
  store may run itself (`runs_objects`) or receive as its `Tally` and `Run` parts.
What a detector concludes becomes a `Ban` (with its `action` and `reason`), which the
checkpoints already check: a detection never adds a store call to the request path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from apiguard.config import BanConfig
from apiguard.window import WindowSpec


@dataclass(slots=True)
class Hit:
    """Charge `cost` to window `key` (or only test it when `consume` is False).

    The store fills the result fields: `fits`, `remaining` (after this request),
    `reset` (seconds until the oldest counted bucket leaves the window), `retry_after`
    (seconds until a refused hit would fit) and `bucket` (the bucket charged, for refunds).
    """

    key: str
    spec: WindowSpec
    cost: int = 1
    consume: bool = True
    enforce: bool = True
    subject: str | None = None
    rule: Any = None  # the planning rule (engine bookkeeping; stores ignore it)
    policy: Any = None  # the advertised `Policy` this hit counts against
    # charge only the first time this marker is seen (distinct counting, e.g. new API
    # keys per IP); a seen marker makes the hit free. Markers are bounded like windows.
    once: str | None = None
    # result fields: set by the store for every hit it executes (unset before)
    fits: bool = field(init=False)
    remaining: int = field(init=False)
    reset: float = field(init=False)
    retry_after: float = field(init=False)
    bucket: int = field(init=False)

    @property
    def enforced(self) -> bool:
        """Whether a failure of this hit refuses the request."""
        return self.enforce

    @property
    def rule_name(self) -> str:
        """Name of the rule that planned the hit."""
        return str(getattr(self.rule, "name", "?"))


@dataclass(slots=True)
class Batch:
    """Everything one request needs from the store."""

    hits: list[Hit] = field(default_factory=list)
    ban_keys: tuple[str, ...] = ()


@dataclass(slots=True)
class Ban:
    """An active ban: until when (store clock) and at which escalation level.

    `owner`: set on a token banned together with the vouched principal that presented it
    (the token did not earn the ban itself): the principal's key.
    """

    key: str
    until: float
    level: int
    owner: str | None = None
    # what the ban asks of the client: "block" (403), or "challenge" (the app's own
    # challenge, see `Guard.challenge_passed`); and the rule or detector that imposed it
    action: str = "block"
    reason: str | None = None


@dataclass(slots=True)
class Tally:
    """Add `amount` to the sliding count `key` over `window` seconds, or (with `item`)
    add `item` to the key's distinct-items sketch; the store sets `count`: the total after
    this operation (distinct: an estimate, exact for small counts). A store keeps only the
    sketch's bits or registers, never an item: items are keyed hashes (usernames,
    networks, fingerprints) or non-secret object ids (BOLA's route and path parameters).
    `amount=0` without an item reads the key's current value (count or distinct estimate)
    without changing it. `aligned`: the key's two half-window generations start on the
    clock's multiples of half the window, not at its first use, so that counts compared
    as a share (a group's completions among its active principals) cover the same span;
    a count judged alone keeps its first use's start (its first burst is then remembered
    for a whole window)."""

    key: str
    window: float
    item: str | None = None
    amount: int = 1
    aligned: bool = False
    count: float = field(init=False, default=0.0)


@dataclass(slots=True)
class Run:
    """Record integer `value` under `key` (forgotten `window` seconds after its last
    use); the store sets `length`: how many successive steps, this one included, had the
    same non-zero stride (0 when this step differs from the previous one or is the first),
    and `stride`, the step just taken."""

    key: str
    window: float
    value: int
    length: int = field(init=False, default=0)
    stride: int = field(init=False, default=0)


@dataclass(slots=True)
class Objects:
    """One object a principal touched on a route (BOLA), in one operation: add `item` to
    the distinct sketch `key`, and to `key + ":e"` when `error`; record integer `value`
    (unless None) in the run `key + ":r"`; all over `window`. The store sets what those
    `Tally` and `Run` operations would: `count` (distinct objects), `errors` (distinct
    objects answered with an error; 0 unless `error`), `length` and `stride`.

    A store that sets `runs_objects = True` runs it itself (the in-process store keeps
    the three in one entry); to any other the engine hands its `parts()` instead, and
    `collect()` reads their results back."""

    key: str
    window: float
    item: str
    value: int | None = None
    error: bool = False
    count: float = field(init=False, default=0.0)
    errors: float = field(init=False, default=0.0)
    length: int = field(init=False, default=0)
    stride: int = field(init=False, default=0)
    _parts: tuple[Tally, Tally | None, Run | None] | None = field(init=False, default=None)

    def parts(self) -> list[Tally | Run]:
        """The `Tally` and `Run` operations this one stands for."""
        distinct = Tally(self.key, self.window, self.item)
        errors = Tally(self.key + ":e", self.window, self.item) if self.error else None
        run = Run(self.key + ":r", self.window, self.value) if self.value is not None else None
        self._parts = (distinct, errors, run)
        return [op for op in self._parts if op is not None]

    def collect(self) -> None:
        """Set the result fields from those of `parts()` (once the store ran them)."""
        if self._parts is None:
            return
        distinct, errors, run = self._parts
        self.count = distinct.count
        if errors is not None:
            self.errors = errors.count
        if run is not None:
            self.length, self.stride = run.length, run.stride


Observation = Tally | Run | Objects


def expand(ops: Sequence[Observation]) -> tuple[list[Observation], list[Objects]]:
    """`ops` for a store that does not run `Objects` itself: each replaced by its
    `parts()`; and those `Objects`, to `collect()` once the store ran the parts."""
    flat: list[Observation] = []
    combined: list[Objects] = []
    for op in ops:
        if isinstance(op, Objects):
            combined.append(op)
            flat.extend(op.parts())
        else:
            flat.append(op)
    return flat, combined


@dataclass(slots=True)
class BatchResult:
    """Per-hit results in batch order, the admission verdict, and any ban involved."""

    admitted: bool
    hits: list[Hit]
    ban: Ban | None = None
    new_ban: bool = False


# An operation of the fast admission path (`AdmittingStore.admit`): window key, spec,
# cost, `once` marker or None, whether its policy is advertised (RateLimit fields), and a
# tag the caller uses to find its rule again.
Op = tuple[str, WindowSpec, int, "str | None", bool, int]


class Store(Protocol):
    """A state backend. `local` stores may be called from the event loop thread."""

    local: bool
    # Optional: `local_bans`, a read-only mapping of the bans known in this process. While
    # it is empty the engine skips the ban check before routing; a store without it is
    # always asked (`active_ban`).
    # Optional: `reset()`, forget every window, marker, strike and ban (`Guard.reset()`,
    # for an app's test suite; a store without it makes `Guard.reset()` raise).
    # Optional: `observe_later(ops, now, then) -> bool`, queue the operations to be written
    # with other requests' and call `then` once their results are in (True), or decline
    # (False: the engine awaits `aobserve`). The Redis store batches across requests so.

    def execute(self, batch: Batch, now: float, bans: BanConfig) -> BatchResult:
        """Run `batch` atomically (see the module docstring)."""
        ...

    async def aexecute(self, batch: Batch, now: float, bans: BanConfig) -> BatchResult:
        """`execute` for async callers; remote stores must not block the loop."""
        ...

    def refund(self, key: str, spec: WindowSpec, bucket: int, cost: int) -> None:
        """Give back a charge made in `bucket` (count="success" flows that failed)."""
        ...

    def impose(self, ban: Ban, now: float) -> None:
        """Record `ban` (e.g. on the credential that carried a banned principal)."""
        ...

    def active_ban(self, key: str, now: float) -> Ban | None:
        """The ban on `key`, if one is active and known locally (no network trip)."""
        ...

    # Optional: `runs_objects = True`, the store runs `Objects` operations itself (else
    # the engine hands it their `Tally` and `Run` parts, see `Objects`).

    def observe(self, ops: Sequence[Observation], now: float) -> None:
        """Run the detectors' `Tally` and `Run` operations and fill their results."""
        ...

    async def aobserve(self, ops: Sequence[Observation], now: float) -> None:
        """`observe` for async callers (remote stores: one round trip, off the response's
        critical path)."""
        ...

    def lift(self, key: str) -> None:
        """Remove any ban on `key` (a passed challenge)."""
        ...


@runtime_checkable
class AdmittingStore(Store, Protocol):
    """A local store with a fast path for the common case: every op fits and no ban
    applies. `admit` must charge exactly what `execute` would for the same ops."""

    def admit(
        self, ops: Sequence[Op], ban_keys: tuple[str, ...], now: float
    ) -> tuple[list[tuple[int, float, int]], int] | None:
        """Charge all `ops` and return (remaining, reset, bucket) per op with the index of
        the advertised op with the smallest remaining share of its limit (-1: none); or
        change nothing and return None when a ban applies or an op does not fit (then
        call `execute`)."""
        ...


@runtime_checkable
class CallingStore(Store, Protocol):
    """A remote store with a fast path for async callers: the checkpoint's one call made
    straight from the fast path's ops. `aadmit` must do exactly what `aexecute` would for
    the hits the ops stand for (every op consumes; `subjects`: each one's strike subject):
    it decides, charges, refuses and strikes alike (it has waited on the store: there is
    no second call)."""

    async def aadmit(
        self,
        ops: Sequence[Op],
        subjects: Sequence[str | None],
        ban_keys: tuple[str, ...],
        now: float,
        bans: BanConfig,
        hits: Callable[[], list[Hit]],
    ) -> tuple[list[tuple[int, float, int]], int] | BatchResult:
        """Admitted with every op fitting: what `AdmittingStore.admit` returns. Otherwise
        `aexecute`'s result for `Batch(hits(), ban_keys)` (`hits` makes the general
        path's hits for the ops, in order; called only then)."""
        ...
