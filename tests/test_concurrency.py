"""Flows do not overshoot under concurrency.

A principal that has used limit - 1 of a flow sends 50 requests at once. Whatever the
handler style (async on the loop, sync in the threadpool, 50 OS threads each driving the
app), exactly one more is admitted: `count="success"` reserves its unit at the checkpoint
and only gives it back when the response is not a success, so concurrent requests cannot
all see the last unit free.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from starlette.testclient import TestClient

from apiguard import Guard
from apiguard.asgi import GuardMiddleware
from apiguard.config import BanConfig
from apiguard.simulate.clock import FakeClock
from apiguard.store.base import Batch, Hit
from apiguard.store.memory import MemoryStore
from apiguard.window import WindowSpec

N = 50
LIMIT = 5
ALICE = {"x-api-key": "alice-key"}
BOB = {"x-api-key": "bob-key"}


def build(
    count: str,
    *,
    sync: bool,
    fail: bool = False,
    gate: threading.Event | None = None,
    defaults: bool = False,
) -> FastAPI:
    """One flow route; global limits and bans off (unless `defaults`) so only the flow
    decides. The handler sleeps 10 ms (or waits for `gate`), then succeeds (200) or fails
    (400)."""
    config = (
        {} if defaults else {"limits": {"principal": None, "ip": None}, "bans": {"enabled": False}}
    )
    guard = Guard(config, clock=FakeClock(1_000.0))
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)
    if sync:

        @app.post("/f")
        @guard.flow("f", f"{LIMIT}/hour", count=count)
        def flow_sync() -> dict[str, bool]:
            if gate is None:
                time.sleep(0.01)
            else:
                gate.wait(10)
            if fail:
                raise HTTPException(400, "nope")
            return {"ok": True}

    else:

        @app.post("/f")
        @guard.flow("f", f"{LIMIT}/hour", count=count)
        async def flow_async() -> dict[str, bool]:
            await asyncio.sleep(0.01)
            while gate is not None and not gate.is_set():
                await asyncio.sleep(0.001)
            if fail:
                raise HTTPException(400, "nope")
            return {"ok": True}

    return app


async def burst(app: FastAPI, warm_up: int, headers: dict[str, str] = ALICE) -> Counter[int]:
    """`warm_up` sequential requests, then N concurrent ones; statuses of the N."""
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for _ in range(warm_up):
            assert (await client.post("/f", headers=headers)).status_code == 200
        responses = await asyncio.gather(*(client.post("/f", headers=headers) for _ in range(N)))
    return Counter(r.status_code for r in responses)


async def one(app: FastAPI, headers: dict[str, str] = ALICE) -> int:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return (await client.post("/f", headers=headers)).status_code


@pytest.mark.parametrize("count", ["success", "attempt"])
@pytest.mark.parametrize("sync", [False, True], ids=["async-handler", "sync-threadpool"])
def test_concurrent_burst_at_limit_minus_one_admits_exactly_one(count, sync):
    app = build(count, sync=sync)
    statuses = asyncio.run(burst(app, LIMIT - 1))
    assert statuses == Counter({200: 1, 429: N - 1})
    assert asyncio.run(one(app)) == 429  # the one admitted request used the last unit
    assert asyncio.run(one(app, BOB)) == 200  # another principal is unaffected


@pytest.mark.parametrize("sync", [False, True], ids=["async-handler", "sync-threadpool"])
def test_with_default_global_limits_and_bans(sync):
    """Defaults: 600/min per principal, 3000/min per IP, bans after 20 refusals. The 49
    refusals ban the principal part-way (403), but still exactly one request gets in."""
    app = build("success", sync=sync, defaults=True)
    statuses = asyncio.run(burst(app, LIMIT - 1))
    assert statuses[200] == 1
    assert statuses[429] + statuses[403] == N - 1
    assert statuses[403] > 0
    assert asyncio.run(one(app)) == 403  # banned
    assert asyncio.run(one(app, BOB)) == 200


@pytest.mark.parametrize("count", ["success", "attempt"])
def test_concurrent_burst_from_a_fresh_principal_admits_exactly_the_limit(count):
    app = build(count, sync=False)
    statuses = asyncio.run(burst(app, 0))
    assert statuses == Counter({200: LIMIT, 429: N - LIMIT})


@pytest.mark.parametrize("count", ["success", "attempt"])
@pytest.mark.usefixtures("eager_thread_switching")
def test_fifty_os_threads_at_limit_minus_one_admit_exactly_one(count):
    """Each thread drives the app through its own event loop (TestClient portal), so the
    checkpoints really run in parallel; the sync handler itself runs in a threadpool."""
    app = build(count, sync=True)
    client = TestClient(app, client=("203.0.113.7", 40000))
    for _ in range(LIMIT - 1):
        assert client.post("/f", headers=ALICE).status_code == 200
    barrier = threading.Barrier(N)

    def call(_: int) -> int:
        barrier.wait()
        return client.post("/f", headers=ALICE).status_code

    with ThreadPoolExecutor(N) as pool:
        statuses = Counter(pool.map(call, range(N)))
    assert statuses == Counter({200: 1, 429: N - 1})
    assert client.post("/f", headers=ALICE).status_code == 429


async def gated_burst(app: FastAPI, gate: threading.Event) -> Counter[int]:
    """N concurrent requests whose admitted handlers wait until every refusal is back."""
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        tasks = [asyncio.create_task(client.post("/f", headers=ALICE)) for _ in range(N)]
        deadline = time.monotonic() + 5
        while sum(t.done() for t in tasks) < N - LIMIT and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        gate.set()
        responses = await asyncio.gather(*tasks)
    return Counter(r.status_code for r in responses)


@pytest.mark.parametrize("sync", [False, True], ids=["async-handler", "sync-threadpool"])
def test_failed_success_flows_give_their_reservation_back(sync):
    """count="success": LIMIT requests hold a reservation while they run (the rest are
    refused), then fail with 400, so every unit comes back. count="attempt" keeps them."""
    gate = threading.Event()
    app = build("success", sync=sync, fail=True, gate=gate)
    assert asyncio.run(gated_burst(app, gate)) == Counter({400: LIMIT, 429: N - LIMIT})
    assert asyncio.run(one(app)) == 400  # all reservations were given back

    gate = threading.Event()
    app = build("attempt", sync=sync, fail=True, gate=gate)
    assert asyncio.run(gated_burst(app, gate)) == Counter({400: LIMIT, 429: N - LIMIT})
    assert asyncio.run(one(app)) == 429


@pytest.fixture
def eager_thread_switching():
    """Switch threads every microsecond so that unlocked critical sections interleave."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


@pytest.mark.usefixtures("eager_thread_switching")
def test_store_is_atomic_under_threads():
    spec, wide = WindowSpec(LIMIT, 60.0), WindowSpec(10**6, 60.0)
    bans = BanConfig(enabled=False)
    for _ in range(20):
        store = MemoryStore()
        barrier = threading.Barrier(N)

        def call(_: int, store: MemoryStore = store, barrier: threading.Barrier = barrier) -> bool:
            barrier.wait()
            wides = [Hit(f"wide{i}", wide) for i in range(8)]
            batch = Batch([*wides, Hit("k", spec), Hit("wide", wide)])
            return store.execute(batch, 1.0, bans).admitted

        with ThreadPoolExecutor(N) as pool:
            admitted = sum(pool.map(call, range(N)))
        assert admitted == LIMIT
        assert store._windows["k"].total == LIMIT
        # refused batches rolled back their optimistic charges
        assert {store._windows[f"wide{i}"].total for i in range(8)} == {LIMIT}
        assert store._windows["wide"].total == LIMIT
