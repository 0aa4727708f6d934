"""The embedded in-process store: plain dict work under one lock, every table bounded."""

from __future__ import annotations

import threading

from cachetools import LRUCache

from apiguard.config import BanConfig
from apiguard.store.base import Ban, Batch, BatchResult
from apiguard.window import BucketWindow, WindowSpec, refund, try_hit


class _Strikes:
    __slots__ = ("last_ban", "level", "window")

    def __init__(self, buckets: int) -> None:
        self.window = BucketWindow(buckets)
        self.level = 0
        self.last_ban = float("-inf")


class _Markers(LRUCache[str, tuple[str, int]]):
    """`once` markers -> (window key, bucket) of the unit they were charged.

    When a marker is evicted its unit is given back, so a window never counts a marker
    that is no longer remembered (the key would otherwise be counted twice when seen again).
    """

    def __init__(self, maxsize: int, windows: LRUCache[str, BucketWindow]) -> None:
        super().__init__(maxsize=maxsize)
        self._windows = windows

    def popitem(self) -> tuple[str, tuple[str, int]]:
        """Evict the least recently used marker and refund its unit."""
        key, (window_key, bucket) = super().popitem()
        w = self._windows.get(window_key)
        if w is not None:
            refund(w, bucket, 1)
        return key, (window_key, bucket)


class MemoryStore:
    """Windows, strikes and bans for one process.

    Windows and strike records live in LRU caches of `max_keys` entries (cachetools): an
    idle window is equivalent to an empty one, so the least recently used are dropped
    first. Active bans are capped at `max_keys` too; expired bans are purged before any
    live one is dropped.
    """

    local = True

    def __init__(self, max_keys: int = 200_000, strike_buckets: int = 10) -> None:
        self.max_keys = max_keys
        self._windows: LRUCache[str, BucketWindow] = LRUCache(maxsize=max_keys)
        self._strikes: LRUCache[str, _Strikes] = LRUCache(maxsize=max_keys)
        self._seen = _Markers(max_keys, self._windows)
        self._bans: dict[str, Ban] = {}
        self._strike_buckets = strike_buckets
        self._lock = threading.Lock()

    # -- the batch -------------------------------------------------------------------
    def execute(self, batch: Batch, now: float, bans: BanConfig) -> BatchResult:
        """Run `batch` atomically (semantics in `apiguard.store.base`)."""
        with self._lock:
            if self._bans:
                for key in batch.ban_keys:
                    ban = self._bans.get(key)
                    if ban is not None:
                        if ban.until > now:
                            return BatchResult(False, [], ban)
                        del self._bans[key]
            windows = self._windows
            hits = batch.hits
            charged: list[tuple[BucketWindow, int]] | None = None
            marks: list[tuple[str, str, int]] = []
            refused_subject: str | None = None
            refused = False
            for hit in hits:
                spec = hit.spec
                try:
                    w = windows[hit.key]  # one LRU lookup (and touch) per hit
                except KeyError:
                    w = windows[hit.key] = BucketWindow(spec.buckets)
                index = int(now // spec.width)
                if index > w.head:
                    w.advance(index)
                head = w.head
                total = w.total
                cost = hit.cost
                if hit.once is not None and self._seen.get(hit.once) is not None:
                    cost = 0  # seen before (and touched, so markers in use stay)
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
                    self._seen[mark] = (window_key, bucket)
                return BatchResult(True, hits)
            for w, cost in charged or ():
                w.counts[w.head % len(w.counts)] -= cost
                w.total -= cost
            for hit in hits:
                if hit.fits and hit.consume and hit.cost:  # report the rolled-back state
                    w = windows[hit.key]
                    hit.remaining = hit.spec.limit - w.total
                    hit.reset = w.next_release(hit.spec, now)
            new_ban = None
            if refused_subject is not None and bans.enabled:
                new_ban = self._strike(refused_subject, now, bans)
            return BatchResult(False, hits, new_ban, new_ban is not None)

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

    # -- introspection (tests, report) -----------------------------------------------
    def __len__(self) -> int:
        return len(self._windows)
