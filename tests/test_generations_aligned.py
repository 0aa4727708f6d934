"""Sliding counts compared as a share roll at the same moments (`Tally(aligned=True)`).

A detector compares two counts as a share (`flow_groups`: the principals of a group that
completed a flow, among those of the group active at all). Each count keeps two half-
window generations; when each started at its key's first use, the active count could
drop its older half while the completions kept theirs: in a test of 120 riders (30 behind
one office address) checking out 85% of their holds, `flow_groups` saw 14 completing
among 8 active, a share of 1.8, and refused 6 of 240 checkouts, in one process hash seed
of twelve. Aligned counts start their generations at multiples of the half window on
the clock, in the memory store and in the Redis script alike; counts judged alone keep
their first use's start."""

from __future__ import annotations

import pytest
import redis

from apiguard.store.base import Tally
from apiguard.store.memory import MemoryStore
from apiguard.store.redis import RedisStore
from apiguard.store.sketch import Generations, generation_start

WINDOW = 3600.0


def test_a_generation_starts_on_the_clock() -> None:
    for now in (5_000_000.0, 5_000_399.9, 5_000_400.0, 1_700_000_123.25):
        assert Generations(WINDOW, now).start == now  # (not aligned: its first use)
        g = Generations(WINDOW, now, aligned=True)
        assert g.start == generation_start(now, WINDOW / 2) <= now < g.start + WINDOW / 2
        assert g.start % (WINDOW / 2) == 0


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> object:
    if request.param == "memory":
        return MemoryStore()
    url = request.getfixturevalue("redis_url")
    return RedisStore(redis.Redis.from_url(url), server_time=False)


def test_a_share_of_two_counts_never_passes_one(store: MemoryStore) -> None:
    """30 people active in the first half hour, 20 of them completing the flow in its
    last five minutes (the completions' first use), then 10 of them active for an hour
    more. Every completion is activity too, so the completions never outnumber the
    active: read every minute from then on, across every roll of the half window (before, the active
    count dropped its first half hour at minute 60 while the completions kept theirs
    until minute 85: 20 completing among 10 active)."""
    now = 7_000_100.0
    shares = []
    for minute in range(90):
        now += 60.0
        ops = []
        if minute < 30:
            ops.append(Tally("active", WINDOW, f"p{minute}", aligned=True))
        if 25 <= minute < 30:
            for k in range(20):
                ops += [
                    Tally("active", WINDOW, f"p{k}", aligned=True),
                    Tally("done", WINDOW, f"p{k}", aligned=True),
                ]
        if minute >= 30:
            ops += [Tally("active", WINDOW, f"p{k}", aligned=True) for k in range(10)]
        store.observe(ops, now)
        if minute < 30:
            continue  # (a read is a use: the counts are read once both are written)
        read = [
            Tally("active", WINDOW, amount=0, aligned=True),
            Tally("done", WINDOW, amount=0, aligned=True),
        ]
        store.observe(read, now)
        shares.append(read[1].count / max(read[0].count, 1.0))
    assert max(shares) <= 1.0, [round(s, 2) for s in shares]
