"""Pure WSGI middleware: any WSGI app (Flask through `apiguard.flask.init_app`).

    app.wsgi_app = GuardMiddleware(app.wsgi_app, guard=guard)

The same checkpoints as the ASGI adapter (`apiguard.steps`): a decorated view's entry,
`identify()`, the response start (the app's `start_response` call: a refused request gets
the refusal instead, before a byte of the app's response leaves), and a request the app
did not answer (it raised). The request body is not touched; responses stream through
unbuffered, with the RateLimit fields added to the app's headers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from apiguard.decision import Decision
from apiguard.engine import Engine, Refused
from apiguard.guard import Guard
from apiguard.request import RequestContext, _current
from apiguard.responses import BlockResponse
from apiguard.steps import at_cancelled, at_response, at_unanswered, end, render, started

log = logging.getLogger("apiguard")

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

SCOPE_KEY = "apiguard.scope"  # environ key: the ASGI-shaped scope of the request
# environ key -> its header name (b"x-api-key" for "HTTP_X_API_KEY"), b"" for keys that are
# not headers; bounded, since header names are client-chosen
_NAMES: dict[str, bytes] = {"CONTENT_TYPE": b"content-type", "CONTENT_LENGTH": b"content-length"}
_NAMES_MAX = 1024


def _header_name(key: str) -> bytes:
    name = key[5:].replace("_", "-").lower().encode("latin-1") if key[:5] == "HTTP_" else b""
    if len(_NAMES) < _NAMES_MAX:
        _NAMES[key] = name
    return name


def wsgi_scope(environ: WSGIEnvironment) -> dict[str, Any]:
    """The ASGI-shaped scope the engine reads, built once from a WSGI environ (headers as
    lower-case byte pairs, the peer address, the path decoded as UTF-8)."""
    names = _NAMES
    headers = []
    for key, value in environ.items():
        name = names.get(key)
        if name is None:
            name = _header_name(key)
        if name and isinstance(value, str):
            headers.append((name, value.encode("latin-1")))
    path = environ.get("PATH_INFO") or "/"
    if not path.isascii():
        path = path.encode("latin-1").decode("utf-8", "replace")
    # the TCP peer as the server saw it, even where werkzeug's ProxyFix, wrapped around
    # apiguard, rewrote REMOTE_ADDR from X-Forwarded-For: forwarding headers are believed
    # only through apiguard's own trusted proxies (client_ip.trusted_proxies)
    fixed = environ.get("werkzeug.proxy_fix.orig")
    peer = fixed.get("REMOTE_ADDR") if isinstance(fixed, dict) else environ.get("REMOTE_ADDR")
    root = environ.get("SCRIPT_NAME", "")
    return {
        "type": "http",
        "method": environ.get("REQUEST_METHOD", "GET"),
        "path": path,
        "root_path": root,
        "app_root_path": root,
        "query_string": environ.get("QUERY_STRING", "").encode("latin-1"),
        "headers": headers,
        "client": (peer, 0) if peer else None,
    }


def status_line(status: int) -> str:
    """`429 Too Many Requests` for 429."""
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


def wsgi_headers(response: BlockResponse) -> list[tuple[str, str]]:
    """A `BlockResponse`'s headers for `start_response`, with its Content-Length."""
    return [*response.headers, ("content-length", str(len(response.body)))]


def _discard(data: bytes) -> None:
    """The `write` of a response apiguard replaces: the app's bytes go nowhere."""


class _Exchange:
    """One request's state between the app and the server."""

    __slots__ = ("ctx", "refusal", "start_response", "status")

    def __init__(self, ctx: RequestContext, start_response: StartResponse) -> None:
        self.ctx = ctx
        self.start_response = start_response
        self.status: int | None = None  # the app's status once it went out; 0: replaced
        self.refusal: Decision | None = None  # the refusal replacing the app's response


class GuardMiddleware:
    """Checks every request to the WSGI app `app` against `guard`'s rules.

    `routes`: an object whose routes `guard.verify` walks on the first request (the Flask
    adapter passes the Flask app's URL map); None for an app apiguard cannot walk.
    """

    def __init__(self, app: WSGIApplication, guard: Guard, *, routes: Any = None) -> None:
        if not isinstance(guard, Guard):
            raise TypeError("GuardMiddleware needs guard=Guard(...)")
        self.app = app
        self.guard = guard
        self.engine: Engine = guard.engine
        self._headers = guard.config.ratelimit_headers
        self._routes = routes

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("apiguard.guard") is self.guard:  # installed twice: count once
            return self.app(environ, start_response)
        environ["apiguard.guard"] = self.guard
        if self._routes is not None:  # once: the first request (routes are final by then)
            routes, self._routes = self._routes, None
            self.guard.verify(routes)
        engine = self.engine
        scope = environ[SCOPE_KEY] = wsgi_scope(environ)
        ctx = engine.begin(scope)
        if engine.may_be_banned():
            early = engine.early_ban(ctx)
            if early is not None:
                ctx.refused_sent = True
                end(engine, ctx, None)
                return self._refuse(start_response, early)
        ex = _Exchange(ctx, start_response)
        token = _current.set(ctx)
        try:
            body = self.app(environ, self._starter(ex))
        except Refused as refused:
            if ex.status and not ctx.refused_sent:
                log.error("apiguard: a checkpoint refused a request after its response started")
                end(engine, ctx, ex.status)
                raise
            ctx.refused_sent = True
            end(engine, ctx, None)
            return self._refuse(start_response, ex.refusal or refused.decision)
        except Exception:
            refusal = ex.refusal
            if ex.status is None:
                refusal = at_unanswered(engine, ctx)
            end(engine, ctx, ex.status or None)
            if refusal is None:
                raise
            # the client gets the refusal instead of the server's 500; the error is logged
            log.exception("apiguard: the app raised on a refused request")
            return self._refuse(start_response, refusal)
        except BaseException:  # interrupted: count it, answer nothing
            at_cancelled(engine, ctx, ex.status is not None)
            end(engine, ctx, None)
            raise
        finally:
            _current.reset(token)
        if ex.refusal is not None:  # refused at the response start: the app's body is dropped
            _close(body)
            end(engine, ctx, None)
            return self._refuse(start_response, ex.refusal)
        return _Body(self, ex, body)

    def _starter(self, ex: _Exchange) -> StartResponse:
        """The `start_response` the app calls: the response-start checkpoint."""
        engine = self.engine
        headers_on = self._headers

        def start(
            status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None, /
        ) -> Callable[[bytes], object]:
            if ex.status is None:
                code = int(status[:3])
                refusal = at_response(engine, ex.ctx, code)
                if refusal is not None:
                    ex.status = 0
                    ex.refusal = refusal
                    return _discard
                ex.status = code
                ctx = ex.ctx
                cookies = started(engine, ctx, code)
                if ctx.charges or engine.detectors:  # a status went out: it is the outcome
                    engine.finish(ctx, code)
                if cookies:
                    headers = [*headers, *(("Set-Cookie", c.decode("latin-1")) for c in cookies)]
                if headers_on:
                    values = engine.ratelimit_values(ctx)
                    if values is not None:
                        headers = [
                            *headers,
                            ("RateLimit-Policy", values[0].decode("latin-1")),
                            ("RateLimit", values[1].decode("latin-1")),
                        ]
            elif ex.status == 0:
                return _discard
            return ex.start_response(status, headers, exc_info)

        return start

    def _refuse(self, start_response: StartResponse, decision: Decision) -> list[bytes]:
        """Start the refusal and return its body (a complete response)."""
        response = render(self.guard, decision)
        start_response(status_line(response.status), wsgi_headers(response))
        return [response.body]


class _Body:
    """The app's body for the server, chunk by chunk as it comes (nothing buffered), with
    the request's context set while the app produces each chunk (a generator view's
    checkpoint runs as it is iterated). An app that starts its response only as its body
    is iterated is checked then; `close()` ends the request, iterated or not."""

    __slots__ = ("_ex", "_it", "_middleware", "_source", "_tail")

    def __init__(self, middleware: GuardMiddleware, ex: _Exchange, body: Iterable[bytes]) -> None:
        self._middleware = middleware
        self._ex = ex
        self._source: Iterable[bytes] | None = body
        self._it: Iterator[bytes] | None = None
        self._tail: list[bytes] | None = None  # the refusal's body, once it replaced the app's

    def __iter__(self) -> _Body:
        return self

    def __next__(self) -> bytes:
        if self._tail is not None:
            if self._tail:
                return self._tail.pop()
            raise StopIteration
        ex = self._ex
        it = self._it
        if it is None:
            if self._source is None:
                raise StopIteration
            it = self._it = iter(self._source)
        token = _current.set(ex.ctx)
        try:
            chunk = next(it)
        except StopIteration:
            if ex.status is None and ex.refusal is None:  # the app never started a response
                ex.refusal = at_unanswered(self._middleware.engine, ex.ctx)
            if ex.refusal is None:
                self._finish()  # the body is complete: the request is over
                raise
            return self._replace()
        except Exception:
            if ex.status is None and ex.refusal is None:
                ex.refusal = at_unanswered(self._middleware.engine, ex.ctx)
            if ex.refusal is None:
                raise
            log.exception("apiguard: the app raised on a refused request")
            return self._replace()
        finally:
            _current.reset(token)
        if ex.refusal is not None:  # refused as the app started its response
            return self._replace()
        return chunk

    def _replace(self) -> bytes:
        """Drop the app's body and start the refusal; its body is the next chunk."""
        self._finish()
        refusal = self._ex.refusal
        assert refusal is not None
        self._tail = self._middleware._refuse(self._ex.start_response, refusal)
        return self._tail.pop() if self._tail else b""

    def _finish(self) -> None:
        source, self._source = self._source, None
        self._it = None
        if source is not None:
            try:
                _close(source)
            finally:
                ex = self._ex
                end(self._middleware.engine, ex.ctx, ex.status or None)

    def close(self) -> None:
        self._finish()


def _close(body: Iterable[bytes]) -> None:
    close = getattr(body, "close", None)
    if close is not None:
        close()
