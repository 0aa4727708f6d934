"""The embedded in-process store: plain dict work under one lock, every table bounded."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from cachetools import LRUCache

from apiguard.config import BanConfig
from apiguard.store.base import Ban, Batch, BatchResult, Op
from apiguard.window import BucketWindow, WindowSpec, refund, try_hit


class _Strikes:
    __slots__ = ("last_ban", "level", "window")

    def __init__(self, buckets: int) -> None:
        self.window = BucketWindow(buckets)
        self.level = 0
        self.last_ban = float("-inf")


class MemoryStore:
    """Windows, strikes and bans for one process.

    Windows and `once` markers live in LRU tables of `max_keys` entries: an idle window is
    equivalent to an empty one, so the least recently used are dropped first, and an
    evicted marker gives its unit back (a window never counts a marker it no longer
    remembers). These two tables are touched on every request, so they are OrderedDicts
    driven by hand (a lookup measured 36 ns against 111 ns for cachetools' LRUCache, and
    `with lock` 165 ns against 75 ns for acquire/release); strike records, touched only on
    refusals, use cachetools' LRUCache. Active bans are capped at `max_keys` too; expired
    bans are purged before any live one is dropped.
    """

    local = True

    def __init__(self, max_keys: int = 200_000, strike_buckets: int = 10) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.max_keys = max_keys
        self._windows: OrderedDict[str, BucketWindow] = OrderedDict()
        self._strikes: LRUCache[str, _Strikes] = LRUCache(maxsize=max_keys)
        # `once` marker -> (window key, bucket) of the unit it was charged
        self._seen: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._bans: dict[str, Ban] = {}
        self.local_bans: Mapping[str, Ban] = self._bans
        self._strike_buckets = strike_buckets
        self._lock = threading.Lock()

    # -- bounded tables ----------------------------------------------------------------
    def _window(self, key: str, buckets: int) -> BucketWindow:
        """The window of `key`, created (evicting the least recently used) or touched."""
        windows = self._windows
        w = windows.get(key)
        if w is None:
            if len(windows) >= self.max_keys:
                windows.popitem(last=False)
            w = windows[key] = BucketWindow(buckets)
        else:
            windows.move_to_end(key)
        return w

    def _seen_before(self, mark: str) -> bool:
        """Whether `mark` is remembered (touching it, so markers in use stay)."""
        seen = self._seen
        if mark in seen:
            seen.move_to_end(mark)
            return True
        return False

    def _remember(self, mark: str, window_key: str, bucket: int) -> None:
        """Remember `mark`; an evicted marker gives its unit back to its window."""
        seen = self._seen
        if len(seen) >= self.max_keys:
            _, (old_key, old_bucket) = seen.popitem(last=False)
            w = self._windows.get(old_key)
            if w is not None:
                refund(w, old_bucket, 1)
        seen[mark] = (window_key, bucket)

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
        hits = batch.hits
        charged: list[tuple[BucketWindow, int]] | None = None
        marks: list[tuple[str, str, int]] = []
        refused_subject: str | None = None
        refused = False
        for hit in hits:
            spec = hit.spec
            w = self._window(hit.key, spec.buckets)
            index = int(now // spec.width)
            if index > w.head:
                w.advance(index)
            head = w.head
            total = w.total
            cost = hit.cost
            if hit.once is not None and self._seen_before(hit.once):
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
                    if charged is None:
                        charged = []
                    charged.append((w, cost))
                    if hit.once is not None:
                        marks.append((hit.once, hit.key, head))
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
            for mark, window_key, bucket in marks:
                self._remember(mark, window_key, bucket)
            return BatchResult(True, hits)
        for w, cost in charged or ():
            w.counts[w.head % len(w.counts)] -= cost
            w.total -= cost
        for hit in hits:
            if hit.fits and hit.consume and hit.cost:  # report the rolled-back state
                rolled = self._windows.get(hit.key)
                if rolled is None:  # evicted by this very batch (a store of a few keys)
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
        caller then runs `execute`, which reports, refuses and strikes).

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
            for key, spec, cost, once, advertised, _ in ops:
                w = windows.get(key)
                if w is None:
                    w = self._window(key, spec.buckets)
                else:
                    touch(key)
                if spec.width != width:  # rules usually share their bucket width
                    width = spec.width
                    index = int(now // width)
                if index > w.head:
                    w.advance(index)
                if once is not None and self._seen_before(once):
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
            seen = self._seen
            for key, _, cost, once, _, _ in ops:
                if once is not None and cost and once not in seen:
                    charged = windows.get(key)
                    if charged is not None:  # (None: evicted by this very batch)
                        self._remember(once, key, charged.head)
            return out, best
        finally:
            self._lock.release()

    def _take_back(self, ops: Sequence[Op]) -> None:
        """Undo what `admit` charged for `ops` (all in the current bucket of each window)."""
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
        rec = self._strikes.get(subject)
        if rec is None:
            rec = _Strikes(self._strike_buckets)
            self._strikes[subject] = rec
        spec = WindowSpec(bans.after, bans.within, self._strike_buckets)
        try_hit(rec.window, spec, now, 1, consume=True)
        if rec.window.total < bans.after:
            return None
        rec.window = BucketWindow(self._strike_buckets)
        # escalation memory runs from the end of the previous ban
        rec.level = rec.level + 1 if now - rec.last_ban <= bans.memory else 1
        duration = min(bans.base * bans.factor ** (rec.level - 1), bans.max)
        rec.last_ban = now + duration
        ban = Ban(subject, now + duration, rec.level)
        self._put_ban(ban, now)
        return ban

    def impose(self, ban: Ban, now: float) -> None:
        """Record `ban`, keeping a longer one already in place."""
        with self._lock:
            current = self._bans.get(ban.key)
            if current is None or current.until < ban.until:
                self._put_ban(ban, now)

    def _put_ban(self, ban: Ban, now: float) -> None:
        bans = self._bans
        if len(bans) >= self.max_keys and ban.key not in bans:
            for key in [k for k, b in bans.items() if b.until <= now]:
                del bans[key]
            if len(bans) >= self.max_keys:
                del bans[min(bans, key=lambda k: bans[k].until)]
        bans[ban.key] = ban

    def active_ban(self, key: str, now: float) -> Ban | None:
        """The ban on `key` if it is still running."""
        if not self._bans:
            return None
        ban = self._bans.get(key)
        if ban is None or ban.until <= now:
            return None
        return ban

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

    # -- introspection (tests, report) -----------------------------------------------
    def __len__(self) -> int:
        return len(self._windows)
