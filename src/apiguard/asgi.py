"""Pure ASGI middleware for Starlette and FastAPI (no BaseHTTPMiddleware: nothing buffered).

    app.add_middleware(GuardMiddleware, guard=guard)

Websocket and lifespan scopes pass through (lifespan start-up also verifies the routes).
Responses stream through untouched except for the RateLimit fields added to the start
message; a refused request gets the refusal instead of the app's response.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from apiguard.decision import ALLOWED, Decision
from apiguard.engine import Refused
from apiguard.guard import Guard
from apiguard.request import RequestContext, _current
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
                rules = engine.rules_at_response(scope, message["status"])
                decision = ctx.decision
                if not ctx.checked(rules):
                    if rules:  # a streaming endpoint: its body's entry is charged now
                        ctx.prechecked = rules
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
                    await self._refuse(send, decision)
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
        except Exception:
            # the app raised before answering (the server's error middleware, outside this
            # one, answers 500): the request is counted all the same, and a refused one
            # gets the refusal instead of the 500 (the exception still propagates, so the
            # app's error reporting sees it)
            if status is None and not ctx.refused_sent:
                await self._answer_unanswered(ctx, send)
            raise
        except BaseException:  # cancelled: count it, answer nothing
            if status is None and not ctx.refused_sent and local and not ctx.global_done:
                with contextlib.suppress(Refused):
                    engine.check_sync(ctx, ())
            raise
        else:
            if status is None and not ctx.refused_sent:  # the app returned without answering
                await self._answer_unanswered(ctx, send)
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

    async def _answer_unanswered(self, ctx: RequestContext, send: Send) -> None:
        """A request the app did not answer (it raised, or returned without a response):
        run the checkpoint if none ran (every request is counted, whatever the app does
        with it) and send the refusal if the request is refused."""
        decision = ctx.decision
        if not ctx.global_done:
            try:
                if self.engine.store.local:
                    self.engine.check_sync(ctx, ())
                else:
                    await self.engine.check_async(ctx, ())
            except Refused as refused:
                decision = refused.decision
        if decision is not None and decision is not ALLOWED and decision.refused:
            ctx.refused_sent = True
            await self._refuse(send, decision)

    async def _refuse(self, send: Send, decision: Decision) -> None:
        response = self.guard.block_response(decision, block_response(decision, self._headers))
        await send_block(send, response)


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
