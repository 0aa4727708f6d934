"""Holds never finished (inventory hoarding, OAT-021), both ways: accounts that hold
vehicles and never check out are refused further holds after `unfinished` of them, AND
riders who hold, check out most of the time and sometimes give up are never refused. A
held-out evaluation had 10 hoarding accounts hold 245 vehicles in 4.5 hours under a
`6/hour` flow per account; nothing watched holds started and never finished."""

from __future__ import annotations

import random
from typing import Annotated, Any

import pytest
import redis.asyncio
from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel

from apiguard import ConfigurationError, Guard
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock
from apiguard.simulate.driver import AsgiDriver
from apiguard.store.redis import RedisStore
from detection_support import BROWSERS, Client, current_user, public_ip, run

START = 5_000_000.0
VEHICLES = 60
HOLD_FOR = 600.0


class HoldBody(BaseModel):
    vehicle_id: int


def hold_app(guard: Guard, clock: FakeClock, unfinished: int = 3) -> FastAPI:
    """A ride app: a hold keeps a vehicle for 10 minutes; a checkout of one's own live
    hold books it."""
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)
    held: dict[int, tuple[int, float]] = {}  # vehicle -> (user, until)
    holds: dict[int, tuple[int, int]] = {}  # hold id -> (user, vehicle)

    @app.post("/holds", status_code=201)
    @guard.flow("hold", "6/hour", count="success", finished_by="checkout", unfinished=unfinished)
    async def hold(body: HoldBody, user: Annotated[int, Depends(current_user)]) -> dict[str, int]:
        now = clock()
        taken = held.get(body.vehicle_id)
        if taken is not None and taken[1] > now:
            raise HTTPException(409, "vehicle held")
        held[body.vehicle_id] = (user, now + HOLD_FOR)
        holds[len(holds) + 1] = (user, body.vehicle_id)
        return {"hold_id": len(holds)}

    @app.get("/me")
    async def me(user: Annotated[int, Depends(current_user)]) -> dict[str, int]:
        return {"user": user}

    @app.post("/holds/{hold_id}/checkout")
    @guard.flow("checkout", "30/hour", count="success")
    async def checkout(
        hold_id: int, user: Annotated[int, Depends(current_user)]
    ) -> dict[str, bool]:
        found = holds.get(hold_id)
        if found is None or found[0] != user:
            raise HTTPException(404)
        vehicle = held.get(found[1])
        if vehicle is None or vehicle[0] != user or vehicle[1] <= clock():
            raise HTTPException(410, "hold expired")
        del held[found[1]]
        return {"booked": True}

    return app


def _guard(store: Any = None) -> tuple[Guard, FakeClock]:
    """The default policy, every detector on (`flow_groups` once refused 6 of 240 of the
    office's checkouts here, in one hash seed of twelve: `tests/test_flow_groups_windows.py`)."""
    clock = FakeClock(START)
    config = {"secret": "u" * 32}
    if store is None:
        return Guard(config, clock=clock), clock
    return Guard(config, clock=clock, store=store), clock


def _redis_store(url: str) -> RedisStore:
    return RedisStore(redis.asyncio.Redis.from_url(url), server_time=False, timeout=5.0)


async def _rider(client: Client, rng: random.Random, log: dict[str, int]) -> None:
    """One session: 60% of them hold a vehicle (another on a 409), and check out 85%
    of the holds they get, within two minutes."""
    if rng.random() > 0.6:
        await client.send("GET", "/me")
        return
    for _ in range(3):
        resp = await client.send("POST", "/holds", {"vehicle_id": rng.randrange(1, VEHICLES)})
        log[str(resp.status)] = log.get(str(resp.status), 0) + 1
        if resp.status == 409:
            continue
        if resp.status == 201 and rng.random() < 0.85:
            client.driver_clock.advance(rng.uniform(20, 120))  # type: ignore[attr-defined]
            done = await client.send("POST", f"/holds/{resp.json()['hold_id']}/checkout")
            log[f"checkout {done.status}"] = log.get(f"checkout {done.status}", 0) + 1
        break


def _campaign(guard: Guard, clock: FakeClock, seed: int) -> tuple[int, dict[str, int]]:
    """10 hoarding accounts (each its own address and browser) keep 30 vehicles held,
    re-holding each as it expires, for 4 hours; 120 riders beside them, one session
    every 20-60 minutes each (an office of 30 of them behind one address)."""
    driver = AsgiDriver(hold_app(guard, clock))
    rng = random.Random(seed)
    hoarders = [
        Client(driver, f"{rng.choice(BROWSERS)} h/{k}", public_ip(rng), token=f"tok-{9000 + k}")
        for k in range(10)
    ]
    office = public_ip(rng)
    riders = [
        Client(
            driver,
            rng.choice(BROWSERS),
            office if k < 30 else public_ip(rng),
            token=f"tok-{k}",
        )
        for k in range(120)
    ]
    for rider in riders:
        rider.driver_clock = clock  # type: ignore[attr-defined]
    due = [START + rng.uniform(0, 3600) for _ in riders]
    log: dict[str, int] = {}

    async def go() -> int:
        taken = 0
        end = START + 4 * 3600
        next_sweep = START + 300
        while clock() < end:
            if clock() >= next_sweep:
                for vehicle in range(1, 31):
                    bot = rng.choice(hoarders)
                    resp = await bot.send("POST", "/holds", {"vehicle_id": vehicle})
                    taken += resp.status == 201
                    clock.advance(rng.uniform(0.5, 3))
                next_sweep = clock() + rng.uniform(480, 560)
            for i, rider in enumerate(riders):
                if due[i] <= clock():
                    await _rider(rider, rng, log)
                    due[i] = clock() + rng.uniform(1200, 3600)
            clock.advance(30)
        return taken

    return run(go()), log


def test_hoarding_accounts_are_refused_and_riders_are_not() -> None:
    guard, clock = _guard()
    taken, log = _campaign(guard, clock, seed=41)
    # 10 accounts x 6/hour x 4 hours = 240 under the flow's rate alone
    assert taken <= 80, taken
    assert "429" not in log and "403" not in log, log  # no rider's hold refused
    assert log.get("201", 0) >= 150 and log.get("checkout 200", 0) >= 120, log
    assert log.get("checkout 429", 0) + log.get("checkout 403", 0) == 0, log


def test_hoarding_accounts_are_refused_and_riders_are_not_on_redis(redis_url: str) -> None:
    guard, clock = _guard(_redis_store(redis_url))
    taken, log = _campaign(guard, clock, seed=42)
    assert taken <= 80, taken
    assert "429" not in log and "403" not in log, log
    assert log.get("checkout 429", 0) + log.get("checkout 403", 0) == 0, log


def _lift(guard: Guard, clock: FakeClock) -> list[int]:
    driver = AsgiDriver(hold_app(guard, clock))
    me = Client(driver, BROWSERS[0], "198.51.100.8", token="tok-3")

    async def go() -> list[int]:
        out: list[int] = []
        ids: list[int] = []
        for vehicle in (1, 2, 3, 4):
            resp = await me.send("POST", "/holds", {"vehicle_id": vehicle})
            out.append(resp.status)
            if resp.status == 201:
                ids.append(resp.json()["hold_id"])
            clock.advance(60)
        out.append((await me.send("POST", f"/holds/{ids[-1]}/checkout")).status)
        clock.advance(5)
        out.append((await me.send("POST", "/holds", {"vehicle_id": 5})).status)
        return out

    result: list[int] = run(go())
    return result


def test_a_checkout_lifts_the_refusal_at_once() -> None:
    """Three holds left open: the fourth is refused (429); checking out one of them
    lets the next hold through at once."""
    guard, clock = _guard()
    assert _lift(guard, clock) == [201, 201, 201, 429, 200, 201]


def test_a_checkout_lifts_the_refusal_at_once_on_redis(redis_url: str) -> None:
    guard, clock = _guard(_redis_store(redis_url))
    assert _lift(guard, clock) == [201, 201, 201, 429, 200, 201]


def test_the_refusal_says_when_to_retry_and_ends() -> None:
    guard, clock = _guard()
    driver = AsgiDriver(hold_app(guard, clock))
    me = Client(driver, BROWSERS[1], "198.51.100.9", token="tok-4")

    async def go() -> tuple[int, float, int]:
        for vehicle in (1, 2, 3):
            assert (await me.send("POST", "/holds", {"vehicle_id": vehicle})).status == 201
        refused = await me.send("POST", "/holds", {"vehicle_id": 4})
        assert "finish one to go on" in refused.json()["detail"]
        retry = next(float(v) for k, v in refused.headers if k == b"retry-after")
        clock.advance(retry + 1)
        later = await me.send("POST", "/holds", {"vehicle_id": 4})
        return refused.status, retry, later.status

    status, retry, later = run(go())
    assert status == 429 and 600 <= retry <= 1000, retry  # a quarter of the hour
    assert later == 201


def test_monitor_mode_reports_and_refuses_nothing() -> None:
    clock = FakeClock(START)
    guard = Guard({"secret": "u" * 32, "mode": "monitor"}, clock=clock)
    driver = AsgiDriver(hold_app(guard, clock))
    me = Client(driver, BROWSERS[2], "198.51.100.10", token="tok-5")

    async def go() -> list[int]:
        return [(await me.send("POST", "/holds", {"vehicle_id": v})).status for v in range(1, 7)]

    assert run(go()) == [201] * 6


def test_a_misspelt_finisher_fails_at_start_up() -> None:
    guard = Guard({"secret": "u" * 32})
    app = FastAPI()

    @app.post("/holds")
    @guard.flow("hold", "6/hour", finished_by="chekout")
    async def hold() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/checkout")
    @guard.flow("checkout", "6/hour")
    async def checkout() -> dict[str, bool]:
        return {"ok": True}

    with pytest.raises(ConfigurationError, match=r"'chekout', which no @guard\.flow declares"):
        guard.check(app)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"finished_by": "hold"}, "cannot finish itself"),
        ({"finished_by": "checkout", "unfinished": 0}, "at least 1"),
        ({"finished_by": "checkout", "unfinished": True}, "at least 1"),
        ({"unfinished": 2}, "needs finished_by"),
        ({"unfinished": 3}, "needs finished_by"),
        ({"finished_by": ""}, "flow name"),
        ({"finished_by": ["checkout", 3]}, "flow name"),
    ],
)
def test_bad_declarations_are_refused(kwargs: dict[str, Any], match: str) -> None:
    guard = Guard({"secret": "u" * 32})
    with pytest.raises(ConfigurationError, match=match):
        guard.flow("hold", "6/hour", **kwargs)


def _shapes_app(guard: Guard, clock: FakeClock, shape: str) -> tuple[Any, str]:
    """The hold flow on a nested router (sync handler, path parameter) or in a mounted
    sub-app; the checkout beside it. Returns the app and the holds' path prefix."""
    from fastapi import APIRouter
    from starlette.applications import Starlette

    inner = APIRouter(prefix="/fleet/{city}")

    @inner.post("/holds", status_code=201)
    @guard.flow("hold", "6/hour", count="success", finished_by="checkout")
    def hold(
        city: str, body: HoldBody, user: Annotated[int, Depends(current_user)]
    ) -> dict[str, int]:
        return {"hold_id": body.vehicle_id}

    @inner.post("/holds/{hold_id}/checkout")
    @guard.flow("checkout", "30/hour", count="success")
    async def checkout(
        city: str, hold_id: int, user: Annotated[int, Depends(current_user)]
    ) -> dict[str, bool]:
        return {"booked": True}

    outer = APIRouter(prefix="/api")
    outer.include_router(inner)
    api = FastAPI()
    api.include_router(outer)
    if shape == "nested":
        api.add_middleware(GuardMiddleware, guard=guard)
        return api, "/api/fleet/berlin"
    root = Starlette()
    root.mount("/v2", api)
    return GuardMiddleware(root, guard=guard), "/v2/api/fleet/berlin"


@pytest.mark.parametrize("shape", ["nested", "mounted"])
def test_the_rule_fires_on_nested_routers_and_mounted_apps(shape: str) -> None:
    guard, clock = _guard()
    app, prefix = _shapes_app(guard, clock, shape)
    me = Client(AsgiDriver(app), BROWSERS[0], "198.51.100.30", token="tok-6")

    async def go() -> list[int]:
        out = []
        for vehicle in (1, 2, 3, 4):
            out.append((await me.send("POST", f"{prefix}/holds", {"vehicle_id": vehicle})).status)
            clock.advance(60)
        out.append((await me.send("POST", f"{prefix}/holds/3/checkout")).status)
        out.append((await me.send("POST", f"{prefix}/holds", {"vehicle_id": 5})).status)
        return out

    assert run(go()) == [201, 201, 201, 429, 200, 201]
