"""The Redis store against a real redis-server: the same answers as the memory store.

The memory store is the reference implementation of the batch contract
(`apiguard.store.base`); the Redis script ports its arithmetic. Generated schedules of
batches (bans, stacked windows, `once` markers, monitor-mode and non-consuming hits,
costs, refunds, imposed and lifted bans, time steps on and around bucket boundaries) run
on both, on the caller's clock, and every result field must match exactly.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apiguard.config import BanConfig
from apiguard.store.base import Ban, Batch, BatchResult, Hit, Run, Tally
from apiguard.store.memory import MemoryStore
from apiguard.store.redis import RedisStore
from apiguard.store.redis_wire import Wire
from apiguard.window import WindowSpec

SPECS = (WindowSpec(3, 10.0, 10), WindowSpec(5, 10.0, 10), WindowSpec(4, 7.0, 3))
KEYS = ("w.a", "w.b", "w.c")
SUBJECTS = ("u:alice", "ip:1", None)
MARKS = (None, "seen|ip:1|k1", "seen|ip:1|k2")
STEPS = (0.0, 0.0, 0.1, 0.25, 0.999, 1.0, 1.001, 2.5, 7.0, 10.0, 13.0)
BANS = BanConfig(after=2, within=30, base=12, factor=2, max=40, memory=120)

hit_st = st.tuples(
    st.integers(0, len(KEYS) - 1),
    st.integers(0, len(SPECS) - 1),
    st.sampled_from((0, 1, 1, 1, 2)),  # cost
    st.booleans() | st.just(True),  # consume
    st.booleans() | st.just(True),  # enforce
    st.integers(0, len(SUBJECTS) - 1),
    st.integers(0, len(MARKS) - 1),
)
# (step, ban keys, hits) | ("refund", hit index) | ("impose", subject, seconds) | ("lift", s)
batch_st = st.tuples(
    st.sampled_from(STEPS),
    st.lists(st.integers(0, 1), max_size=2, unique=True),
    st.lists(hit_st, min_size=1, max_size=4),
)
event_st = st.one_of(
    batch_st.map(lambda b: ("batch", *b)),
    st.tuples(st.just("refund"), st.integers(0, 3)),
    st.tuples(st.just("impose"), st.integers(0, 1), st.sampled_from((1.0, 5.0, 30.0))),
    st.tuples(st.just("lift"), st.integers(0, 1)),
)


def _spec_key(key: int, spec: int) -> str:
    return f"{KEYS[key]}.{spec}|x"  # one spec per window key, as rules do


def _batch(ban_keys: list[int], hits: list[tuple[Any, ...]]) -> Batch:
    return Batch(
        [
            Hit(
                _spec_key(k, s), SPECS[s], cost, consume, enforce, SUBJECTS[subj], None, None,
                MARKS[mark] if cost else None,
            )
            for k, s, cost, consume, enforce, subj, mark in hits
        ],
        tuple(SUBJECTS[b] or "" for b in ban_keys),
    )


def _seen(result: BatchResult) -> tuple[Any, ...]:
    ban = result.ban
    return (
        result.admitted,
        result.new_ban,
        None if ban is None else (ban.key, ban.until, ban.level),
        [(h.fits, h.remaining, h.reset, h.retry_after, h.bucket) for h in result.hits],
    )


@pytest.fixture
def rstore(redis_url: str) -> RedisStore:
    return RedisStore(
        redis.Redis.from_url(redis_url), server_time=False, strike_buckets=10, timeout=5.0
    )


def _run(events: list[tuple[Any, ...]], rstore: RedisStore) -> None:
    mstore = MemoryStore(200_000, 10)
    now = 1_000.0
    charged: list[tuple[str, WindowSpec, int, int]] = []
    for n, event in enumerate(events):
        kind = event[0]
        if kind == "batch":
            _, step, ban_keys, hits = event
            now += step
            results = []
            for store in (mstore, rstore):
                batch = _batch(ban_keys, hits)
                results.append(_seen(store.execute(batch, now, BANS)))
                if store is rstore and results[0][0]:
                    charged.extend(
                        (h.key, h.spec, h.bucket, h.cost) for h in batch.hits if h.consume
                    )
            assert results[0] == results[1], f"event #{n} {event}: memory != redis"
        elif kind == "refund" and charged:
            key, spec, bucket, cost = charged[event[1] % len(charged)]
            for store in (mstore, rstore):
                store.refund(key, spec, bucket, cost)
        elif kind == "impose":
            subject = SUBJECTS[event[1]] or ""
            for store in (mstore, rstore):
                store.impose(Ban(subject, now + event[2], 1), now)
        elif kind == "lift":
            for store in (mstore, rstore):
                store.lift(SUBJECTS[event[1]] or "")


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(events=st.lists(event_st, min_size=3, max_size=30))
def test_redis_answers_every_schedule_like_memory(
    events: list[tuple[Any, ...]], rstore: RedisStore
) -> None:
    rstore.reset()
    rstore._bans.clear()  # the local cache must not answer what Redis would
    _run(events, rstore)


def test_a_scripted_schedule_bans_escalates_and_expires(rstore: RedisStore) -> None:
    hit = (0, 0, 1, True, True, 0, 0)
    events: list[tuple[Any, ...]] = [("batch", 0.1, [0], [hit]) for _ in range(6)]
    events += [("batch", 13.0, [0], [hit])] + [("batch", 0.1, [0], [hit]) for _ in range(6)]
    events += [("batch", 50.0, [0], [hit, (1, 1, 1, True, True, 0, 1)]), ("refund", 0)]
    events += [("impose", 1, 5.0), ("batch", 0.1, [1], [hit]), ("lift", 1)]
    events += [("batch", 0.1, [1], [hit])]
    _run(events, rstore)
    assert rstore.active_ban("u:alice", 2_000.0) is None


def test_detector_operations_match_memory(rstore: RedisStore) -> None:
    mstore = MemoryStore()
    now = 1_000.0
    for i, value in enumerate((5, 6, 7, 7, 8, 12, 13, 14, 15, 3)):
        now += (0.5, 1.0, 3.0, 6.0)[i % 4]
        sides = []
        for store in (mstore, rstore):
            ops = [Tally("count", 10.0, amount=1 + i % 2), Run("walk", 20.0, value)]
            store.observe(ops, now)
            sides.append(
                [(o.count,) if isinstance(o, Tally) else (o.length, o.stride) for o in ops]
            )
        assert sides[0] == sides[1], (i, sides)


def test_distinct_tally_is_an_estimate_close_to_the_truth(rstore: RedisStore) -> None:
    ops: list[Tally] = []
    for i in range(500):
        op = Tally("objects", 60.0, item=f"o:{i:06x}")
        rstore.observe([op], 1_000.0 + i * 0.01)
        ops.append(op)
    assert ops[0].count == 1
    assert 480 <= ops[-1].count <= 520  # HyperLogLog: within a few percent
    again = Tally("objects", 60.0, item="o:000001")
    rstore.observe([again], 1_010.0)
    assert again.count == ops[-1].count  # a repeat adds nothing


def test_every_key_expires(redis_url: str, rstore: RedisStore) -> None:
    client = redis.Redis.from_url(redis_url)
    rstore.shared_secret(b"0" * 32)
    _run(
        [("batch", 0.1, [0, 1], [(k % 3, k % 3, 1, True, True, k % 2, k % 3)]) for k in range(40)]
        + [("impose", 1, 30.0), ("refund", 1)],
        rstore,
    )
    rstore.observe([Tally("t", 10.0), Tally("d", 10.0, item="ab"), Run("r", 10.0, 3)], 1_005.0)
    keys = list(client.scan_iter(match="*"))
    assert len(keys) > 10
    ttls = {k: client.pttl(k) for k in keys}
    assert all(ttl > 0 for ttl in ttls.values()), ttls
    # no key outlives what it counts by more than the margin (windows 10 s, bans 40 s
    # max, escalation memory 120 s after a ban, the secret 30 days)
    for key, ttl in ttls.items():
        limit = 30 * 86_400_000 if key.endswith(b"secret") else (120 + 40 + 5) * 1000
        assert ttl <= limit, (key, ttl)
    assert all(k.startswith(b"{apiguard}:") for k in keys)


def test_a_batch_is_one_round_trip_however_many_rules(
    monkeypatch: pytest.MonkeyPatch, rstore: RedisStore
) -> None:
    sent: list[int] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        original(self, command, check_health)

    rstore.execute(_batch([0], [(0, 0, 1, True, True, 0, 0)]), 1_000.0, BANS)  # loads the script
    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    for i in range(10):
        hits = [(k % 3, k % 3, 1, True, False, 0, 0) for k in range(5)]  # 5 rules
        rstore.execute(_batch([0, 1], hits), 1_000.0 + i, BANS)
    assert len(sent) == 10


def test_a_flushed_script_cache_is_reloaded(redis_url: str, rstore: RedisStore) -> None:
    client = redis.Redis.from_url(redis_url)
    batch = _batch([0], [(0, 0, 1, True, True, 0, 0)])
    assert rstore.execute(batch, 1_000.0, BANS).admitted
    client.script_flush()  # what a Redis restart does
    batch = _batch([0], [(0, 0, 1, True, True, 0, 0)])
    result = rstore.execute(batch, 1_000.1, BANS)
    assert result.admitted and result.hits[0].remaining == 1
    assert rstore.fallbacks == 0


def test_bans_reach_other_workers_with_their_next_call(redis_url: str) -> None:
    a = RedisStore(redis.Redis.from_url(redis_url), server_time=False)
    b = RedisStore(redis.Redis.from_url(redis_url), server_time=False)
    hit = (0, 0, 1, True, True, 0, 0)
    now = 1_000.0
    for _ in range(6):
        now += 0.1
        a.execute(_batch([0], [hit]), now, BANS)
    assert a.active_ban("u:alice", now) is not None  # earned through a
    assert b.active_ban("u:alice", now) is None
    b.execute(_batch([1], [(1, 1, 1, True, True, 1, 0)]), now, BANS)  # any call of b
    ban = b.active_ban("u:alice", now)
    assert ban is not None and ban.level == 1 and ban.until == pytest.approx(now - 0.1 + 12)
    # a banned caller then costs b no Redis call at all
    client = redis.Redis.from_url(redis_url)
    client.config_resetstat()
    assert b.execute(_batch([0], [hit]), now, BANS).ban is not None
    assert "cmdstat_evalsha" not in client.info("commandstats")
    a.lift("u:alice")
    b.execute(_batch([1], [(1, 1, 1, True, True, 1, 0)]), now, BANS)
    assert b.active_ban("u:alice", now) is None  # the lift travels the same way


def test_server_time_translates_bans_to_the_callers_clock(redis_url: str) -> None:
    store = RedisStore(redis.Redis.from_url(redis_url))  # Redis TIME; caller on monotonic
    hit = (0, 0, 1, True, True, 0, 0)
    result = None
    for i in range(6):
        result = store.execute(_batch([0], [hit]), 50.0 + i * 0.01, BANS)
    assert result is not None and result.ban is not None
    assert 50.0 + 11 < result.ban.until < 50.1 + 12.5  # 12 s from the caller's "now"


def test_every_field_of_an_imposed_ban_reaches_other_workers(redis_url: str) -> None:
    a = RedisStore(redis.Redis.from_url(redis_url), server_time=False)
    b = RedisStore(redis.Redis.from_url(redis_url), server_time=False)
    ban = Ban("k:token", 1_060.0, 3, "u:alice", "challenge", "bola-walk")
    a.impose(ban, 1_000.0)
    assert a.active_ban("k:token", 1_000.0) == ban  # cached at once
    a.impose(Ban("k:token", 1_030.0, 1), 1_000.0)  # shorter: the longer one stays
    b.execute(_batch([1], [(1, 1, 1, True, True, 1, 0)]), 1_001.0, BANS)
    assert b.active_ban("k:token", 1_001.0) == ban
    # and the checkpoint of a worker that never heard of it refuses with it
    c = RedisStore(redis.Redis.from_url(redis_url), server_time=False)
    c._seen = 1e9  # as if it had seen every change
    refused = c.execute(Batch([], ("k:token",)), 1_002.0, BANS)
    assert not refused.admitted and refused.ban == ban


def test_the_breaker_probes_once_per_interval_and_survives_a_lost_probe() -> None:
    from apiguard.store.breaker import Breaker

    now = [0.0]
    breaker = Breaker(5.0, "the store", clock=lambda: now[0])
    assert breaker.allow()
    breaker.failure(TimeoutError())
    assert not breaker.allow()
    now[0] = 5.0
    assert breaker.allow() and not breaker.allow()  # one probe; it never reports back
    now[0] = 10.0
    assert breaker.allow()  # another interval: another probe
    breaker.success()
    assert breaker.closed and breaker.allow() and breaker.outages == 1


def test_concurrent_observations_share_one_round_trip(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    import asyncio

    import redis.asyncio

    store = RedisStore(redis.asyncio.Redis.from_url(redis_url))  # Redis time: coalesced
    sent: list[int] = []
    original = redis.asyncio.connection.AbstractConnection.send_packed_command

    async def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        await original(self, command, check_health)

    wire_send = Wire._send

    def wire_counting(self: Wire, proto: Any, command: bytes, *rest: Any) -> Any:
        sent.append(1)
        return wire_send(self, proto, command, *rest)

    async def scenario() -> list[tuple[Tally, Run]]:
        await store.aobserve([Tally("warm", 10.0)], 0.0)  # warm-up and script load
        monkeypatch.setattr(
            redis.asyncio.connection.AbstractConnection, "send_packed_command", counting
        )
        monkeypatch.setattr(Wire, "_send", wire_counting)
        groups = [
            (Tally("objects", 60.0, item=f"o:{i:04x}"), Run("walk", 60.0, i)) for i in range(20)
        ]
        await asyncio.gather(*(store.aobserve(list(g), 0.0) for g in groups))
        return groups

    groups = asyncio.run(scenario())
    assert len(sent) == 1  # 20 requests' detector operations, one script call
    assert [t.count for t, _ in groups] == [float(i + 1) for i in range(20)]
    assert groups[-1][1].length == 19 and groups[-1][1].stride == 1


def test_a_client_that_decodes_responses_works_too(redis_url: str) -> None:
    store = RedisStore(redis.Redis.from_url(redis_url, decode_responses=True), server_time=False)
    results = [
        store.execute(_batch([0], [(0, 0, 1, True, True, 0, 0)]), 1_000.0 + i, BANS).admitted
        for i in range(4)
    ]
    assert results == [True, True, True, False] and store.fallbacks == 0
    ops = [Tally("t", 10.0), Run("r", 10.0, 4)]
    store.observe(ops, 1_005.0)
    assert ops[0].count == 1


def test_threads_share_the_sync_client_and_admit_exactly_the_limit(redis_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    store = RedisStore(redis.Redis.from_url(redis_url), server_time=False, timeout=5.0)
    spec = WindowSpec(150, 60.0)

    def one(i: int) -> bool:
        batch = Batch([Hit("w|shared", spec, 1, enforce=True)], ())
        return store.execute(batch, 1_000.0, BANS).admitted

    with ThreadPoolExecutor(8) as pool:
        admitted = list(pool.map(one, range(400)))
    assert admitted.count(True) == 150 and store.fallbacks == 0
