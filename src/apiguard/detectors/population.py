"""Thresholds learned from the app's own population, with floors.

Each `Population` keeps, for one route (or one detector), the latest value seen for each
principal in a bounded LRU table (one entry per principal: an attacker is one sample
however hard it pushes), and recomputes a high percentile of them with numpy every
`_EVERY` updates. The threshold is the floor until `min_principals` have been seen, then
`max(floor, min(percentile * factor, 8 * median, ceiling))`. Values are learned only up
to half the current threshold. Sock-puppet principals doing what an attacker does
therefore cannot lift the bar round after round: they are a minority, so they do not move
the median, and their values are capped.
"""

from __future__ import annotations

from collections import OrderedDict

_KEEP = 4096  # principals remembered per population
_EVERY = 256  # updates between recomputations
_POPULATIONS_MAX = 1024  # populations per detector (route templates are code-defined)


class Population:
    """The latest value per principal, and the threshold learned from them."""

    __slots__ = (
        "_pending",
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
        self._values: OrderedDict[str, float] = OrderedDict()
        self._pending = 0

    def update(self, principal: str, value: float) -> float:
        """Record `principal`'s current value; the threshold to compare it with."""
        values = self._values
        # learned only up to half the current threshold: a principal above it is what
        # the detector looks for, not what it learns from (sock puppets that read just
        # under the bar cannot raise it round after round)
        value = min(value, self.threshold / 2)
        known = values.get(principal)
        if known == value:
            return self.threshold  # (a repeat: nothing new to learn)
        if known is not None:
            values.move_to_end(principal)
        elif len(values) >= _KEEP:
            values.popitem(last=False)
        values[principal] = value
        self._pending += 1
        if self._pending >= _EVERY or (self.learned is None and len(values) == self.min_principals):
            self._recompute()
        return self.threshold

    def _recompute(self) -> None:
        self._pending = 0
        if len(self._values) < self.min_principals:
            return
        import numpy as np  # lazily: only apps with enough traffic pay its import

        values = np.fromiter(self._values.values(), float)
        high, median = np.percentile(values, (self.percentile, 50.0))
        self.learned = float(high)
        # a high percentile times the factor, but never more than 8 medians: a minority
        # of principals (sock puppets) cannot move the median
        learned = min(self.learned * self.factor, float(median) * 8, self.ceiling)
        self.threshold = max(self.floor, learned)


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
