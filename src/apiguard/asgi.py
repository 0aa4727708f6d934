"""Pure ASGI middleware for Starlette and FastAPI (no BaseHTTPMiddleware: nothing buffered).

    app.add_middleware(GuardMiddleware, guard=guard)

Websocket and lifespan scopes pass through (lifespan start-up also verifies the routes).
Responses stream through untouched except for the RateLimit fields added to the start
message; a refused request gets the refusal instead of the app's response.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from apiguard.decision import ALLOWED, Decision
from apiguard.engine import Refused
from apiguard.guard import Guard
from apiguard.request import _current
from apiguard.responses import BlockResponse, block_response

log = logging.getLogger("apiguard")


class GuardMiddleware:
    """Checks every HTTP request against `guard`'s rules."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        if not isinstance(guard, Guard):
            raise TypeError("GuardMiddleware needs guard=Guard(...)")
        self.app = app
        self.guard = guard
        self.engine = guard.engine
        self._headers = guard.config.ratelimit_headers
        self._verified_root: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                self.guard.verify(scope.get("app") or self.app)
            await self.app(scope, receive, send)
            return
        if scope.get("apiguard.guard") is self.guard:  # installed twice: count once
            await self.app(scope, receive, send)
            return
        scope["apiguard.guard"] = self.guard
        # add_middleware: the framework put its app in the scope; GuardMiddleware(app, ...)
        # wrapping the app from outside: the wrapped app is the one to verify
        root = scope.get("app") or self.app
        if root is not self._verified_root:
            self.guard.verify(root)
            self._verified_root = root
        engine = self.engine
        ctx = engine.begin(scope)
        if engine.may_be_banned():
            early = engine.early_ban(ctx)
            if early is not None:
                await self._refuse(send, early)
                return
        token = _current.set(ctx)
        status: int | None = None
        local = engine.store.local

        async def guarded_send(message: Message) -> None:
            nonlocal status
            if status is None and message["type"] == "http.response.start":
                rules = engine.rules_of(scope)
                decision = ctx.decision
                if not ctx.checked(rules):
                    try:
                        if local:
                            decision = engine.check_sync(ctx, rules)
                        else:
                            decision = await engine.check_async(ctx, rules)
                    except Refused as refused:
                        decision = refused.decision
                if decision is not None and decision is not ALLOWED and decision.refused:
                    # refused now, or at a checkpoint whose exception the app swallowed
                    ctx.refused_sent = True
                    status = 0
                    await self._refuse(send, decision, scope)
                    return
                status = message["status"]
                if self._headers:
                    values = engine.ratelimit_values(ctx)
                    if values is not None:
                        message["headers"] = [
                            *message.get("headers", ()),
                            (b"ratelimit-policy", values[0]),
                            (b"ratelimit", values[1]),
                        ]
            elif ctx.refused_sent:
                return  # the app's own response to a refused request is dropped
            await send(message)

        try:
            await self.app(scope, receive, guarded_send)
        except Refused as refused:
            if status is not None and not ctx.refused_sent:
                log.error("apiguard: a checkpoint refused a request after its response started")
                raise
            if not ctx.refused_sent:
                ctx.refused_sent = True
                await self._refuse(send, refused.decision)
        finally:
            _current.reset(token)
            if ctx.charges:
                # once a status went out, it is the outcome (a failing background task or a
                # client gone after the response must not refund a delivered success)
                started = status is not None and not ctx.refused_sent
                engine.finish(ctx, status if started else None)
            # Servers copy the context (e.g. uvicorn's keep-alive timer): drop what this
            # request holds so those copies keep an empty shell, not the request's objects.
            ctx.release()

    async def _refuse(
        self, send: Send, decision: Decision, replaced: Scope | None = None
    ) -> None:
        """Send the refusal; `replaced`: the scope of a request whose own response it
        replaces (at its start)."""
        response = block_response(decision, self._headers)
        if self.guard.on_block is not None:
            response = self.guard.on_block(decision, response)
            if not isinstance(response, BlockResponse):
                raise TypeError("on_block must return a BlockResponse")
        if replaced is not None:
            _correct_native_status(replaced, response.status)
        await send_block(send, response)


def _correct_native_status(scope: Scope, status: int) -> None:
    """Wrapped from outside (`GuardMiddleware(app, ...)`), FastAPI's own telemetry sits
    inside apiguard and has just recorded the status of the response apiguard replaces:
    give it the status the client gets, for its server span and HTTP metrics. (Added with
    `add_middleware`, apiguard is inside FastAPI's telemetry, which sees the refusal.)"""
    native = scope.get("fastapi.telemetry")
    if native is not None and isinstance(getattr(native, "status_code", None), int):
        native.status_code = status


async def send_block(send: Send, response: BlockResponse) -> None:
    """Send a `BlockResponse` as a complete ASGI response."""
    headers: list[tuple[bytes, bytes]] = [
        (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers
    ]
    headers.append((b"content-length", str(len(response.body)).encode()))
    start: dict[str, Any] = {
        "type": "http.response.start",
        "status": response.status,
        "headers": headers,
    }
    await send(start)
    await send({"type": "http.response.body", "body": response.body})
