"""Whole apps on the Redis store answer like the same apps on the memory store.

The generated request schedules of tests/test_fast_path.py (anonymous clients, API keys,
`identify()` before and inside routing, decorated limits and flows with refunds, 404/405,
quick bans) run against two apps built alike on two fake clocks: one on Redis, one on a
memory store that declares itself remote (`local = False`), so both take the engine's
remote-store path. Every response (status, body, Retry-After, RateLimit fields) must match.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given, settings

import test_fast_path as fp
from apiguard.store.memory import MemoryStore
from apiguard.store.redis import RedisStore


class RemoteMemory(MemoryStore):
    """The reference: the memory store, taking the engine's remote-store path."""

    local = False  # type: ignore[misc]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.aliases: dict[str, str] = {}
        self.admitted = self.declined = 0


class AppRedis(RedisStore):
    def __init__(self, url: str, buckets: int) -> None:
        super().__init__(
            redis.Redis.from_url(url), server_time=False, strike_buckets=buckets, timeout=5.0
        )
        self.aliases: dict[str, str] = {}
        self.admitted = self.declined = 0


@pytest.fixture
def sides(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    made: list[Any] = []

    def factory(max_keys: int, buckets: int) -> Any:
        store: Any = (
            AppRedis(redis_url, buckets) if len(made) % 2 == 0 else RemoteMemory(max_keys, buckets)
        )
        made.append(store)
        return store

    monkeypatch.setattr(fp, "CountingStore", factory)
    yield made


async def _drive(config: dict[str, Any], schedule: Sequence[tuple[Any, ...]]) -> list[Any]:
    sides = [fp.build(config, fast=False), fp.build(config, fast=False)]
    redis_store = sides[0][2]
    assert isinstance(redis_store, RedisStore) and isinstance(sides[1][2], RemoteMemory)
    redis_store.reset()
    clients = [
        [
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app, client=(ip, 5000)),
                base_url="http://testserver",
            )
            for ip in fp.IPS
        ]
        for app, _, _, _ in sides
    ]
    seen: list[Any] = []
    try:
        for step, (dt, ip, key, user, early, route) in enumerate(schedule):
            method, path, query = fp.ROUTES[route]
            headers = fp._headers(key, user, early)
            url = f"{path}?{query}" if query else path
            out = []
            for (_, _, _, clock), side_clients in zip(sides, clients, strict=True):
                clock.advance(dt)
                resp = await side_clients[ip].request(method, url, headers=headers)
                out.append(fp._observed(resp))
            await redis_store.drain()  # refunds and bans put on tokens: written after
            on_redis, on_memory = out
            assert on_redis == on_memory, (
                f"request #{step} {method} {url} from {fp.IPS[ip]} {headers}: "
                f"redis {on_redis} != memory {on_memory}"
            )
            seen.append(on_redis)
        assert redis_store.fallbacks == 0
        # every key the run left behind expires (windows, markers, strikes, bans, logs)
        client = redis_store._client
        ttls = [client.pttl(k) for k in client.scan_iter(match="{apiguard}:*", count=1000)]
        assert all(ttl > 0 for ttl in ttls), ttls
    finally:
        for side_clients in clients:
            for client in side_clients:
                await client.aclose()
    return seen


@pytest.mark.parametrize("name", ["base", "stacked", "strict-ip-no-churn", "few-buckets"])
@settings(
    max_examples=4,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(schedule=fp.schedule_st)
def test_apps_on_redis_answer_like_apps_on_memory(
    name: str, schedule: list[tuple[Any, ...]], sides: Any
) -> None:
    asyncio.run(_drive(fp.CONFIGS[name], schedule))


def test_the_scripted_schedule_on_redis(sides: Any) -> None:
    seen = asyncio.run(_drive(fp.BASE, fp._scripted()))
    assert [s[0] for s in seen][:9] == [*[200] * 5, 429, 403, 403, 200]
