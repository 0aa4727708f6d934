"""Quota leases on the Redis store (`RedisStore(lease=True)`), against a real redis-server.

The bound under test: whatever the interleaving of workers, requests and time, the cost
admitted by all workers together in any interval of one window's length stays within
the limit (the bucketed window's own guarantee, `apiguard.window`), because a leased unit
is charged in the bucket it is used in, before it is used. Also: unused units go back,
refusals are exact once leases are given back, every key expires, and the failure policy
is the same (a lease is not used past its end).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apiguard import Guard
from apiguard.config import BanConfig, GuardConfig
from apiguard.errors import ConfigurationError
from apiguard.store.base import Batch, Hit
from apiguard.store.redis import RedisStore
from apiguard.window import WindowSpec

BANS = BanConfig(enabled=False)
_prefixes = itertools.count()


def _store(url: str, prefix: str, **kw: Any) -> RedisStore:
    kw.setdefault("server_time", False)
    return RedisStore(redis.Redis.from_url(url), prefix=prefix, timeout=2.0, **kw)


def _hit(key: str, spec: WindowSpec, cost: int = 1, **kw: Any) -> Hit:
    return Hit(key, spec, cost, subject=None, **kw)


def _total(url: str, prefix: str, key: str, spec: WindowSpec, now: float) -> int:
    """The window's count in Redis at `now` (a test-only hit on a store without leases)."""
    probe = _store(url, prefix)
    hit = _hit(key, spec, 1, consume=False)
    probe.execute(Batch([hit]), now, BANS)
    return spec.limit - hit.remaining


def _check_bound(admitted: list[tuple[float, int]], spec: WindowSpec) -> None:
    """Every interval [t, t + W) holds at most `limit` admitted cost."""
    admitted.sort()
    for i, (t, _) in enumerate(admitted):
        inside = sum(c for u, c in admitted[i:] if u < t + spec.window - 1e-9)
        assert inside <= spec.limit, (t, inside, spec.limit)


def test_options_are_validated() -> None:
    with pytest.raises(ConfigurationError, match="lease="):
        RedisStore(lease="yes")  # type: ignore[arg-type]
    for life in (0, -1.0, 61, True):
        with pytest.raises(ConfigurationError, match="lease_life="):
            RedisStore(lease=True, lease_life=life)
    with pytest.raises(ConfigurationError):
        GuardConfig.load({"store": {"lease_life": 0}})
    assert GuardConfig.load({"store": {"lease": True}}).store.lease is True


def test_config_reaches_a_url_store(redis_url: str) -> None:
    guard = Guard(
        {"secret": "s" * 32, "store": {"lease": True, "lease_life": 0.5}}, store=redis_url
    )
    store = guard.store
    assert isinstance(store, RedisStore)
    assert store.lease is True and store.lease_life == 0.5
    plain = Guard({"secret": "s" * 32}, store=redis_url).store
    assert isinstance(plain, RedisStore) and plain.lease is False


def test_admits_locally_and_gives_unused_units_back(redis_url: str) -> None:
    spec = WindowSpec(1000, 100.0, 10)  # 10 s buckets
    p = f"l{next(_prefixes)}"
    store = _store(redis_url, p, lease=True, lease_life=5.0)
    now = 1000.0
    results = []
    for i in range(6):
        r = store.execute(Batch([_hit("k", spec)], ("ip:1",)), now + i * 0.1, BANS)
        results.append(r)
    assert all(r.admitted for r in results)
    # the first asked for a lease of 2: two decided locally, then a lease of 4
    assert store.local_admissions == 4
    remaining = [r.hits[0].remaining for r in results]
    assert remaining == sorted(remaining, reverse=True)
    # Redis counts what was admitted plus the lease still held
    held = sum(lease.left for lease in store._leases.values())
    assert held > 0
    assert _total(redis_url, p, "k", spec, now + 1) == 6 + held
    store.release_leases()
    assert _total(redis_url, p, "k", spec, now + 1) == 6
    # a lease ends with its bucket (or lease_life) at the latest: swept, units returned
    store.execute(Batch([_hit("k", spec)]), now + 1.0, BANS)
    assert store._leases
    store.execute(Batch([_hit("other", spec)]), now + 9.9995, BANS)  # bucket ends at 1010
    assert "k" not in store._leases
    assert _total(redis_url, p, "k", spec, now + 9.9995) == 7


def test_not_leased_markers_non_consuming_and_duplicates(redis_url: str) -> None:
    spec = WindowSpec(1000, 100.0, 10)
    p = f"l{next(_prefixes)}"
    store = _store(redis_url, p, lease=True)
    now = 1000.0
    store.execute(Batch([_hit("k", spec, once="m|1")]), now, BANS)
    store.execute(Batch([_hit("k2", spec, consume=False)]), now, BANS)
    store.execute(Batch([_hit("k3", spec), _hit("k3", spec)]), now, BANS)
    assert not store._leases
    assert _total(redis_url, p, "k3", spec, now) == 2
    # a leased key with a marked hit in the batch: the batch goes to Redis
    store.execute(Batch([_hit("k4", spec)]), now, BANS)
    assert "k4" in store._leases
    before = store.local_admissions
    store.execute(Batch([_hit("k4", spec), _hit("k5", spec, once="m|2")]), now, BANS)
    assert store.local_admissions == before


def test_no_lease_near_the_limit_and_refusals_exact_once_given_back(redis_url: str) -> None:
    spec = WindowSpec(20, 10.0, 10)
    p = f"l{next(_prefixes)}"
    a = _store(redis_url, p, lease=True, lease_life=30.0)
    b = _store(redis_url, p, lease=True, lease_life=30.0)
    t = 1000.0
    admitted = 0
    refused = 0
    for i in range(60):
        store = (a, b)[i % 2]
        r = store.execute(Batch([_hit("k", spec)]), t + i * 0.001, BANS)
        admitted += r.admitted
        refused += not r.admitted
    held = sum(x.left for s in (a, b) for x in s._leases.values())
    # the window holds what was admitted and what the leases still hold: never more
    assert admitted + held == 20
    assert _total(redis_url, p, "k", spec, t + 0.5) == 20
    # leases near the limit were small: at most a quarter of what was left each
    assert held <= 20 // 4
    a.release_leases()
    b.release_leases()
    for i in range(10):
        r = a.execute(Batch([_hit("k", spec)]), t + 0.5 + i * 0.001, BANS)
        admitted += r.admitted
    assert admitted == 20  # the whole quota, exactly, to whoever asked


hit_plan = st.tuples(
    st.integers(0, 2),  # which worker (2: one without leases)
    st.sampled_from((0.0, 0.0, 0.0, 0.01, 0.05, 0.2, 0.3, 0.5, 0.999, 1.0, 2.5)),  # time step
    st.sampled_from((1, 1, 1, 2)),  # cost
    st.integers(0, 1),  # which key
    st.booleans(),  # a second window in the batch
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(hit_plan, min_size=20, max_size=160), st.sampled_from((6, 13, 40)))
def test_interleaved_workers_never_admit_past_the_limit(
    redis_url: str, plan: list[tuple[Any, ...]], limit: int
) -> None:
    spec = WindowSpec(limit, 4.0, 4)  # 1 s buckets
    other = WindowSpec(limit * 2, 2.0, 2)
    p = f"l{next(_prefixes)}"
    workers = [
        _store(redis_url, p, lease=True, lease_life=60.0),
        _store(redis_url, p, lease=True, lease_life=0.4),
        _store(redis_url, p),
    ]
    now = 1000.0
    admitted: dict[str, list[tuple[float, int]]] = {}
    for who, step, cost, key, two in plan:
        now += step
        hits = [_hit(f"k{key}", spec, cost)]
        if two:
            hits.append(_hit(f"o{key}", other, 1))
        r = workers[who].execute(Batch(hits), now, BANS)
        if r.admitted:
            for h in hits:
                admitted.setdefault(h.key + "/" + str(h.spec.limit), []).append(
                    (now, h.cost)
                )
    for name, times in admitted.items():
        _check_bound(times, spec if name.startswith("k") else other)
    # nothing is left held once the leases end: Redis counts exactly what was admitted
    for w in workers[:2]:
        w.release_leases()
    for key in ("k0", "k1"):
        inside = sum(
            c
            for t, c in admitted.get(f"{key}/{limit}", [])
            if int(t // spec.width) > int(now // spec.width) - spec.buckets - 1
        )
        assert _total(redis_url, p, key, spec, now) == inside


def test_concurrent_threads_on_two_workers(redis_url: str) -> None:
    """Eight threads on two leasing workers (real clock, Redis time) hammer one limit: no
    more than the limit is admitted, and Redis counts exactly that once leases end."""
    spec = WindowSpec(300, 600.0, 10)  # 60 s buckets: the run stays in one window
    p = f"l{next(_prefixes)}"
    a = _store(redis_url, p, lease=True, server_time=True)
    b = _store(redis_url, p, lease=True, server_time=True)
    counts = [0] * 8
    stop = time.monotonic() + 1.5

    def work(i: int) -> None:
        store = (a, b)[i % 2]
        while time.monotonic() < stop:
            r = store.execute(Batch([_hit("k", spec)]), time.time(), BANS)
            counts[i] += r.admitted

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sum(counts) <= 300
    assert a.local_admissions + b.local_admissions > 0
    a.release_leases()
    b.release_leases()
    client = redis.Redis.from_url(redis_url)
    probe = RedisStore(client, prefix=p, server_time=True)
    hit = _hit("k", spec, 1, consume=False)
    probe.execute(Batch([hit]), time.time(), BANS)
    assert spec.limit - hit.remaining == sum(counts)


def test_every_key_expires(redis_url: str) -> None:
    spec = WindowSpec(50, 3.0, 3)
    p = f"l{next(_prefixes)}"
    a = _store(redis_url, p, lease=True)
    b = _store(redis_url, p, lease=True)
    now = 1000.0
    for i in range(200):
        (a, b)[i % 2].execute(Batch([_hit(f"k{i % 7}", spec)], ("ip:1",)), now, BANS)
        now += 0.013
    a.release_leases()
    b.release_leases()
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match="{" + p + "}:*"))
    assert keys
    for key in keys:
        assert client.pttl(key) > 0, key


@pytest.mark.parametrize("policy", ["open", "closed"])
def test_failure_policy_and_no_lease_past_its_end(redis_url: str, policy: str) -> None:
    spec = WindowSpec(1000, 100.0, 10)
    p = f"l{next(_prefixes)}"
    store = _store(redis_url, p, lease=True, lease_life=1.0, on_failure=policy)
    now = 1000.0
    store.execute(Batch([_hit("k", spec)]), now, BANS)
    assert store._leases["k"].left == 2

    def down(*args: Any, **kw: Any) -> Any:
        raise redis.ConnectionError("down")

    store._call = down  # type: ignore[method-assign]
    # Redis is down: the lease's units are already charged there, so they still admit
    for _ in range(2):
        r = store.execute(Batch([_hit("k", spec)]), now + 0.5, BANS)
        assert r.admitted
    assert store.fallbacks == 0
    # used up, or past its end: the failure policy decides, as without leases
    r = store.execute(Batch([_hit("k", spec)]), now + 0.6, BANS)
    assert r.admitted is (policy == "open")
    assert store.fallbacks == 1
    fresh = _store(redis_url, p, lease=True, lease_life=1.0, on_failure=policy)
    fresh.execute(Batch([_hit("j", spec)]), now, BANS)
    fresh._call = down  # type: ignore[method-assign]
    fresh._breaker.interval = 0.0  # (probe at once: every call reaches `_call`)
    r = fresh.execute(Batch([_hit("j", spec)]), now + 1.0, BANS)  # the lease has ended
    assert r.admitted is (policy == "open")
    assert fresh.fallbacks == 1


def test_asyncio_workers_give_back_through_the_flush(redis_url: str) -> None:
    asyncio.run(_asyncio_workers(redis_url))


async def _asyncio_workers(redis_url: str) -> None:
    import redis.asyncio

    spec = WindowSpec(1000, 100.0, 10)
    p = f"l{next(_prefixes)}"
    store = RedisStore(
        redis.asyncio.Redis.from_url(redis_url), prefix=p, server_time=False, lease=True
    )
    now = 1000.0
    for i in range(20):
        r = await store.aexecute(Batch([_hit("k", spec)]), now + i * 0.01, BANS)
        assert r.admitted
    assert store.local_admissions > 10
    await store.aclose()  # gives back what the leases hold
    assert _total(redis_url, p, "k", spec, now + 1) == 20


def test_partly_leased_batch_is_admitted_or_refused_whole(redis_url: str) -> None:
    big = WindowSpec(1000, 100.0, 10)
    small = WindowSpec(2, 100.0, 10)
    p = f"l{next(_prefixes)}"
    store = _store(redis_url, p, lease=True)
    now = 1000.0
    store.execute(Batch([_hit("k", big)]), now, BANS)
    assert store._leases["k"].left == 2
    # "k" from its lease, "s" (no lease: too close to its limit) from Redis
    for _ in range(2):
        r = store.execute(Batch([_hit("k", big), _hit("s", small)]), now, BANS)
        assert r.admitted and [h.fits for h in r.hits] == [True, True]
    assert store.leased_hits == 2 and store.local_admissions == 0
    store.execute(Batch([_hit("k", big)]), now, BANS)  # a new lease
    left = store._leases["k"].left
    assert left > 0
    r = store.execute(Batch([_hit("k", big), _hit("s", small)]), now, BANS)
    assert not r.admitted and [h.fits for h in r.hits] == [True, False]
    assert store._leases["k"].left == left  # the unit taken went back to the lease
    store.release_leases()
    assert _total(redis_url, p, "k", big, now) == 4
    assert _total(redis_url, p, "s", small, now) == 2


def test_ban_reaches_a_leasing_worker_with_its_next_flush(redis_url: str) -> None:
    asyncio.run(_ban_news(redis_url))


async def _ban_news(redis_url: str) -> None:
    """A worker admitting from a lease learns a ban imposed through another worker with
    its next flush (within `_NEWS_EVERY` of its admissions), not when its lease ends."""
    import redis.asyncio

    from apiguard.store.base import Ban

    spec = WindowSpec(1000, 600.0, 10)
    p = f"l{next(_prefixes)}"
    a, b = (
        RedisStore(redis.asyncio.Redis.from_url(redis_url), prefix=p, server_time=False,
                   lease=True, lease_life=60.0)
        for _ in range(2)
    )
    now = 1000.0
    for _ in range(2):  # a lease of 2 on the key, then one admission from it
        r = await a.aexecute(Batch([_hit("k", spec)], ("ip:1",)), now, BANS)
        assert r.admitted
    assert a.local_admissions >= 1
    b.impose(Ban("ip:1", now + 300.0, 1), now)
    await b.drain()
    time.sleep(0.12)  # (news are read at most every 0.1 s of real time)
    r = await a.aexecute(Batch([_hit("k", spec)], ("ip:1",)), now + 1, BANS)
    assert r.admitted  # from the lease; its flush brings the news
    await a.drain()
    r = await a.aexecute(Batch([_hit("k", spec)], ("ip:1",)), now + 2, BANS)
    assert not r.admitted and r.ban is not None and r.ban.key == "ip:1"
    assert abs(r.ban.until - (now + 300.0)) < 1.0
    # a sync worker polls the news itself
    c = _store(redis_url, p, lease=True, lease_life=60.0)
    c.execute(Batch([_hit("j", spec)], ("ip:2",)), now, BANS)
    await b.aexecute(Batch([_hit("x", spec)], ()), now, BANS)
    b.impose(Ban("ip:2", now + 300.0, 1), now)
    await b.drain()
    time.sleep(0.12)
    assert c.execute(Batch([_hit("j", spec)], ("ip:2",)), now + 1, BANS).admitted
    r = c.execute(Batch([_hit("j", spec)], ("ip:2",)), now + 2, BANS)
    assert not r.admitted and r.ban is not None
    await a.aclose()
    await b.aclose()
