"""A count's usual level, learned in process from whole windows of the clock.

Site-wide signals (the distinct paths no route serves, the young accounts reading many
objects) are judged against their own usual level: a bar of `over` times the level
plus `plus`, and never below `base`. The level is learned from the highest count of each
whole window of the clock (capped at the bar in force when it ends): the higher of the
lower medians of the last `SAMPLES` and of the last `RECENT` windows. A burst in fewer
than half of them teaches nothing (one above the bar raises the level to that bar at
most), while steady background and a morning's rise become the level. Until `FIRST`
windows were seen it is the lowest of those under `base` (a scan in the first hours
teaches nothing); the process's first window is a part of one and never a sample.
"""

from __future__ import annotations

from collections import deque
from statistics import median_low

SAMPLES = 8
RECENT = 4
FIRST = 3


class UsualLevel:
    """The usual level of a count per whole window of the clock, and the bar over it."""

    __slots__ = (
        "_bucket",
        "_peak",
        "_samples",
        "_whole",
        "base",
        "cap",
        "gaps",
        "level",
        "over",
        "plus",
        "share",
    )

    def __init__(
        self,
        base: float,
        over: float,
        plus: float,
        cap: float | None = None,
        gaps: bool = False,
        share: float = 1.0,
    ) -> None:
        self.base = base
        self.over = over
        self.plus = plus
        self.cap = cap  # (the level never above it)
        # whether whole windows with no call to `learn` were quiet (count 0): a count
        # learned where every event is seen; not where it is seen only when it happens
        self.gaps = gaps
        # a window's sample is at most this share of the bar in force when it ends: with
        # 1, a count held just under the bar for half the recent windows lifts the bar to
        # `over` times itself; with 0.5, by half of `plus` at most
        self.share = share
        self.level: float | None = None  # (None: not learned yet)
        self._samples: deque[float] = deque(maxlen=SAMPLES)
        self._peak = 0.0
        self._bucket: int | None = None  # the clock's window being seen (None: none yet)
        self._whole = False  # (whether it was seen from its start)

    def bar(self) -> float:
        """The count from which the signal fires: `over` times the level plus `plus`,
        never below `base`."""
        level = self.level
        if level is None:
            return self.base
        return max(self.base, level * self.over + self.plus)

    def spoil(self) -> None:
        """The clock's current window is no sample (the signal fired in it: what it
        counts is the attack's, or what a response to it left)."""
        self._whole = False

    def learn(self, count: float, bucket: int) -> None:
        """Keep `count`, the count of the clock's window `bucket` so far; once a later
        window begins, learn the level from the recent whole windows'."""
        current = self._bucket
        if current is None:
            self._bucket = bucket
        elif bucket != current:
            self._bucket = bucket
            whole, self._whole = self._whole, True
            peak, self._peak = self._peak, 0.0
            if whole:  # (else the process began within it, or it was spoilt)
                self._teach(min(peak, self.bar() * self.share))
            if self.gaps and bucket > current:  # (quiet windows in between)
                for _ in range(min(bucket - current - 1, SAMPLES)):
                    self._teach(0.0)
        if count > self._peak:
            self._peak = count

    def _teach(self, sample: float) -> None:
        samples = self._samples
        samples.append(sample)
        if len(samples) >= FIRST:
            recent = list(samples)[-RECENT:]
            level: float | None = float(max(median_low(samples), median_low(recent)))
        else:  # (a burst in the first windows teaches nothing)
            calm = [sample for sample in samples if sample < self.base]
            level = min(calm) if calm else None
        cap = self.cap
        if cap is not None and level is not None and level > cap:
            level = cap
        self.level = level
