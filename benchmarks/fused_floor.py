"""A lower bound for apiguard's default policy: the same per-request work, hand-fused.

Not a limiter anyone should use: one function, no configuration, no plugins, no refusals
(it raises if a limit were ever reached), no bans, no identify() checkpoint logic. It
does what apiguard's default policy must do for an anonymous request that is admitted,
with nothing in between:

- one pass over the request headers (API key, bearer token, cookie);
- the client address -> keyed BLAKE2b hash, through a cache;
- a request object in a context variable (what `identify()` needs), released at the end;
- the OpenTelemetry span captured on entry, a decision counter and `is_recording()`;
- at the response start, under a lock: the per-principal and per-IP windows (the same
  exact bucketed sliding window as apiguard, k = 10, in an OrderedDict LRU), and the
  draft-11 `RateLimit-Policy` / `RateLimit` fields of the tighter one.

`overhead.py` runs it beside apiguard, so the cost of apiguard's layers (rule plugins,
store contract, engine checkpoints) is the difference between the two rows, and what
remains of the floor is the cost of the work itself in this interpreter.
"""

from __future__ import annotations

import contextvars
import hashlib
import threading
import time
from collections import OrderedDict
from typing import Any

from opentelemetry import metrics, trace

_K = 10
_N = _K + 1
_LIMIT = 100_000_000
_WIDTH = 60.0 / _K
_MAX_KEYS = 200_000
_WANTED = frozenset({b"x-api-key", b"authorization", b"cookie"})
_ALLOW = {"apiguard.rule": "none", "apiguard.decision": "allow"}
_POLICY = b'"per-principal";q=100000000;w=60'
_STATE = b'"per-principal";r='
_current: contextvars.ContextVar[Any] = contextvars.ContextVar("fused_floor")


class _Window:
    __slots__ = ("counts", "head", "tail", "total")

    def __init__(self) -> None:
        self.counts = [0] * _N
        self.head = -(1 << 62)
        self.tail = self.head
        self.total = 0


class _Request:
    __slots__ = ("cookie", "credential", "decision", "done", "ip_key", "principal", "scope", "span")

    def __init__(self, scope: Any, ip_key: str, credential: bytes | None, span: Any, cookie: bool):
        self.scope = scope
        self.ip_key = ip_key
        self.credential = credential
        self.span = span
        self.cookie = cookie
        self.principal: str | None = None
        self.done = False
        self.decision: str | None = None


class FusedFloor:
    """Pure-ASGI middleware: the default policy's admitted-request work in one function."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.windows: OrderedDict[str, _Window] = OrderedDict()
        self.ip_keys: dict[str, str] = {}
        self.lock = threading.Lock()
        self.hash_ip = hashlib.blake2b(key=b"k" * 32, digest_size=12, person=b"ip")
        self.counter = metrics.get_meter_provider().get_meter("floor").create_counter("d")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api_key = None
        cookie = False
        for name, value in scope.get("headers") or ():
            if name in _WANTED:
                if name == b"x-api-key":
                    api_key = value
                elif name == b"cookie":
                    cookie = True
        peer = scope.get("client")
        ip = peer[0] if peer else "unknown"
        ip_key = self.ip_keys.get(ip)
        if ip_key is None:
            h = self.hash_ip.copy()
            h.update(ip.encode())
            ip_key = self.ip_keys[ip] = "ip:" + h.hexdigest()
        request = _Request(scope, ip_key, api_key, trace.get_current_span(), cookie)
        token = _current.set(request)
        windows = self.windows
        status = None

        async def checked_send(message: Any) -> None:
            nonlocal status
            if status is None and message["type"] == "http.response.start":
                now = time.monotonic()
                index = int(now // _WIDTH)
                principal = request.principal = request.ip_key
                best_share = 2.0
                best = (0, 0.0)
                self.lock.acquire()
                try:
                    for key in ("g.principal.0|" + principal, "g.ip.0|" + ip_key):
                        w = windows.get(key)
                        if w is None:
                            if len(windows) >= _MAX_KEYS:
                                windows.popitem(last=False)
                            w = windows[key] = _Window()
                        else:
                            windows.move_to_end(key)
                        if index > w.head:
                            if index - w.head >= _N:
                                w.counts = [0] * _N
                                w.total = 0
                            else:
                                for j in range(w.head + 1, index + 1):
                                    w.total -= w.counts[j % _N]
                                    w.counts[j % _N] = 0
                            w.head = index
                        total = w.total + 1
                        if total > _LIMIT:
                            raise RuntimeError("the floor never refuses")
                        if total == 1:
                            w.tail = index
                        w.counts[index % _N] += 1
                        w.total = total
                        remaining = _LIMIT - total
                        share = remaining / _LIMIT
                        if share < best_share:
                            best_share = share
                            best = (remaining, (w.tail + _N) * _WIDTH - now)
                finally:
                    self.lock.release()
                request.done = True
                request.decision = "allow"
                self.counter.add(1, _ALLOW)
                if request.span.is_recording():
                    request.span.set_attributes(_ALLOW)
                status = message["status"]
                remaining, reset = best
                seconds = int(reset)
                if seconds < reset:
                    seconds += 1
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"ratelimit-policy", _POLICY),
                    (b"ratelimit", _STATE + b"%d;t=%d" % (remaining, seconds)),
                ]
            await send(message)

        try:
            await self.app(scope, receive, checked_send)
        finally:
            _current.reset(token)
            request.scope = None
            request.span = None

    def __len__(self) -> int:
        return len(self.windows)
