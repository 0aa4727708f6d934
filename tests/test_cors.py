"""apiguard and the app's CORSMiddleware, with real FastAPI/Starlette apps.

The recommended order is apiguard outside CORS (`add_middleware(CORSMiddleware, ...)` then
`add_middleware(GuardMiddleware, ...)`, or `GuardMiddleware(app, ...)` around the app): every
request reaches apiguard, preflights included, and refusals go out through the app's own
CORS settings so a browser page can read the 429/403 and its Retry-After/RateLimit fields.
The other order is reported at start-up: CORS answers preflights before apiguard sees them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import ASGIApp

from apiguard import BlockResponse, Guard
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock

ORIGIN = "https://app.example"
EVIL = "https://evil.example"
PREFLIGHT = {"origin": ORIGIN, "access-control-request-method": "POST"}
GOOD_ORDERS = ["guard_added_last", "guard_wraps_app", "starlette_middleware_list"]


def new_guard(**config: Any) -> Guard:
    config.setdefault("limits", {"principal": "2/minute", "ip": None})
    config.setdefault("bans", {"enabled": False})
    return Guard(config, clock=FakeClock(1_000.0))


def fastapi_app(guard: Guard) -> FastAPI:
    app = FastAPI()

    @app.get("/items")
    async def items() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/orders")
    async def orders() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/redeem")
    @guard.flow("redeem", "1/minute", per="ip")
    async def redeem() -> dict[str, bool]:
        return {"ok": True}

    return app


def serve(guard: Guard, order: str, *, ip: str = "203.0.113.7", **cors: Any) -> TestClient:
    """The app with CORSMiddleware(**cors) and apiguard, in `order`."""
    cors.setdefault("allow_origins", [ORIGIN])
    cors.setdefault("allow_methods", ["*"])
    served: ASGIApp
    if order == "starlette_middleware_list":

        async def items(request: Request) -> JSONResponse:
            return JSONResponse({"ok": True})

        async def orders(request: Request) -> JSONResponse:
            return JSONResponse({"ok": True})

        served = Starlette(
            routes=[Route("/items", items), Route("/orders", orders, methods=["POST"])],
            middleware=[  # first = outermost
                Middleware(GuardMiddleware, guard=guard),
                Middleware(CORSMiddleware, **cors),
            ],
        )
    elif order == "cors_outside_list":

        async def items2(request: Request) -> JSONResponse:
            return JSONResponse({"ok": True})

        served = Starlette(
            routes=[Route("/items", items2)],
            middleware=[Middleware(CORSMiddleware, **cors), Middleware(GuardMiddleware, guard)],
        )
    else:
        app = fastapi_app(guard)
        if order == "guard_added_last":
            app.add_middleware(CORSMiddleware, **cors)
            app.add_middleware(GuardMiddleware, guard=guard)  # added last = outermost
            served = app
        elif order == "guard_wraps_app":
            app.add_middleware(CORSMiddleware, **cors)
            served = GuardMiddleware(app, guard=guard)
        elif order == "guard_wraps_cors_instance":
            served = GuardMiddleware(CORSMiddleware(app, **cors), guard=guard)
        elif order == "cors_added_last":
            app.add_middleware(GuardMiddleware, guard=guard)
            app.add_middleware(CORSMiddleware, **cors)  # CORS outside apiguard
            served = app
        else:
            raise AssertionError(order)
    return TestClient(served, client=(ip, 50_000))


def exposed(resp: Any) -> set[str]:
    value = resp.headers.get("access-control-expose-headers", "")
    return {p.strip().lower() for p in value.split(",") if p.strip()}


def spend(client: TestClient, n: int = 2, **headers: str) -> None:
    for _ in range(n):
        assert client.get("/items", headers=headers).status_code == 200


# -- the recommended order: refusals readable, allowed requests unchanged --------------------


@pytest.mark.parametrize("order", [*GOOD_ORDERS, "guard_wraps_cors_instance"])
def test_refusal_is_readable_cross_origin(order: str) -> None:
    client = serve(new_guard(), order)
    first = client.get("/items", headers={"origin": ORIGIN})
    assert first.status_code == 200  # an allowed request: exactly what CORS alone gives
    assert first.headers["access-control-allow-origin"] == ORIGIN
    assert first.json() == {"ok": True}
    spend(client, 1, origin=ORIGIN)
    refused = client.get("/items", headers={"origin": ORIGIN})
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["access-control-allow-origin"] == ORIGIN
    assert "Origin" in refused.headers["vary"]
    assert {"retry-after", "ratelimit", "ratelimit-policy"} <= exposed(refused)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-policy"] == '"per-principal";q=2;w=60'


@pytest.mark.parametrize("order", GOOD_ORDERS)
def test_allow_all_origins(order: str) -> None:
    client = serve(new_guard(), order, allow_origins=["*"])
    spend(client, origin=ORIGIN)
    refused = client.get("/items", headers={"origin": "https://anyone.example"})
    assert refused.status_code == 429
    assert refused.headers["access-control-allow-origin"] == "*"
    assert "retry-after" in exposed(refused)
    assert "access-control-allow-credentials" not in refused.headers


@pytest.mark.parametrize("origins", [["*"], [ORIGIN]])
@pytest.mark.parametrize("order", GOOD_ORDERS)
def test_allow_credentials(order: str, origins: list[str]) -> None:
    client = serve(new_guard(), order, allow_origins=origins, allow_credentials=True)
    headers = {"origin": ORIGIN, "cookie": "session=1"}
    spend(client, **headers)
    refused = client.get("/items", headers=headers)
    assert refused.status_code == 429
    assert refused.headers["access-control-allow-origin"] == ORIGIN  # never "*" here
    assert refused.headers["access-control-allow-credentials"] == "true"
    assert {"retry-after", "ratelimit", "ratelimit-policy"} <= exposed(refused)


@pytest.mark.parametrize("order", GOOD_ORDERS)
def test_origin_not_allowed_gets_no_cors_headers(order: str) -> None:
    client = serve(new_guard(), order)
    spend(client, origin=EVIL)
    refused = client.get("/items", headers={"origin": EVIL})
    assert refused.status_code == 429
    assert "access-control-allow-origin" not in refused.headers
    assert exposed(refused) == set()


@pytest.mark.parametrize("order", GOOD_ORDERS)
def test_same_origin_refusal_is_unchanged(order: str) -> None:
    client = serve(new_guard(), order)
    spend(client)
    refused = client.get("/items")
    assert refused.status_code == 429
    assert not [h for h in refused.headers if h.startswith("access-control-")]
    assert refused.json()["status"] == 429


@pytest.mark.parametrize("order", ["guard_added_last", "guard_wraps_app"])
def test_app_expose_headers_are_kept(order: str) -> None:
    client = serve(new_guard(), order, expose_headers=["X-Request-Id"])
    spend(client, origin=ORIGIN)
    refused = client.get("/items", headers={"origin": ORIGIN})
    assert exposed(refused) == {"x-request-id", "retry-after", "ratelimit", "ratelimit-policy"}


@pytest.mark.parametrize("order", ["guard_added_last", "guard_wraps_app"])
def test_refusal_at_a_decorated_handler_is_readable(order: str) -> None:
    client = serve(new_guard(limits={"principal": None, "ip": None}), order)
    assert client.post("/redeem", headers={"origin": ORIGIN}).status_code == 200
    refused = client.post("/redeem", headers={"origin": ORIGIN})
    assert refused.status_code == 429
    assert refused.json()["violated-policies"] == ["redeem"]
    assert refused.headers["access-control-allow-origin"] == ORIGIN
    assert {"retry-after", "ratelimit", "ratelimit-policy"} <= exposed(refused)


@pytest.mark.parametrize("order", ["guard_added_last", "guard_wraps_app"])
def test_ban_is_readable_and_exposes_retry_after(order: str) -> None:
    guard = new_guard(limits={"principal": "1/minute", "ip": None}, bans={"after": 1, "within": 60})
    client = serve(guard, order)
    headers = {"origin": ORIGIN, "x-api-key": "k1"}
    assert client.get("/items", headers=headers).status_code == 200
    assert client.get("/items", headers=headers).status_code == 403  # banned now
    banned = client.get("/items", headers=headers)  # refused before routing
    assert banned.status_code == 403
    assert banned.headers["access-control-allow-origin"] == ORIGIN
    assert exposed(banned) == {"retry-after"}  # a ban carries no quota fields


def test_on_block_response_goes_through_cors_too() -> None:
    def on_block(decision: Any, default: BlockResponse) -> BlockResponse:
        return BlockResponse(503, [("retry-after", "7")], b"busy")

    guard = Guard(
        {"limits": {"principal": "1/minute", "ip": None}, "bans": {"enabled": False}},
        clock=FakeClock(1_000.0),
        on_block=on_block,
    )
    client = serve(guard, "guard_added_last")
    assert client.get("/items", headers={"origin": ORIGIN}).status_code == 200
    refused = client.get("/items", headers={"origin": ORIGIN})
    assert (refused.status_code, refused.text) == (503, "busy")
    assert refused.headers["access-control-allow-origin"] == ORIGIN
    assert exposed(refused) == {"retry-after"}


# -- preflights ---------------------------------------------------------------------------------


@pytest.mark.parametrize("order", GOOD_ORDERS)
def test_preflights_are_counted(order: str) -> None:
    client = serve(new_guard(), order)
    for _ in range(2):
        answer = client.options("/orders", headers=PREFLIGHT)
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == ORIGIN
    refused = client.post("/orders", headers={"origin": ORIGIN})
    assert refused.status_code == 429  # the two preflights spent the 2/minute budget
    assert refused.headers["access-control-allow-origin"] == ORIGIN


@pytest.mark.parametrize("order", ["guard_added_last", "guard_wraps_app"])
def test_refused_preflight_gets_the_cors_preflight_answer(order: str) -> None:
    """A browser reads no non-2xx preflight answer: a refused preflight (counted) gets the
    answer the app's CORS gives, and the request that follows gets the readable 429."""
    client = serve(new_guard(), order)
    spend(client, origin=ORIGIN)
    answer = client.options("/orders", headers=PREFLIGHT)
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in answer.headers["access-control-allow-methods"]
    refused = client.post("/orders", headers={"origin": ORIGIN})
    assert refused.status_code == 429
    assert "retry-after" in exposed(refused)
    # a preflight from an origin CORS does not allow is still CORS's 400
    assert client.options("/orders", headers={**PREFLIGHT, "origin": EVIL}).status_code == 400


# -- the other order: reported at start-up ---------------------------------------------------


@pytest.mark.parametrize("order", ["cors_added_last", "cors_outside_list"])
def test_cors_outside_apiguard_is_reported(order: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="apiguard")
    client = serve(new_guard(), order)
    for _ in range(5):  # answered by CORS before apiguard: not counted
        assert client.options("/items", headers=PREFLIGHT).status_code == 200
    spend(client, origin=ORIGIN)  # the whole budget is still there
    refused = client.get("/items", headers={"origin": ORIGIN})
    assert refused.status_code == 429
    assert refused.headers["access-control-allow-origin"] == ORIGIN  # the outer CORS adds it
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "CORS" in r.msg
    ]
    assert len(warnings) == 1, warnings
    assert "preflight" in warnings[0] and "not counted" in warnings[0]
    assert "add_middleware(GuardMiddleware" in warnings[0]


@pytest.mark.parametrize("order", [*GOOD_ORDERS, "guard_wraps_cors_instance"])
def test_recommended_order_logs_no_warning(order: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="apiguard")
    client = serve(
        new_guard(), order, expose_headers=["Retry-After", "RateLimit", "RateLimit-Policy"]
    )
    spend(client, origin=ORIGIN)
    assert client.get("/items", headers={"origin": ORIGIN}).status_code == 429
    assert [r for r in caplog.records if "CORS" in r.getMessage()] == []
    assert [r for r in caplog.records if "expose_headers" in r.getMessage()] == []


@pytest.mark.parametrize(
    ("expose", "missing"),
    [
        ((), "retry-after, ratelimit, ratelimit-policy"),
        (["Retry-After"], "ratelimit, ratelimit-policy"),
    ],
)
def test_missing_expose_headers_get_one_info_line(
    expose: Any, missing: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="apiguard")
    client = serve(new_guard(), "guard_added_last", expose_headers=expose)
    with client:  # lifespan start-up, then requests: one line in all
        spend(client, origin=ORIGIN)
    lines = [r for r in caplog.records if "expose_headers" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].levelno == logging.INFO
    assert missing in lines[0].getMessage()
    assert '["Retry-After", "RateLimit", "RateLimit-Policy"]' in lines[0].getMessage()


def test_app_without_cors_is_untouched(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="apiguard")
    guard = new_guard()
    app = fastapi_app(guard)
    app.add_middleware(GuardMiddleware, guard=guard)
    client: Callable[..., Any] = TestClient(app).get
    for _ in range(2):
        assert client("/items", headers={"origin": ORIGIN}).status_code == 200
    refused = client("/items", headers={"origin": ORIGIN})
    assert refused.status_code == 429
    assert not [h for h in refused.headers if h.startswith("access-control-")]
    assert [r for r in caplog.records if "CORS" in r.getMessage()] == []


@pytest.mark.parametrize("order", ["guard_added_last", "guard_wraps_app"])
def test_allow_origin_regex(order: str) -> None:
    client = serve(new_guard(), order, allow_origins=[], allow_origin_regex=r"https://.*\.example")
    spend(client, origin="https://shop.example")
    refused = client.get("/items", headers={"origin": "https://shop.example"})
    assert refused.status_code == 429
    assert refused.headers["access-control-allow-origin"] == "https://shop.example"
    other = client.get("/items", headers={"origin": "https://shop.example.org"})
    assert other.status_code == 429
    assert "access-control-allow-origin" not in other.headers
