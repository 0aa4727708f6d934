"""Bans follow the credential that carried a banned principal, and are answered early."""

from __future__ import annotations

from fastapi import Depends, FastAPI, Header
from fastapi.testclient import TestClient

from apiguard import Guard, identify
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock


def _app(guard: Guard, calls: list[str]) -> FastAPI:
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    async def user(authorization: str = Header()) -> str:
        calls.append("auth")
        name = authorization.removeprefix("Bearer ").split("-")[0]
        identify(name)
        return name

    @app.get("/private")
    async def private(u: str = Depends(user)) -> dict[str, str]:
        return {"hi": u}

    @app.get("/public")
    async def public() -> dict[str, str]:
        return {"ok": "yes"}

    return app


def test_ban_on_identified_user_covers_its_token_before_routing() -> None:
    clock = FakeClock(1_000.0)
    guard = Guard(
        {"limits": {"principal": "5/minute", "ip": None}, "bans": {"after": 3, "base": 600}},
        clock=clock,
    )
    calls: list[str] = []
    client = TestClient(_app(guard, calls))
    alice = {"authorization": "Bearer alice-token"}
    statuses = [client.get("/private", headers=alice).status_code for _ in range(9)]
    assert statuses == [200] * 5 + [429, 429, 403, 403]

    calls.clear()
    banned = [client.get("/private", headers=alice).status_code for _ in range(5)]
    assert banned == [403] * 5
    assert calls == []  # refused before routing: the auth dependency never ran
    assert client.get("/public", headers=alice).status_code == 403
    assert int(client.get("/public", headers=alice).headers["retry-after"]) > 500

    # a colleague with another token on the same IP is untouched
    bob = {"authorization": "Bearer bob-token"}
    assert client.get("/private", headers=bob).status_code == 200
    assert client.get("/public", headers=bob).status_code == 200

    clock.advance(601)
    assert client.get("/private", headers=alice).status_code == 200
