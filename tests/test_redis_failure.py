"""A Redis that dies or hangs under load: fail-open flows, fail-closed refuses, no request
waits longer than the timeout, one log line per state change, recovery restores limits."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi import Depends, FastAPI, Header
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from apiguard import Guard, identify
from apiguard.asgi import GuardMiddleware
from apiguard.store.redis import RedisStore
from redisproc import RedisServer

TIMEOUT = 0.25  # above a loaded test machine's slowest healthy call
BREAKER = 0.5


@pytest.fixture
def server() -> Iterator[RedisServer]:
    srv = RedisServer().start()
    try:
        yield srv
    finally:
        if srv.proc is not None:
            os.kill(srv.proc.pid, signal.SIGCONT)
        srv.close()


def _app(url: str, reader: InMemoryMetricReader) -> tuple[FastAPI, Guard]:
    guard = Guard(
        {
            "limits": {"principal": "1000/minute", "ip": None},
            "bans": {"enabled": False},
            "store": {"timeout": TIMEOUT, "breaker": BREAKER},
        },
        store=url,
        meter_provider=MeterProvider(metric_readers=[reader]),
    )
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.get("/open")
    async def open_() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/pay")
    @guard.limit("3/minute", on_store_failure="closed")
    async def pay() -> dict[str, bool]:
        return {"paid": True}

    return app, guard


def _fallbacks(reader: InMemoryMetricReader) -> dict[str, int]:
    found: dict[str, int] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == "apiguard.store.fallbacks":
                    for point in metric.data.data_points:
                        found[str(point.attributes["apiguard.store.policy"])] = point.value
    return found


async def _timed(client: httpx.AsyncClient, method: str, path: str) -> tuple[int, float]:
    started = time.perf_counter()
    resp = await client.request(method, path)
    return resp.status_code, time.perf_counter() - started


def test_a_hung_then_dead_redis_under_load(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="apiguard")
    reader = InMemoryMetricReader()
    app, guard = _app(server.url, reader)
    assert server.proc is not None

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert [(await client.post("/pay")).status_code for _ in range(4)] == [
                200, 200, 200, 429,
            ]
            # Redis hangs (SIGSTOP): the first calls time out, then the breaker answers
            assert server.proc is not None
            os.kill(server.proc.pid, signal.SIGSTOP)
            results = await asyncio.gather(*(_timed(client, "GET", "/open") for _ in range(30)))
            assert {status for status, _ in results} == {200}  # fail-open
            # nobody waits for the hung server beyond the timeout (the slack is this
            # machine running 30 requests at once; without the timeout they would hang)
            assert max(elapsed for _, elapsed in results) < TIMEOUT + 0.5
            started = time.perf_counter()
            later = [await _timed(client, "GET", "/open") for _ in range(50)]
            assert {s for s, _ in later} == {200}
            assert time.perf_counter() - started < 1.0  # the breaker: no per-request wait
            paid = [(await client.post("/pay")).status_code for _ in range(3)]
            assert paid == [429, 429, 429]  # fail-closed
            # Redis dies (SIGKILL while stopped) and comes back empty on the same port
            os.kill(server.proc.pid, signal.SIGCONT)
            server.stop()
            await asyncio.sleep(BREAKER + 0.05)
            assert (await client.get("/open")).status_code == 200  # refused connection
            server.start()
            store = guard.store
            assert isinstance(store, RedisStore)
            deadline = time.monotonic() + 10
            while not store.available and time.monotonic() < deadline:
                await asyncio.sleep(BREAKER / 5)
                await client.get("/open")  # the breaker's probe, once per interval
            assert store.available  # recovered by itself
            statuses = [(await client.post("/pay")).status_code for _ in range(5)]
            assert statuses == [200, 200, 200, 429, 429]  # enforced again (Redis restarted empty)

    asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records]
    down = [m for m in lines if "is unavailable" in m]
    up = [m for m in lines if "reachable again" in m]
    assert 1 <= len(down) <= 3 and 1 <= len(up) <= 3, lines  # per state change, not per request
    assert "127.0.0.1" in down[0] and "password" not in down[0]
    counted = _fallbacks(reader)
    assert counted.get("open", 0) >= 80 and counted.get("closed", 0) >= 3


def test_identify_in_a_sync_dependency_refuses_before_the_handler_runs(redis_url: str) -> None:
    guard = Guard(
        {"limits": {"principal": "2/minute", "ip": None}, "bans": {"enabled": False}},
        store=redis_url,
    )
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)
    ran: list[int] = []

    def user(x_user: str = Header()) -> str:  # a sync dependency: the threadpool
        identify(x_user)
        return x_user

    @app.post("/write")
    async def write(u: str = Depends(user)) -> dict[str, bool]:
        ran.append(1)
        return {"ok": True}

    from starlette.testclient import TestClient

    with TestClient(app) as client:
        statuses = [client.post("/write", headers={"x-user": "ann"}).status_code for _ in range(4)]
    assert statuses == [200, 200, 429, 429]
    assert len(ran) == 2  # refused in the dependency: the undecorated write never ran


def test_a_quick_redis_restart_costs_no_fallback(server: RedisServer) -> None:
    import redis.asyncio

    from apiguard.config import BanConfig
    from apiguard.store.base import Batch, Hit
    from apiguard.window import WindowSpec

    store = RedisStore(redis.asyncio.Redis.from_url(server.url), timeout=2.0)

    def batch() -> Batch:
        return Batch([Hit("w|x", WindowSpec(5, 60.0), 1, subject="x")], ("x",))

    async def scenario() -> None:
        assert (await store.aexecute(batch(), 0.0, BanConfig())).admitted
        server.stop()  # restarted empty: kept connections broken, no script cached
        server.start()
        result = await store.aexecute(batch(), 0.0, BanConfig())
        assert result.admitted and result.hits[0].remaining == 4  # counted in Redis
        assert store.fallbacks == 0 and store.available

    asyncio.run(scenario())
