"""Review s22b: `@guard.flow(finished_by=..., unfinished=...)` (holds never finished,
OAT-021) attacked as a hoarder, and misused as a careless developer or met by honest
users. Holes are strict xfails (the figure each one measured is in its reason); verified
strengths are plain controls."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterator, Sequence
from typing import Annotated, Any

import pytest
import redis
from fastapi import Depends, FastAPI, Header, HTTPException, Response

from apiguard import ConfigurationError, Guard, identify
from apiguard.asgi import GuardMiddleware
from apiguard.audit import audit_app
from apiguard.simulate.clock import FakeClock
from apiguard.simulate.driver import AsgiDriver
from detection_support import BROWSERS, Client, current_user, run
from test_unfinished_flows import START, HoldBody, _guard, _redis_store, hold_app

SECRET = "r" * 32
CONFIG: dict[str, Any] = {"secret": SECRET, "detection": {"flow_groups": {"enabled": False}}}


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


def _fresh(store: Any = None, config: dict[str, Any] | None = None) -> tuple[Guard, FakeClock]:
    clock = FakeClock(START)
    extra = {} if store is None else {"store": store}
    return Guard(config or CONFIG, clock=clock, **extra), clock


def _signed_in(authorization: Annotated[str | None, Header()] = None) -> str:
    return str(current_user(authorization))


def _anonymous() -> str:
    return "anon"


def shop(
    guard: Guard,
    clock: FakeClock,
    *,
    rate: str = "6/hour",
    finishers: Sequence[str] = ("checkout",),
    per: str = "principal",
    anonymous: bool = False,
) -> FastAPI:
    """Holds (10 minutes), a checkout that needs no hold (a cart's purchase), and an
    idempotent cancel (DELETE answers 204 whether or not the hold still exists, as REST
    APIs commonly do)."""
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)
    held: dict[int, tuple[str, float]] = {}
    count = [0]

    who = _anonymous if anonymous else _signed_in

    @app.post("/holds", status_code=201)
    @guard.flow("hold", rate, per=per, count="success", finished_by=list(finishers), unfinished=3)
    async def hold(body: HoldBody, user: str = Depends(who)) -> dict[str, int]:
        taken = held.get(body.vehicle_id)
        if taken is not None and taken[1] > clock() and taken[0] != user:
            raise HTTPException(409)
        held[body.vehicle_id] = (user, clock() + 600)
        count[0] += 1
        return {"hold_id": count[0]}

    @app.post("/checkout")
    @guard.flow("checkout", "30/hour", per=per, count="success")
    async def checkout(user: str = Depends(who)) -> dict[str, bool]:
        return {"ok": True}

    @app.delete("/holds/{hold_id}", status_code=204)
    @guard.flow("cancel", "30/hour", per=per, count="success")
    async def cancel(hold_id: int, user: str = Depends(who)) -> Response:
        return Response(status_code=204)

    return app


async def _holds(
    me: Client, clock: FakeClock, n: int, every: float = 60.0, first: int = 100
) -> list[int]:
    out = []
    for v in range(n):
        out.append((await me.send("POST", "/holds", {"vehicle_id": first + v})).status)
        clock.advance(every)
    return out


# -- 1. a burst of concurrent holds -------------------------------------------------------


async def _burst(me: Client, n: int) -> int:
    sent = [me.send("POST", "/holds", {"vehicle_id": i}) for i in range(n)]
    return sum(r.status == 201 for r in await asyncio.gather(*sent))


def test_control_a_concurrent_burst_stops_at_the_bar_in_process() -> None:
    """In process the observation lands at the response start: 20 concurrent holds
    under a 30/hour flow, 3 through (the bar)."""
    guard, clock = _fresh()
    me = Client(
        AsgiDriver(shop(guard, clock, rate="30/hour")), BROWSERS[0], "198.51.100.8", token="tok-8"
    )
    assert run(_burst(me, 20)) == 3


def test_a_concurrent_burst_of_holds_passes_the_bar_on_redis(redis_url: str) -> None:
    """Fixed: 20 of 20 concurrent holds went through under a 30/hour flow (bar 3);
    starts are counted as they are admitted now."""
    guard, clock = _fresh(_redis_store(redis_url))
    me = Client(
        AsgiDriver(shop(guard, clock, rate="30/hour")), BROWSERS[0], "198.51.100.8", token="tok-8"
    )
    assert run(_burst(me, 20)) <= 4


# -- 2. finishes that are not finishes ----------------------------------------------------


def _hoard_with_cancels(finishers: Sequence[str]) -> int:
    """One account re-holds a vehicle every 10 minutes for 4 hours; after each hold it
    cancels a hold id that does not exist (the idempotent DELETE answers 204)."""
    guard, clock = _fresh()
    app = shop(guard, clock, finishers=finishers)
    me = Client(AsgiDriver(app), BROWSERS[0], "198.51.100.8", token="tok-9")

    async def go() -> int:
        taken = 0
        for k in range(24):
            resp = await me.send("POST", "/holds", {"vehicle_id": k % 30})
            if resp.status == 201:
                taken += 1
                await me.send("DELETE", "/holds/999999")
            clock.advance(600)
        return taken

    result: int = run(go())
    return result


def test_control_without_a_cancel_finisher_the_hoarder_is_held() -> None:
    assert _hoard_with_cancels(["checkout"]) <= 7


@pytest.mark.xfail(
    strict=True,
    reason="a cancel declared as a finisher (the README's own ['checkout', 'cancel']) "
    "counts any 2xx: cancelling a hold id that does not exist (idempotent DELETE, 204) "
    "after every hold, one account keeps 21 of 24 holds in 4 h (6 without the cancel)",
)
def test_an_idempotent_cancel_of_nothing_finishes_every_hold() -> None:
    assert _hoard_with_cancels(["checkout", "cancel"]) <= 7


def test_checkouts_banked_before_holding_buy_unfinished_holds() -> None:
    """Fixed: 13 holds in a row before; a finish made while none is open finishes
    nothing, but the first, in a process that never judged the account, counts (it may
    finish a hold another worker saw): 4."""
    guard, clock = _fresh()
    me = Client(
        AsgiDriver(shop(guard, clock, rate="30/hour")), BROWSERS[0], "198.51.100.8", token="tok-8"
    )

    async def go() -> int:
        for _ in range(10):
            assert (await me.send("POST", "/checkout")).status == 200
        clock.advance(60)
        return sum(s == 201 for s in await _holds(me, clock, 20, every=30))

    assert run(go()) <= 4


# -- 3. a flow's routes ------------------------------------------------------------------


def _two_route_app(
    first: dict[str, Any], second: dict[str, Any]
) -> tuple[FastAPI, Guard, FakeClock]:
    guard, clock = _fresh()
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.post("/holds", status_code=201)
    @guard.flow("hold", "6/hour", count="success", **first)
    async def hold(body: HoldBody, user: Annotated[int, Depends(current_user)]) -> dict[str, int]:
        return {"hold_id": 1}

    @app.post("/holds/quick", status_code=201)
    @guard.flow("hold", count="success", **second)
    async def quick(body: HoldBody, user: Annotated[int, Depends(current_user)]) -> dict[str, int]:
        return {"hold_id": 1}

    @app.post("/checkout")
    @guard.flow("checkout", "30/hour", count="success")
    async def checkout(user: Annotated[int, Depends(current_user)]) -> dict[str, bool]:
        return {"ok": True}

    return app, guard, clock


def _through(path: str, app: FastAPI, clock: FakeClock) -> list[int]:
    me = Client(AsgiDriver(app), BROWSERS[0], "198.51.100.8", token="tok-1")

    async def go() -> list[int]:
        out = []
        for v in range(5):
            out.append((await me.send("POST", path, {"vehicle_id": v})).status)
            clock.advance(60)
        return out

    result: list[int] = run(go())
    return result


def test_control_a_later_route_of_the_flow_inherits_finished_by() -> None:
    app, guard, clock = _two_route_app({"finished_by": "checkout"}, {})
    guard.check(app)
    assert _through("/holds/quick", app, clock) == [201, 201, 201, 429, 429]


def test_finished_by_on_a_later_step_only_leaves_the_first_route_open() -> None:
    """Fixed: 5 of 5 holds went through the first route; every step now gets it."""
    app, guard, clock = _two_route_app({}, {"finished_by": "checkout"})
    guard.check(app)  # (every step of the flow got it)
    assert _through("/holds", app, clock) == [201, 201, 201, 429, 429]


def test_a_finisher_without_a_completing_step_refuses_honest_payers() -> None:
    """Fixed: an honest payer was refused 2 of 5; now refused at start-up."""
    guard, _clock = _fresh()
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.post("/holds", status_code=201)
    @guard.flow("hold", "6/hour", count="success", finished_by="checkout")
    async def hold(body: HoldBody, user: Annotated[int, Depends(current_user)]) -> dict[str, int]:
        return {"hold_id": 1}

    @app.post("/checkout/start")
    @guard.flow("checkout", "30/hour", count="success", completes=False)
    async def start(user: Annotated[int, Depends(current_user)]) -> dict[str, bool]:
        return {"ok": True}

    @app.post("/checkout/pay")
    async def pay(user: Annotated[int, Depends(current_user)]) -> dict[str, bool]:
        return {"ok": True}

    with pytest.raises(ConfigurationError, match="completes=False"):
        guard.check(app)


def test_control_a_misspelt_finisher_fails_at_the_first_request_without_check() -> None:
    """No `guard.check(app)`: the middleware's own walk at the first request refuses
    the misspelt finisher (the request does not get through)."""
    guard, _clock = _fresh()
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.post("/holds", status_code=201)
    @guard.flow("hold", "6/hour", count="success", finished_by="chekout")
    async def hold(body: HoldBody, user: Annotated[int, Depends(current_user)]) -> dict[str, int]:
        return {"hold_id": 1}

    @app.post("/checkout")
    @guard.flow("checkout", "30/hour", count="success")
    async def checkout(user: Annotated[int, Depends(current_user)]) -> dict[str, bool]:
        return {"ok": True}

    me = Client(AsgiDriver(app), BROWSERS[0], "198.51.100.8", token="tok-2")
    with pytest.raises(ConfigurationError, match="chekout"):
        run(me.send("POST", "/holds", {"vehicle_id": 1}))


# -- 4. honest people --------------------------------------------------------------------


def test_a_person_refused_once_cannot_hold_two_vehicles_the_same_day() -> None:
    """Fixed: the second of two holds 6 h after a morning refusal was refused for
    1800 s; a repeat offender is one refused within the last window now."""
    guard, clock = _guard()
    me = Client(AsgiDriver(hold_app(guard, clock)), BROWSERS[0], "198.51.100.8", token="tok-5")

    async def go() -> list[int]:
        for v in (1, 2, 3):
            assert (await me.send("POST", "/holds", {"vehicle_id": v})).status == 201
            clock.advance(120)
        assert (await me.send("POST", "/holds", {"vehicle_id": 4})).status == 429
        clock.advance(6 * 3600)
        first = await me.send("POST", "/holds", {"vehicle_id": 10})
        second = await me.send("POST", "/holds", {"vehicle_id": 11})
        return [first.status, second.status]

    assert run(go()) == [201, 201]


def test_an_office_behind_one_address_is_refused_anonymous_holds() -> None:
    """Fixed: 94 of 120 refused; an address is no longer counted (accounts and keys
    only)."""
    guard, clock = _fresh()
    app = shop(guard, clock, rate="100/hour", per="ip", anonymous=True)
    rng = random.Random(5)
    office = [Client(AsgiDriver(app), f"{BROWSERS[k % 4]} k{k}", "203.0.113.50") for k in range(30)]

    async def go() -> int:
        refused = 0
        for step in range(120):
            person = rng.choice(office)
            resp = await person.send("POST", "/holds", {"vehicle_id": step})
            refused += resp.status == 429
            if resp.status == 201 and rng.random() < 0.85:
                assert (await person.send("POST", "/checkout")).status == 200
            clock.advance(120)
        return refused

    assert run(go()) <= 6


def test_control_a_checkout_lifts_at_once_and_reset_forgets() -> None:
    guard, clock = _guard()
    me = Client(AsgiDriver(hold_app(guard, clock)), BROWSERS[0], "198.51.100.8", token="tok-5")

    async def go() -> list[int]:
        out = await _holds(me, clock, 4)
        guard.reset()
        out += await _holds(me, clock, 4, first=200)
        return out

    assert run(go()) == [201, 201, 201, 429] * 2


def test_control_monitor_mode_on_the_flow_refuses_nothing() -> None:
    guard, clock = _fresh()
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.post("/holds", status_code=201)
    @guard.flow("hold", "6/hour", count="success", finished_by="checkout", mode="monitor")
    async def hold(body: HoldBody, user: Annotated[int, Depends(current_user)]) -> dict[str, int]:
        return {"hold_id": 1}

    @app.post("/checkout")
    @guard.flow("checkout", "30/hour", count="success")
    async def checkout(user: Annotated[int, Depends(current_user)]) -> dict[str, bool]:
        return {"ok": True}

    me = Client(AsgiDriver(app), BROWSERS[0], "198.51.100.8", token="tok-6")
    assert run(_holds(me, clock, 5)) == [201] * 5


def test_control_flask_refuses_and_a_checkout_lifts() -> None:
    from flask import Flask, abort, request

    from apiguard.flask import init_app

    guard, clock = _fresh()
    app = Flask("holds_s22b")
    init_app(app, guard)

    def user() -> None:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer tok-"):
            abort(401)
        identify(int(auth.removeprefix("Bearer tok-")))

    @app.post("/holds")
    @guard.flow("hold", "6/hour", count="success", finished_by="checkout", unfinished=3)
    def hold() -> tuple[dict[str, int], int]:
        user()
        return {"hold_id": 1}, 201

    @app.post("/checkout")
    @guard.flow("checkout", "30/hour", count="success")
    def checkout() -> dict[str, bool]:
        user()
        return {"ok": True}

    guard.check(app)
    client = app.test_client()
    headers = {"Authorization": "Bearer tok-3", "User-Agent": BROWSERS[0]}
    where = {"REMOTE_ADDR": "198.51.100.8"}
    out = []
    for v in range(4):
        out.append(
            client.post("/holds", json={"v": v}, headers=headers, environ_base=where).status_code
        )
        clock.advance(60)
    out.append(client.post("/checkout", headers=headers, environ_base=where).status_code)
    out.append(
        client.post("/holds", json={"v": 9}, headers=headers, environ_base=where).status_code
    )
    assert out == [201, 201, 201, 429, 200, 201]


# -- 5. several workers on Redis -----------------------------------------------------------


def _two_workers(url: str) -> tuple[Client, Client, FakeClock]:
    redis.Redis.from_url(url).flushall()
    clock = FakeClock(START)
    a = Guard(CONFIG, clock=clock, store=_redis_store(url))
    b = Guard(CONFIG, clock=clock, store=_redis_store(url))
    one = Client(AsgiDriver(hold_app(a, clock)), BROWSERS[0], "198.51.100.8", token="tok-5")
    two = Client(AsgiDriver(hold_app(b, clock)), BROWSERS[0], "198.51.100.8", token="tok-5")
    return one, two, clock


async def _refused_on_b_then_checkout_on_a(
    a: Client, b: Client, clock: FakeClock, traffic: bool
) -> tuple[int, int]:
    ids = []
    for v in (1, 2, 3):
        resp = await a.send("POST", "/holds", {"vehicle_id": v})
        ids.append(resp.json()["hold_id"])
        clock.advance(30)
    refused = (await b.send("POST", "/holds", {"vehicle_id": 4})).status
    assert (await a.send("POST", f"/holds/{ids[0]}/checkout")).status == 200
    clock.advance(2)
    await asyncio.sleep(0.5)
    if traffic:  # anything the worker records: its flush brings the ban news
        await b.send("GET", "/nothing")
        await asyncio.sleep(0.3)
    return refused, (await b.send("POST", "/holds", {"vehicle_id": 6})).status


def test_control_a_checkout_lifts_on_another_busy_worker(redis_url: str) -> None:
    a, b, clock = _two_workers(redis_url)
    assert run(_refused_on_b_then_checkout_on_a(a, b, clock, traffic=True)) == (429, 201)


@pytest.mark.xfail(
    strict=True,
    reason="a worker that refused the person keeps the ban in its cache after a checkout "
    "on another worker lifted it, until it records something (its refusals record "
    "nothing): a quiet worker answers 429 with Retry-After 868 s after the checkout",
)
def test_a_checkout_lift_does_not_reach_a_quiet_worker(redis_url: str) -> None:
    a, b, clock = _two_workers(redis_url)
    assert run(_refused_on_b_then_checkout_on_a(a, b, clock, traffic=False)) == (429, 201)


# -- 6. the audit ------------------------------------------------------------------------


def test_the_audit_shows_finished_by() -> None:
    """Fixed: the audit showed `flow hold 6/hour` alone."""
    guard, clock = _guard()
    report = audit_app(hold_app(guard, clock), guard)
    row = next(r for r in report.routes if r.template == "/holds")
    assert any("checkout" in text for text in [*row.rules, *row.detectors, *row.notes]), row
