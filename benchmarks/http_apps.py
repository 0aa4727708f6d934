"""The apps `http.sh` serves with uvicorn: bare Starlette, apiguard (default policy), slowapi.

Each is a Starlette app with 10 routes `/r{i}/items/{item_id}` whose async endpoints return
a small PlainTextResponse. Limits are far above what a benchmark can reach: nothing is
ever refused, so the numbers are pure overhead.

    APIGUARD_BENCH_APP=apiguard uvicorn --app-dir benchmarks http_apps:app
    uvicorn --app-dir benchmarks --factory http_apps:slowapi_app
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

# --app-dir puts this folder first on the path, where benchmarks/redis.py would shadow
# redis-py (slowapi's Redis storage, apiguard's Redis store)
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from slowapi import Limiter, _rate_limit_exceeded_handler  # noqa: E402
from slowapi.errors import RateLimitExceeded  # noqa: E402
from slowapi.middleware import SlowAPIASGIMiddleware  # noqa: E402
from slowapi.util import get_remote_address  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import PlainTextResponse, Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from apiguard import Guard  # noqa: E402
from apiguard.asgi import GuardMiddleware  # noqa: E402

ROUTES = int(os.environ.get("APIGUARD_BENCH_ROUTES", "10"))
HIGH = "100000000/minute"


def _endpoint(i: int) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return PlainTextResponse("ok")

    endpoint.__name__ = endpoint.__qualname__ = f"r{i}_item"
    return endpoint


def bare_app() -> Starlette:
    """Plain Starlette, no rate limiting."""
    return Starlette(
        routes=[Route(f"/r{i}/items/{{item_id}}", _endpoint(i)) for i in range(ROUTES)]
    )


def apiguard_app(ratelimit_headers: bool = True) -> Starlette:
    """apiguard's default policy (per-principal and per-IP rules), limits raised."""
    app = bare_app()
    # the load generator shows 1,000 keys from one IP: raise the new-credentials-per-IP
    # limit so it is measured, not tripped
    guard = Guard(
        {
            "limits": {"principal": HIGH, "ip": HIGH},
            "identity": {"new_credentials_per_ip": HIGH},
            "ratelimit_headers": ratelimit_headers,
        }
    )
    app.add_middleware(GuardMiddleware, guard=guard)
    return app


def apiguard_quiet_app() -> Starlette:
    """`apiguard` without the RateLimit fields on admitted responses (what they cost)."""
    return apiguard_app(ratelimit_headers=False)


def slowapi_app() -> Starlette:
    """slowapi's ASGI middleware with a default limit per client address."""
    app = bare_app()
    limiter = Limiter(key_func=get_remote_address, default_limits=["1000000/minute"])
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
    app.add_middleware(SlowAPIASGIMiddleware)
    return app


def apiguard_redis_app() -> Starlette:
    """`apiguard` on the Redis store at $APIGUARD_BENCH_REDIS (shared by the workers)."""
    app = bare_app()
    guard = Guard(
        {
            "secret": "http-benchmark-secret-0123456789",
            "limits": {"principal": HIGH, "ip": HIGH},
            "identity": {"new_credentials_per_ip": HIGH},
            "store": {"timeout": 1.0},  # a loaded machine: measure Redis, not fallbacks
        },
        store=os.environ["APIGUARD_BENCH_REDIS"],
    )
    app.add_middleware(GuardMiddleware, guard=guard)
    return app


def slowapi_redis_app() -> Starlette:
    """slowapi on limits' Redis storage at $APIGUARD_BENCH_REDIS."""
    app = bare_app()
    limiter = Limiter(
        key_func=get_remote_address,
        default_limits=["1000000/minute"],
        storage_uri=os.environ["APIGUARD_BENCH_REDIS"],
    )
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
    app.add_middleware(SlowAPIASGIMiddleware)
    return app


APPS: dict[str, Callable[[], Starlette]] = {
    "bare": bare_app,
    "apiguard": apiguard_app,
    "apiguard-quiet": apiguard_quiet_app,
    "slowapi": slowapi_app,
    "apiguard-redis": apiguard_redis_app,
    "slowapi-redis": slowapi_redis_app,
}


def _selected() -> Starlette:
    name = os.environ.get("APIGUARD_BENCH_APP", "bare").removesuffix("-2w")  # 2 workers

    if name not in APPS:
        raise SystemExit(f"APIGUARD_BENCH_APP={name!r}: choose one of {', '.join(APPS)}")
    return APPS[name]()


app = _selected()
