"""Where live windows go when the in-process table is full: a count-min sketch per rate.

A window table bounded at `max_keys` cannot keep an exact window for every subject of a
flood. Dropping a live window would reset that subject's counter (the flood's goal);
refusing subjects without a window would lock out every newcomer while the flood lasts.
Instead the least recently used live window is *spilled*: its per-bucket counts are added
to a count-min sketch of its rate (one per bucket width and count; depth rows of
`columns` cells, each cell a ring of the window's k+1 buckets). When a subject needs a
window again, it starts from the sketch's estimate: for each bucket, the minimum over the
rows of the cells it hashes to. That is
never less than what the subject was charged (the guarantee "at most the limit in every
window" holds), and more only by what colliding subjects were charged: with C columns and
V spilled units per window length, about V / C per row, the minimum of `depth` rows
smaller still. Cells expire with their buckets, like windows do. Hashes are Python's
per-process randomised `hash`, so a client cannot aim collisions at a victim.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from apiguard.window import BucketWindow, WindowSpec

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

DEPTH = 4


class Spill:
    """The count-min sketch of one rule's spilled windows (numpy, off the hot path)."""

    def __init__(self, spec: WindowSpec, columns: int) -> None:
        import numpy as np  # only once a table overflows: numpy stays out of start-up

        self._np = np
        self.width = spec.width
        self.n = spec.buckets + 1
        self.columns = columns
        self.cells: npt.NDArray[np.int64] = np.zeros((self.n, DEPTH, columns), dtype=np.int64)
        self.head = -(1 << 62)
        self.expires = float("-inf")  # nothing in the sketch counts from then on
        self._salts = [int.from_bytes(os.urandom(8), "little") for _ in range(DEPTH)]
        self._rows = np.arange(DEPTH)

    def _columns(self, key: str) -> Any:
        return self._np.array([hash((salt, key)) % self.columns for salt in self._salts])

    def _advance(self, index: int) -> None:
        head = self.head
        if index <= head:
            return
        if index - head >= self.n:
            self.cells[:] = 0
        else:
            for j in range(head + 1, index + 1):
                self.cells[j % self.n] = 0
        self.head = index

    def add(self, key: str, w: BucketWindow) -> None:
        """Fold the counts of `key`'s window into the sketch (less what it was rebuilt with
        from the sketch, which the sketch still holds: a subject spilled again and again is
        not counted again and again)."""
        self._advance(w.head)
        cols = self._columns(key)
        n = self.n
        base_head, base = w.base if w.base is not None else (self.head - n, [])
        first = max(w.head, self.head) - n + 1
        for j in range(first, w.head + 1):
            count = w.counts[j % n]
            if base_head - n < j <= base_head:
                count -= base[j % n]
            if count > 0:
                self.cells[j % n, self._rows, cols] += count
        if w.expires > self.expires:
            self.expires = w.expires

    def window(self, key: str, now: float) -> BucketWindow | None:
        """A window holding at least what `key` was charged while spilled (None: the
        sketch holds nothing for it)."""
        if now >= self.expires:
            return None
        index = int(now // self.width)
        self._advance(index)
        estimate = self.cells[:, self._rows, self._columns(key)].min(axis=1)
        if not estimate.any():
            return None
        w = BucketWindow(self.n - 1)
        w.head = index
        last = None
        for j in range(index - self.n + 1, index + 1):
            count = int(estimate[j % self.n])
            w.counts[j % self.n] = count
            if count:
                w.total += count
                if last is None:
                    w.tail = j
                last = j
        if last is not None:
            w.expires = (last + self.n) * self.width
        w.base = (index, w.counts.copy())
        return w

    def dead(self, now: float) -> bool:
        """Whether nothing in the sketch counts any more."""
        return now >= self.expires
