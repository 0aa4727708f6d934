"""Shared fixtures: a fake clock, guards built on it, and guarded test clients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from starlette.testclient import TestClient

from apiguard import Guard
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock

QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"
IP_A = "203.0.113.7"
IP_B = "198.51.100.9"
GUARD_KWARGS = ("principal_resolver", "on_block", "meter_provider")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000.0)


@pytest.fixture
def make_guard(clock: FakeClock) -> Callable[..., Guard]:
    """Guard on the fake clock. Global limits and bans are OFF unless a test turns them on."""

    def factory(limits: dict[str, Any] | None = None, **config: Any) -> Guard:
        extra = {k: config.pop(k) for k in GUARD_KWARGS if k in config}
        config.setdefault("bans", {"enabled": False})
        merged = {"principal": None, "ip": None, **(limits or {})}
        return Guard({"limits": merged, **config}, clock=clock, **extra)

    return factory


@pytest.fixture
def serve() -> Callable[..., TestClient]:
    """`serve(app, guard, ip=..., **kw)`: install the middleware once, return a TestClient."""

    def factory(app: Any, guard: Guard | None = None, *, ip: str = IP_A, **kw: Any) -> TestClient:
        if guard is not None and not any(m.cls is GuardMiddleware for m in app.user_middleware):
            app.add_middleware(GuardMiddleware, guard=guard)
        return TestClient(app, client=(ip, 50_000), **kw)

    return factory


def assert_quota_exceeded(resp: Any, *policies: str) -> None:
    """A 429 problem+json naming exactly `policies` as violated."""
    assert resp.status_code == 429, (resp.status_code, resp.text)
    assert resp.headers["content-type"] == "application/problem+json"
    body = resp.json()
    assert body["type"] == QUOTA_EXCEEDED
    assert body["status"] == 429
    assert body["violated-policies"] == list(policies)
    assert int(resp.headers["retry-after"]) >= 1


async def asgi_call(
    app: Any,
    method: str,
    path: str,
    ip: str,
    headers: dict[str, str] | None = None,
    query: bytes = b"",
) -> int:
    """One request straight through ASGI, no HTTP client (tests that send thousands);
    the response status, 0 when the app sent none."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": (ip, 40000),
        "server": ("testserver", 80),
    }
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status
