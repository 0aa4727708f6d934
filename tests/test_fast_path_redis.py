"""The fast admission path on Redis is observably identical to the general path.

`Engine._acheck_fast` (with `Admission.acheck` and `RedisStore.aadmit`) makes a
checkpoint's one script call straight from the compiled rules; an admitted request where
every rule fits ends there, any other reply (refused, banned, a monitor-mode rule over
its limit, a fallback) becomes the general path's hits and result for
`Engine._conclude`. tests/test_fast_path.py's schedules run here against two apps on one
real redis-server (their own key prefixes), one with the fast path off
(`engine._fast = None`): every response (status, body, Retry-After, RateLimit fields)
and, at the end, every key the two wrote (windows, markers, strikes, bans, ban news)
must be the same.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
import redis.asyncio
from hypothesis import HealthCheck, Phase, given, settings

import test_fast_path as fp
from apiguard.store.redis import RedisStore

# the memory store's table sizes do not apply ("small-store"); the rest does
CONFIGS = {k: v for k, v in fp.CONFIGS.items() if "_max_keys" not in v}
RUNS = [0]


class CountingRedisStore(RedisStore):
    """A Redis store that counts what its fast path admitted and handed to the general
    path (refused, banned, monitored, fallen back)."""

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__(
            redis.Redis.from_url(url),  # (sync handlers' checkpoints: the threadpool)
            aclient=redis.asyncio.Redis.from_url(url),
            prefix=prefix,
            timeout=5.0,
        )
        self.admitted = 0
        self.declined = 0
        self.aliases: dict[str, str] = {}
        self.url = url

    async def aadmit(self, *args: Any, **kwargs: Any) -> Any:
        result = await super().aadmit(*args, **kwargs)
        if isinstance(result, tuple):
            self.admitted += 1
        else:
            self.declined += 1
        return result


def _stores(url: str) -> tuple[CountingRedisStore, CountingRedisStore]:
    RUNS[0] += 1  # (fresh prefixes for every example)
    return (
        CountingRedisStore(url, f"fast{RUNS[0]}"),
        CountingRedisStore(url, f"ref{RUNS[0]}"),
    )


async def _state(store: CountingRedisStore) -> dict[str, Any]:
    """Every key under the store's prefix and its value (window keys named alike in both
    apps: `@guard.limit` keys its windows with a process-wide counter)."""
    client = redis.asyncio.Redis.from_url(store.url)
    head = "{" + store.prefix + "}:"
    out: dict[str, Any] = {}
    try:
        async for raw in client.scan_iter(match=head + "*", count=1000):
            key = raw.decode()
            name = key[len(head) :]
            if name.startswith("w:"):
                for prefix, alias in store.aliases.items():
                    if name[2:].startswith(prefix):
                        name = "w:" + alias + name[2 + len(prefix) :]
            kind = (await client.type(raw)).decode()
            if kind == "string":
                value: Any = await client.get(raw)
            elif kind == "hash":
                value = await client.hgetall(raw)
            elif kind == "zset":
                value = await client.zrange(raw, 0, -1, withscores=True)
            else:
                value = kind
            out[name] = value
    finally:
        await client.aclose()
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
@settings(
    max_examples=5,
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate),  # (shrinking Redis schedules takes minutes)
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(schedule=fp.schedule_st)
def test_fast_path_on_redis_matches_general_path(
    name: str, schedule: list[tuple[Any, ...]], redis_url: str
) -> None:
    stores = _stores(redis_url)
    fast, ref, _ = asyncio.run(fp._drive(CONFIGS[name], schedule, stores, _state))
    assert fast.admitted >= 1  # the first request, at least, took the fast path
    assert ref.admitted == ref.declined == 0  # the reference never did
    assert fast.fallbacks == ref.fallbacks == 0


def test_scripted_schedule_on_redis_exercises_both_paths(redis_url: str) -> None:
    fast, ref, seen = asyncio.run(
        fp._drive(fp.BASE, fp._scripted(), _stores(redis_url), _state)
    )
    statuses = [s[0] for s in seen]
    # limits spent, strikes, bans (and their expiry), churn, flows with refunds: as in
    # tests/test_fast_path.py (the same schedule, compared there with fixed statuses).
    # Equal up to request 25 only: a user identified before routing and refused by the
    # route's own limit. In process, identify() checked the global rules at once (their
    # charge stays); on the loop with Redis it defers them to the handler's checkpoint,
    # whose refused batch charges nothing (README, "What is still per process")
    assert [s[4] for s in seen[25:27]] == [
        '"per-principal";r=2;t=10, "per-ip";r=5;t=10, "limit:limited";r=0;t=10',
        '"per-ip";r=4;t=10',
    ]
    assert statuses[:17] == [*[200] * 5, 429, 403, 403, 200, *[200] * 5, 429, 403, 403]
    assert statuses.count(400) == 2 and statuses.count(429) >= 4
    # most checkpoints were admitted on the fast path; its refusals were concluded from
    # its own call (a ban known in process is refused before any)
    assert fast.admitted >= 15 and fast.declined >= 3
    assert ref.admitted == ref.declined == 0


def test_a_dead_redis_falls_back_alike_on_both_paths() -> None:
    """Fail-open and fail-closed rules, the breaker and its counters: the fast path hands
    the fallback to the general path's conclusion (same responses, same fallbacks)."""
    from fastapi import FastAPI

    from apiguard import Guard
    from apiguard.asgi import GuardMiddleware
    from redisproc import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there
    config = {
        "secret": fp.SECRET,
        "limits": {"principal": "5/minute", "ip": None},
        "store": {"timeout": 0.2, "breaker": 60},
    }

    def build(fast: bool) -> tuple[Any, Any]:
        store = CountingRedisStore(url, "dead")
        guard = Guard(config, store=store)
        if not fast:
            guard.engine._fast = None
        app = FastAPI()
        app.add_middleware(GuardMiddleware, guard=guard)

        @app.get("/open")
        async def open_() -> dict[str, bool]:
            return {"ok": True}

        @app.post("/pay")
        @guard.limit("3/minute", on_store_failure="closed")
        async def pay() -> dict[str, bool]:
            return {"paid": True}

        return app, store

    async def run(app: Any) -> list[Any]:
        transport = fp.httpx.ASGITransport(app=app, client=("203.0.113.7", 5000))
        async with fp.httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            out = []
            for method, path in [("GET", "/open"), ("POST", "/pay")] * 3:
                out.append(fp._observed(await client.request(method, path)))
            return out

    (fast_app, fast), (ref_app, ref) = build(True), build(False)
    seen_fast = asyncio.run(run(fast_app))
    seen_ref = asyncio.run(run(ref_app))
    assert seen_fast == seen_ref
    # fail-open: admitted with the full quota advertised; fail-closed: refused, no strike
    assert [s[0] for s in seen_fast] == [200, 429] * 3
    assert seen_fast[0][4] == '"per-principal";r=5;t=0'
    assert fast.fallbacks == ref.fallbacks == 6
    assert fast.declined == 6 and fast.admitted == 0 and ref.declined == 0
