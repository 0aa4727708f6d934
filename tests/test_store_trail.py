"""The in-process store's BOLA record (`Trail`, one entry per principal and route) gives
exactly what the separate `Tally` and `Run` operations it replaces give: its results, and
its state as the store keeps it."""

from __future__ import annotations

import random

import pytest

from apiguard.store.base import Objects, Run, Tally, expand
from apiguard.store.memory import MemoryStore
from apiguard.store.sketch import Generations, Stride, Trail


def _reference(
    ops: list[tuple[float, str, int | None, bool]], window: float
) -> list[tuple[float, float, int, int]]:
    """What a Tally, a Tally on errors and a Run, each in its own entry, report."""
    distinct: Generations | None = None
    errors: Generations | None = None
    run: Stride | None = None
    out = []
    for now, item, value, error in ops:
        if distinct is None or distinct.expired(now):
            distinct = Generations(window, now)
        count = distinct.add(item, 1, now)
        errs = 0.0
        if error:
            if errors is None or errors.expired(now):
                errors = Generations(window, now)
            errs = errors.add(item, 1, now)
        length = stride = 0
        if value is not None:
            if run is None or run.expired(now):
                run = Stride(window, now)
            length, stride = run.step(value, now)
        out.append((count, errs, length, stride))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_a_trail_is_its_three_entries(seed: int) -> None:
    rng = random.Random(seed)
    window = rng.choice([1.0, 10.0, 600.0])
    now = 1000.0
    ops: list[tuple[float, str, int | None, bool]] = []
    objects = rng.choice([3, 30, 300, 3000])
    value = rng.randrange(100)
    for _ in range(rng.choice([5, 50, 500, 3000])):
        now += rng.choice([0.0, 0.001, window / 7, window / 2, window * 1.5]) * rng.random()
        kind = rng.random()
        if kind < 0.4:
            value += rng.choice([1, 1, 1, 2, -1, 0])  # a walk, with steps aside
            item: int | None = value
        elif kind < 0.8:
            item = rng.randrange(objects)
        else:
            item = None  # a text id: no run
        text = f"/r/{{id}}\nid={item if item is not None else rng.randrange(objects)}x"
        ops.append((now, text, item, rng.random() < 0.2))
    trail: Trail | None = None
    got = []
    for now, text, item, error in ops:
        if trail is None:
            trail = Trail(window, now)
        op = Objects("k", window, text, item, error)
        trail.observe(op, now)
        got.append((op.count, op.errors, op.length, op.stride))
    assert got == _reference(ops, window)


@pytest.mark.parametrize("seed", range(12))
def test_a_trail_holds_and_resumes_runs_as_its_stride_does(seed: int) -> None:
    """A walk with runs of the walker's own ids between its steps (s24 F10): the held
    run, swapped and replaced, is the same in the record as in its `Stride`."""
    rng = random.Random(seed)
    window = rng.choice([10.0, 600.0])
    now, walk = 1000.0, 100
    ops: list[tuple[float, str, int | None, bool]] = []
    for _ in range(300):
        now += rng.choice([0.0, 0.5, 2.0, window * 1.5 if rng.random() < 0.02 else 1.0])
        walk += 1 if rng.random() < 0.95 else 2
        ops.append((now, f"/r/{{id}}\nid={walk}x", walk, rng.random() < 0.1))
        if rng.random() < 0.4:
            start = rng.choice([500, 600, rng.randrange(1_000)])
            for k in range(rng.randrange(1, 12)):
                value = start + k * rng.choice([1, 1, 5])
                ops.append((now, f"/r/{{id}}\nid={value}x", value, False))
    trail = Trail(window, ops[0][0])
    got = []
    for now, text, item, error in ops:
        op = Objects("k", window, text, item, error)
        trail.observe(op, now)
        got.append((op.count, op.errors, op.length, op.stride))
    assert got == _reference(ops, window)
    assert max(length for _, _, length, _ in got) > 15  # (the walk, held between)


def test_the_store_runs_objects_or_hands_over_their_parts() -> None:
    store = MemoryStore()
    assert store.runs_objects
    now = 50.0
    for i in range(20):
        op = Objects("bola:p:/r/{id}", 600.0, f"/r/{{id}}\nid={i}", i, i % 3 == 0)
        store.observe([op], now + i)
        parts, combined = expand([Objects("x:" + op.key, 600.0, op.item, i, i % 3 == 0)])
        assert combined and all(isinstance(p, Tally | Run) for p in parts)
        store.observe(parts, now + i)
        combined[0].collect()
        twin = combined[0]
        assert (op.count, op.errors, op.length, op.stride) == (
            twin.count,
            twin.errors,
            twin.length,
            twin.stride,
        )
    assert op.length == 19 and op.stride == 1  # (20 ids: 19 steps of 1)
    assert len(store._objects) == 1  # one entry for the (principal, route)


@pytest.mark.parametrize("seed", range(20))
def test_a_walk_counted_without_objects_is_the_same_record(seed: int) -> None:
    """BOLA's hot path (`run_walk`: an integer id answered without an error, no `Objects`
    made) leaves the record as `run_objects` would, and reports the same distinct count,
    run length and stride."""
    rng = random.Random(seed)
    window = rng.choice([1.0, 10.0, 600.0])
    fast, slow = MemoryStore(max_keys=3), MemoryStore(max_keys=3)
    now, value = 1000.0, rng.randrange(100)
    for _ in range(rng.choice([20, 300, 2000])):
        now += rng.choice([0.0, 0.001, window / 7, window / 2, window * 1.5]) * rng.random()
        key = f"bola:p{rng.randrange(4)}:/r/{{id}}"  # (4 keys in 3 slots: evictions too)
        value += rng.choice([1, 1, 1, 2, -1, 0, 50])
        text = f"/r/{{id}}\nid={value}"
        error = rng.random() < 0.15
        twin = Objects(key, window, text, value, error)
        slow.run_objects(twin, now)
        if error:  # (an error answer always takes the general path)
            op = Objects(key, window, text, value, error)
            fast.run_objects(op, now)
            continue
        got = fast.run_walk(key, window, text, value, now)
        assert got == (twin.count, twin.length, twin.stride)
    assert list(fast._objects) == list(slow._objects)
