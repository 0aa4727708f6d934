"""A 3-node Redis Cluster (started with `redis-cli --cluster create`): every script of a
request touches one slot (the prefix's hash tag), so none raises CROSSSLOT, whatever the
principals, IPs and credentials a batch names."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI

from apiguard import Guard
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock
from apiguard.store.base import Run, Tally
from apiguard.store.redis import RedisStore
from redisproc import RedisServer, free_port, require_redis


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    require_redis()
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.skip("redis-cli is not installed")
    nodes = [
        RedisServer(
            port,
            "--cluster-enabled", "yes",
            "--cluster-config-file", f"nodes-{port}.conf",
            "--cluster-node-timeout", "2000",
        ).start()
        for port in (free_port(55_000), free_port(55_000), free_port(55_000))
    ]
    try:
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=30,
        )
        deadline = time.monotonic() + 20
        while True:
            info = subprocess.run(
                [cli, "-p", str(nodes[0].port), "cluster", "info"],
                capture_output=True, text=True, timeout=5,
            ).stdout
            if "cluster_state:ok" in info:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not converge")
            time.sleep(0.2)
        yield ",".join(f"127.0.0.1:{n.port}" for n in nodes)
    finally:
        for n in nodes:
            n.close()


def test_requests_on_a_cluster_never_raise_crossslot(cluster: str) -> None:
    clock = FakeClock(1_000.0)
    guard = Guard(
        {
            "limits": {"principal": "5/minute", "ip": "50/minute", "route": "4/minute"},
            "identity": {"new_credentials_per_ip": "3/minute"},
            "bans": {"after": 2, "within": 60, "base": 30},
            "store": {"timeout": 2.0},
        },
        store=f"redis+cluster://{cluster}",
        clock=clock,
    )
    store = guard.store
    assert isinstance(store, RedisStore)
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.get("/r")
    @guard.flow("browse", "3/minute")
    async def r() -> dict[str, bool]:
        return {"ok": True}

    async def drive() -> list[int]:
        statuses = []
        for ip in ("203.0.113.1", "203.0.113.2", "198.51.100.3"):
            transport = httpx.ASGITransport(app=app, client=(ip, 5000))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                for n in range(8):
                    clock.advance(0.5)
                    resp = await client.get("/r", headers={"x-api-key": f"key-{ip}-{n % 5}"})
                    statuses.append(resp.status_code)
        await store.drain()
        return statuses

    statuses = asyncio.run(drive())
    assert store.fallbacks == 0 and store.available
    assert 200 in statuses and 429 in statuses and 403 in statuses  # limits, churn, bans
    ops = [Tally("t", 10.0), Tally("d", 10.0, item="ab12"), Run("walk", 10.0, 3)]
    store.observe(ops, clock())
    assert store.fallbacks == 0 and ops[0].count == 1 and ops[1].count == 1
    store.reset()
