"""Starlette apps: the principal from AuthenticationMiddleware through `principal_resolver`."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    BaseUser,
    SimpleUser,
    UnauthenticatedUser,
)
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from apiguard import Guard, RequestContext
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock

TOKENS = {"tok-a": "alice", "tok-b": "bob"}


class TokenBackend(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        user = TOKENS.get(conn.headers.get("x-session", ""))
        return (AuthCredentials(["user"]), SimpleUser(user)) if user else None


def user_of(ctx: RequestContext) -> str | None:
    user = ctx.scope.get("user")
    if user is None or isinstance(user, UnauthenticatedUser) or not user.is_authenticated:
        return None
    return str(user.display_name)


def test_resolver_keys_limits_on_the_authenticated_user_across_ips() -> None:
    guard = Guard({"limits": {"ip": None}}, clock=FakeClock(1_000.0), principal_resolver=user_of)

    @guard.flow("export", "2/hour")
    async def export(request: Request) -> JSONResponse:
        return JSONResponse({"user": request.user.display_name})

    # the check runs at the handler's entry, after AuthenticationMiddleware set scope["user"]
    app = Starlette(
        routes=[Route("/export", export)],
        middleware=[Middleware(AuthenticationMiddleware, backend=TokenBackend())],
    )
    app.add_middleware(GuardMiddleware, guard=guard)
    alice = {"x-session": "tok-a"}
    statuses = [
        TestClient(app, client=(f"203.0.113.{i}", 1)).get("/export", headers=alice).status_code
        for i in range(4)
    ]
    assert statuses == [200, 200, 429, 429]  # one budget for alice, whatever her IP
    bob = TestClient(app, client=("203.0.113.1", 1)).get("/export", headers={"x-session": "tok-b"})
    assert bob.status_code == 200 and bob.json() == {"user": "bob"}
