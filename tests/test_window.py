"""The bucketed sliding window (apiguard.window) and the in-memory store's batch semantics.

Property tests drive `MemoryStore.execute` with generated request schedules and check the
guarantees the `apiguard.window` docstring promises:

* exactness: in EVERY interval [s, s + W) the admitted cost is <= limit, whatever the
  schedule (checked for the intervals starting, and ending, at every admitted request);
* the price for an honest client: an admitted request stays counted for at least W and at
  most W + W/k, and a perfectly steady client at limit * k / (k + 1) per window is never
  refused;
* `retry_after` of a refused request is exact;
* memory per key is k + 1 counters whatever the limit.

Schedules built on a dyadic grid (every time, width and window an exact binary fraction)
make float arithmetic exact, so those tests check the mathematical claims with no slack.
Schedules of arbitrary floats are checked exactly too (with `Fraction`), but allow a few
ulps of the clock for rounding; `test_guarantee_holds_at_float_bucket_boundaries` pins
the rounding cases separately.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apiguard.config import BanConfig
from apiguard.store.base import Batch, BatchResult, Hit
from apiguard.store.memory import MemoryStore
from apiguard.window import BucketWindow, WindowSpec, refund, try_hit

NO_BANS = BanConfig(enabled=False)
TICK = 1 / 16  # grid of the dyadic schedules: sums and products stay exact
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def hit(
    store: MemoryStore,
    spec: WindowSpec,
    now: float,
    cost: int = 1,
    key: str = "k",
    *,
    consume: bool = True,
) -> Hit:
    """One single-hit batch; returns its hit with the results filled in.

    (admitted == fits for one enforced hit)"""
    result = store.execute(Batch([Hit(key, spec, cost, consume)]), now, NO_BANS)
    assert result.admitted == result.hits[0].fits
    return result.hits[0]


def run(
    schedule: Iterable[tuple[float, int]], spec: WindowSpec, store: MemoryStore | None = None
) -> list[tuple[float, int]]:
    """Feed a sorted schedule of (time, cost) to one key; return the admitted ones."""
    store = store or MemoryStore()
    return [(t, c) for t, c in schedule if hit(store, spec, t, c).fits]


def worst_interval(admitted: Sequence[tuple[float, int]], window: float, slack: float = 0.0):
    """Largest admitted cost in [s, s + W') (s = each admitted time) and in (e - W', e]
    (e = each admitted time), W' = window - slack, computed exactly with Fractions."""
    w = Fraction(window) - Fraction(slack)
    times = [Fraction(t) for t, _ in admitted]
    prefix = [0]
    for _, c in admitted:
        prefix.append(prefix[-1] + c)
    worst = (0, None)
    for t in times:
        lo, hi = bisect_left(times, t), bisect_left(times, t + w)  # [t, t + W)
        worst = max(worst, (prefix[hi] - prefix[lo], ("start", float(t))), key=lambda x: x[0])
        lo, hi = bisect_right(times, t - w), bisect_right(times, t)  # (t - W, t]
        worst = max(worst, (prefix[hi] - prefix[lo], ("end", float(t))), key=lambda x: x[0])
    return worst


# -- schedule strategies ---------------------------------------------------------------------


@st.composite
def dyadic_case(draw):
    """(spec, schedule) on the exact grid: bursts on bucket and window edges, streams, noise."""
    k = draw(st.integers(2, 20))
    b_ticks = draw(st.integers(1, 24))
    limit = draw(st.integers(1, 12))
    spec = WindowSpec(limit, k * b_ticks * TICK, k)
    assert spec.width == b_ticks * TICK  # the grid is exact
    w_ticks = k * b_ticks
    horizon = 4 * w_ticks
    edges = st.one_of(
        st.integers(0, 4 * k).map(lambda j: j * b_ticks),  # bucket edges
        st.integers(0, 4).map(lambda j: j * w_ticks),  # window edges
    )
    near_edge = st.tuples(edges, st.sampled_from([-1, 0, 0, 1])).map(lambda e: max(0, sum(e)))
    cost = st.integers(1, 3)
    ticks: list[tuple[int, int]] = []
    for kind in draw(st.lists(st.sampled_from(["burst", "stream", "noise"]), max_size=5)):
        if kind == "burst":
            at = draw(near_edge)
            ticks += [(at, draw(cost)) for _ in range(draw(st.integers(1, 2 * limit + 1)))]
        elif kind == "stream":
            start = draw(st.one_of(near_edge, st.integers(0, horizon)))
            period = draw(st.integers(1, 2 * b_ticks + 1))
            n = draw(st.integers(1, 3 * limit + 3))
            c = draw(cost)
            ticks += [(start + i * period, c) for i in range(n)]
        else:
            ticks += draw(st.lists(st.tuples(st.integers(0, horizon), cost), max_size=20))
    schedule = sorted((t * TICK, c) for t, c in ticks)
    return spec, schedule


@st.composite
def float_case(draw):
    """(spec, schedule) with arbitrary float windows and times, including bucket edges."""
    k = draw(st.integers(2, 20))
    window = draw(st.floats(0.01, 5000, allow_nan=False, allow_infinity=False))
    limit = draw(st.integers(1, 12))
    spec = WindowSpec(limit, window, k)
    start = draw(st.floats(0, 1e5, allow_nan=False, allow_infinity=False))
    edge = st.integers(0, 4 * k).map(lambda j: start + j * spec.width)
    nudged = st.tuples(edge, st.sampled_from([-1, 0, 1])).map(
        lambda e: e[0] if e[1] == 0 else math.nextafter(e[0], e[1] * math.inf)
    )
    anywhere = st.floats(0, 4, allow_nan=False).map(lambda u: start + u * window)
    times = draw(st.lists(st.one_of(nudged, anywhere), min_size=1, max_size=80))
    costs = draw(st.lists(st.integers(1, 3), min_size=len(times), max_size=len(times)))
    return spec, sorted(zip(times, costs, strict=True))


# -- exactness -------------------------------------------------------------------------------


@PROPS
@given(dyadic_case())
def test_no_interval_of_length_w_admits_more_than_the_limit(case):
    spec, schedule = case
    admitted = run(schedule, spec)
    total, where = worst_interval(admitted, spec.window)
    assert total <= spec.limit, (total, where, spec)


@PROPS
@given(float_case())
def test_no_interval_admits_more_than_the_limit_with_float_times(case):
    spec, schedule = case
    admitted = run(schedule, spec)
    # bucket edges j * (W / k) are only as exact as a few ulps of the times involved
    rounding = 8 * math.ulp(max(t for t, _ in schedule)) + 1e-12 * spec.window
    total, where = worst_interval(admitted, spec.window, slack=rounding)
    assert total <= spec.limit, (total, where, spec)


@PROPS
@given(dyadic_case(), st.data())
def test_keys_are_independent(case, data):
    """Interleaving two keys in one store changes nothing for either."""
    spec, schedule = case
    owners = data.draw(st.lists(st.booleans(), min_size=len(schedule), max_size=len(schedule)))
    store = MemoryStore()
    together: dict[bool, list[tuple[float, int]]] = {True: [], False: []}
    for (t, c), owner in zip(schedule, owners, strict=True):
        if hit(store, spec, t, c, key=str(owner)).fits:
            together[owner].append((t, c))
    for owner in (True, False):
        alone = [item for item, o in zip(schedule, owners, strict=True) if o is owner]
        assert together[owner] == run(alone, spec)


@pytest.mark.parametrize(
    ("window", "k", "first", "second"),
    [
        (60.0, 13, 4.615384615384614, 64.61538461538461),
        (1.0, 7, 0.14285714285714282, 1.1428571428571428),
        (0.1, 12, 0.024999999999999998, 0.125),
    ],
)
def test_guarantee_holds_at_float_bucket_boundaries(window, k, first, second):
    """At an ulp of a bucket edge where W / k is not exact in binary, the guarantee holds
    for every interval shorter than W by more than float rounding (README: "up to the
    rounding of clock values").

    These pairs are less than W apart only by < 1e-15 s (found by a targeted search):
    `first // width` lands one bucket lower than exact arithmetic says. One nanosecond
    inside the window, the second request must be refused.
    """
    assert Fraction(second) - Fraction(first) < Fraction(window)
    spec = WindowSpec(1, window, k)
    store = MemoryStore()
    assert hit(store, spec, first).fits
    assert not hit(store, spec, second - 1e-9).fits
    # and the sub-ulp pair is the documented rounding gap, nothing wider
    assert Fraction(window) - (Fraction(second) - Fraction(first)) < Fraction(1, 10**12)


# -- classic attacks -------------------------------------------------------------------------


def fixed_window(schedule, limit, window):
    admitted, counts = [], {}
    for t, c in schedule:
        slot = int(t // window)
        if counts.get(slot, 0) + c <= limit:
            counts[slot] = counts.get(slot, 0) + c
            admitted.append((t, c))
    return admitted


def sliding_window_counter(schedule, limit, window):
    """The weighted two-window estimate (prev * (1 - elapsed / W) + current)."""
    admitted, counts = [], {}
    for t, c in schedule:
        slot = int(t // window)
        elapsed = t / window - slot
        estimate = counts.get(slot - 1, 0) * (1 - elapsed) + counts.get(slot, 0)
        if estimate + c <= limit:
            counts[slot] = counts.get(slot, 0) + c
            admitted.append((t, c))
    return admitted


@st.composite
def attack_case(draw):
    k = draw(st.integers(2, 20))
    limit = draw(st.integers(5, 40))
    b_ticks = draw(st.integers(-(-2 * limit // k), -(-2 * limit // k) + 8))  # W >= 2L ticks
    return k, limit, b_ticks, draw(st.integers(0, 3)), draw(st.sampled_from([1, 2]))


@PROPS
@given(attack_case())
def test_boundary_burst_then_steady_attack(case):
    """Burst the whole budget just before a window edge, then stream steadily after it
    (at least L requests per window). Fixed windows admit ~2L in one W-interval and the
    sliding-window counter well over L; the bucketed window must admit <= L in every
    W-interval."""
    k, limit, b_ticks, lead, step = case
    spec = WindowSpec(limit, k * b_ticks * TICK, k)
    edge = 2 * k * b_ticks  # a window edge, in ticks
    burst = [((edge - 1 - lead) * TICK, 1)] * limit
    steady = [((edge + i * step) * TICK, 1) for i in range(0, 4 * k * b_ticks // step)]
    schedule = burst + steady
    # the attack is real against the classic algorithms...
    fixed = fixed_window(schedule, limit, spec.window)
    assert worst_interval(fixed, spec.window)[0] >= 2 * limit - 2
    swc = sliding_window_counter(schedule, limit, spec.window)
    assert worst_interval(swc, spec.window)[0] > limit
    # ...and not against this one
    admitted = run(schedule, spec)
    assert worst_interval(admitted, spec.window)[0] <= limit
    assert sum(c for t, c in admitted if t < edge * TICK) == limit  # the burst itself passed


def test_boundary_burst_attack_concrete():
    """100/minute, 10 buckets: 100 at 59.999 s then one per 0.1 s from 60 s."""
    spec = WindowSpec(100, 60.0, 10)
    schedule = [(59.999, 1)] * 100 + [(60 + i / 10, 1) for i in range(1200)]
    assert worst_interval(fixed_window(schedule, 100, 60.0), 60.0)[0] == 200
    admitted = run(schedule, spec)
    assert worst_interval(admitted, 60.0)[0] <= 100
    # the burst bucket [54, 60) stays counted until 120 s: nothing new before then
    assert [t for t, _ in admitted if 59.999 < t < 120] == []


# -- the honest client -----------------------------------------------------------------------


@PROPS
@given(
    k=st.integers(2, 20),
    limit=st.integers(1, 30),
    scale=st.integers(1, 4),
    phase=st.integers(0, 400),
)
def test_steady_client_at_k_over_k_plus_1_is_never_refused(k, limit, scale, phase):
    """Period W / (L k / (k+1)) = (k+1) W / (k L); on the grid this rate is hit exactly."""
    b = limit * scale * TICK  # bucket width
    spec = WindowSpec(limit, k * b, k)
    period = (k + 1) * scale * TICK  # = (k+1) b / L exactly
    assert Fraction(spec.window) / Fraction(period) == Fraction(limit * k, k + 1)
    store = MemoryStore()
    n = 6 * (k * limit // (k + 1) + 1)  # about six windows
    for i in range(n):
        t = phase * TICK + i * period
        assert hit(store, spec, t).fits, (i, t)


@PROPS
@given(
    k=st.integers(2, 20),
    limit=st.integers(1, 50),
    window=st.floats(1, 10_000),
    start=st.floats(0, 1e5),
)
def test_steady_client_just_under_the_rate_with_float_times(k, limit, window, start):
    spec = WindowSpec(limit, window, k)
    period = window * (k + 1) / (k * limit) * (1 + 1e-6)
    store = MemoryStore()
    for i in range(6 * limit):
        assert hit(store, spec, start + i * period).fits, i


@PROPS
@given(
    k=st.integers(2, 20),
    limit=st.integers(1, 30),
    scale=st.integers(1, 4),
    phase=st.integers(0, 400),
)
def test_steady_client_after_warm_up_burst(k, limit, scale, phase):
    """A client that burst its whole budget is back to the steady rate after W + W/k."""
    b = limit * scale * TICK
    spec = WindowSpec(limit, k * b, k)
    period = (k + 1) * scale * TICK
    store = MemoryStore()
    t0 = phase * TICK
    for _ in range(limit):
        assert hit(store, spec, t0).fits
    assert not hit(store, spec, t0).fits
    start = t0 + spec.window + spec.width
    for i in range(4 * limit):
        assert hit(store, spec, start + i * period).fits, i


def test_steady_client_at_the_full_rate_pays_the_bucket_price():
    """At exactly L per W (what a fixed window allows) the bucketing refuses now and then."""
    spec = WindowSpec(10, 60.0, 10)
    store = MemoryStore()
    refused = sum(not hit(store, spec, 0.5 + i * 6.0).fits for i in range(100))
    assert refused > 0


@PROPS
@given(
    k=st.integers(2, 20),
    b_ticks=st.integers(1, 24),
    limit=st.integers(1, 12),
    t_ticks=st.integers(0, 10_000),
    split=st.booleans(),
)
def test_spent_budget_is_counted_for_at_least_w_and_at_most_w_plus_w_over_k(
    k, b_ticks, limit, t_ticks, split
):
    spec = WindowSpec(limit, k * b_ticks * TICK, k)
    t = t_ticks * TICK
    store = MemoryStore()
    costs = [1] * limit if split else [limit]
    results = [hit(store, spec, t, c) for c in costs]
    assert all(r.fits for r in results)
    release = (t_ticks // b_ticks + k + 1) * b_ticks * TICK  # the bucket of t leaves
    assert t + spec.window < release <= t + spec.window + spec.width
    assert results[-1].reset == release - t
    assert results[-1].remaining == 0
    probes = [t, t + spec.window / 2, t + spec.window - TICK, t + spec.window, release - TICK]
    for p in sorted({max(t, p) for p in probes}):
        r = hit(store, spec, p)
        assert not r.fits, (p, release)
        assert r.retry_after == release - p
    # back at full budget once the bucket has left the window, whatever the limit
    assert hit(store, spec, release, limit).fits


@PROPS
@given(dyadic_case(), st.integers(1, 3), st.integers(0, 40))
def test_retry_after_is_exact_on_the_grid(case, cost, pause):
    spec, schedule = case
    cost = min(cost, spec.limit)
    store = MemoryStore()
    run(schedule, spec, store)
    now = (schedule[-1][0] if schedule else 0.0) + pause * TICK
    for _ in range(spec.limit + 1):  # spend until refused
        first = hit(store, spec, now, cost)
        if not first.fits:
            break
    assert not first.fits
    r = first.retry_after
    assert r > 0
    assert not hit(store, spec, math.nextafter(now + r, -math.inf), cost).fits
    assert hit(store, spec, now + r, cost).fits


@PROPS
@given(float_case(), st.integers(1, 3), st.floats(0, 100))
def test_retry_after_is_exact_up_to_rounding_with_float_times(case, cost, pause):
    spec, schedule = case
    cost = min(cost, spec.limit)
    store = MemoryStore()
    run(schedule, spec, store)
    now = schedule[-1][0] + pause
    for _ in range(spec.limit + 1):
        first = hit(store, spec, now, cost)
        if not first.fits:
            break
    assert not first.fits
    r = first.retry_after
    assert r > 0
    eps = 1e-9 * max(1.0, now, spec.window)
    if r > 2 * eps:
        assert not hit(store, spec, now + r - eps, cost).fits
    assert hit(store, spec, now + r + eps, cost).fits


# -- memory ----------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [10, 10**9])
@pytest.mark.parametrize("buckets", [2, 10, 20])
def test_memory_per_key_is_k_plus_1_counters_whatever_the_limit(limit, buckets):
    spec = WindowSpec(limit, 60.0, buckets)
    store = MemoryStore()
    for i in range(3000):
        hit(store, spec, i * 0.173, 1 + i % 3)
        window = store._windows["k"]
        assert len(window.counts) == buckets + 1
    assert len(store) == 1


# -- refunds ---------------------------------------------------------------------------------


def test_refund_gives_capacity_back_while_the_bucket_is_counted():
    spec = WindowSpec(3, 10.0, 10)  # buckets of 1 s, counted for 10-11 s
    w = BucketWindow(spec.buckets)
    assert try_hit(w, spec, 5.5, 3, consume=True)
    bucket = w.head
    assert not try_hit(w, spec, 9.0, 1, consume=True)
    refund(w, bucket, 2)
    assert w.total == 1
    assert try_hit(w, spec, 9.0, 2, consume=True)
    assert not try_hit(w, spec, 9.0, 1, consume=True)
    refund(w, bucket, 5)  # only what is left in the bucket comes back
    assert w.total == 2


def test_refund_after_the_bucket_left_the_window_is_a_no_op():
    spec = WindowSpec(3, 10.0, 10)
    w = BucketWindow(spec.buckets)
    assert try_hit(w, spec, 5.5, 1, consume=True)
    old = w.head  # bucket 5, released at 16 s
    assert try_hit(w, spec, 16.2, 3, consume=True)  # bucket 16 reuses bucket 5's slot
    assert old % len(w.counts) == w.head % len(w.counts)
    refund(w, old, 1)
    assert w.total == 3
    assert not try_hit(w, spec, 16.3, 1, consume=True)
    refund(w, w.head + 1, 1)  # a bucket from the future: no-op as well
    assert w.total == 3


def test_store_refund_only_while_counted():
    spec = WindowSpec(2, 10.0, 10)
    store = MemoryStore()
    first = hit(store, spec, 1.0)
    assert hit(store, spec, 1.5).fits
    assert not hit(store, spec, 2.0).fits
    store.refund("k", spec, first.bucket, 1)
    assert hit(store, spec, 2.0).fits
    late = hit(store, spec, 12.5, 0).bucket  # the window has moved past bucket 1
    assert late == 12
    assert store._windows["k"].total == 1  # bucket 1 left, bucket 2 is still counted
    store.refund("k", spec, first.bucket, 1)
    assert store._windows["k"].total == 1
    store.refund("missing", spec, 1, 1)  # unknown key: nothing happens
    assert "missing" not in store._windows


class Model:
    """Reference: every charged bucket explicitly, the counted ones being head-k..head."""

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self.charges: dict[int, int] = {}
        self.head: int | None = None

    def counted(self) -> dict[int, int]:
        k = self.spec.buckets
        return {j: c for j, c in self.charges.items() if self.head - k <= j <= self.head and c}

    def hit(self, now: float, cost: int, consume: bool) -> tuple[bool, int, float, float]:
        spec = self.spec
        index = int(now // spec.width)
        self.head = index if self.head is None else max(self.head, index)
        counted = self.counted()
        used = sum(counted.values())
        leave = lambda j: (j + spec.buckets + 1) * spec.width - now  # noqa: E731
        if used + cost <= spec.limit:
            if consume and cost:
                self.charges[self.head] = self.charges.get(self.head, 0) + cost
                counted = self.counted()
                used += cost
            reset = leave(min(counted)) if counted else 0.0
            return True, spec.limit - used, max(0.0, reset), 0.0
        freed, retry = 0, None
        for j in sorted(counted):
            freed += counted[j]
            if used - freed + cost <= spec.limit:
                retry = max(0.0, leave(j))
                break
        return False, max(0, spec.limit - used), max(0.0, leave(min(counted))), retry

    def refund(self, index: int, cost: int) -> None:
        if self.head is not None and self.head - self.spec.buckets <= index <= self.head:
            back = min(cost, self.charges.get(index, 0))
            self.charges[index] = self.charges.get(index, 0) - back


@PROPS
@given(
    k=st.integers(2, 20),
    b_ticks=st.integers(1, 8),
    limit=st.integers(1, 10),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("hit"), st.integers(0, 30), st.integers(0, 3), st.booleans()),
            st.tuples(st.just("refund"), st.integers(0, 60), st.integers(1, 3), st.just(True)),
        ),
        max_size=80,
    ),
)
def test_store_matches_a_reference_model(k, b_ticks, limit, ops):
    """fits / remaining / reset / retry_after of every hit, with refunds interleaved."""
    spec = WindowSpec(limit, k * b_ticks * TICK, k)
    store, model = MemoryStore(), Model(spec)
    now, buckets = 0.0, []
    for op, a, b, consume in ops:
        if op == "hit":
            now += a * TICK
            cost = min(b, limit)
            got = hit(store, spec, now, cost, consume=consume)
            fits, remaining, reset, retry = model.hit(now, cost, consume)
            assert got.fits == fits
            assert got.remaining == remaining
            assert got.reset == pytest.approx(reset, abs=1e-9)
            if not fits:
                assert got.retry_after == pytest.approx(retry, abs=1e-9)
            if fits and consume and cost:
                buckets.append(got.bucket)
        elif buckets:
            index = buckets[a % len(buckets)]
            store.refund("k", spec, index, b)
            model.refund(index, b)


@st.composite
def batch_case(draw):
    """A few keys with their own limits; batches of distinct keys with random flags."""
    k = draw(st.integers(2, 12))
    b_ticks = draw(st.integers(1, 8))
    limits = draw(st.lists(st.integers(1, 6), min_size=1, max_size=4))
    specs = [WindowSpec(limit, k * b_ticks * TICK, k) for limit in limits]
    batches = []
    for _ in range(draw(st.integers(1, 40))):
        keys = draw(st.lists(st.integers(0, len(specs) - 1), min_size=1, max_size=3, unique=True))
        hits = [
            (i, draw(st.integers(0, min(3, limits[i]))), draw(st.booleans()), draw(st.booleans()))
            for i in keys  # (key, cost <= limit, consume, enforce)
        ]
        batches.append((draw(st.integers(0, 2 * b_ticks)) * TICK, hits))
    return specs, batches


@PROPS
@given(batch_case())
def test_batches_match_the_documented_semantics(case):
    """store.base rules 2-3 against per-key models: admitted iff every enforced hit fits;
    then (and only then) every consuming hit that fits is charged. Every hit reports the
    state its window is left in: remaining, reset (0 when nothing is counted) and, when it
    does not fit, retry_after."""
    specs, batches = case
    store = MemoryStore()
    models = [Model(spec) for spec in specs]
    now = 0.0
    for step, hits in batches:
        now += step
        batch = Batch([Hit(f"key{i}", specs[i], c, cons, enf) for i, c, cons, enf in hits])
        result = store.execute(batch, now, NO_BANS)
        peeks = [models[i].hit(now, c, consume=False) for i, c, _, _ in hits]
        admitted = all(p[0] for p, (_, _, _, enf) in zip(peeks, hits, strict=True) if enf)
        assert result.admitted == admitted
        for (i, c, cons, _), peek, got in zip(hits, peeks, result.hits, strict=True):
            model = models[i]
            if admitted and peek[0] and cons:
                model.hit(now, c, consume=True)
            after = model.hit(now, 0, consume=False)  # the state the batch left
            assert got.fits == peek[0]
            kept = store._windows.get(f"key{i}")  # a window that counts nothing is not kept
            assert (kept.total if kept else 0) == specs[i].limit - after[1]
            if got.fits:
                assert got.remaining == after[1]
                if admitted:  # refused batches: test_refused_batch_reports_a_stale_reset
                    assert got.reset == pytest.approx(after[2], abs=1e-9), (got, after)
            else:
                assert got.remaining == peek[1]
                assert got.retry_after == pytest.approx(peek[3], abs=1e-9)


# -- batch semantics -------------------------------------------------------------------------


def totals(store: MemoryStore, *keys: str) -> list[int]:
    return [store._windows[k].total if k in store._windows else 0 for k in keys]


@pytest.mark.parametrize("order", ["refused-last", "refused-first"])
def test_a_refused_batch_charges_nothing(order):
    spec = WindowSpec(3, 60.0)
    store = MemoryStore()
    for _ in range(3):
        hit(store, spec, 1.0, key="full")
    hits = [Hit("a", spec, 2), Hit("b", spec, 1, enforce=False), Hit("full", spec, 1)]
    if order == "refused-first":
        hits.reverse()
    result = store.execute(Batch(hits), 2.0, NO_BANS)
    assert not result.admitted
    assert totals(store, "a", "b", "full") == [0, 0, 3]
    by_key = {h.key: r for h, r in zip(hits, result.hits, strict=True)}
    assert by_key["a"].fits and by_key["a"].remaining == 3
    assert not by_key["full"].fits and by_key["full"].remaining == 0
    # nothing was charged, so the same small batch fits afterwards
    assert store.execute(Batch([Hit("a", spec, 3)]), 2.0, NO_BANS).admitted


def test_refused_batch_reports_the_reset_of_the_rolled_back_window():
    """A hit that fits in a refused batch is charged optimistically, then rolled back; its
    `remaining` is recomputed after the rollback but its `reset` is not, so it describes a
    charge that no longer exists (r=full quota with t=about W in the RateLimit field)."""
    spec = WindowSpec(1, 60.0)  # buckets of 6 s
    store = MemoryStore()
    hit(store, spec, 1.0, key="full")
    result = store.execute(Batch([Hit("fresh", spec), Hit("full", spec)]), 2.0, NO_BANS)
    assert not result.admitted
    fresh = result.hits[0]
    assert fresh.fits and fresh.remaining == 1
    assert "fresh" not in store._windows  # a refused request creates no state
    assert fresh.reset == 0.0  # nothing is counted on "fresh": nothing to wait for


def test_monitor_hits_that_do_not_fit_are_not_charged_and_do_not_refuse():
    spec = WindowSpec(3, 60.0)
    store = MemoryStore()
    hit(store, spec, 1.0, 2, key="m")  # 1 left on the monitored window
    batch = Batch([Hit("m", spec, 3, enforce=False), Hit("e", spec, 1)])
    result = store.execute(batch, 2.0, NO_BANS)
    assert result.admitted
    assert [r.fits for r in result.hits] == [False, True]
    assert totals(store, "m", "e") == [2, 1]
    assert result.hits[0].retry_after > 0
    # a monitor hit that fits is charged like any other
    result = store.execute(Batch([Hit("m", spec, 1, enforce=False)]), 2.0, NO_BANS)
    assert result.admitted and result.hits[0].fits
    assert totals(store, "m") == [3]


def test_non_consuming_hits_need_room_but_charge_nothing():
    spec = WindowSpec(2, 60.0)
    store = MemoryStore()
    for _ in range(5):
        assert store.execute(Batch([Hit("s", spec, 2, consume=False)]), 1.0, NO_BANS).admitted
    assert totals(store, "s") == [0]
    hit(store, spec, 1.0, 1, key="s")
    assert not store.execute(Batch([Hit("s", spec, 2, consume=False)]), 1.0, NO_BANS).admitted


# -- strikes and bans ------------------------------------------------------------------------

BANS = BanConfig(after=3, within=60, base=10, factor=2, max=25, memory=1000)


def refuse(store: MemoryStore, now: float, subject: str = "p", bans: BanConfig = BANS):
    """One request from `subject` against a spent window: refused, one strike."""
    spec = WindowSpec(1, 1000.0)
    store.execute(Batch([Hit(f"w|{subject}", spec, 1)]), now, bans)  # spend it (no subject)
    result = store.execute(
        Batch([Hit(f"w|{subject}", spec, 1, subject=subject)], (subject,)), now, bans
    )
    assert not result.admitted
    return result


def ban_after_strikes(store: MemoryStore, now: float, subject: str = "p") -> BatchResult:
    for _ in range(BANS.after - 1):
        assert not refuse(store, now, subject).new_ban
    result = refuse(store, now, subject)
    assert result.new_ban and result.ban is not None
    return result


def admitted(store: MemoryStore, now: float, subject: str = "p") -> BatchResult:
    spec = WindowSpec(10**6, 1.0)
    return store.execute(Batch([Hit(f"free|{subject}", spec, 1)], (subject,)), now, BANS)


def test_strikes_lead_to_an_escalating_capped_ban_that_expires():
    store = MemoryStore()
    now = 100.0
    durations = []
    for level in (1, 2, 3, 4):
        result = ban_after_strikes(store, now)
        assert result.ban.level == level
        durations.append(result.ban.until - now)
        assert store.active_ban("p", now) == result.ban
        before = totals(store, "free|p")
        during = admitted(store, now + durations[-1] / 2)
        assert not during.admitted and during.hits == [] and during.ban == result.ban
        assert totals(store, "free|p") == before  # a banned batch charges nothing
        now = result.ban.until  # the ban is over at `until`
        assert store.active_ban("p", now) is None
        assert admitted(store, now).admitted
    assert durations == [10, 20, 25, 25]  # base * factor ** (level - 1), capped at max


def test_strikes_outside_within_do_not_add_up():
    store = MemoryStore()
    for _ in range(BANS.after - 1):
        refuse(store, 0.0)
    assert not refuse(store, BANS.within * 1.2).new_ban
    assert not refuse(store, BANS.within * 1.2).new_ban
    assert refuse(store, BANS.within * 1.2).new_ban


def test_ban_level_is_forgotten_after_memory():
    store = MemoryStore()
    first = ban_after_strikes(store, 0.0)
    assert ban_after_strikes(store, first.ban.until + 1).ban.level == 2
    later = 2 * BANS.memory + 100  # more than `memory` after both the start and the end
    assert ban_after_strikes(store, later).ban.level == 1


def test_re_offending_right_after_a_capped_ban_does_not_reset_the_level():
    """With the defaults (max == memory == 1 day) a level-12 ban lasts 86400 s. An abuser
    who resumes the moment it ends is 86400 s + a bit past the ban's *start*, so `memory`
    measured from the start resets the level to 1 and the next ban lasts 60 s: the
    escalation collapses exactly for the most persistent abusers."""
    bans = BanConfig()  # after=20, within=60, base=60, factor=2, max=86400, memory=86400
    store = MemoryStore()
    now = 0.0
    for level in range(1, 13):
        for _ in range(bans.after):
            result = refuse(store, now, bans=bans)
        assert result.new_ban and result.ban.level == level
        duration = result.ban.until - now
        now = result.ban.until + 1  # re-offends one second after the ban ends
    assert duration == 86400  # level 12 reached the cap
    for _ in range(bans.after):
        result = refuse(store, now, bans=bans)
    assert result.new_ban
    assert result.ban.level == 13
    assert result.ban.until - now == 86400


def test_strike_goes_to_the_first_refused_enforced_hit_that_has_a_subject():
    """store.base: "one strike is recorded against the `subject` of the first refused
    enforced hit that has one". A per-route rule has no subject; a principal rule does."""
    bans = BanConfig(after=1)
    spec = WindowSpec(1, 60.0)
    store = MemoryStore()
    store.execute(Batch([Hit("route|*", spec), Hit("user|p", spec, subject="p")]), 1.0, bans)
    result = store.execute(
        Batch([Hit("route|*", spec), Hit("user|p", spec, subject="p")], ("p",)), 2.0, bans
    )
    assert not result.admitted
    assert result.new_ban and result.ban is not None and result.ban.key == "p"


def test_disabled_bans_record_no_strikes():
    store = MemoryStore()
    for _ in range(50):
        assert refuse(store, 1.0, bans=BanConfig(enabled=False, after=1)).ban is None
    assert len(store._strikes) == 0 and store._bans == {}


# -- bounded tables --------------------------------------------------------------------------


def test_max_keys_bounds_every_table_and_never_drops_live_state():
    max_keys = 100
    store = MemoryStore(max_keys=max_keys)
    spec = WindowSpec(1, 60.0)
    bans = BanConfig(after=1, base=1000)
    for i in range(11 * max_keys):
        s = f"p{i}"
        now = 1.0 + i
        store.execute(Batch([Hit(f"w|{s}", spec, subject=s)], (s,)), now, bans)
        result = store.execute(Batch([Hit(f"w|{s}", spec, subject=s)], (s,)), now, bans)
        assert not result.admitted
        # the first 100 bans fill the table; while they last, no ban is dropped for a new
        # one (the new one is not recorded); once they end, new bans are recorded again
        assert result.new_ban == (i < max_keys or now >= 1001.0), i
        assert len(store._windows) <= max_keys
        assert len(store._strikes) <= max_keys
        assert len(store._bans) <= max_keys
        if i == 999:
            assert all(store.active_ban(f"p{n}", now) for n in range(max_keys))
    assert store.active_ban(f"p{11 * max_keys - 1}", 1300.0) is not None


def test_expired_bans_are_purged_before_live_ones():
    store = MemoryStore(max_keys=100)
    spec = WindowSpec(1, 10.0)  # the windows are over by t=50: room for "new"
    short, long_ = BanConfig(after=1, base=10), BanConfig(after=1, base=1e6)
    for i in range(100):
        s, cfg = f"p{i}", (long_ if i == 0 else short)
        store.execute(Batch([Hit(f"w|{s}", spec, subject=s)]), 1.0, cfg)
        store.execute(Batch([Hit(f"w|{s}", spec, subject=s)]), 1.0, cfg)
    assert len(store._bans) == 100
    store.execute(Batch([Hit("w|new", spec, subject="new")]), 50.0, short)
    store.execute(Batch([Hit("w|new", spec, subject="new")]), 50.0, short)
    assert store.active_ban("p0", 50.0) is not None  # the live ban was kept
    assert store.active_ban("new", 50.0) is not None
    assert len(store._bans) <= 100


def test_a_full_table_spills_its_oldest_live_window_and_keeps_counting_it():
    """A table full of live windows makes room by folding the least recently used one into
    its rule's count-min sketch: newcomers get exact windows of their own, and a spilled
    subject that comes back is rebuilt with at least what it was charged."""
    store = MemoryStore(max_keys=3)
    spec = WindowSpec(2, 60.0)
    bans = BanConfig(after=1, base=600)

    def hit(subject: str, now: float) -> BatchResult:
        return store.execute(
            Batch([Hit(f"w|{subject}", spec, subject=subject)], (subject,)), now, bans
        )

    assert hit("a", 1.0).admitted and hit("a", 1.0).admitted  # a's budget is spent
    assert hit("b", 1.0).admitted and hit("c", 1.0).admitted
    newcomers = [hit(f"n{i}", 2.0) for i in range(6)]  # the table is full of live windows
    assert all(r.admitted and r.hits[0].remaining == 1 for r in newcomers)
    assert len(store._windows) == 3 and "w|a" not in store._windows  # a was spilled
    back = hit("a", 3.0)  # rebuilt from the sketch: still spent, and it strikes as usual
    assert not back.admitted and back.new_ban
    assert hit("b", 3.0).hits[0].remaining == 0  # b's one unit came back with it
    assert hit("a", 70.0).ban is not None  # (banned now; its window is over at 66 s)
    assert hit("n0", 70.0).admitted  # the sketch expires with its buckets


@PROPS
@given(
    st.lists(
        st.tuples(st.integers(0, 30), st.integers(0, 40), st.integers(1, 5)),
        min_size=1,
        max_size=60,
    ),
    st.integers(0, 50),
)
def test_a_spill_sketch_never_counts_a_subject_below_its_charges(charges, later):
    """Windows spilled into the count-min sketch (store/spill.py) come back with at least
    their own counts in every bucket still inside the window, whatever else was spilled
    (2 columns: collisions everywhere)."""
    from apiguard.store.spill import Spill

    spec = WindowSpec(10**6, 60.0, 10)  # buckets of 6 s
    spill = Spill(spec, columns=2)
    truth: dict[str, dict[int, int]] = {}
    for subject, tick, cost in sorted(charges, key=lambda c: c[1]):
        w = BucketWindow(spec.buckets)
        assert try_hit(w, spec, tick * 6.0 + 1.0, cost, consume=True)
        spill.add(f"k|{subject}", w)
        bucket = int((tick * 6.0 + 1.0) // spec.width)
        truth.setdefault(f"k|{subject}", {}).setdefault(bucket, 0)
        truth[f"k|{subject}"][bucket] += cost
    now = (max(c[1] for c in charges) + later) * 6.0 + 3.0
    index = int(now // spec.width)
    for key, buckets in truth.items():
        owed = {b: c for b, c in buckets.items() if b > index - spec.buckets - 1}
        rebuilt = spill.window(key, now)
        if not owed:
            continue
        assert rebuilt is not None
        for b, c in owed.items():
            assert rebuilt.counts[b % (spec.buckets + 1)] >= c
        assert rebuilt.total >= sum(owed.values())
