"""Helpers shared by the login-outcome and flow reviews (tests/test_review_s16*.py): the
device cookie a response sets, a Flask app with apiguard, and an HTTP/2 GET with a body
as an h2 ASGI server hands it over."""

from __future__ import annotations

import asyncio
from typing import Any

from flask import Flask

from apiguard import Guard
from apiguard.flask import init_app
from apiguard.login import device_key, device_mac


def device_cookies(response: Any) -> list[str]:
    """The `apiguard_device` Set-Cookie values of a Flask or Starlette test response."""
    headers = response.headers
    values = headers.getlist("Set-Cookie") if hasattr(headers, "getlist") else None
    if values is None:
        values = headers.get_list("set-cookie")
    return [h for h in values if h.startswith("apiguard_device=")]


def has_device(response: Any) -> bool:
    """Whether the response sets a device cookie."""
    return bool(device_cookies(response))


def marks(guard: Guard, response: Any, name: str) -> bool:
    """Whether the response's device cookie marks the account `name` (as sent)."""
    hasher = guard.engine.hasher
    mac = device_mac(hasher, device_key(hasher, name))
    return any(mac in c for c in device_cookies(response))


def flask_app(guard: Guard) -> Flask:
    """A Flask app protected by `guard`, in testing mode."""
    app = Flask(__name__)
    app.config["TESTING"] = True
    init_app(app, guard)
    return app


async def h2_get(
    app: Any,
    body: bytes,
    n: int,
    *,
    path: str = "/signup",
    kind: bytes = b"application/json",
    frames: int = 1,
) -> int:
    """One HTTP/2 GET as an h2 ASGI server (Hypercorn, Granian, Daphne) hands it over:
    the body in DATA frames (`frames`, the last one carrying it), with neither
    Content-Length (optional in HTTP/2) nor Transfer-Encoding (forbidden); its status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "2",
        "method": "GET",
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"api.example"), (b"content-type", kind)],
        "client": ("203.0.113.5", 40000 + n),
        "server": ("api.example", 443),
        "extensions": {},
    }
    queue = [
        {"type": "http.request", "body": body, "more_body": False}
        if i == frames - 1
        else {"type": "http.request", "body": b"", "more_body": True}
        for i in range(frames)
    ]
    status = 0

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status
