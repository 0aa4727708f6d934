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
from collections.abc import Callable, Generator, Iterable, Iterator
from contextvars import Token
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from apiguard.cors_copy import CorsSource, kept, with_cors
from apiguard.decision import Decision
from apiguard.detectors.fingerprint import SHAPE, first_values
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
# scope key: True when the app's body is a finished sequence that runs no app code as it
# is iterated (the Flask adapter sets it from the response): sent as returned, like a list
COMPLETE_KEY = "apiguard.complete"
# environ key -> its header name (b"x-api-key" for "HTTP_X_API_KEY"), b"" for keys that are
# not headers; bounded, since header names are client-chosen
_NAMES: dict[str, bytes] = {"CONTENT_TYPE": b"content-type", "CONTENT_LENGTH": b"content-length"}
_NAMES_MAX = 1024
# the environ keys of the client-shape headers (`apiguard.detectors.fingerprint`)
_SHAPE_KEYS = tuple("HTTP_" + name.decode().upper().replace("-", "_") for name in SHAPE)


def _header_name(key: str) -> bytes:
    name = key[5:].replace("_", "-").lower().encode("latin-1") if key[:5] == "HTTP_" else b""
    if len(_NAMES) < _NAMES_MAX:
        _NAMES[key] = name
    return name


def environ_headers(environ: WSGIEnvironment) -> list[tuple[bytes, bytes]]:
    """The request headers of a WSGI environ as ASGI has them: lower-case byte pairs, in
    the environ's order (`HTTP_X_API_KEY` -> `x-api-key`; CONTENT_TYPE, CONTENT_LENGTH)."""
    names = _NAMES
    headers = []
    for key, value in environ.items():
        name = names.get(key)
        if name is None:
            name = _header_name(key)
        if name and isinstance(value, str):
            headers.append((name, value.encode("latin-1")))
    return headers


class EnvironHeaders:
    """A scope's `headers` read from a WSGI environ when first asked for (the engine's
    own reads go straight to the environ keys it needs): a sequence of lower-case byte
    pairs, as of the request's arrival (the environ is copied, so an inner middleware
    that rewrites it later changes nothing here)."""

    __slots__ = ("_environ", "_pairs")

    def __init__(self, environ: WSGIEnvironment) -> None:
        self._environ: WSGIEnvironment | None = environ.copy()
        self._pairs: list[tuple[bytes, bytes]]  # (set when first asked for)

    def _list(self) -> list[tuple[bytes, bytes]]:
        environ = self._environ
        if environ is not None:
            self._pairs = environ_headers(environ)
            self._environ = None
        return self._pairs

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(self._list())

    def shape(self) -> tuple[bytes, ...]:
        """The client-shape headers' values (`apiguard.detectors.fingerprint`), read
        straight from the environ's keys while the pairs are not built."""
        environ = self._environ
        if environ is None:
            return first_values(self._pairs)
        get = environ.get
        return tuple(
            value.encode("latin-1") if isinstance(value := get(key, ""), str) else b""
            for key in _SHAPE_KEYS
        )

    def __len__(self) -> int:
        return len(self._list())

    def __getitem__(self, index: Any) -> Any:
        return self._list()[index]

    def __eq__(self, other: object) -> bool:
        pairs = self._list()
        return pairs == (other._list() if isinstance(other, EnvironHeaders) else other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._list())


def _peer(environ: WSGIEnvironment) -> Any:
    # the TCP peer as the server saw it, even where werkzeug's ProxyFix, wrapped around
    # apiguard, rewrote REMOTE_ADDR from X-Forwarded-For: forwarding headers are believed
    # only through apiguard's own trusted proxies (client_ip.trusted_proxies)
    fixed = environ.get("werkzeug.proxy_fix.orig")
    return fixed.get("REMOTE_ADDR") if isinstance(fixed, dict) else environ.get("REMOTE_ADDR")


def _scope(environ: WSGIEnvironment, headers: Any, peer: Any) -> dict[str, Any]:
    path = environ.get("PATH_INFO") or "/"
    if not path.isascii():
        path = path.encode("latin-1").decode("utf-8", "replace")
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


def wsgi_scope(environ: WSGIEnvironment) -> dict[str, Any]:
    """The ASGI-shaped scope the engine reads, built once from a WSGI environ (headers as
    lower-case byte pairs, the peer address, the path decoded as UTF-8)."""
    return _scope(environ, environ_headers(environ), _peer(environ))


def _environ_key(name: bytes) -> str | None:
    """The environ key a header `name` arrives under (`x-api-key` -> `HTTP_X_API_KEY`),
    or None when no environ key reads as that name (`x_api_key`: never a header here)."""
    key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
    return key if _header_name(key) == name else None


class EnvironReader:
    """Builds an engine's request context from a WSGI environ: the headers the engine
    needs are read from their environ keys (a few dict lookups, not a pass over the
    environ), with the same result as `Engine.begin(wsgi_scope(environ))`, which it
    falls back to for the rare request where the environ's order decides (two API key
    headers, two forwarding headers from an untrusted peer)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        found = [(k, n) for n in sorted(engine._key_headers) if (k := _environ_key(n))]
        self._keys = tuple(found)
        self._bearer = engine._bearer
        ip = engine.ip
        self._walks = ip.walks
        self._proxy_key = _environ_key(ip.header)
        # (not walking) forwarding headers that mark the peer as a likely proxy
        others = (n for n in sorted(engine._wanted_headers) if n in _FORWARDING)
        self._forwarding = tuple((k, n) for n in others if (k := _environ_key(n)))
        # every environ key `begin` looks at beyond the scope's: when none is there (the
        # usual request: no API key, token, cookie, forwarding header), one set operation
        # says so and the context is built at once
        wanted = {k for k, _ in self._keys} | {k for k, _ in self._forwarding}
        wanted |= {"HTTP_COOKIE", "werkzeug.proxy_fix.orig"}
        if self._bearer:
            wanted.add("HTTP_AUTHORIZATION")
        if self._walks and self._proxy_key is not None:
            wanted.add(self._proxy_key)
        self._wanted = frozenset(wanted)

    def begin(self, environ: WSGIEnvironment) -> RequestContext:
        """The request context; its scope is `ctx.scope`. (Most of the headers looked for
        are absent: `in` answers that without a method call.)"""
        # (the keys view looks up each wanted key, not each of the environ's)
        if environ.keys().isdisjoint(self._wanted):  # none of them: the context at once
            # (`_scope`, inlined: every request without a credential comes here)
            peer = environ.get("REMOTE_ADDR")
            path = environ.get("PATH_INFO") or "/"
            if not path.isascii():
                path = path.encode("latin-1").decode("utf-8", "replace")
            root = environ.get("SCRIPT_NAME", "")
            scope = {
                "type": "http",
                "method": environ.get("REQUEST_METHOD", "GET"),
                "path": path,
                "root_path": root,
                "app_root_path": root,
                "query_string": environ.get("QUERY_STRING", "").encode("latin-1"),
                "headers": EnvironHeaders(environ),
                "client": (peer, 0) if peer else None,
            }
            return self.engine.context(scope, peer, None, None, None, [], False, None)
        api_key: bytes | None = None
        key_name: bytes | None = None
        for key, name in self._keys:
            if key in environ:
                value = environ[key]
                if isinstance(value, str):
                    if key_name is not None:  # two key headers: the first in order wins
                        return self._general(environ)
                    key_name = name
                    api_key = value.encode("latin-1").strip() or None
        bearer: bytes | None = None
        if "HTTP_AUTHORIZATION" in environ and self._bearer:
            value = environ["HTTP_AUTHORIZATION"]
            if isinstance(value, str):
                raw = value.encode("latin-1")
                if raw[:7].lower() == b"bearer ":
                    bearer = raw[7:].strip() or None
        forwarded: list[str] = []
        proxied: bytes | None = None
        if self._walks:
            proxy = self._proxy_key
            if proxy is not None and proxy in environ:
                value = environ[proxy]
                if isinstance(value, str):
                    forwarded.append(value)
        else:
            for key, name in self._forwarding:
                if key in environ and isinstance(environ[key], str):
                    if proxied is not None:  # the first in order is reported
                        return self._general(environ)
                    proxied = name
        peer = (
            _peer(environ)
            if "werkzeug.proxy_fix.orig" in environ
            else environ.get("REMOTE_ADDR")
        )
        scope = _scope(environ, EnvironHeaders(environ), peer)
        jar = environ.get("HTTP_COOKIE")
        cookie = isinstance(jar, str) and "=" in jar  # (an empty header carries no cookie)
        return self.engine.context(
            scope, peer, api_key, None, bearer, forwarded, cookie, proxied
        )

    def _general(self, environ: WSGIEnvironment) -> RequestContext:
        return self.engine.begin(wsgi_scope(environ))


_FORWARDING = frozenset({b"x-forwarded-for", b"forwarded"})


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
    """One request between the app and the server: its state, the `start_response` the
    app calls (`start`, the response-start checkpoint) and, unless the app's body is a
    list, the body the server iterates.

    As the body: the app's chunks as they come (nothing buffered), with the request's
    context set while the app produces each chunk (a generator view's checkpoint runs as
    it is iterated). An app that starts its response only as its body is iterated is
    checked then; `close()` ends the request, iterated or not."""

    __slots__ = (
        "_gen",
        "_it",
        "_middleware",
        "_source",
        "cors",
        "ctx",
        "refusal",
        "start_response",
        "status",
    )

    def __init__(
        self, middleware: GuardMiddleware, ctx: RequestContext, start_response: StartResponse
    ) -> None:
        self._middleware = middleware
        self.ctx = ctx
        self.start_response = start_response
        self.status: int | None = None  # the app's status once it went out; 0: replaced
        self.refusal: Decision | None = None  # the refusal replacing the app's response
        self.cors: list[tuple[str, str]] | None = None  # that response's CORS headers
        self._source: Iterable[bytes] | None = None
        self._it: Iterator[bytes] | None = None
        # the chunks, for a server that calls next() on the body itself
        self._gen: Generator[bytes, None, None] | None = None

    def start(
        self, status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None, /
    ) -> Callable[[bytes], object]:
        """The `start_response` the app calls: the response-start checkpoint."""
        if self.status is None:
            code = int(status[:3])
            middleware = self._middleware
            engine = middleware.engine
            ctx = self.ctx
            refusal = at_response(engine, ctx, code)
            if refusal is not None:
                self.status = 0
                self.refusal = refusal
                self.cors = kept(headers)  # the app's CORS answer, kept on the refusal
                return _discard
            self.status = code
            cookies = started(engine, ctx, code, headers)
            # (before `finish` gives back what a failed `count="success"` flow charged)
            values = engine.ratelimit_values(ctx, code) if middleware._headers else None
            # a status went out: it is the outcome (`finish` where it has work to do)
            if ctx.charges or ctx.login is not None or (engine.detectors and not ctx.observed):
                engine.finish(ctx, code)
            if cookies:
                headers = [*headers, *(("Set-Cookie", c.decode("latin-1")) for c in cookies)]
            if values is not None:
                headers = [
                    *headers,
                    ("RateLimit-Policy", values[0].decode("latin-1")),
                    ("RateLimit", values[1].decode("latin-1")),
                ]
        elif self.status == 0:
            return _discard
        return self.start_response(status, headers, exc_info)

    def __iter__(self) -> Iterator[bytes]:
        gen = self._gen
        return gen if gen is not None else self._chunks()

    def __next__(self) -> bytes:  # (for a server that calls next() on the body itself)
        gen = self._gen
        if gen is None:
            gen = self._gen = self._chunks()
        return next(gen)

    def _chunks(self) -> Generator[bytes, None, None]:
        """The app's chunks, then (if the request was refused meanwhile) the refusal's."""
        source = self._source
        if source is None:
            return
        it = self._it
        if it is None:
            it = self._it = iter(source)
        ctx = self.ctx
        token: Token[RequestContext | None] | None = _current.set(ctx)
        try:
            for chunk in it:
                _current.reset(token)  # type: ignore[arg-type]  # (set: the server sends
                # the chunk outside the request's context)
                token = None
                if self.refusal is not None:  # refused as the app started its response
                    break
                yield chunk
                token = _current.set(ctx)
        except Exception:
            if self.status is None and self.refusal is None:
                self.refusal = at_unanswered(self._middleware.engine, ctx)
            if self.refusal is None:
                raise
            log.exception("apiguard: the app raised on a refused request")
        else:
            if token is not None:  # the app's body is over
                if self.status is None and self.refusal is None:  # it never started one
                    self.refusal = at_unanswered(self._middleware.engine, ctx)
                if self.refusal is None:
                    self._finish()  # the body is complete: the request is over
                    return
        finally:
            if token is not None:
                _current.reset(token)
        # the app's body is dropped, and the refusal sent instead
        self._finish()
        refusal = self.refusal
        assert refusal is not None
        yield from self._middleware._refuse(self.start_response, refusal, self.cors)

    def _finish(self) -> None:
        source, self._source = self._source, None
        self._it = None
        if source is not None:
            try:
                _close(source)
            finally:
                end(self._middleware.engine, self.ctx, self.status or None)

    def close(self) -> None:
        gen, self._gen = self._gen, None
        if gen is not None:
            gen.close()
        self._finish()


class GuardMiddleware:
    """Checks every request to the WSGI app `app` against `guard`'s rules.

    `routes`: an object whose routes `guard.verify` walks on the first request, and on
    every later one while the walk fails (the Flask adapter passes the Flask app's URL
    map); None for an app apiguard cannot walk.
    """

    def __init__(
        self,
        app: WSGIApplication,
        guard: Guard,
        *,
        routes: Any = None,
        cors: CorsSource | None = None,
    ) -> None:
        if not isinstance(guard, Guard):
            raise TypeError("GuardMiddleware needs guard=Guard(...)")
        self.app = app
        self.guard = guard
        self.engine: Engine = guard.engine
        self._headers = guard.config.ratelimit_headers
        self._routes = routes
        self._cors = cors  # the app's CORS headers for a refusal that replaces no response
        self._reader = EnvironReader(self.engine)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("apiguard.guard") is self.guard:  # installed twice: count once
            return self.app(environ, start_response)
        environ["apiguard.guard"] = self.guard
        if self._routes is not None:  # the first request (routes are final by then); a
            # failing walk raises on every request until the app is fixed, never only once
            self.guard.verify(self._routes)
            self._routes = None
        engine = self.engine
        ctx = self._reader.begin(environ)
        environ[SCOPE_KEY] = scope = ctx.scope
        if engine.may_be_banned():
            early = engine.early_ban(ctx)
            if early is not None:
                ctx.refused_sent = True
                end(engine, ctx, None)
                return self._refuse(start_response, early, None, environ)
        ex = _Exchange(self, ctx, start_response)
        token = _current.set(ctx)
        try:
            body = self.app(environ, ex.start)
        except Refused as refused:
            if ex.status and not ctx.refused_sent:
                log.error("apiguard: a checkpoint refused a request after its response started")
                end(engine, ctx, ex.status)
                raise
            ctx.refused_sent = True
            end(engine, ctx, None)
            return self._refuse(
                start_response, ex.refusal or refused.decision, ex.cors, environ
            )
        except Exception:
            refusal = ex.refusal
            if ex.status is None:
                refusal = at_unanswered(engine, ctx)
            end(engine, ctx, ex.status or None)
            if refusal is None:
                raise
            # the client gets the refusal instead of the server's 500; the error is logged
            log.exception("apiguard: the app raised on a refused request")
            return self._refuse(start_response, refusal, ex.cors, environ)
        except BaseException:  # interrupted: count it, answer nothing
            at_cancelled(engine, ctx, ex.status is not None)
            end(engine, ctx, None)
            raise
        finally:
            _current.reset(token)
        if ex.refusal is not None:  # refused at the response start: the app's body is dropped
            _close(body)
            end(engine, ctx, None)
            return self._refuse(start_response, ex.refusal, ex.cors, environ)
        if ex.status and (type(body) is list or scope.get(COMPLETE_KEY) is True):
            end(engine, ctx, ex.status)  # answered and complete: no app code runs as it is
            return body  # sent, so the request is over now
        ex._source = body
        return ex

    def _refuse(
        self,
        start_response: StartResponse,
        decision: Decision,
        cors: list[tuple[str, str]] | None = None,
        environ: WSGIEnvironment | None = None,
    ) -> list[bytes]:
        """Start the refusal and return its body (a complete response), with the CORS
        headers of the app's response it replaces (`cors`), else those the app's CORS code
        gives for `environ` (`apiguard.cors_copy`)."""
        response = render(self.guard, decision)
        headers = wsgi_headers(response)
        if cors is None and environ is not None and self._cors is not None:
            try:
                cors = self._cors(environ)
            except Exception:
                log.exception("apiguard: the app's CORS headers for a refusal failed")
        if cors:
            headers = with_cors(headers, cors)
        start_response(status_line(response.status), headers)
        return [response.body]


def _close(body: Iterable[bytes]) -> None:
    close = getattr(body, "close", None)
    if close is not None:
        close()
