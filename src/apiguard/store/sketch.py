"""The detectors' in-process state: sliding counts, distinct-item sketches, stride runs.

`Generations` keeps two half-window generations. A plain count weighs the previous
generation by how much of it is still inside the window (the sliding-window estimate);
a distinct count is a linear-counting estimate over the union of both generations'
bitmaps (1,024 slots each: exact in expectation for small counts, within a few percent up
to about 3,000 items, a fixed 1 KiB per generation whatever the number of items). Items
themselves are never kept.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from apiguard.store.base import Objects

BITS = 1024
_MASK = BITS - 1
_SATURATED = BITS * math.log(BITS)  # what a full bitmap stands for, at least
# estimate by number of bits set (one log per distinct count, computed once)
_ESTIMATES = tuple(
    -BITS * math.log((BITS - ones) / BITS) if ones < BITS else _SATURATED
    for ones in range(BITS + 1)
)
ESTIMATES = _ESTIMATES  # (public: a store reading a record's count inline)


_CLEAR = bytearray(BITS // 8)  # an empty bitmap (never changed: copied)
# slot numbers as shared objects: a record keeps one of these, never an int of its own
_SLOTS = tuple(range(BITS))
# a window's half, one float object per window for every record over it (windows come
# from the configuration: a handful; cleared past 64 all the same)
_HALVES: dict[float, float] = {}


def generation_start(now: float, half: float) -> float:
    """The start of the generation (`half` seconds long) that contains `now`, on the
    clock's multiples of `half` (an aligned `Tally`; the Redis script computes it alike)."""
    return math.floor(now / half) * half


def _half(window: float) -> float:
    half = _HALVES.get(window)
    if half is None:
        if len(_HALVES) >= 64:
            _HALVES.clear()
        half = _HALVES[window] = max(window / 2.0, 1e-6)
    return half


def estimate(ones: int) -> float:
    """Linear-counting estimate of the distinct items behind `ones` bits set."""
    return _ESTIMATES[ones]


class Generations:
    """A count or a distinct sketch over a sliding `window`, in two generations.

    The distinct sketch keeps each generation's bitmap in a 128-byte bytearray, and the
    number of slots set in either generation, so an addition never counts bits.
    An item's slot is `hash(item)`, salted per process: an attacker who cannot predict it
    cannot pick items that share slots.
    """

    __slots__ = ("aligned", "bits", "count", "half", "old_bits", "old_count", "start", "union")

    def __init__(self, window: float, now: float, aligned: bool = False) -> None:
        self.half = max(window / 2.0, 1e-6)
        self.aligned = aligned  # (generations start on the clock: `Tally.aligned`)
        self.start = generation_start(now, self.half) if aligned else now
        self.count = 0
        self.old_count = 0
        self.bits: bytearray | None = None
        self.old_bits: bytearray | None = None
        self.union = 0  # slots set in either generation

    def expired(self, now: float) -> bool:
        """Whether both generations have left the window."""
        return now - self.start >= 2 * self.half

    def _roll(self, now: float) -> None:
        """Move to the generation containing `now` (the caller saw it is past this one)."""
        elapsed = now - self.start
        if elapsed >= 2 * self.half:
            self.old_count, self.old_bits = 0, None
            self.start = generation_start(now, self.half) if self.aligned else now
        else:
            self.old_count, self.old_bits = self.count, self.bits
            self.start += self.half
        self.count, self.bits = 0, None
        old = self.old_bits
        self.union = int.from_bytes(old, "big").bit_count() if old is not None else 0

    def add(self, item: str | None, amount: int, now: float) -> float:
        """Count `amount`, or set `item`; the count (or distinct estimate) after it."""
        if now - self.start >= self.half:
            self._roll(now)
        if item is None:
            if amount == 0 and (self.bits is not None or self.old_bits is not None):
                return _ESTIMATES[self.union]  # a read of a distinct sketch
            self.count += amount
            return self.count + self.old_count * (1.0 - (now - self.start) / self.half)
        bits = self.bits
        if bits is None:
            bits = self.bits = _CLEAR[:]  # (a copy: quicker than bytearray(BITS // 8))
        i = hash(item) & _MASK
        byte, bit = i >> 3, 1 << (i & 7)
        if not bits[byte] & bit:
            bits[byte] |= bit
            old = self.old_bits
            if old is None or not old[byte] & bit:
                self.union += 1
        return _ESTIMATES[self.union]


RUN_GAPS = 8  # off-run ids a run outlasts between two of its steps (a walker's own reads)
RUN_AGES = 30  # (a held run's age stops there: its weight is nothing long before)


class Stride:
    """The run of equal steps between successive values, forgotten after `window`.

    Values off the run between two of its steps neither extend nor break it (a walker
    mixing in reads of its own objects): the run goes on from its own last value
    (`anchor`), until `RUN_GAPS` values off it in a row, or two equal steps among them
    (a walk of their own), start a new run. The run a new one replaced is held (`h_`:
    its last value, stride and length) and goes on, the two swapping, when a value
    continues it where it left off: a walker reading a run of its own objects every few
    steps no longer restarts its walk (s24 F10: three of its own consecutive ids every 12
    steps let it read 57 foreign objects instead of 16). A replaced run takes the held
    one's place unless shorter than its length halved once per run replaced since it was
    held (`h_age`): a few short runs of the walker's own do not push a walk out, nor does
    a long run the walker left (a skipped id) hold the place for ever.
    (A step of several strides is off the run: a person's own ids a few apart, read in
    order, are no walk.)"""

    __slots__ = (
        "anchor",
        "h_age",
        "h_anchor",
        "h_length",
        "h_stride",
        "last",
        "length",
        "misses",
        "off",
        "stride",
        "touched",
        "window",
    )

    def __init__(self, window: float, now: float) -> None:
        self.window = window
        self.touched = now
        self.last: int | None = None
        self.anchor = 0
        self.stride = 0
        self.length = 0
        self.misses = 0  # values off the run since its last step
        self.off = 0  # the step to the last of them
        self.h_anchor = self.h_stride = self.h_length = 0  # the held run (0: none)
        self.h_age = 0  # runs replaced since it was held (each halves its weight)

    def expired(self, now: float) -> bool:
        """Whether the run was last extended more than `window` ago."""
        return now - self.touched >= self.window

    def step(self, value: int, now: float) -> tuple[int, int]:
        """Record `value`: (run length, the run's stride if this step extended or began
        it, else 0)."""
        self.touched = now
        last, self.last = self.last, value
        if last is None:
            self.anchor = value
            return 0, 0
        if value == last or value == self.anchor:
            return self.length, 0  # a repeat neither extends nor breaks a walk
        stride = self.stride
        step = value - last
        if stride:
            if value - self.anchor == stride:
                self.length += 1
                self.anchor, self.misses, self.off = value, 0, 0
                return self.length, stride
            held = self.h_stride
            if self.h_length and value - self.h_anchor == held:  # the held run goes on
                length = self.h_length + 1
                self.h_anchor, self.h_stride, self.h_length = self.anchor, stride, self.length
                self.h_age = 0
                self.stride, self.length, self.anchor, self.misses, self.off = (
                    held,
                    length,
                    value,
                    0,
                    0,
                )
                return length, held
            if self.misses and step == self.off:  # two equal steps off the run
                if self.length >= self.h_length >> self.h_age:  # (see the class)
                    self.h_anchor, self.h_stride, self.h_length = self.anchor, stride, self.length
                    self.h_age = 0
                elif self.h_age < RUN_AGES:
                    self.h_age += 1
                self.stride, self.length, self.anchor, self.misses, self.off = step, 2, value, 0, 0
                return 2, step
            if self.misses < RUN_GAPS:
                self.misses += 1  # off the run: outlasted
                self.off = step
                return self.length, 0
            if self.length >= self.h_length >> self.h_age:
                self.h_anchor, self.h_stride, self.h_length = self.anchor, stride, self.length
                self.h_age = 0
            elif self.h_age < RUN_AGES:
                self.h_age += 1
        self.stride, self.length, self.anchor, self.misses, self.off = step, 1, value, 0, 0
        return 1, step


class Trail:
    """BOLA's record of one (principal, route) in one entry: the distinct objects (a
    two-generation linear-counting sketch, as `Generations` keeps it), the distinct
    objects answered with an error (a `Generations`, from the first error on), and the
    run of integer ids (`Stride`'s, forgotten `window` after the last id). Each part
    gives exactly what its own `Generations` or `Stride` entry would.

    Compact, since there is one per principal and route: a generation that has one slot
    set keeps it as an int, and gets its bitmap at its second slot (most principals
    touch one or a few objects on a route)."""

    __slots__ = (
        "anchor",
        "bits",
        "errors",
        "h_age",
        "h_anchor",
        "h_length",
        "h_stride",
        "half",
        "last",
        "length",
        "misses",
        "moved",
        "off",
        "old_bits",
        "old_one",
        "one",
        "start",
        "stride",
        "touched",
        "union",
        "window",
    )

    def __init__(self, window: float, now: float) -> None:
        self.half = _half(window)  # (as `Generations`)
        self.window = window
        self.start = now
        # the current generation's slots: its bitmap, or (while it has none) its one
        # slot set (-1: none); the same for the previous generation
        self.bits: bytearray | None = None
        self.one = -1
        self.old_bits: bytearray | None = None
        self.old_one = -1
        self.union = 0  # slots set in either generation
        self.errors: Generations | None = None
        self.touched = now
        self.last: int | None = None
        self.anchor = 0
        self.stride = 0
        self.length = 0
        self.misses = 0
        self.off = 0
        self.h_anchor = self.h_stride = self.h_length = self.h_age = 0  # (`Stride`'s)
        self.moved = 0  # the last step's stride (0: a first id, a repeat, off the run)

    def expired(self, now: float) -> bool:
        """Whether every part has left the window (the entry holds nothing that counts)."""
        return (
            now - self.start >= 2 * self.half
            and (self.last is None or now - self.touched >= self.window)
            and (self.errors is None or self.errors.expired(now))
        )

    def _roll(self, now: float) -> None:
        """Move to the generation containing `now` (`Generations._roll`)."""
        if now - self.start >= 2 * self.half:
            self.old_bits, self.old_one = None, -1
            self.start = now
        else:
            self.old_bits, self.old_one = self.bits, self.one
            self.start += self.half
        self.bits, self.one = None, -1
        old = self.old_bits
        if old is not None:
            self.union = int.from_bytes(old, "big").bit_count()
        else:
            self.union = 1 if self.old_one >= 0 else 0

    @classmethod
    def resumed(cls, first: FirstTouch) -> Trail:
        """The record `first` stands for (one object, no error: see `first_touch`)."""
        start, one, last, window = first
        trail = cls(window, start)
        trail.one = one
        trail.union = 1
        trail.last = last
        if last is not None:
            trail.anchor = last
        return trail

    def first(self, op: Objects, now: float) -> None:
        """`observe` for the first `op` of a record just made at `now` (nothing to roll,
        nothing to compare: its results are those of one object)."""
        i = hash(op.item) & _MASK
        self.one = _SLOTS[i]
        self.union = 1
        op.count = _ESTIMATES[1]
        if op.error:
            errors = self.errors = Generations(self.window, now)
            op.errors = errors.add(op.item, 1, now)
        if op.value is not None:
            self.last = self.anchor = op.value  # (`touched` is `now`; length, stride 0)

    def observe(self, op: Objects, now: float) -> None:
        """Run `op` on this record: its results are what its `Tally` and `Run` parts
        would get from their own `Generations` and `Stride` entries."""
        value = op.value
        length = self.step(op.item, value, now)
        op.count = _ESTIMATES[self.union]
        if op.error:
            errors = self.errors
            if errors is None:
                errors = self.errors = Generations(self.window, now)
            op.errors = errors.add(op.item, 1, now)
        if value is not None:
            op.length, op.stride = length, self.moved

    def step(self, item: str, value: int | None, now: float) -> int:
        """Count `item` (an object touched at `now`, its integer id `value` or None) in
        the distinct sketch and the run; the run's length (0: no id, or none before it).
        `moved` is then the stride of this step (0: a first id, or a repeat)."""
        if now - self.start >= self.half:
            self._roll(now)
        i = hash(item) & _MASK  # (the slot `Generations.add` sets)
        bits = self.bits
        new = True
        if bits is None:
            one = self.one
            if one < 0:
                self.one = _SLOTS[i]
            elif one == i:
                new = False
            else:  # a second slot: the generation gets its bitmap
                bits = self.bits = _CLEAR[:]
                bits[one >> 3] |= 1 << (one & 7)
                bits[i >> 3] |= 1 << (i & 7)
                self.one = -1
        else:
            byte, bit = i >> 3, 1 << (i & 7)
            if bits[byte] & bit:
                new = False
            else:
                bits[byte] |= bit
        if new:
            old = self.old_bits
            if old is None:
                if self.old_one != i:
                    self.union += 1
            elif not old[i >> 3] & 1 << (i & 7):
                self.union += 1
        if value is None:
            return 0
        last = self.last
        if last is not None and now - self.touched >= self.window:
            last = None  # (forgotten: a fresh run)
            self.stride = self.length = self.h_length = 0
        self.touched = now
        self.last = value
        # (`Stride.step`, inlined: every object named by an integer id comes here)
        if last is None:
            self.anchor, self.misses, self.off = value, 0, 0
            self.moved = 0
            return 0
        if value == last or value == self.anchor:  # a repeat neither extends nor breaks
            self.moved = 0
            return self.length
        stride = self.stride
        step = value - last
        if stride:
            if value - self.anchor == stride:
                self.length += 1
                self.anchor, self.misses, self.off = value, 0, 0
                self.moved = stride
                return self.length
            held = self.h_stride
            if self.h_length and value - self.h_anchor == held:  # the held run goes on
                length = self.h_length + 1
                self.h_anchor, self.h_stride, self.h_length = self.anchor, stride, self.length
                self.h_age = 0
                self.stride, self.length, self.anchor, self.misses, self.off = (
                    held,
                    length,
                    value,
                    0,
                    0,
                )
                self.moved = held
                return length
            if self.misses and step == self.off:  # two equal steps off the run
                if self.length >= self.h_length >> self.h_age:  # (see `Stride`)
                    self.h_anchor, self.h_stride, self.h_length = self.anchor, stride, self.length
                    self.h_age = 0
                elif self.h_age < RUN_AGES:
                    self.h_age += 1
                self.stride, self.length, self.anchor, self.misses, self.off = step, 2, value, 0, 0
                self.moved = step
                return 2
            if self.misses < RUN_GAPS:
                self.misses += 1  # off the run: outlasted
                self.off = step
                self.moved = 0
                return self.length
            if self.length >= self.h_length >> self.h_age:
                self.h_anchor, self.h_stride, self.h_length = self.anchor, stride, self.length
                self.h_age = 0
            elif self.h_age < RUN_AGES:
                self.h_age += 1
        self.stride, self.length, self.anchor, self.misses, self.off = step, 1, value, 0, 0
        self.moved = step
        return 1


# A (principal, route) record with one object touched, answered without an error: (when,
# its slot, its integer value or None, the window), kept instead of a `Trail` until the
# second object (most anonymous addresses read one object on a route: a tuple is a third
# of a `Trail`'s memory and cost, and not tracked by the garbage collector)
FirstTouch = tuple[float, int, "int | None", float]


def first_touch(op: Objects, now: float) -> FirstTouch:
    """`Trail(op.window, now).first(op, now)` for an `op` without an error, compact."""
    op.count = _ESTIMATES[1]
    return (now, _SLOTS[hash(op.item) & _MASK], op.value, op.window)


def first_walk(item: str, value: int, window: float, now: float) -> FirstTouch:
    """`first_touch` of an object named by integer id `value`, with no `Objects` made."""
    return (now, _SLOTS[hash(item) & _MASK], value, window)
