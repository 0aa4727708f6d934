"""Thresholds learned from the app's own population, with floors.

Each `Population` keeps, for one route (or one detector), the latest value seen for each
principal in a bounded LRU table (one entry per principal: an attacker is one sample
however hard it pushes; the values themselves sit in a flat array of doubles, so numpy
reads them in one copy), and recomputes a high percentile of them with numpy every
`_EVERY` updates. The threshold is the floor until `min_principals` have been seen, then
`max(floor, min(percentile * factor, 8 * median, ceiling))`. Values are learned only up
to half the current threshold. Sock-puppet principals doing what an attacker does
therefore cannot lift the bar round after round: they are a minority, so they do not move
the median, and their values are capped.
"""

from __future__ import annotations

import math
from array import array
from collections import OrderedDict
from typing import Any

_KEEP = 4096  # principals remembered per population
_EVERY = 256  # updates between recomputations
_POPULATIONS_MAX = 1024  # populations per detector (route templates are code-defined)


class Population:
    """The latest value per principal, and the threshold learned from them."""

    __slots__ = (
        "_pending",
        "_slots",
        "_values",
        "ceiling",
        "factor",
        "floor",
        "learned",
        "min_principals",
        "percentile",
        "threshold",
        "warmup_floor",
    )

    def __init__(
        self,
        warmup_floor: float,
        floor: float,
        percentile: float,
        factor: float,
        min_principals: int,
        ceiling: float = float("inf"),
    ) -> None:
        self.warmup_floor = warmup_floor
        self.ceiling = ceiling
        self.floor = floor
        self.percentile = percentile
        self.factor = factor
        self.min_principals = min_principals
        self.threshold = warmup_floor
        self.learned: float | None = None  # the percentile, once enough principals
        # principal -> its index in `_values` (LRU order); an evicted principal's index
        # is reused by the newcomer
        self._slots: OrderedDict[str, int] = OrderedDict()
        self._values = array("d")
        self._pending = 0

    def update(self, principal: str, value: float) -> float:
        """Record `principal`'s current value; the threshold to compare it with."""
        slots = self._slots
        values = self._values
        # learned only up to half the current threshold: a principal above it is what
        # the detector looks for, not what it learns from (sock puppets that read just
        # under the bar cannot raise it round after round)
        half = self.threshold / 2
        if half < value:  # (min(value, half), without the call)
            value = half
        slot = slots.get(principal)
        if slot is not None:
            if values[slot] == value:
                return self.threshold  # (a repeat: nothing new to learn)
            slots.move_to_end(principal)
            values[slot] = value
        else:
            if len(slots) >= _KEEP:
                slot = slots.popitem(last=False)[1]
                values[slot] = value
            else:
                slot = len(values)
                values.append(value)
            slots[principal] = slot
        self._pending += 1
        if self._pending >= _EVERY or (self.learned is None and len(slots) == self.min_principals):
            self._recompute()
        return self.threshold

    def _recompute(self) -> None:
        self._pending = 0
        if len(self._slots) < self.min_principals:
            return
        import numpy as np  # lazily: only apps with enough traffic pay its import

        values = np.array(self._values, float)  # (a copy: the array may grow later)
        high, median = percentiles(values, (self.percentile, 50.0))
        self.learned = high
        # a high percentile times the factor, but never more than 8 medians: a minority
        # of principals (sock puppets) cannot move the median
        learned = min(self.learned * self.factor, float(median) * 8, self.ceiling)
        self.threshold = max(self.floor, learned)


def percentiles(values: Any, qs: tuple[float, ...]) -> list[float]:
    """`np.percentile(values, qs)` with its default ("linear") method, bit for bit, in one
    `np.partition` of `values` (a 1-d float array, reordered in place): the same
    arithmetic without the general function's Python layers (its cost dominated the
    recomputation). NaN values are left to `np.percentile` itself."""
    import numpy as np

    n = len(values)
    spots = []
    for q in qs:
        virtual = (n - 1) * (q / 100)
        low = math.floor(virtual)
        if virtual >= n - 1:
            spots.append((n - 1, n - 1, 0.0))
        else:
            spots.append((low, low + 1, virtual - low))
    values.partition(sorted({n - 1, *(i for s in spots for i in s[:2])}))
    if values[n - 1] != values[n - 1]:  # a NaN (sorted last)
        return [float(v) for v in np.percentile(values, qs)]
    found = []
    for low, high, t in spots:
        a = float(values[low])
        b = float(values[high])
        diff = b - a
        found.append(b - diff * (1 - t) if t >= 0.5 else a + diff * t)
    return found


class Populations:
    """One `Population` per key (a route template), bounded."""

    def __init__(
        self,
        warmup_floor: float,
        floor: float,
        percentile: float,
        factor: float,
        min_principals: int,
        ceiling: float = float("inf"),
    ) -> None:
        self._args = (warmup_floor, floor, percentile, factor, min_principals, ceiling)
        self._by_key: dict[str, Population] = {}

    def get(self, key: str) -> Population:
        """The population of `key`."""
        found = self._by_key.get(key)
        if found is None:
            if len(self._by_key) >= _POPULATIONS_MAX:
                self._by_key.clear()
            found = self._by_key[key] = Population(*self._args)
        return found
