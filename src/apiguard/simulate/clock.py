"""A clock that only moves when told to: simulated hours in milliseconds of real time."""

from __future__ import annotations


class FakeClock:
    """Seconds as a float; pass it as `Guard(clock=...)` and move it with `advance`."""

    __slots__ = ("_now",)

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)

    def __call__(self) -> float:
        return self._now

    def advance(self, dt: float) -> None:
        """Move forward by `dt` seconds (time never goes back)."""
        if dt < 0:
            raise ValueError(f"a clock cannot go back ({dt} s)")
        self._now += dt

    def advance_to(self, t: float) -> None:
        """Move forward to `t`; a `t` in the past leaves the clock where it is."""
        if t > self._now:
            self._now = t
