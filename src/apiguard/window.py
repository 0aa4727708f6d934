"""The bucketed sliding window: exact against any request schedule, bounded memory.

A window of length W is split into k buckets of width b = W/k; a key keeps k+1 counters
(one ring) and their running total. A request at time t may be admitted only if the
requests already admitted in every bucket that touches (t - W, t], i.e. the buckets
floor(t/b)-k .. floor(t/b), plus its own cost, stay within the limit L.

Guarantee: for every interval [s, s + W) whatever the schedule, admitted cost <= L.
Proof: let t be the last admission inside the interval; every other admission inside it
lies in (t - W, t], hence in buckets counted when t was admitted, so their sum plus t's
cost was <= L. Memory is k+1 integers per key whatever L is. (Up to the rounding of clock
values: where W/k is not exact in binary, two times closer than W by less than an ulp can
land k+1 buckets apart; any interval shorter than W by more than that is exact.)

Price for an honest client: an admitted request stays counted for between W and W + b
(never less than the window, at most one bucket longer), so a client that spends its
whole budget may wait up to W + W/k before it is back at full budget, and a perfectly
steady client is held to at least L * k / (k + 1) per window (about 91% with k = 10).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """Limit `limit` cost units per `window` seconds, counted in `buckets` sub-windows."""

    limit: int
    window: float
    buckets: int = 10
    width: float = field(init=False)

    def __post_init__(self) -> None:
        if self.limit < 1 or self.window <= 0 or self.buckets < 1:
            raise ValueError("limit >= 1, window > 0 and buckets >= 1 are required")
        object.__setattr__(self, "width", self.window / self.buckets)


class BucketWindow:
    """Counters of one key: a ring of k+1 buckets, the newest bucket index, and the sum.

    `expires`: the time from which no unit charged so far counts any more (the end of the
    window of the newest charged bucket): from then on the window equals an empty one, so
    a bounded table may drop it without losing anything.
    """

    __slots__ = ("base", "counts", "expires", "head", "spec", "tail", "total")

    def __init__(self, buckets: int, spec: WindowSpec | None = None) -> None:
        self.counts = [0] * (buckets + 1)
        self.head = -(1 << 62)
        self.tail = self.head  # no counted bucket is older than this index
        self.total = 0
        self.expires = float("-inf")
        self.spec = spec  # set by stores that may spill the window (its bucket width)
        # (head, counts) the window was rebuilt with from a spill sketch: already in the
        # sketch, so a later spill adds only what came after
        self.base: tuple[int, list[int]] | None = None

    def copy(self) -> BucketWindow:
        """An independent window with the same counters."""
        w = BucketWindow.__new__(BucketWindow)
        w.counts = self.counts.copy()
        w.head = self.head
        w.tail = self.tail
        w.total = self.total
        w.expires = self.expires
        w.spec = self.spec
        w.base = self.base
        return w

    def dead(self, now: float) -> bool:
        """Whether the window counts nothing at `now` or later (droppable)."""
        return not self.total or self.expires <= now

    def advance(self, index: int) -> None:
        """Move the newest bucket to `index`, dropping buckets that left the window."""
        head = self.head
        if index <= head:
            return
        counts = self.counts
        n = len(counts)
        if index - head >= n:
            if self.total:
                for i in range(n):
                    counts[i] = 0
                self.total = 0
        else:
            for j in range(head + 1, index + 1):
                slot = j % n
                c = counts[slot]
                if c:
                    self.total -= c
                    counts[slot] = 0
        self.head = index

    def retry_after(self, spec: WindowSpec, now: float, cost: int) -> float:
        """Seconds until a request of `cost` would fit (call after advancing to `now`)."""
        if cost > spec.limit:
            return spec.window
        remaining = self.total
        if remaining + cost <= spec.limit:
            return 0.0
        counts = self.counts
        n = len(counts)
        k = n - 1
        for j in range(self.head - k, self.head + 1):
            remaining -= counts[j % n]
            if remaining + cost <= spec.limit:
                return max(0.0, (j + k + 1) * spec.width - now)
        return max(0.0, (self.head + k + 1) * spec.width - now)  # pragma: no cover

    def next_release(self, spec: WindowSpec, now: float) -> float:
        """Seconds until the oldest counted bucket leaves the window (0 when empty)."""
        if not self.total:
            return 0.0
        counts = self.counts
        n = len(counts)
        k = n - 1
        for j in range(max(self.tail, self.head - k), self.head + 1):
            if counts[j % n]:
                self.tail = j
                return max(0.0, (j + k + 1) * spec.width - now)
        return 0.0  # pragma: no cover - total > 0 implies a non-empty bucket

    def charge(self, cost: int) -> None:
        """Add `cost` to the newest bucket (the caller has advanced and checked the fit)."""
        if not self.total:
            self.tail = self.head
        self.counts[self.head % len(self.counts)] += cost
        self.total += cost


def bucket_index(spec: WindowSpec, now: float) -> int:
    """The absolute index of the bucket holding `now`."""
    return int(now // spec.width)


def try_hit(w: BucketWindow, spec: WindowSpec, now: float, cost: int, consume: bool) -> bool:
    """Advance to `now`; when `cost` fits, charge it (if `consume`) and return True."""
    index = int(now // spec.width)
    if index > w.head:
        w.advance(index)
    if w.total + cost > spec.limit:
        return False
    if consume and cost:
        w.charge(cost)
        w.expires = (w.head + len(w.counts)) * spec.width
    return True


def refund(w: BucketWindow, index: int, cost: int) -> None:
    """Give back `cost` charged in bucket `index`, if that bucket is still counted."""
    n = len(w.counts)
    if index > w.head or index <= w.head - n or cost <= 0:
        return
    slot = index % n
    back = min(cost, w.counts[slot])
    w.counts[slot] -= back
    w.total -= back
