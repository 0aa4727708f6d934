"""Object ids the route's path does not name: `@guard.objects(ids=...)` and
`guard.objects_touched()` (a JSON body's id, a batch read). Counted by the BOLA detector
as path parameters are, on the memory and the Redis store; a standing challenge holds
such a route; bad declarations fail clearly."""

from __future__ import annotations

import logging
import random
import uuid
from typing import Any

import pytest
import redis
from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel
from starlette.testclient import TestClient

from apiguard import ConfigurationError, Guard, identify
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock
from apiguard.store.redis import RedisStore
from detection_support import public_ip

START = 7_000_000.0


class Lookup(BaseModel):
    order_id: int


class Batch(BaseModel):
    ids: list[int]


def shop(guard: Guard) -> FastAPI:
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    def user(request: Request) -> None:
        identify(request.headers.get("x-user"))

    @app.post("/orders/lookup", dependencies=[Depends(user)])
    @guard.objects(ids="payload.order_id", name="order_id")
    async def lookup(payload: Lookup) -> dict[str, int]:
        return {"order": payload.order_id}

    @app.post("/orders/batch", dependencies=[Depends(user)])
    @guard.objects(ids=lambda payload: payload.ids)
    def batch(payload: Batch) -> dict[str, int]:
        return {"orders": len(payload.ids)}

    @app.get("/invoices")
    def invoice(number: str, request: Request) -> dict[str, str]:
        identify(request.headers.get("x-user"))
        guard.objects_touched(uuid.UUID(number), name="invoice")
        return {"invoice": number}

    return app


def clients(app: FastAPI) -> Any:
    made: dict[str, TestClient] = {}

    def client(ip: str) -> TestClient:
        if ip not in made:
            made[ip] = TestClient(app, client=(ip, 40_000))
        return made[ip]

    return client


def _walk(guard: Guard, clock: FakeClock) -> tuple[list[int], list[int]]:
    """Twelve users look up their own orders; an anonymous address walks order ids one
    by one through the body; a user then looks up foreign orders at random. Returns
    (the anonymous walk's statuses, the signed-in walk's), asserting no honest refusal."""
    rng = random.Random(3)
    client = clients(shop(guard))
    for _ in range(3):
        for n in range(12):
            body = {"order_id": 10 * n + rng.randrange(1, 5)}
            r = client(f"198.51.100.{n}").post(
                "/orders/lookup", json=body, headers={"x-user": f"u{n}"}
            )
            assert r.status_code == 200
    anonymous = []
    for order in range(300, 340):
        clock.advance(rng.uniform(0.5, 2.0))
        r = client("192.0.2.66").post("/orders/lookup", json={"order_id": order})
        anonymous.append(r.status_code)
    signed = []
    for _ in range(60):
        clock.advance(rng.uniform(1.0, 5.0))
        body = {"order_id": rng.randrange(1000, 90_000)}
        r = client(public_ip(rng)).post("/orders/lookup", json=body, headers={"x-user": "eve"})
        signed.append(r.status_code)
        n = rng.randrange(12)
        r = client(f"198.51.100.{n}").post(
            "/orders/lookup", json={"order_id": 10 * n + 1}, headers={"x-user": f"u{n}"}
        )
        assert r.status_code == 200
    return anonymous, signed


def _assert_caught(anonymous: list[int], signed: list[int]) -> None:
    first = anonymous.index(403)
    assert 12 <= first <= 20, anonymous
    assert set(anonymous[first:]) == {403}
    first = next(i for i, s in enumerate(signed) if s != 200)
    assert first <= 45, signed
    assert set(signed[first:]) <= {403, 429}


def test_a_body_id_walk_is_caught_and_owners_are_not() -> None:
    clock = FakeClock(START)
    _assert_caught(*_walk(Guard(clock=clock), clock))


def test_a_body_id_walk_is_caught_on_redis(redis_url: str) -> None:
    clock = FakeClock(START)
    store = RedisStore(redis.asyncio.Redis.from_url(redis_url), server_time=False, timeout=5.0)
    guard = Guard({"secret": "s" * 32}, clock=clock, store=store)
    _assert_caught(*_walk(guard, clock))


def test_each_id_of_a_batch_is_an_object_but_a_batch_is_no_walk() -> None:
    """A batch of 60 foreign ids is over the bar at once (refused from the next
    request); a user fetching 20 consecutive ids of their own in one batch, again and
    again, is not taken for a sequential walk (ids in one request make none)."""
    clock = FakeClock(START)
    client = clients(shop(Guard(clock=clock)))
    mine = {"ids": list(range(501, 521))}
    for _ in range(5):
        clock.advance(30)
        r = client("198.51.100.5").post("/orders/batch", json=mine, headers={"x-user": "ann"})
        assert r.status_code == 200
    harvest = {"ids": list(range(7000, 7060))}
    statuses = []
    for _ in range(3):
        clock.advance(5)
        r = client("203.0.113.9").post("/orders/batch", json=harvest, headers={"x-user": "eve"})
        statuses.append(r.status_code)
    assert statuses == [200, 403, 403]


def test_ids_reported_from_the_handler_count_and_a_standing_challenge_refuses_there() -> None:
    """`guard.objects_touched()` in a handler whose route has no object in its path: a
    signed-in walk over invoice UUIDs is held, and the call raises the challenge for the
    walker (the handler stops there); another user's reads go on."""
    clock = FakeClock(START)
    client = clients(shop(Guard(clock=clock)))
    statuses = []
    for _ in range(60):
        clock.advance(3)
        r = client("203.0.113.9").get(
            "/invoices", params={"number": str(uuid.uuid4())}, headers={"x-user": "eve"}
        )
        statuses.append(r.status_code)
    first = statuses.index(403)
    assert first <= 50 and set(statuses[first:]) == {
        403
    }  # (warm-up floor 40; the sketch estimates)
    mine = str(uuid.uuid4())
    r = client("198.51.100.2").get("/invoices", params={"number": mine}, headers={"x-user": "bo"})
    assert r.status_code == 200


def test_bad_declarations_fail_clearly() -> None:
    guard = Guard()
    with pytest.raises(ConfigurationError, match=r"ids='payload\.' is not a parameter name"):
        guard.objects(ids="payload.")
    with pytest.raises(ConfigurationError, match="must be a callable or a dotted name"):
        guard.objects(ids=42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="name='order id' is not a parameter name"):
        guard.objects(ids="payload.id", name="order id")
    with pytest.raises(ConfigurationError, match=r"ids= reads body, which .*lookup does not take"):

        @guard.objects(ids="body.order_id")
        def lookup(payload: Lookup) -> None: ...

    with pytest.raises(RuntimeError, match="outside a request"):
        guard.objects_touched(5)


def test_a_wrong_id_type_is_an_error_in_the_handler_and_reported_from_a_declaration(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`objects_touched(object())` raises `TypeError` naming what an id is; a declaration
    whose callable returns a dict is logged (once) and the request served."""
    guard = Guard()
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.get("/bad")
    def bad() -> str:
        guard.objects_touched({"id": 1})
        return "no"

    @app.post("/odd")
    @guard.objects(ids=lambda payload: {"id": payload.order_id})
    def odd(payload: Lookup) -> str:
        return "served"

    client = TestClient(app, raise_server_exceptions=True)
    with pytest.raises(TypeError, match=r"an object id is a str, an int, a float or a uuid\.UUID"):
        client.get("/bad")
    with caplog.at_level(logging.ERROR, logger="apiguard"):
        assert client.post("/odd", json={"order_id": 3}).json() == "served"
        assert client.post("/odd", json={"order_id": 4}).json() == "served"
    logged = [r for r in caplog.records if "@guard.objects(ids=...)" in r.getMessage()]
    assert len(logged) == 1


def test_declared_ids_per_request_are_bounded() -> None:
    """A batch of 5,000 ids is counted up to 1,000 (far over any route's bar)."""
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    seen: list[int] = []
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.post("/orders/batch")
    @guard.objects(ids=lambda payload: payload.ids)
    def batch(payload: Batch) -> str:
        from apiguard.request import current_request

        ctx = current_request()
        assert ctx is not None and ctx.objects is not None
        seen.append(len(ctx.objects))
        return "ok"

    client = TestClient(app)
    assert client.post("/orders/batch", json={"ids": list(range(5000))}).status_code == 200
    assert seen == [1000]


def test_an_anonymous_batch_of_consecutive_ids_is_a_walk_a_few_ids_are_not() -> None:
    """An anonymous address owns nothing and is judged on walks: a batch of 30 ids of
    one stride (sent shuffled) is one, and the address is refused from its next request;
    another address's batch of 5 scattered ids, sent again and again, is not."""
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.post("/orders/batch")
    @guard.objects(ids=lambda payload: payload.ids)
    def batch(payload: Batch) -> str:
        return "ok"

    client = clients(app)
    few = {"ids": [12, 907, 44, 3031, 5]}
    for _ in range(6):
        clock.advance(20)
        assert client("198.51.100.8").post("/orders/batch", json=few).status_code == 200
    ids = list(range(4000, 4090, 3))
    random.Random(4).shuffle(ids)
    statuses = []
    for _ in range(3):
        clock.advance(5)
        statuses.append(client("192.0.2.66").post("/orders/batch", json={"ids": ids}).status_code)
    assert statuses == [200, 403, 403]


def test_identify_after_the_declaration_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    """`identify()` in the handler body, after `@guard.objects` ran the checkpoint: the
    request stays keyed on its address (a late identify is ignored), so a user's harvest
    would be judged as an address's; apiguard says so once, naming the handler."""
    guard = Guard()
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.post("/orders/lookup")
    @guard.objects(ids="payload.order_id")
    def late_lookup(payload: Lookup, request: Request) -> dict[str, int]:
        identify(request.headers.get("x-user"))
        return {"order": payload.order_id}

    client = TestClient(app)
    with caplog.at_level(logging.WARNING, logger="apiguard"):
        for n in range(3):
            client.post("/orders/lookup", json={"order_id": n}, headers={"x-user": "eve"})
    warned = [r.getMessage() for r in caplog.records if "identify() was called" in r.getMessage()]
    assert len(warned) == 1 and "late_lookup" in warned[0]
