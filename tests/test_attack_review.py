"""Findings of the first adversarial review of issue 6's fixes: each test states the
behaviour a security library owes (each failed before its fix)."""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from typing import Any

from fastapi import Depends, FastAPI, Header, HTTPException
from starlette.applications import Starlette
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    AuthenticationError,
    SimpleUser,
)
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from apiguard import Guard, identify
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock
from conftest import asgi_call


class _Driver:
    """Raw ASGI calls on one event loop (thousands per test)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()

    def __call__(
        self,
        method: str,
        path: str,
        ip: str,
        headers: dict[str, str] | None = None,
        query: bytes = b"",
    ) -> int:
        async def run() -> int:
            try:
                return await asgi_call(self.app, method, path, ip, headers, query)
            except Exception:
                return 500

        return self.loop.run_until_complete(run()) or 500


def _plain_app(guard: Guard) -> FastAPI:
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.get("/data")
    async def data() -> dict[str, bool]:
        return {"ok": True}

    return app


def test_a_short_burst_does_not_lock_new_api_key_clients_out_for_an_hour() -> None:
    clock = FakeClock(1_000.0)
    guard = Guard({"store": {"max_keys": 300}}, clock=clock)
    call = _Driver(_plain_app(guard))
    for i in range(300 // 3 + 120):  # one request each from fresh /64s, made-up keys
        call("GET", "/data", f"2001:db8:{i:x}::1", {"x-api-key": f"junk{i}"})
    clock.advance(600)  # the attacker stopped 10 minutes ago
    # a new customer, its own address, ONE key, three requests
    statuses = [call("GET", "/data", "10.1.1.1", {"x-api-key": "customer-key"}) for _ in range(3)]
    assert statuses == [200, 200, 200]


def test_a_single_key_client_is_never_refused_by_new_credentials_per_ip() -> None:
    clock = FakeClock(1_000.0)
    guard = Guard(
        {"limits": {"principal": None, "ip": None}, "store": {"max_keys": 100}}, clock=clock
    )
    call = _Driver(_plain_app(guard))
    for i in range(100):  # 100 made-up keys: within the attacker's own 100/hour
        call("GET", "/data", "2001:db8::1", {"x-api-key": f"junk-{i}"})
    statuses = Counter()
    for _ in range(150):  # one honest client, one key, a request every 10 s
        clock.advance(10)
        statuses[call("GET", "/data", "203.0.113.9", {"x-api-key": "honest-key"})] += 1
    assert statuses == Counter({200: 150})


def test_newcomers_are_served_once_a_fresh_address_flood_has_stopped() -> None:
    clock = FakeClock(1_000.0)
    guard = Guard({"store": {"max_keys": 100}}, clock=clock)
    call = _Driver(_plain_app(guard))
    for i in range(750):  # anonymous, one request each from fresh /64s, then silence
        call("GET", "/data", f"2001:db8:{i:x}::1")
    clock.advance(10)
    assert [call("GET", "/data", f"192.0.2.{k}") for k in range(5)] == [200] * 5


def test_a_flow_on_a_helper_is_spent_by_every_call() -> None:
    guard = Guard({"limits": {"principal": None, "ip": None}}, clock=FakeClock(1_000.0))
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)
    sent: list[str] = []

    @guard.flow("sms", "3/hour", per="ip")
    def send_sms(number: str) -> None:
        sent.append(number)

    @app.post("/invite")
    def invite(n: int = 1) -> dict[str, int]:
        for i in range(n):
            send_sms(f"+1555{i:04d}")
        return {"sent": n}

    call = _Driver(app)
    for _ in range(3):
        call("POST", "/invite", "198.51.100.1", query=b"n=50")
    assert len(sent) <= 3  # today: 150 text messages at a 3/hour flow


USERS = {"alice": "correct horse"}


class _BasicAuth(AuthenticationBackend):
    async def authenticate(self, conn: Any) -> tuple[AuthCredentials, SimpleUser] | None:
        auth = conn.headers.get("authorization")
        if not auth:
            return None
        user, _, password = base64.b64decode(auth.partition(" ")[2]).decode().partition(":")
        if USERS.get(user) != password:
            raise AuthenticationError("bad password")
        return AuthCredentials(["authenticated"]), SimpleUser(user)


def test_requests_whose_resolver_raises_are_still_counted() -> None:
    def resolver(ctx: Any) -> str | None:
        user = ctx.scope["user"]  # absent when AuthenticationMiddleware answered on_error
        return str(user.username) if user.is_authenticated else None

    guard = Guard(
        {"limits": {"principal": "10/minute", "ip": "20/minute"}},
        clock=FakeClock(1_000.0),
        principal_resolver=resolver,
    )

    async def me(request: Any) -> JSONResponse:
        return JSONResponse({"user": request.user.display_name})

    app = Starlette(
        routes=[Route("/me", me)],
        middleware=[
            Middleware(
                AuthenticationMiddleware,
                backend=_BasicAuth(),
                on_error=lambda c, e: PlainTextResponse(str(e), 401),
            )
        ],
    )
    app.add_middleware(GuardMiddleware, guard=guard)
    call = _Driver(app)
    for i in range(100):  # password guessing
        token = base64.b64encode(f"alice:guess{i}".encode()).decode()
        call("GET", "/me", "198.51.100.5", {"authorization": f"Basic {token}"})
    # 100 guesses from this IP at 20/minute per IP: the IP's budget is spent
    assert call("GET", "/me", "198.51.100.5") in (403, 429)


TOKENS = {f"tok-{i}": f"user-{i}" for i in range(50)}
APP_KEY = "mobile-app-key-v7"


def _shop(guard: Guard) -> FastAPI:
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    def user(authorization: str = Header(default="")) -> str:
        name = TOKENS.get(authorization.removeprefix("Bearer "))
        if name is None:
            raise HTTPException(401)
        identify(name)
        return name

    @app.get("/catalog")
    async def catalog() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/me")
    async def me(u: str = Depends(user)) -> dict[str, str]:
        return {"user": u}

    return app


def test_an_anonymous_flood_with_the_app_key_does_not_lock_out_signed_in_users() -> None:
    # a fresh process (a deploy); the app key's header is not a personal credential, so it
    # is not listed in identity.api_key_headers (README, "Shared app keys")
    guard = Guard({"identity": {"api_key_headers": []}}, clock=FakeClock(1_000.0))
    call = _Driver(_shop(guard))
    assert (
        call("GET", "/me", "203.0.113.1", {"x-api-key": APP_KEY, "authorization": "Bearer tok-1"})
        == 200
    )
    for _ in range(640):
        call("GET", "/catalog", "198.51.100.66", {"x-api-key": APP_KEY})
    signed_in = Counter(
        call(
            "GET",
            "/me",
            f"203.0.113.{i}",
            {"x-api-key": APP_KEY, "authorization": f"Bearer tok-{i}"},
        )
        for i in range(2, 20)
    )
    assert signed_in == Counter({200: 18})


def test_a_second_account_cannot_lift_the_ban_on_the_first_accounts_token() -> None:
    guard = Guard(
        {"limits": {"principal": "5/minute", "ip": None}, "bans": {"after": 3}},
        clock=FakeClock(1_000.0),
    )
    app = _shop(guard)

    @app.get("/feed")  # no identify(): keyed on the bearer token
    async def feed() -> dict[str, bool]:
        return {"ok": True}

    call = _Driver(app)
    first = {"authorization": "Bearer tok-1"}
    for _ in range(10):
        call("GET", "/me", "198.51.100.7", first)
    assert call("GET", "/feed", "198.51.100.7", first) == 403  # banned with its user
    call("GET", "/me", "198.51.100.8", {"authorization": "Bearer tok-2", "x-api-key": "tok-1"})
    assert call("GET", "/feed", "198.51.100.7", first) == 403
