"""Findings of the second adversarial review of issue 6's final code, fixed: each test
states the behaviour owed (each failed before its fix)."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fastapi import Depends, FastAPI, Header, HTTPException
from starlette.testclient import TestClient

import apiguard.engine
from apiguard import Guard, identify
from apiguard.asgi import GuardMiddleware
from apiguard.responses import BlockResponse
from apiguard.simulate.clock import FakeClock

sys.path.insert(0, str(Path(__file__).parent))
from test_attack_review import APP_KEY, TOKENS, _Driver, _shop


def _user(authorization: str = Header(default="")) -> str:
    name = TOKENS.get(authorization.removeprefix("Bearer "))
    if name is None:
        raise HTTPException(401)
    identify(name)
    return name


@pytest.mark.parametrize("extra", [{"cookie": "x=1"}, {"authorization": "Bearer anything"}])
def test_a_banned_api_key_cannot_buy_unlimited_writes_with_a_cookie(extra: dict[str, str]) -> None:
    clock = FakeClock(1000.0)
    guard = Guard(
        {"limits": {"principal": "5/minute", "ip": None}, "bans": {"after": 3}}, clock=clock
    )
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)
    writes: list[int] = []

    @app.post("/messages")  # the README's default keying: the API key, no identify()
    async def post(x_api_key: str = Header()) -> dict[str, bool]:
        if x_api_key != "key-of-mallory":
            raise HTTPException(401)
        writes.append(1)
        return {"sent": True}

    call = _Driver(app)
    for _ in range(10):  # 5 admitted, refusals, a ban
        call("POST", "/messages", "198.51.100.7", {"x-api-key": "key-of-mallory"})
        clock.advance(0.01)
    before = len(writes)
    for _ in range(100):
        assert (
            call("POST", "/messages", "198.51.100.7", {"x-api-key": "key-of-mallory", **extra})
            == 403
        )
    assert len(writes) == before  # refused before routing, as without the cookie


def test_a_banned_users_token_is_refused_before_routing_whatever_else_it_carries() -> None:
    guard = Guard(
        {"limits": {"principal": "5/minute", "ip": None}, "bans": {"after": 3}},
        clock=FakeClock(1000.0),
    )
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)
    ran: list[int] = []

    @app.get("/me")
    async def me(u: str = Depends(_user)) -> dict[str, str]:
        return {"u": u}

    @app.post("/feed")
    async def feed() -> dict[str, bool]:
        ran.append(1)
        return {"ok": True}

    call = _Driver(app)
    tok = {"authorization": "Bearer tok-1"}
    for _ in range(10):
        call("GET", "/me", "198.51.100.7", tok)
    assert call("POST", "/feed", "198.51.100.7", tok) == 403 and not ran
    call("POST", "/feed", "198.51.100.7", {**tok, "x-api-key": "made-up"})
    call("POST", "/feed", "198.51.100.7", {**tok, "cookie": "a=b"})
    assert not ran


def test_one_account_cannot_unshare_the_app_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """apiguard no longer infers which keys are shared from the headers clients send (two
    accounts could launder a banned key that way): an app key's header is simply not
    listed in identity.api_key_headers, and then no flood can ban it for everyone."""
    monkeypatch.setattr(apiguard.engine, "IP_CACHE_MAX", 256)  # 131,072 in production: 142 s
    guard = Guard({"identity": {"api_key_headers": []}}, clock=FakeClock(1000.0))
    call = _Driver(_shop(guard))
    for i in range(2, 8):
        assert (
            call(
                "GET",
                "/me",
                f"203.0.113.{i}",
                {"x-api-key": APP_KEY, "authorization": f"Bearer tok-{i}"},
            )
            == 200
        )
    for n in range(256):
        call(
            "GET",
            "/me",
            "198.51.100.66",
            {"x-api-key": f"junk-{n}", "authorization": "Bearer tok-1"},
        )
    for _ in range(640):
        call("GET", "/catalog", "198.51.100.66", {"x-api-key": APP_KEY})
    others = Counter(
        call("GET", "/catalog", f"192.0.2.{i}", {"x-api-key": APP_KEY}) for i in range(1, 21)
    )
    assert others == Counter({200: 20})


def test_two_accounts_cannot_launder_a_banned_personal_key() -> None:
    guard = Guard(
        {"limits": {"principal": "5/minute", "ip": None}, "bans": {"after": 3}},
        clock=FakeClock(1000.0),
    )
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.get("/me")
    async def me(u: str = Depends(_user)) -> dict[str, str]:
        return {"u": u}

    @app.get("/export")
    async def export(x_api_key: str = Header()) -> dict[str, int]:
        if x_api_key != "key-of-user-1":
            raise HTTPException(401)
        return {"rows": 1000}

    call = _Driver(app)
    key = {"x-api-key": "key-of-user-1"}
    for _ in range(12):
        call("GET", "/export", "198.51.100.7", key)
    assert call("GET", "/export", "198.51.100.8", key) == 403
    call("GET", "/me", "198.51.100.7", {**key, "authorization": "Bearer tok-1"})
    call("GET", "/me", "198.51.100.7", {**key, "authorization": "Bearer tok-2"})
    served = sum(call("GET", "/export", f"192.0.2.{i}", key) == 200 for i in range(20))
    assert served == 0  # still banned (and, after the ban, 5/minute for the key)


def test_a_malformed_on_block_response_falls_back_to_the_default_refusal() -> None:
    def hook(decision: Any, default: BlockResponse) -> BlockResponse:
        return BlockResponse(
            default.status, [*default.headers, ("x-why", "limite \u20ac")], default.body
        )

    guard = Guard(
        {"limits": {"principal": "2/minute", "ip": None}}, clock=FakeClock(1000.0), on_block=hook
    )
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.get("/x")
    async def x() -> dict[str, int]:
        return {"ok": 1}

    client = TestClient(app, client=("10.0.0.1", 1), raise_server_exceptions=False)
    statuses = [client.get("/x").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_a_redirecting_dependency_does_not_spend_a_streaming_endpoints_flow() -> None:
    guard = Guard(clock=FakeClock(1000.0))
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    def login_first() -> None:
        raise HTTPException(307, headers={"Location": "/login"})

    @app.get("/export")
    @guard.flow("export", "3/hour")
    def export(_: None = Depends(login_first)) -> Any:
        yield b"row\n"

    client = TestClient(app, client=("10.0.0.1", 1), follow_redirects=False)
    assert client.get("/export").status_code == 307
    spent = sum(w.total for k, w in guard.store._windows.items() if k.startswith("flow:export."))
    assert spent == 0


def test_fast_and_general_paths_keep_the_same_state_in_a_full_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import test_fast_path as fp

    base = fp.CountingStore

    class Tiny(base):  # type: ignore[misc, valid-type]
        def __init__(self, _max_keys: int, buckets: int) -> None:
            super().__init__(9, buckets)

    monkeypatch.setattr(fp, "CountingStore", Tiny)
    schedule = [
        (0.0, 0, None, None, False, 0),
        (0.0, 0, None, None, False, 0),
        (0.5, 2, 0, None, False, 0),
        (0.0, 2, None, None, False, 2),
        (0.0, 0, None, 0, True, 0),
        (10.5, 0, None, None, False, 2),
        (0.0, 1, 0, None, False, 0),
    ]
    asyncio.run(fp._drive(fp.BASE, schedule))
