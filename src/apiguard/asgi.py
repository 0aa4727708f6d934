"""Pure ASGI middleware for Starlette and FastAPI (no BaseHTTPMiddleware: nothing buffered).

    app.add_middleware(GuardMiddleware, guard=guard)

Websocket and lifespan scopes pass through (lifespan start-up also verifies the routes).
Responses stream through untouched except for the RateLimit fields added to the start
message; a refused request gets the refusal instead of the app's response, through the
app's own CORSMiddleware when that sits inside apiguard (see `apiguard.cors`).
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from apiguard.cors import SUGGESTED, CorsLayout, find_cors, send_through_cors
from apiguard.decision import Decision
from apiguard.engine import BODY_KEY, DROPPED_KEY, WATCH_KEY, Engine, Refused
from apiguard.guard import Guard
from apiguard.request import _current
from apiguard.responses import BlockResponse
from apiguard.steps import (
    at_cancelled,
    at_response,
    at_response_async,
    at_unanswered_async,
    end_async,
    render,
    started,
)

log = logging.getLogger("apiguard")


class HTTPRefused(Refused, HTTPException):
    """`Refused` as a Starlette HTTP exception (429, or 403 for bans): what checkpoints
    raise under this middleware, so FastAPI and tracing treat a refusal as a client
    error, not a server fault."""

    def __init__(self, decision: Decision) -> None:
        Refused.__init__(self, decision)
        HTTPException.__init__(self, self.status_code, self.detail)


_HTTP1 = frozenset({"1.1", "1.0", None})
_READS = frozenset({"GET", "OPTIONS"})


def _body_marker(scope: Scope, receive: Receive, engine: Engine, ctx: Any) -> Receive:
    """`receive`, marking the scope (`BODY_KEY`) once a body byte arrives: over HTTP/2 a
    GET may carry a body with no Content-Length, and a read that reaches a write with it
    (a FastAPI dependency, or the view, reading the JSON body) must spend the route's
    flows: those its checkpoint skipped as a read's are charged then (`Refused` past
    their budget, raised to whoever reads the body)."""
    scope[WATCH_KEY] = True

    async def marked() -> Message:
        message = await receive()
        if message.get("body") and not scope.get(BODY_KEY):
            scope[BODY_KEY] = True
            dropped = scope.pop(DROPPED_KEY, None)
            if dropped:
                await engine.check_async(ctx, dropped)
        return message

    return marked


class GuardMiddleware:
    """Checks every HTTP request against `guard`'s rules."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        if not isinstance(guard, Guard):
            raise TypeError("GuardMiddleware needs guard=Guard(...)")
        self.app = app
        self.guard = guard
        self.engine = guard.engine
        self.engine.refusal = HTTPRefused
        self._headers = guard.config.ratelimit_headers
        self._verified_root: Any = None
        self._cors: CorsLayout | None = None

    def _start(self, root: Any) -> None:
        """Once per app (lifespan start-up or first request): verify the routes, and find
        the app's CORS set-up around this middleware."""
        self.guard.verify(root)
        if root is self._verified_root:
            return
        self._cors = find_cors(self.app, root, self._is_mine)
        self._verified_root = root
        _log_cors(self._cors)

    def _is_mine(self, cls: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Whether a `user_middleware` entry (cls, args, kwargs) is this middleware."""
        if not (isinstance(cls, type) and issubclass(cls, GuardMiddleware)):
            return False
        return (kwargs["guard"] if "guard" in kwargs else args[0] if args else None) is self.guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                self._start(scope.get("app") or self.app)
                receive = _draining(receive, self.engine.store)
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
            self._start(root)
        engine = self.engine
        ctx = engine.begin(scope)
        if engine.may_be_banned():
            early = engine.early_ban(ctx)
            if early is not None:
                await self._refuse(scope, receive, send, early)
                return
        token = _current.set(ctx)
        status: int | None = None
        local = engine.store.local

        async def guarded_send(message: Message) -> None:
            nonlocal status
            if status is None and message["type"] == "http.response.start":
                if local:
                    refusal = at_response(engine, ctx, message["status"])
                else:
                    refusal = await at_response_async(engine, ctx, message["status"])
                if refusal is not None:
                    status = 0
                    await self._refuse(scope, receive, send, refusal, replacing=True)
                    return
                status = message["status"]
                cookies = started(engine, ctx, status, message.get("headers") or ())
                if cookies:
                    message["headers"] = [
                        *message.get("headers", ()),
                        *((b"set-cookie", c) for c in cookies),
                    ]
                if self._headers:
                    values = engine.ratelimit_values(ctx, status)
                    if values is not None:
                        message["headers"] = [
                            *message.get("headers", ()),
                            (b"ratelimit-policy", values[0]),
                            (b"ratelimit", values[1]),
                        ]
            elif ctx.refused_sent:
                return  # the app's own response to a refused request is dropped
            await send(message)

        if scope.get("http_version") not in _HTTP1 and scope.get("method") in _READS:
            receive = _body_marker(scope, receive, engine, ctx)  # (HTTP/2: no length)
        try:
            await self.app(scope, receive, guarded_send)
        except Refused as refused:
            if status is not None and not ctx.refused_sent:
                log.error("apiguard: a checkpoint refused a request after its response started")
                raise
            if not ctx.refused_sent:
                ctx.refused_sent = True
                await self._refuse(scope, receive, send, refused.decision)
        except Exception:
            # the app raised before answering (the server's error middleware, outside this
            # one, answers 500): the request is counted all the same, and a refused one
            # gets the refusal instead of the 500 (the exception still propagates, so the
            # app's error reporting sees it)
            if status is None and not ctx.refused_sent:
                refusal = await at_unanswered_async(engine, ctx)
                if refusal is not None:
                    await self._refuse(scope, receive, send, refusal)
            raise
        except BaseException:  # cancelled: count it, answer nothing
            at_cancelled(engine, ctx, status is not None)
            raise
        else:
            if status is None and not ctx.refused_sent:  # the app returned without answering
                refusal = await at_unanswered_async(engine, ctx)
                if refusal is not None:
                    await self._refuse(scope, receive, send, refusal)
        finally:
            _current.reset(token)
            await end_async(engine, ctx, status)

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        decision: Decision,
        *,
        replacing: bool = False,
    ) -> None:
        """Send the refusal (`replacing`: in place of the app's response, at its start),
        through the app's CORSMiddleware when it sits inside apiguard."""
        response = render(self.guard, decision)
        if replacing:
            _correct_native_status(scope, response.status)
        cors = self._cors.inside if self._cors is not None else None
        if cors is not None:
            await send_through_cors(cors, response, scope, receive, send)
        else:
            await send_block(send, response)


def _draining(receive: Receive, store: Any) -> Receive:
    """`receive` of a lifespan: at shutdown, the store first writes what waits (a remote
    store's writes after responses, see `RedisStore.drain`)."""
    drain = getattr(store, "drain", None)
    if drain is None:
        return receive

    async def receiving() -> Message:
        message = await receive()
        if message.get("type") == "lifespan.shutdown":
            try:
                await drain()
            except Exception:
                log.exception("apiguard: the store failed to write what waited at shutdown")
        return message

    return receiving


def _log_cors(layout: CorsLayout) -> None:
    if layout.outside:
        log.warning(
            "apiguard: CORSMiddleware runs outside GuardMiddleware, so it answers CORS "
            "preflight requests (OPTIONS) before apiguard sees them, and they are not "
            "counted. Add GuardMiddleware after CORSMiddleware (app.add_middleware("
            "CORSMiddleware, ...) first, then app.add_middleware(GuardMiddleware, ...)), or "
            "wrap the app from outside: GuardMiddleware(app, guard=guard)."
        )
    if layout.unexposed:
        log.info(
            "apiguard: the app's CORSMiddleware does not expose %s, so browser code on "
            "another origin cannot read them; consider expose_headers=%s",
            ", ".join(layout.unexposed),
            SUGGESTED,
        )


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
