"""What a team would pick instead of apiguard, over the same example shop, on the fake clock.

- `slowapi_shop`: slowapi as its documentation sets it up: `Limiter(key_func=
  get_remote_address, default_limits=[...])` with `SlowAPIMiddleware` and the
  `RateLimitExceeded` handler, and `@limiter.limit("5/minute")` on the login route; every
  limit is per client address. The shop's own apiguard decorators run in monitor mode
  (they never refuse), so slowapi alone decides.
- `axes_shop`: django-axes' lockout as a small ASGI middleware, faithful to its documented
  behaviour: failures are counted per lockout parameter (`AXES_LOCKOUT_PARAMETERS =
  ["ip_address", "username"]`: the address OR the username, each on its own); at
  `AXES_FAILURE_LIMIT = 3` failures (its default) further attempts are refused before the
  password is checked, for `AXES_COOLOFF_TIME` (its default is None, a lock that lasts
  until an administrator lifts it; the common setting of 1 hour is used here, kinder to
  honest users); a success does not clear the failures (`AXES_RESET_ON_SUCCESS = False`,
  its default). Only the login route is guarded, as axes guards only authentication.
  Refusals are answered 429 (axes' lockout response code).

Both use the fake clock: `limits`' in-memory storage reads `time.time()`, which is
pointed at the simulation's clock while they run (`use_clock`).
"""

from __future__ import annotations

import json
import time
import types
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

from apiguard import Guard

EPOCH = 1_700_000_000.0  # what the fake clock's 0 reads as Unix time for `limits`
SECRET = "apiguard-detection-benchmark-secret"


class _Time(types.SimpleNamespace):
    """Stands in for the `time` module inside limits' memory storage and slowapi."""

    clock: Callable[[], float] = time.monotonic

    def time(self) -> float:
        return EPOCH + type(self).clock()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def use_clock(clock: Callable[[], float]) -> None:
    """Point `limits`' memory storage (and slowapi's header maths) at `clock`."""
    import limits.storage.memory as memory
    import slowapi.extension as extension

    _Time.clock = clock
    memory.time = _Time()  # type: ignore[attr-defined]
    extension.time = _Time()  # type: ignore[attr-defined]


def restore_clock() -> None:
    import limits.storage.memory as memory
    import slowapi.extension as extension

    memory.time = time  # type: ignore[attr-defined]
    extension.time = time  # type: ignore[attr-defined]


def apiguard_guard(clock: Callable[[], float], *, monitor: bool = False) -> Guard:
    """apiguard's defaults and the shop's challenge route (the shop adds @guard.login, its
    flows and its login limit)."""
    config: dict[str, Any] = {"secret": SECRET, "detection": {"challenge_path": "/challenge"}}
    if monitor:
        config["mode"] = "monitor"
    return Guard(config, clock=clock)


def apiguard_shop(shop: Any) -> Callable[[Any], Any]:
    return lambda clock: shop.create_app(apiguard_guard(clock))


def unprotected_shop(shop: Any) -> Callable[[Any], Any]:
    """The shop with apiguard in monitor mode and nothing else: refuses nothing."""
    return lambda clock: shop.create_app(apiguard_guard(clock, monitor=True))


SLOWAPI_DEFAULT = "100/minute"
SLOWAPI_LOGIN = "5/minute"


def slowapi_shop(shop: Any, default: str = SLOWAPI_DEFAULT) -> Callable[[Any], Any]:
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded
    from slowapi.middleware import SlowAPIMiddleware
    from slowapi.util import get_remote_address

    def factory(clock: Any) -> Any:
        use_clock(clock)
        limiter = Limiter(key_func=get_remote_address, default_limits=[default])
        app = shop.create_app(apiguard_guard(clock, monitor=True), limiter=limiter)
        app.state.limiter = limiter
        app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)
        app.add_middleware(SlowAPIMiddleware)
        return app

    return factory


class AxesLike:
    """django-axes' login lockout (see the module docstring) as ASGI middleware."""

    def __init__(
        self,
        app: Any,
        clock: Callable[[], float],
        *,
        login_path: str = "/login",
        username_field: str = "username",
        failure_limit: int = 3,
        cooloff: float | None = 3600.0,
        parameters: tuple[str, ...] = ("ip_address", "username"),
        status: int = 429,
    ) -> None:
        self.app = app
        self.clock = clock
        self.login_path = login_path
        self.username_field = username_field
        self.failure_limit = failure_limit
        self.cooloff = cooloff
        self.parameters = parameters
        self.status = status
        self.failures: dict[tuple[str, str], deque[float]] = defaultdict(deque)

    def _count(self, key: tuple[str, str], now: float) -> int:
        events = self.failures.get(key)
        if not events:
            return 0
        if self.cooloff is not None:
            while events and events[0] <= now - self.cooloff:
                events.popleft()
        return len(events)

    def _keys(self, ip: str, username: str | None) -> list[tuple[str, str]]:
        keys = []
        if "ip_address" in self.parameters:
            keys.append(("ip", ip))
        if "username" in self.parameters and username is not None:
            keys.append(("username", username))
        return keys

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.login_path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            data = json.loads(body)
            username = str(data.get(self.username_field)) if isinstance(data, dict) else None
        except ValueError:
            username = None
        ip = (scope.get("client") or ("", 0))[0]
        keys = self._keys(ip, username)
        now = self.clock()
        if any(self._count(k, now) >= self.failure_limit for k in keys):
            detail = json.dumps({"detail": "Account locked: too many login attempts."}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": detail})
            return
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        status = 0

        async def watch(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        await self.app(scope, replay, watch)
        if status in (401, 403):
            for key in keys:
                self.failures[key].append(self.clock())


def axes_shop(shop: Any) -> Callable[[Any], Any]:
    def factory(clock: Any) -> Any:
        return AxesLike(shop.create_app(apiguard_guard(clock, monitor=True)), clock)

    return factory
