"""State written by the previous version of the Redis scripts (windows, tallies and runs
as hashes) is read by the current ones as it was meant, and rewritten in the current
format: a rolling upgrade forgets no count.
"""

from __future__ import annotations

import redis

from apiguard.config import BanConfig
from apiguard.store.base import Batch, Hit, Run, Tally
from apiguard.store.memory import MemoryStore
from apiguard.store.redis import RedisStore
from apiguard.window import WindowSpec

SPEC = WindowSpec(5, 10.0, 10)  # 1 s buckets
BANS = BanConfig(enabled=False)


def _fmt(x: float) -> str:
    return f"{x:.17g}"


def _seen(store: object, now: float) -> tuple[object, ...]:
    batch = Batch([Hit("w.legacy|x", SPEC, 1, subject="ip:x")], ("ip:x",))
    result = store.execute(batch, now, BANS)  # type: ignore[attr-defined]
    hit = result.hits[0]
    return result.admitted, hit.fits, hit.remaining, hit.reset, hit.retry_after, hit.bucket


def test_a_window_written_as_a_hash_keeps_its_counts(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    for later in (0.2, 2.5, 9.5, 10.5, 30.0):  # same bucket, moved, nearly gone, gone
        client.flushall()
        rstore = RedisStore(client, server_time=False)
        mstore = MemoryStore()
        now = 1_000.3
        for step in (0.0, 1.0, 1.0):  # three charges in buckets 1000, 1001, 1002
            now += step
            _seen(mstore, now)
        # the previous version's layout of the same window
        key = "{apiguard}:w:w.legacy|x"
        client.hset(
            key, mapping={"h": _fmt(1002), _fmt(1000): 1, _fmt(1001): 1, _fmt(1002): 1}
        )
        client.pexpire(key, 60_000)
        assert _seen(rstore, now + later) == _seen(mstore, now + later), later
        assert client.type(key) == b"string" and client.pttl(key) > 0


def test_a_refund_into_a_window_written_as_a_hash(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    rstore = RedisStore(client, server_time=False)
    key = "{apiguard}:w:w.legacy|x"
    client.hset(key, mapping={"h": _fmt(1002), _fmt(1001): 2, _fmt(1002): 3})
    client.pexpire(key, 60_000)
    rstore.refund("w.legacy|x", SPEC, 1001, 1)
    assert client.hget(key, _fmt(1001)) == b"1"
    assert _seen(rstore, 1_002.5)[2] == 5 - 4 - 1  # 4 counted, this one charged


def test_tallies_and_runs_written_as_hashes_go_on(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    rstore = RedisStore(client, server_time=False)
    mstore = MemoryStore()
    now = 1_000.0
    for value in (5, 6, 7):
        now += 1.0
        mstore.observe([Tally("count", 10.0, amount=2), Run("walk", 20.0, value)], now)
    # the previous version's layout after the same three observations
    client.hset("{apiguard}:t:count", mapping={"s": _fmt(1_001.0), "c": 6, "o": 0, "h": "5"})
    client.hset("{apiguard}:r:walk", mapping={"t": _fmt(now), "v": "7", "s": "1", "n": 2})
    for key in ("{apiguard}:t:count", "{apiguard}:r:walk"):
        client.pexpire(key, 60_000)
    for step, value in ((1.0, 8), (3.0, 9), (9.0, 11)):
        now += step
        sides = []
        for store in (mstore, rstore):
            ops = [Tally("count", 10.0, amount=2), Run("walk", 20.0, value)]
            store.observe(ops, now)
            sides.append((ops[0].count, ops[1].length, ops[1].stride))
        assert sides[0] == sides[1], (now, sides)
    assert all(client.pttl(k) > 0 for k in client.scan_iter("{apiguard}:*"))


def test_a_distinct_tally_written_as_a_hash_keeps_its_items(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    rstore = RedisStore(client, server_time=False)
    client.hset("{apiguard}:t:objects", mapping={"s": _fmt(1_000.0), "c": 0, "o": 0, "h": "30"})
    client.pfadd("{apiguard}:t:objects:c", "o:1", "o:2", "o:3")
    for key in ("{apiguard}:t:objects", "{apiguard}:t:objects:c"):
        client.pexpire(key, 120_000)
    op = Tally("objects", 60.0, item="o:4")
    rstore.observe([op], 1_010.0)
    assert op.count == 4
    again = Tally("objects", 60.0, item="o:2")
    rstore.observe([again], 1_040.0)  # a new half window: the old items still count
    assert again.count == 4
    assert all(client.pttl(k) > 0 for k in client.scan_iter("{apiguard}:*"))
