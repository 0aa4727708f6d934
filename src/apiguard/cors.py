"""Refusals a browser can read: apiguard's answers go through the app's own CORS settings.

Installed the natural way (`app.add_middleware(GuardMiddleware, ...)` after
`CORSMiddleware`, or `GuardMiddleware(app, ...)` around the app), apiguard sits outside the
app's `CORSMiddleware`: it sees and counts every request, CORS preflights included, but its
refusals would not pass through CORS, and a browser front-end would see a CORS error
instead of the 429. So apiguard finds that `CORSMiddleware` once, at start-up, and sends
each refusal through a copy of it (Starlette's own code, same options) wrapped around a
tiny app that sends the refusal, then adds its own headers (`Retry-After`, `RateLimit`,
`RateLimit-Policy`) to `Access-Control-Expose-Headers` where CORS allowed the origin.
A refused preflight gets CORS's own preflight answer (a browser reads no non-2xx preflight,
and the actual request that follows gets the readable refusal).

Added the other way round, `CORSMiddleware` answers preflights before apiguard sees them, so
they are never counted: `find_cors` reports it and the middleware logs a warning.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from apiguard.responses import BlockResponse

REFUSAL = "apiguard.refusal"  # scope key: the BlockResponse the CORS copy sends
EXPOSED = ("retry-after", "ratelimit", "ratelimit-policy")  # what apiguard's answers carry
SUGGESTED = '["Retry-After", "RateLimit", "RateLimit-Policy"]'
_MAX_DEPTH = 32


@dataclass(frozen=True, slots=True)
class CorsLayout:
    """Where the app's CORS handling sits relative to one GuardMiddleware."""

    inside: CORSMiddleware | None  # the outermost CORSMiddleware below apiguard, re-targeted
    outside: bool  # a CORSMiddleware of the same app sits outside apiguard
    unexposed: tuple[str, ...]  # apiguard's headers the app's CORS does not expose


async def _send_refusal(scope: Scope, receive: Receive, send: Send) -> None:
    from apiguard.asgi import send_block  # (asgi imports this module)

    await send_block(send, scope[REFUSAL])


def _retarget(cors: CORSMiddleware) -> CORSMiddleware:
    """A copy of `cors` (same options, same class) whose app sends apiguard's refusal."""
    clone = copy.copy(cors)
    clone.app = _send_refusal
    return clone


def _is_cors_class(cls: object) -> bool:
    return isinstance(cls, type) and issubclass(cls, CORSMiddleware)


def _entries(app: Any) -> list[Any] | None:
    """A Starlette app's `user_middleware` (outermost first), or None."""
    entries = getattr(app, "user_middleware", None)
    return entries if isinstance(entries, list) else None


def _inside(below: Any) -> CORSMiddleware | None:
    """The outermost CORSMiddleware below apiguard: walking the `.app` chain (middleware
    already built), and in a Starlette app met on the way, its `user_middleware` (all of
    them are below apiguard; its stack may not be built yet)."""
    obj = below
    seen: list[Any] = []
    while obj is not None and len(seen) < _MAX_DEPTH and all(obj is not s for s in seen):
        seen.append(obj)
        if isinstance(obj, CORSMiddleware):
            return _retarget(obj)
        entries = _entries(obj)
        if entries is not None:
            for entry in entries:
                cls, args, kwargs = entry
                if _is_cors_class(cls):
                    return _retarget(cls(_send_refusal, *args, **kwargs))
            return None  # the app's own stack: nothing else of the app's lies below
        obj = getattr(obj, "app", None)
    return None


def _outside(root: Any, is_mine: Any) -> CORSMiddleware | None:
    """A CORSMiddleware that `root` runs outside this GuardMiddleware: an entry of
    `root.user_middleware` before the entry `is_mine` recognises (None if apiguard is not
    one of root's middleware, e.g. it wraps the app from outside)."""
    entries = _entries(root)
    if entries is None:
        return None
    found: CORSMiddleware | None = None
    for entry in entries:
        cls, args, kwargs = entry
        if is_mine(cls, args, kwargs):
            return found
        if found is None and _is_cors_class(cls):
            found = cls(_send_refusal, *args, **kwargs)
    return None


def _unexposed(cors: CORSMiddleware) -> tuple[str, ...]:
    headers = getattr(cors, "simple_headers", None)
    value = headers.get("Access-Control-Expose-Headers", "") if isinstance(headers, dict) else ""
    names = {n.strip().lower() for n in str(value).split(",")}
    if "*" in names and not getattr(cors, "allow_credentials", False):
        return ()  # "*" exposes every header to requests without credentials
    return tuple(n for n in EXPOSED if n not in names)


def find_cors(below: ASGIApp, root: Any, is_mine: Any) -> CorsLayout:
    """The app's CORS set-up around one GuardMiddleware whose wrapped app is `below`;
    `root` is the app whose `user_middleware` may list apiguard (`is_mine(cls, args,
    kwargs)` recognises its entry)."""
    inside = _inside(below)
    outside = _outside(root, is_mine) if root is not below else None
    reference = inside or outside
    return CorsLayout(
        inside, outside is not None, _unexposed(reference) if reference is not None else ()
    )


def expose(headers: Iterable[tuple[str, str]]) -> str:
    """The names of apiguard's headers in a refusal, for Access-Control-Expose-Headers."""
    present = {name.lower() for name, _ in headers}
    return ", ".join(n for n in EXPOSED if n in present)


async def send_through_cors(
    cors: CORSMiddleware, response: BlockResponse, scope: Scope, receive: Receive, send: Send
) -> None:
    """Send `response` as the app's CORSMiddleware would have sent it, exposing apiguard's
    headers to the page when CORS allowed its origin."""
    names = expose(response.headers)

    async def exposing_send(message: Message) -> None:
        if names and message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            allowed = any(k.lower() == b"access-control-allow-origin" for k, _ in headers)
            if allowed:
                merged: list[str] = []
                kept = []
                for k, v in headers:
                    if k.lower() == b"access-control-expose-headers":
                        merged.extend(p.strip() for p in v.decode("latin-1").split(","))
                    else:
                        kept.append((k, v))
                known = {m.lower() for m in merged}
                merged.extend(n for n in names.split(", ") if n not in known)
                value = ", ".join(m for m in merged if m)
                kept.append((b"access-control-expose-headers", value.encode("latin-1")))
                message = {**message, "headers": kept}
        await send(message)

    scope[REFUSAL] = response
    try:
        await cors(scope, receive, exposing_send)
    finally:
        scope.pop(REFUSAL, None)
