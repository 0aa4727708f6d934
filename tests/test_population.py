"""The learned thresholds' arithmetic: `percentiles` is `np.percentile`, bit for bit, and
`Population` learns the same threshold from its array-backed table as from a plain LRU."""

from __future__ import annotations

import random
from collections import OrderedDict

import numpy as np
import pytest

from apiguard.detectors.population import _EVERY, _KEEP, Population, percentiles


@pytest.mark.parametrize("seed", range(8))
def test_percentiles_are_numpys(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(400):
        n = rng.choice([1, 2, 3, 10, 99, 100, 101, 1000, rng.randrange(1, 5000)])
        shape = rng.randrange(3)
        if shape == 0:  # counts, many ties
            values = [float(rng.randrange(50)) for _ in range(n)]
        elif shape == 1:
            values = [rng.expovariate(0.1) for _ in range(n)]
        else:  # capped at half a threshold
            values = [min(rng.randrange(1, 2000) * 0.73, 41.5) for _ in range(n)]
        qs = (rng.choice([0.001, 50.0, 90.0, 99.0, 99.9, 100.0, rng.uniform(0.01, 100)]), 50.0)
        want = [float(x) for x in np.percentile(np.array(values), qs)]
        assert percentiles(np.array(values), qs) == want


def test_nan_is_left_to_numpy() -> None:
    got = percentiles(np.array([1.0, float("nan"), 3.0]), (99.0, 50.0))
    assert all(v != v for v in got)


def test_population_learns_as_a_plain_lru_would() -> None:
    """A reference model of the table (the latest value per principal, LRU, capped at
    `_KEEP`) gives the same thresholds, update after update, past evictions."""
    rng = random.Random(3)
    pop = Population(5.0, 5.0, 99.0, 2.0, 20)
    ref: OrderedDict[str, float] = OrderedDict()
    threshold, learned, pending = 5.0, None, 0
    for step in range(_KEEP * 3):
        who = f"p{rng.randrange(_KEEP + 500)}"
        value = float(rng.randrange(1, 40))
        got = pop.update(who, value)
        v = min(value, threshold / 2)
        if ref.get(who) != v:
            if who in ref:
                ref.move_to_end(who)
            elif len(ref) >= _KEEP:
                ref.popitem(last=False)
            ref[who] = v
            pending += 1
            if pending >= _EVERY or (learned is None and len(ref) == 20):
                pending = 0
                if len(ref) >= 20:
                    high, median = np.percentile(np.fromiter(ref.values(), float), (99.0, 50.0))
                    learned = float(high)
                    threshold = max(5.0, min(learned * 2.0, float(median) * 8))
        assert got == threshold, step
        assert pop.learned == learned
