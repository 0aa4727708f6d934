"""One asyncio connection speaking just enough RESP for the Redis store's script calls.

Measured on the benchmark machine, redis-py's asyncio connection costs more CPU per
script call than the call's own work: a task per write (`wait_for` under a socket
timeout), per-argument encoding through its `Encoder`, a stream reader and a general
reply parser (a PING: 105-130 µs of CPU through the client, 58 on an asyncio protocol).
So the store's EVALSHA calls on a plain `redis.asyncio.Redis` go through this
`asyncio.Protocol` instead; everything else (clusters, sentinels, credential providers,
RESP3, the sync client, `SCRIPT LOAD` at warm-up, `reset`) stays redis-py's.

- The connection's settings (host and port or unix path, TLS context, username, password,
  database, client name) are read from the client's own connection class, so `rediss://`
  uses redis-py's TLS context. `Wire.fits` says whether a client can use it.
- Calls are pipelined: concurrent requests share the connection, replies come back in
  order. Each call has a deadline (the store's timeout); one timer per connection
  watches the oldest call (no timer per call): past its deadline every waiting call
  fails with TimeoutError and the connection is closed (a hung server is not waited on
  again); the next call reconnects. A cancelled caller's reply is read and dropped.
- NOSCRIPT (a restarted Redis) loads the script again; a connection found closed is
  reconnected and the call made once more (within the caller's timeout).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from apiguard.store.redis_urls import redis_module

_INCOMPLETE = object()
MAX_PENDING = 4096  # calls waiting on one connection at most (more: closed, they fail)


def _encode(value: Any) -> bytes:
    if isinstance(value, str):
        data = value.encode()
    elif isinstance(value, bytes):
        data = value
    elif isinstance(value, float):
        data = repr(value).encode()
    else:
        data = str(value).encode()
    return b"$%d\r\n%b\r\n" % (len(data), data)


def pack(*parts: Any) -> bytes:
    """A RESP command."""
    return b"*%d\r\n" % len(parts) + b"".join(map(_encode, parts))


def _text(args: Sequence[Any]) -> bytes:
    """RESP bulk strings for `args` that are not bytes: one f-string per argument and one
    encode (an ASCII text's length in characters is its length in bytes), else each
    argument on its own."""
    text = "".join([f"${len(a)}\r\n{a}\r\n" for a in map(str, args)])
    if text.isascii():
        return text.encode()
    return b"".join(map(_encode, args))


def bulk(args: Sequence[Any]) -> bytes:
    """RESP bulk strings for `args` (str, bytes, int or float), as `_encode` writes them,
    in a few C calls rather than a few per argument (a script call has many)."""
    if bytes not in map(type, args):
        return _text(args)
    out = []
    start = 0
    for i, kind in enumerate(map(type, args)):
        if kind is bytes:
            if i > start:
                out.append(_text(args[start:i]))
            out.append(_encode(args[i]))
            start = i + 1
    if start < len(args):
        out.append(_text(args[start:]))
    return b"".join(out)


class Packed:
    """Script arguments already encoded: `count` RESP bulk strings in `data` (the caller
    knows their layout and spares the per-argument work)."""

    __slots__ = ("args", "count", "data")

    def __init__(self, count: int, data: bytes, args: Callable[[], list[Any]]) -> None:
        self.count = count
        self.data = data
        self.args = args  # the same arguments as a list (other connections than Wire)


def _parse(buf: bytes, pos: int) -> tuple[Any, int]:
    """One reply at `pos` and the position after it, or (_INCOMPLETE, pos)."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return _INCOMPLETE, pos
    kind = buf[pos]
    after = end + 2
    if kind == 36:  # $ bulk string
        n = int(buf[pos + 1 : end])
        if n < 0:
            return None, after
        if len(buf) < after + n + 2:
            return _INCOMPLETE, pos
        return buf[after : after + n], after + n + 2
    if kind == 42:  # * array
        n = int(buf[pos + 1 : end])
        if n < 0:
            return None, after
        items: list[Any] = []
        size = len(buf)
        for _ in range(n):
            if after < size and buf[after] == 36:  # a bulk string, read here
                end = buf.find(b"\r\n", after)
                if end < 0:
                    return _INCOMPLETE, pos
                m = int(buf[after + 1 : end])
                if m < 0:
                    items.append(None)
                    after = end + 2
                    continue
                if size < end + m + 4:
                    return _INCOMPLETE, pos
                items.append(buf[end + 2 : end + 2 + m])
                after = end + m + 4
                continue
            item, after = _parse(buf, after)
            if item is _INCOMPLETE:
                return _INCOMPLETE, pos
            items.append(item)
        return items, after
    line = buf[pos + 1 : end]
    if kind == 58:  # : integer
        return int(line), after
    if kind == 43:  # + simple string
        return line, after
    if kind == 45:  # - error
        return _Error(line.decode(errors="replace")), after
    raise ValueError(f"not a RESP2 reply (type byte {kind})")


class _Error:
    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message

    def exception(self) -> Exception:
        errors = redis_module().exceptions
        if self.message.startswith("NOSCRIPT"):
            return errors.NoScriptError(self.message)  # type: ignore[no-any-return]
        return errors.ResponseError(self.message)  # type: ignore[no-any-return]


class _Protocol(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.pending: deque[asyncio.Future[Any]] = deque()
        self.deadlines: deque[float] = deque()  # the pending calls' (in order)
        self.timer: asyncio.TimerHandle | None = None
        self.buf = b""
        self.closed = False

    def arm(self, deadline: float) -> None:
        """Make sure `watch` runs by `deadline` (the timer is moved only earlier)."""
        timer = self.timer
        if timer is None or deadline < timer.when():
            if timer is not None:
                timer.cancel()
            self.timer = self.loop.call_at(deadline, self.watch)

    def watch(self) -> None:
        """Fail everything if a waiting call is past its deadline, else look again at
        the next deadline (the timer stays armed while calls wait: not one per call)."""
        self.timer = None
        if not self.deadlines or self.closed:
            return
        first = min(self.deadlines)  # (rarely run: once per deadline, not per call)
        if first <= self.loop.time():
            self.fail(TimeoutError("Redis did not answer in time"), TimeoutError)
            return
        self.arm(first)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos = 0
        pending = self.pending
        try:
            while pos < len(buf):
                reply, pos = _parse(buf, pos)
                if reply is _INCOMPLETE:
                    break
                future = pending.popleft()
                self.deadlines.popleft()
                if not future.done():
                    future.set_result(reply)
        except (ValueError, IndexError) as exc:  # garbage, or a reply nobody asked for
            self.fail(ConnectionError(f"unreadable reply from Redis ({exc})"))
            return
        self.buf = buf[pos:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(ConnectionError("the connection to Redis was closed"))

    def fail(self, exc: Exception, kind: type[Exception] | None = None) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        error = kind or redis_module().exceptions.ConnectionError
        self.deadlines.clear()
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                future.set_exception(error(str(exc)))


class Wire:
    """EVALSHA (and what a connection needs) on one pipelined asyncio connection."""

    def __init__(self, client: Any) -> None:
        pool = client.connection_pool
        conn = pool.connection_class(**pool.connection_kwargs)  # (not connected)
        self._conn = conn
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._heads: dict[tuple[str, str], bytes] = {}  # (sha, key) -> encoded command head
        self._errors = redis_module().exceptions
        self.loop = asyncio.get_running_loop()

    @staticmethod
    def fits(client: Any) -> bool:
        """A plain asyncio client on TCP, TLS or a unix socket, RESP2, no credential
        provider other than a username and password (others keep redis-py's path)."""
        pool = getattr(client, "connection_pool", None)
        conns = redis_module().asyncio.connection
        kinds = (conns.Connection, conns.SSLConnection, conns.UnixDomainSocketConnection)
        if pool is None or getattr(pool, "connection_class", None) not in kinds:
            return False
        kwargs = getattr(pool, "connection_kwargs", {})
        if kwargs.get("credential_provider") is not None:
            return False
        return str(kwargs.get("protocol") or 2) == "2"

    async def _connect(self) -> _Protocol:
        conn = self._conn
        proto = _Protocol(self.loop)
        path = getattr(conn, "path", None)
        if path:
            await self.loop.create_unix_connection(lambda: proto, path)
        else:
            context = getattr(conn, "ssl_context", None)
            ssl = context.get() if context is not None else None
            await self.loop.create_connection(lambda: proto, conn.host, conn.port, ssl=ssl)
        hello = []
        if conn.password:
            user = conn.username
            hello.append(pack("AUTH", user, conn.password) if user else pack("AUTH", conn.password))
        if conn.db:
            hello.append(pack("SELECT", conn.db))
        if conn.client_name:
            hello.append(pack("CLIENT", "SETNAME", conn.client_name))
        if hello:
            deadline = self.loop.time() + 5.0  # (the caller bounds the whole opening)
            replies = [self._send(proto, command, deadline) for command in hello]
            for reply in replies:
                result = await reply
                if isinstance(result, _Error):
                    proto.fail(ConnectionError(result.message))
                    raise result.exception()
        return proto

    def _send(self, proto: _Protocol, command: bytes, deadline: float) -> asyncio.Future[Any]:
        if proto.closed or proto.transport is None:
            raise redis_module().exceptions.ConnectionError("not connected to Redis")
        if len(proto.pending) >= MAX_PENDING:
            proto.fail(ConnectionError("too many calls waiting on one Redis connection"))
            raise redis_module().exceptions.ConnectionError("too many calls waiting")
        future: asyncio.Future[Any] = self.loop.create_future()
        proto.pending.append(future)
        proto.deadlines.append(deadline)
        proto.arm(deadline)
        proto.transport.write(command)
        return future

    async def _connected(self, deadline: float) -> tuple[_Protocol, bool]:
        """The open connection (opened now: False), one opening shared by concurrent
        callers, awaited until `deadline`."""
        proto = self._proto
        if proto is not None and not proto.closed:
            return proto, True
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect())
        wait = max(deadline - self.loop.time(), 0.0)
        proto = await asyncio.wait_for(asyncio.shield(self._connecting), wait)
        self._proto = proto
        return proto, False

    async def call(self, command: bytes, deadline: float) -> Any:
        """Send `command` and return its reply by `deadline` (loop time; an error reply
        raises, so does TimeoutError); a connection found closed is reopened and the
        command sent once more."""
        for attempt in (1, 2):
            proto, kept = await self._connected(deadline)
            try:
                reply = await self._send(proto, command, deadline)
            except redis_module().exceptions.ConnectionError:
                if attempt == 2 or not kept:
                    raise
                continue
            if isinstance(reply, _Error):
                raise reply.exception()
            return reply
        raise AssertionError("unreachable")  # pragma: no cover

    def _evalsha(self, sha: str, key: str, args: list[Any] | Packed) -> bytes:
        head = self._heads.get((sha, key))
        if head is None:
            if len(self._heads) > 64:
                self._heads.clear()
            head = self._heads[(sha, key)] = b"".join(map(_encode, ("EVALSHA", sha, 1, key)))
        if isinstance(args, Packed):
            return b"*%d\r\n%b%b" % (args.count + 4, head, args.data)
        return b"*%d\r\n%b%b" % (len(args) + 4, head, bulk(args))

    async def evalsha(
        self, script: Any, key: str, args: list[Any] | Packed, timeout: float
    ) -> Any:
        """EVALSHA of a redis-py `Script` within `timeout` seconds; NOSCRIPT loads it
        again (`script.sha`)."""
        deadline = self.loop.time() + timeout
        errors = self._errors
        proto = self._proto
        try:
            if proto is not None and not proto.closed:  # (the common case: one await)
                try:
                    reply = await self._send(proto, self._evalsha(script.sha, key, args), deadline)
                except errors.ConnectionError:
                    reply = _INCOMPLETE  # (a kept connection found closed: `call` reopens it)
                if isinstance(reply, _Error):
                    raise reply.exception()
                if reply is not _INCOMPLETE:
                    return reply
            return await self.call(self._evalsha(script.sha, key, args), deadline)
        except errors.NoScriptError:
            loaded = await self.call(pack("SCRIPT", "LOAD", script.script), deadline)
            script.sha = loaded.decode()
            return await self.call(self._evalsha(script.sha, key, args), deadline)

    async def aclose(self) -> None:
        """Close the connection."""
        if self._proto is not None:
            self._proto.fail(ConnectionError("closed"))
