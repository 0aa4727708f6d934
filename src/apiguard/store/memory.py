"""The embedded in-process store: plain dict work under one lock, every table bounded."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from apiguard.config import BanConfig
from apiguard.store.base import Ban, Batch, BatchResult, Objects, Observation, Op, Run, Tally
from apiguard.store.sketch import (
    ESTIMATES,
    FirstTouch,
    Generations,
    Stride,
    Trail,
    first_touch,
    first_walk,
)
from apiguard.store.spill import Spill
from apiguard.window import BucketWindow, WindowSpec, refund, try_hit

ONE = ESTIMATES[1]  # the distinct count of a record with one object
log = logging.getLogger("apiguard")
_T = TypeVar("_T")
_S = TypeVar("_S", Generations, Stride)


_SPILLS_MAX = 256  # spill sketches, one per distinct rate (rates are code-defined)
_SCAN = 16  # entries a full table examines, oldest first, for one it may drop


class _Strikes:
    __slots__ = ("last_ban", "level", "window")

    def __init__(self, buckets: int) -> None:
        self.window = BucketWindow(buckets)
        self.level = 0
        self.last_ban = float("-inf")


@dataclass(slots=True)
class _Mark:
    """A `once` marker: the window and bucket its unit was charged to, and when that unit
    stops counting (the marker is forgotten then: a credential counts once per window)."""

    key: str
    bucket: int
    expires: float


def _drop_one(table: OrderedDict[str, _T], dead: Callable[[_T], bool]) -> bool:
    """Drop the least recently used entry that is `dead` among the oldest `_SCAN`, moving
    live ones it passes to the recent end; False when all of them are live."""
    for _ in range(min(_SCAN, len(table))):
        key, value = next(iter(table.items()))
        if dead(value):
            del table[key]
            return True
        table.move_to_end(key)
    return False


class MemoryStore:
    """Windows, strikes and bans for one process, every table capped at `max_keys`.

    A full table drops first state that no longer counts (a window whose units have all
    left it, a marker whose unit has, strikes that can no longer add up to a ban), and
    refused requests create no state at all, so no flood of requests can reset a counter,
    a strike count or a ban. When the window table is full of live windows, the least
    recently used one is spilled into a count-min sketch of its rate
    (`apiguard.store.spill`), from which that subject's window is rebuilt, never below
    what it was charged, if it comes back: newcomers get exact windows, every spilled
    subject stays counted (conservatively). When the marker table is full of live markers
    a new credential is not counted (distinct counting is a heuristic); when the strike
    or ban table is full of live entries, a new strike record or ban is not recorded (a
    warning is logged once); a record kept only for escalation memory, its ban over, may
    go (that offender's next ban starts at the base duration).

    Windows and markers are touched on every request, so their tables are OrderedDicts
    driven by hand (a lookup measured 36 ns against 111 ns for cachetools' LRUCache, and
    `with lock` 165 ns against 75 ns for acquire/release).
    """

    local = True
    runs_objects = True  # `Objects` operations: one `Trail` entry each

    def __init__(
        self, max_keys: int = 200_000, strike_buckets: int = 10, spill_columns: int = 8192
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.max_keys = max_keys
        self._windows: OrderedDict[str, BucketWindow] = OrderedDict()
        # (bucket width, buckets) of a rate -> the sketch of its live windows spilled from
        # a full table (one per distinct rate, bounded)
        # windows (bounded by the number of rules)
        self._spills: dict[tuple[float, int], Spill] = {}
        # cells per row of a spill sketch: more columns, fewer collisions, more memory
        self._spill_columns = spill_columns
        self._strikes: OrderedDict[str, _Strikes] = OrderedDict()
        self._seen: OrderedDict[str, _Mark] = OrderedDict()
        self._bans: dict[str, Ban] = {}
        # detectors' state (`observe`): sliding counts and distinct sketches, stride runs
        self._tallies: OrderedDict[str, Generations] = OrderedDict()
        self._runs: OrderedDict[str, Stride] = OrderedDict()
        # BOLA's (principal, route) records (`Objects`): sketches and run in one entry
        self._objects: OrderedDict[str, Trail | FirstTouch] = OrderedDict()
        self.local_bans: Mapping[str, Ban] = self._bans
        self._strike_buckets = strike_buckets
        self._lock = threading.Lock()
        self._full_warned = False

    # -- bounded tables ----------------------------------------------------------------
    def _new_window(self, key: str, spec: WindowSpec, now: float) -> BucketWindow:
        """A window for a subject that has none: what the sketch of its rate holds for it
        (at least what it was charged while its window was spilled), else empty."""
        if self._spills:
            spill = self._spills.get((spec.width, spec.buckets))
            if spill is not None:
                w = spill.window(key, now)
                if w is not None:
                    w.spec = spec  # (the sketch serves every rate of this width and size)
                    return w
        return BucketWindow(spec.buckets, spec)

    def _spill_oldest(self) -> None:
        """Make room in a table full of live windows: fold the least recently used one
        into the sketch of its rate (see `apiguard.store.spill`). Never drops a window: with
        nothing to spill (a batch creating more windows than the table holds) or a rate
        that cannot get a sketch, the table goes over its cap by the window instead."""
        windows = self._windows
        if not windows:
            return
        key, w = next(iter(windows.items()))
        spec = w.spec
        if spec is None:  # pragma: no cover - every window of this store has its spec
            return
        spill = self._spills.get((spec.width, spec.buckets))
        if spill is None:
            if len(self._spills) >= _SPILLS_MAX:
                return
            spill = self._spills[(spec.width, spec.buckets)] = Spill(spec, self._spill_columns)
            self._warn_full("windows")
        del windows[key]
        spill.add(key, w)

    def _warn_full(self, table: str) -> None:
        if not self._full_warned:
            self._full_warned = True
            log.warning(
                "apiguard: the in-process store's %s table is full of live state "
                "(store.max_keys=%d): the oldest windows are spilled into a sketch that "
                "may over-count them, new markers, strikes and bans are not recorded "
                "until state expires. Raise store.max_keys if this is not an attack.",
                table,
                self.max_keys,
            )

    def _seen_before(self, mark: str, now: float) -> bool:
        """Whether `mark` is remembered and its unit still counts (touching it)."""
        seen = self._seen
        m = seen.get(mark)
        if m is None:
            return False
        if m.expires <= now:
            del seen[mark]
            return False
        seen.move_to_end(mark)
        return True

    def _remember(self, mark: str, key: str, bucket: int, width: float, n: int, now: float) -> bool:
        """Remember `mark` for as long as its unit counts; False: the table is full of
        live markers (the caller gives the unit back)."""
        seen = self._seen
        if len(seen) >= self.max_keys and not _drop_one(seen, lambda m: m.expires <= now):
            self._warn_full("markers")
            return False
        seen[mark] = _Mark(key, bucket, (bucket + n) * width)
        return True

    # -- the batch -------------------------------------------------------------------
    def execute(self, batch: Batch, now: float, bans: BanConfig) -> BatchResult:
        """Run `batch` atomically (semantics in `apiguard.store.base`)."""
        self._lock.acquire()
        try:
            return self._execute(batch, now, bans)
        finally:
            self._lock.release()

    def _execute(self, batch: Batch, now: float, bans: BanConfig) -> BatchResult:
        if self._bans:
            for key in batch.ban_keys:
                ban = self._bans.get(key)
                if ban is not None:
                    if ban.until > now:
                        return BatchResult(False, [], ban)
                    del self._bans[key]
        if self._spills:
            for rate in [r for r, sp in self._spills.items() if sp.dead(now)]:
                del self._spills[rate]
        hits = batch.hits
        windows = self._windows
        room = self.max_keys - len(windows)
        # windows this batch needs that do not exist: kept only if the batch is admitted
        # (a refused request creates no state)
        pending: dict[str, BucketWindow] | None = None
        charged: list[tuple[BucketWindow, int]] | None = None
        marks: list[tuple[str, str, int, float, int]] = []
        refused_subject: str | None = None
        refused = False
        for hit in hits:
            spec = hit.spec
            key = hit.key
            w = windows.get(key)
            if w is not None:
                windows.move_to_end(key)
            elif pending is not None and key in pending:
                w = pending[key]
            else:
                w = self._new_window(key, spec, now)
                if hit.consume and hit.cost:
                    if room > 0:
                        room -= 1
                    elif not _drop_one(windows, lambda v: v.dead(now)):
                        self._spill_oldest()  # every window stays counted (conservatively)
                    if pending is None:
                        pending = {}
                    pending[key] = w
            index = int(now // spec.width)
            if index > w.head:
                w.advance(index)
            head = w.head
            total = w.total
            cost = hit.cost
            if hit.once is not None and self._seen_before(hit.once, now):
                cost = 0
            limit = spec.limit
            hit.bucket = head
            if total + cost <= limit:
                hit.fits = True
                counts = w.counts
                n = len(counts)
                if cost and hit.consume and not refused:
                    # optimistic: rolled back below if a later hit refuses the batch
                    if not total:
                        w.tail = head
                    counts[head % n] += cost
                    total += cost
                    w.total = total
                    w.expires = (head + n) * spec.width
                    if charged is None:
                        charged = []
                    charged.append((w, cost))
                    if hit.once is not None:
                        marks.append((hit.once, key, head, spec.width, n))
                hit.remaining = limit - total
                hit.retry_after = 0.0
                tail = w.tail
                if not total:
                    hit.reset = 0.0
                elif tail > head - n and counts[tail % n]:
                    hit.reset = (tail + n) * spec.width - now
                else:
                    hit.reset = w.next_release(spec, now)
            else:
                hit.fits = False
                if hit.enforce:
                    refused = True
                    if refused_subject is None:
                        refused_subject = hit.subject
                remaining = limit - total
                hit.remaining = remaining if remaining > 0 else 0
                hit.reset = w.next_release(spec, now)
                hit.retry_after = w.retry_after(spec, now, cost)
        if not refused:
            if pending is not None:
                for key, w in pending.items():
                    if w.total:
                        windows[key] = w
            for mark, window_key, bucket, width, n in marks:
                if not self._remember(mark, window_key, bucket, width, n, now):
                    # no room to remember the credential: do not count it at all (counting
                    # it on every request would refuse an honest one-key client)
                    w = windows.get(window_key)
                    if w is not None:
                        refund(w, bucket, 1)
            return BatchResult(True, hits)
        for w, cost in charged or ():
            w.counts[w.head % len(w.counts)] -= cost
            w.total -= cost
        for hit in hits:
            if hit.fits and hit.consume and hit.cost:  # report the rolled-back state
                rolled = windows.get(hit.key)
                if rolled is None and pending is not None:
                    rolled = pending.get(hit.key)
                if rolled is None:  # pragma: no cover - every charged window is known
                    continue
                hit.remaining = hit.spec.limit - rolled.total
                hit.reset = rolled.next_release(hit.spec, now)
        new_ban = None
        if refused_subject is not None and bans.enabled:
            new_ban = self._strike(refused_subject, now, bans)
        return BatchResult(False, hits, new_ban, new_ban is not None)

    def admit(
        self, ops: Sequence[Op], ban_keys: tuple[str, ...], now: float
    ) -> tuple[list[tuple[int, float, int]], int] | None:
        """The common case of `execute` without its objects: charge every op if no key in
        `ban_keys` is banned and every op fits; else change nothing and return None (the
        caller then runs `execute`, which reports, refuses and strikes). A window to create
        in a full table (or while an overflow window counts) also goes to `execute`.

        Returns (remaining, reset, bucket) per op, as `execute` would set on a fitting
        `Hit`, and the index of the advertised op with the smallest remaining share of its
        limit (the first on ties; -1 if none is advertised). The window arithmetic is
        `_execute`'s, inlined (this runs on every request): tests/test_fast_path.py holds
        the two to the same results.
        """
        self._lock.acquire()
        try:
            if self._bans:
                for key in ban_keys:
                    if key in self._bans:
                        return None  # active or expired: `execute` decides and purges
            windows = self._windows
            touch = windows.move_to_end
            out: list[tuple[int, float, int]] = []
            width = 0.0
            index = 0
            best = -1
            best_share = 2.0
            # windows to create: added after the loop, as `_execute` does (same LRU order)
            created: dict[str, BucketWindow] | None = None
            onces = False  # an op charged once per marker (most requests carry none)
            for key, spec, cost, once, advertised, _ in ops:
                w = windows.get(key)
                if w is None:
                    w = created.get(key) if created is not None else None
                    if w is None:
                        if (
                            len(windows) + (len(created) if created else 0) >= self.max_keys
                            or self._spills
                            or not cost
                        ):
                            self._take_back(ops[: len(out)])
                            return None
                        w = BucketWindow(spec.buckets, spec)
                        if created is None:
                            created = {}
                        created[key] = w
                else:
                    touch(key)
                if spec.width != width:  # rules usually share their bucket width
                    width = spec.width
                    index = int(now // width)
                if index > w.head:
                    w.advance(index)
                if once is not None:
                    onces = True
                    if self._seen_before(once, now):
                        cost = 0
                total = w.total + cost
                if total > spec.limit:
                    self._take_back(ops[: len(out)])
                    return None
                head = w.head
                counts = w.counts
                n = len(counts)
                if cost:
                    if total == cost:
                        w.tail = head
                    counts[head % n] += cost
                    w.total = total
                    w.expires = (head + n) * width
                tail = w.tail
                if not total:
                    reset = 0.0
                elif tail > head - n and counts[tail % n]:
                    reset = (tail + n) * width - now
                else:
                    reset = w.next_release(spec, now)
                remaining = spec.limit - total
                if advertised:
                    share = remaining / spec.limit
                    if share < best_share:
                        best = len(out)
                        best_share = share
                out.append((remaining, reset, head))
            if created is not None:
                for key, w in created.items():
                    if w.total:  # (one that charged nothing: `execute` keeps none either)
                        windows[key] = w
            if not onces:
                return out, best
            seen = self._seen
            for key, spec, cost, once, _, _ in ops:
                if once is not None and cost and once not in seen:
                    charged = windows.get(key)
                    if charged is not None and not self._remember(
                        once, key, charged.head, spec.width, spec.buckets + 1, now
                    ):
                        refund(charged, charged.head, 1)
            return out, best
        finally:
            self._lock.release()

    def _take_back(self, ops: Sequence[Op]) -> None:
        """Undo what `admit` charged for `ops` to existing windows (all in the current
        bucket of each; windows it was about to create are dropped with it)."""
        seen = self._seen
        for key, _, cost, once, _, _ in ops:
            if not cost or (once is not None and once in seen):
                continue  # nothing was charged (a marker seen before is free)
            w = self._windows.get(key)
            if w is not None:
                w.counts[w.head % len(w.counts)] -= cost
                w.total -= cost

    async def aexecute(self, batch: Batch, now: float, bans: BanConfig) -> BatchResult:
        """Same as `execute`: in-process work never blocks on I/O."""
        return self.execute(batch, now, bans)

    # -- strikes and bans ------------------------------------------------------------
    def _strike(self, subject: str, now: float, bans: BanConfig) -> Ban | None:
        strikes = self._strikes
        rec = strikes.get(subject)
        if rec is None:
            if len(strikes) >= self.max_keys and not _drop_one(
                strikes, lambda r: r.window.dead(now) and r.last_ban <= now
            ):
                self._warn_full("strikes")
                return None
            rec = strikes[subject] = _Strikes(self._strike_buckets)
        else:
            strikes.move_to_end(subject)
        spec = WindowSpec(bans.after, bans.within, self._strike_buckets)
        try_hit(rec.window, spec, now, 1, consume=True)
        if rec.window.total < bans.after:
            return None
        rec.window = BucketWindow(self._strike_buckets)
        # escalation memory runs from the end of the previous ban
        rec.level = rec.level + 1 if now - rec.last_ban <= bans.memory else 1
        duration = bans.duration(rec.level)
        rec.last_ban = now + duration
        ban = Ban(subject, now + duration, rec.level)
        return ban if self._put_ban(ban, now) else None

    def impose(self, ban: Ban, now: float) -> None:
        """Record `ban`, keeping a longer one already in place."""
        with self._lock:
            current = self._bans.get(ban.key)
            if current is None or current.until < ban.until:
                self._put_ban(ban, now)

    def _put_ban(self, ban: Ban, now: float) -> bool:
        """Record `ban`; a full table drops expired bans, never a live one (then the new
        ban is not recorded: False)."""
        bans = self._bans
        if len(bans) >= self.max_keys and ban.key not in bans:
            for key in [k for k, b in bans.items() if b.until <= now]:
                del bans[key]
            if len(bans) >= self.max_keys:
                self._warn_full("bans")
                return False
        bans[ban.key] = ban
        return True

    def active_ban(self, key: str, now: float) -> Ban | None:
        """The ban on `key` if it is still running."""
        if not self._bans:
            return None
        ban = self._bans.get(key)
        if ban is None or ban.until <= now:
            return None
        return ban

    def lift(self, key: str) -> None:
        """Remove any ban on `key`."""
        with self._lock:
            self._bans.pop(key, None)

    # -- detectors' state --------------------------------------------------------------
    def observe(self, ops: Sequence[Observation], now: float) -> None:
        """Run `Tally`, `Run` and `Objects` operations (see `apiguard.store.base`). Their
        tables are bounded by `max_keys`: a full one drops expired state first, else its least
        recently used entry (detector state is evidence, not a quota; BOLA's records: the least
        recently used at once). Runs after every
        observed response: `expired` is inlined, and the lock taken without `with`."""
        tallies = self._tallies
        runs = self._runs
        self._lock.acquire()
        try:
            for op in ops:
                key = op.key
                if isinstance(op, Objects):
                    self._trail(op, now)
                elif isinstance(op, Tally):
                    t = tallies.get(key)
                    if t is None or now - t.start >= 2 * t.half:  # (t.expired(now))
                        t = self._make(
                            tallies, key, Generations(op.window, now, op.aligned), now, t
                        )
                    else:
                        tallies.move_to_end(key)
                    op.count = t.add(op.item, op.amount, now)
                elif isinstance(op, Run):
                    r = runs.get(key)
                    if r is None or now - r.touched >= r.window:  # (r.expired(now))
                        r = self._make(runs, key, Stride(op.window, now), now, r)
                    else:
                        runs.move_to_end(key)
                    op.length, op.stride = r.step(op.value, now)
        finally:
            self._lock.release()

    def run_objects(self, op: Objects, now: float) -> None:
        """Run one `Objects` operation now, as `observe([op], now)` would (BOLA's
        in-process path: its results are read at once, with no batch around it)."""
        self._lock.acquire()
        try:
            self._trail(op, now)
        finally:
            self._lock.release()

    def run_walk(
        self, key: str, window: float, item: str, value: int, now: float
    ) -> tuple[float, int, int]:
        """`run_objects` for an object answered without an error, named by integer id
        `value`, with no `Objects` made (BOLA's hot path): what that operation's `count`,
        `length` and `stride` would be."""
        objects = self._objects
        self._lock.acquire()
        try:
            record = objects.get(key)
            if record is None:
                if len(objects) >= self.max_keys:
                    objects.popitem(last=False)  # (as `_trail`: the least recently used)
                objects[key] = first_walk(item, value, window, now)
                return ONE, 0, 0
            objects.move_to_end(key)
            if type(record) is tuple:  # (its second object: the full record from now on)
                record = objects[key] = Trail.resumed(record)
            length = record.step(item, value, now)  # type: ignore[union-attr]
            return ESTIMATES[record.union], length, record.moved  # type: ignore[union-attr]
        finally:
            self._lock.release()

    def _trail(self, op: Objects, now: float) -> None:
        """`op` on its `Trail` (made, or most recently used); the lock is held."""
        objects = self._objects
        key = op.key
        record = objects.get(key)
        if record is not None:
            objects.move_to_end(key)
            if type(record) is tuple:  # (its second object: the full record from now on)
                record = objects[key] = Trail.resumed(record)
            record.observe(op, now)  # type: ignore[union-attr]
            return
        if op.error:
            trail = Trail(op.window, now)
            trail.first(op, now)
            fresh: Trail | FirstTouch = trail
        else:
            fresh = first_touch(op, now)
        if len(objects) >= self.max_keys:
            # full: the least recently used record goes (its evidence is the oldest; a
            # scan for an expired one first, as the other tables do, cost twice the
            # detectors' time per request once the table was full)
            objects.popitem(last=False)
        objects[key] = fresh

    def _make(
        self, table: OrderedDict[str, _S], key: str, fresh: _S, now: float, old: _S | None
    ) -> _S:
        """Put `fresh` under `key` (most recently used), in place of `old`, its expired
        entry, if any; a new key in a full table makes room first."""
        if old is not None:
            table[key] = fresh
            table.move_to_end(key)
            return fresh
        if len(table) >= self.max_keys and not _drop_one(table, lambda v: v.expired(now)):
            table.popitem(last=False)
        table[key] = fresh  # (a new key goes to the most recent end)
        return fresh

    async def aobserve(self, ops: Sequence[Observation], now: float) -> None:
        """Same as `observe`."""
        self.observe(ops, now)

    def refund(self, key: str, spec: WindowSpec, bucket: int, cost: int) -> None:
        """Give back `cost` charged to `key` in `bucket`."""
        with self._lock:
            w = self._windows.get(key)
            if w is not None:
                refund(w, bucket, cost)

    def reset(self) -> None:
        """Forget everything: windows, `once` markers, strikes and bans (an app's test
        suite, between tests). Tables are emptied in place (`local_bans` is shared)."""
        with self._lock:
            self._windows.clear()
            self._seen.clear()
            self._strikes.clear()
            self._bans.clear()
            self._spills.clear()
            self._tallies.clear()
            self._runs.clear()
            self._objects.clear()

    # -- introspection (tests, report) -----------------------------------------------
    def __len__(self) -> int:
        return len(self._windows)
