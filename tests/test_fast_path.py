"""The fast admission path is observably identical to the general path.

`Engine._admit_fast` (with `apiguard.admission`) answers the common checkpoint (the global
rules, and a decorated endpoint's limits and flows; everything fits, no ban) with one
`MemoryStore.admit` call and no `Hit`/`Batch` objects; anything else falls back to
`_plan` -> `MemoryStore.execute` -> `_conclude`. Setting `engine._fast = None` turns the
fast path off, which leaves the general path alone: a reference implementation.

Each example runs one generated schedule of requests against two apps built identically
(same secret, so the same keyed hashes and window keys) on two fake clocks, one normal
and one with the fast path off, and requires for every request the same status, body,
Retry-After, RateLimit-Policy and RateLimit, and at the end the same store state:
windows, `once` markers, strikes and bans. The schedules mix anonymous clients, API keys
(some shared by several IPs), `identify()` from a dependency and from a middleware that
runs before routing, decorated routes (limits of every `per=`, stacked decorators, a
monitor-mode limit, flows with refunds), 404s and 405s, with small limits and quick bans
so refusals, strikes, bans and their expiry all happen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Header
from fastapi.responses import JSONResponse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.types import ASGIApp, Receive, Scope, Send

from apiguard import Guard, identify
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock
from apiguard.store.memory import MemoryStore

SECRET = "fast-path-test-secret-0123456789"
START = 1_000.0
IPS = ("203.0.113.7", "198.51.100.9", "192.0.2.44")
KEYS = ("key-shared", "key-a", "key-b", "key-c")
USERS = ("alice", "bob", "carol")
# (method, path, query); the decorated routes put the general path in the mix
ROUTES = (
    ("GET", "/open", ""),
    ("GET", "/me", ""),
    ("GET", "/limited", ""),
    ("POST", "/checkout", ""),
    ("POST", "/checkout", "fail=1"),  # 400: the count="success" flow gives its unit back
    ("GET", "/missing", ""),  # 404
    ("POST", "/open", ""),  # 405
    ("GET", "/stacked", ""),  # a per-IP limit and an attempt-counted flow on one handler
    ("GET", "/watched/7", ""),  # per principal and route, in monitor mode
    ("GET", "/watched/8", ""),
    ("GET", "/everyone", ""),  # one budget for every caller (per="route")
)
# small steps, exact bucket boundaries (width 1 s with 10 buckets of a 10 s window), steps
# just around them, and jumps over whole windows and past bans
STEPS = (0.0, 0.0, 0.0, 0.1, 0.25, 0.5, 0.999, 1.0, 1.001, 2.5, 4.0, 9.99, 10.0, 10.5, 31.0)
HEADERS = ("retry-after", "ratelimit-policy", "ratelimit", "content-type")

# a first ban (12 s) outlives the window it was earned in (10 s): a banned principal can
# come back with budget to spare, and only the ban check refuses it
BANS = {"after": 2, "within": 30, "base": 12, "factor": 2, "max": 40, "memory": 120}
BASE: dict[str, Any] = {
    "secret": SECRET,
    "limits": {"principal": "5/10 seconds", "ip": "8/10 seconds"},
    "identity": {"new_credentials_per_ip": "3/10 seconds"},
    "bans": BANS,
}


def _variant(**changes: Any) -> dict[str, Any]:
    config = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    for section, value in changes.items():
        if isinstance(value, dict):
            config[section] = {**config.get(section, {}), **value}
        else:
            config[section] = value
    return config


CONFIGS = {
    "base": BASE,
    "monitor": _variant(mode="monitor"),
    "global-limits-monitor": _variant(limits={"mode": "monitor"}),
    "no-ip-limit": _variant(limits={"ip": None}),
    "stacked": _variant(
        limits={"principal": "5/10 seconds;9/minute", "ip": "8/10 seconds;14/minute"},
        identity={"new_credentials_per_ip": "3/10 seconds;4/minute"},
    ),
    "per-route": _variant(limits={"route": "2/10 seconds"}),
    "strict-ip-no-churn": _variant(
        bans={"strict_ip": True}, identity={"new_credentials_per_ip": None}
    ),
    "few-buckets": _variant(store={"window_buckets": 3}, limits={"route": "3/10 seconds"}),
    # a store of 40 windows: full tables, dead-first drops and a few spills on both paths.
    # (Smaller stores spill hundreds of subjects into one sketch, and the two stores hash
    # with their own random salts: a collision, an over-count on one side only, then
    # differs about once in 500 generated schedules; that is the sketch being
    # conservative, not the two paths disagreeing.)
    "small-store": {**_variant(limits={"route": "3/10 seconds"}), "_max_keys": 40},
}


class CountingStore(MemoryStore):
    """A memory store that counts what its fast path admitted and declined."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.admitted = 0
        self.declined = 0
        # window key prefix -> a name that is the same in both apps (`@guard.limit` keys
        # its windows with a process-wide counter)
        self.aliases: dict[str, str] = {}

    def admit(self, *args: Any, **kwargs: Any) -> Any:
        result = super().admit(*args, **kwargs)
        if result is None:
            self.declined += 1
        else:
            self.admitted += 1
        return result


class EarlyIdentify:
    """Calls `identify()` before routing (no endpoint in the scope yet), so the global
    rules are checked on their own and a decorated route's rules in a second checkpoint."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"x-early-user":
                    identify(value.decode("latin-1"))
        await self.app(scope, receive, send)


def build(
    config: dict[str, Any], fast: bool, store: Any = None
) -> tuple[FastAPI, Guard, Any, FakeClock]:
    """One guarded app; `fast=False` turns the fast path off (the reference). `store`:
    another store than a `CountingStore` (with `aliases`, `admitted` and `declined`)."""
    clock = FakeClock(START)
    config = dict(config)
    max_keys = config.pop("_max_keys", 200_000)  # below the config's floor of 100
    buckets = config.get("store", {}).get("window_buckets", 10)
    if store is None:
        store = CountingStore(max_keys, buckets)
    guard = Guard(config, clock=clock, store=store)
    assert guard.store is store
    if fast:
        assert guard.engine._fast is not None, "the global rules must be compilable"
    else:
        guard.engine._fast = None

    app = FastAPI()
    app.add_middleware(EarlyIdentify)
    app.add_middleware(GuardMiddleware, guard=guard)  # outermost: added last

    async def user(x_user: str | None = Header(default=None)) -> str | None:
        if x_user:
            identify(x_user)
        return x_user

    @app.get("/open")
    async def open_() -> dict[str, str]:
        return {"route": "open"}

    @app.get("/me")
    async def me(u: str | None = Depends(user)) -> dict[str, str | None]:
        return {"route": "me", "user": u}

    @app.get("/limited")
    @guard.limit("3/10 seconds")
    async def limited(u: str | None = Depends(user)) -> dict[str, str | None]:
        return {"route": "limited", "user": u}

    @app.get("/stacked")
    @guard.limit("4/10 seconds", per="ip")
    @guard.flow("browse", "3/10 seconds")
    async def stacked(u: str | None = Depends(user)) -> dict[str, str | None]:
        return {"route": "stacked", "user": u}

    @app.get("/watched/{n}")
    @guard.limit("2/10 seconds", per="principal_route", mode="monitor")
    def watched(n: int) -> dict[str, int]:  # a sync handler: the threadpool
        return {"watched": n}

    @app.get("/everyone")
    @guard.limit("6/10 seconds", per="route")
    async def everyone() -> dict[str, str]:
        return {"route": "everyone"}

    # `@guard.limit` keys its windows with a process-wide counter: one name in both apps
    for handler in (limited, stacked, watched, everyone):
        for rule in getattr(handler, "__apiguard_rules__"):  # noqa: B009
            if rule.key.startswith("r"):
                store.aliases[f"{rule.key}."] = f"limit:{handler.__name__}."

    @app.post("/checkout")
    @guard.flow("checkout", "2/10 seconds", count="success")
    async def checkout(fail: int = 0, u: str | None = Depends(user)) -> Any:
        if fail:
            return JSONResponse({"route": "checkout", "ok": False}, status_code=400)
        return {"route": "checkout", "ok": True, "user": u}

    return app, guard, store, clock


# a burst of 1-4 identical requests, 0.1 s apart (bursts are what spends budgets, earns
# strikes and bans), after a step: (step, IP, API key or None, identify(user) or None,
# identify() before routing, route, repeat)
burst_st = st.tuples(
    st.sampled_from(STEPS),
    st.integers(0, len(IPS) - 1),
    st.none() | st.integers(0, len(KEYS) - 1),
    st.none() | st.integers(0, len(USERS) - 1),
    st.booleans(),
    st.integers(0, len(ROUTES) - 1),
    st.integers(1, 4),
)


def _expand(bursts: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    # every schedule starts with a plain request on a fresh store: the fast path admits it
    schedule: list[tuple[Any, ...]] = [(0.0, 0, None, None, False, 0)]
    for dt, *request, repeat in bursts:
        schedule.append((dt, *request))
        schedule.extend((0.1, *request) for _ in range(repeat - 1))
    return schedule


schedule_st = st.lists(burst_st, min_size=4, max_size=16).map(_expand)


def _headers(key: int | None, user: int | None, early: bool) -> dict[str, str]:
    headers: dict[str, str] = {}
    if key is not None:
        headers["x-api-key"] = KEYS[key]
    if user is not None:
        headers["x-early-user" if early else "x-user"] = USERS[user]
    return headers


def _observed(resp: httpx.Response) -> tuple[Any, ...]:
    return (resp.status_code, resp.content, *(resp.headers.get(h) for h in HEADERS))


def _state(store: CountingStore) -> dict[str, Any]:
    """Everything the store keeps that decides later requests (the windows' `tail` is a
    search hint, and the tables' LRU order only matters once they are full)."""

    def name(key: str) -> str:
        for prefix, alias in store.aliases.items():
            if key.startswith(prefix):
                return alias + key[len(prefix) :]
        return key

    return {
        "windows": {name(k): (w.head, w.total, tuple(w.counts)) for k, w in store._windows.items()},
        "seen": dict(store._seen),
        "bans": {k: (b.key, b.until, b.level) for k, b in store._bans.items()},
        "strikes": {
            k: (s.level, s.last_ban, s.window.head, s.window.total, tuple(s.window.counts))
            for k, s in store._strikes.items()
        },
    }


async def _drive(
    config: dict[str, Any],
    schedule: Sequence[tuple[Any, ...]],
    stores: tuple[Any, Any] = (None, None),
    state: Any = None,
) -> tuple[Any, Any, list[Any]]:
    """Run `schedule` against the fast app and the reference app, request by request
    (on `stores`, compared by `state` at the end, when given)."""
    sides = [build(config, True, stores[0]), build(config, False, stores[1])]
    clients = [
        [
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app, client=(ip, 5000)),
                base_url="http://testserver",
            )
            for ip in IPS
        ]
        for app, _, _, _ in sides
    ]
    seen: list[Any] = []
    try:
        for step, (dt, ip, key, user, early, route) in enumerate(schedule):
            method, path, query = ROUTES[route]
            headers = _headers(key, user, early)
            url = f"{path}?{query}" if query else path
            out = []
            for (_, _, store, clock), side_clients in zip(sides, clients, strict=True):
                clock.advance(dt)
                resp = await side_clients[ip].request(method, url, headers=headers)
                out.append(_observed(resp))
                if hasattr(store, "drain"):  # (Redis: the writes after the response)
                    await store.drain()
            fast, general = out
            assert fast == general, (
                f"request #{step} {method} {url} from {IPS[ip]} {headers}: "
                f"fast path {fast} != general path {general}"
            )
            seen.append(fast)
        (_, _, fast_store, fast_clock), (_, _, ref_store, ref_clock) = sides
        assert fast_clock() == ref_clock()
        if state is None:
            assert _state(fast_store) == _state(ref_store)
        else:
            assert await state(fast_store) == await state(ref_store)
    finally:
        for side_clients in clients:
            for client in side_clients:
                await client.aclose()
    return sides[0][2], sides[1][2], seen


@pytest.mark.parametrize("name", list(CONFIGS))
@settings(
    max_examples=7,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(schedule=schedule_st)
def test_fast_path_matches_general_path(name: str, schedule: list[tuple[Any, ...]]) -> None:
    fast_store, ref_store, _ = asyncio.run(_drive(CONFIGS[name], schedule))
    assert fast_store.admitted >= 1  # the first request, at least, took the fast path
    assert ref_store.admitted == ref_store.declined == 0  # the reference never did


def _scripted() -> list[tuple[Any, ...]]:
    """A fixed schedule that walks through every branch the property test relies on:
    fast admissions, declines (limits spent, bans), bans expiring, churn markers, and the
    fast path followed by a decorated route's own checkpoint."""
    schedule: list[tuple[Any, ...]] = []
    for _ in range(7):  # anonymous: 5 fit, then refusals, strikes, a ban (after=2)
        schedule.append((0.1, 0, None, None, False, 0))
    schedule.append((6.0, 0, None, None, False, 0))  # banned: refused before routing
    schedule.append((11.0, 0, None, None, False, 0))  # ban and window over
    for _ in range(7):  # the same for a user identified by the app: a ban on the principal
        schedule.append((0.1, 1, None, 2, False, 1))
    schedule.append((10.5, 1, None, 2, False, 1))  # window over, ban not: only it refuses
    for k in range(4):  # four new keys from one IP: the churn limit is 3
        schedule.append((0.1, 1, k, None, False, 0))
    schedule.append((0.1, 1, 0, None, False, 0))  # a key seen before is free
    for _ in range(4):  # identified before routing, then the decorated route's checkpoint
        schedule.append((0.2, 2, None, 0, True, 2))
    for _ in range(3):  # the flow: a failure is refunded
        schedule.append((0.2, 2, None, 1, False, 4))
        schedule.append((0.2, 2, None, 1, False, 3))
    schedule.append((0.3, 1, None, 1, True, 5))  # 404 after identify() before routing
    schedule.append((0.1, 2, None, None, False, 6))  # a 405 route, from the banned IP
    return schedule


def test_scripted_schedule_exercises_both_paths() -> None:
    fast_store, ref_store, seen = asyncio.run(_drive(BASE, _scripted()))
    assert [s[0] for s in seen] == [
        *[200] * 5, 429, 403,  # anonymous: limit spent, 2 strikes, a ban (12 s)
        403, 200,  # still banned (before routing); then ban and window over
        *[200] * 5, 429, 403,  # the same for a user identified in a dependency...
        403,  # ...who comes back with budget but is banned: only the ban refuses
        200, 200, 200, 429, 200,  # 3 new keys per IP; the 4th refused; a seen key is free
        200, 200, 200, 429,  # fast path before routing, then the route's own limit (3)
        400, 200, 400, 200, 429, 429,  # flow refunds; per-ip spent: the IP is banned...
        404,  # (identify() before routing, unmatched route)
        403,  # ...and its anonymous requests are refused before routing
    ]  # fmt: skip
    # most checkpoints were admitted on the fast path; the refusals were declined by it
    assert fast_store.admitted >= 15 and fast_store.declined >= 5
    assert ref_store.admitted == ref_store.declined == 0


def test_fast_results_become_verdicts_for_a_later_checkpoint() -> None:
    """identify() before routing admits the global rules on the fast path; the decorated
    handler's checkpoint then turns them into verdicts: both the 200 and the 429 of the
    route's own limit carry the same fields as on the general path."""
    schedule = [(0.1, 0, None, 0, True, 2) for _ in range(5)]
    built = [build(BASE, fast) for fast in (True, False)]
    sides = [(app, clock) for app, _, _, clock in built]

    async def run() -> list[list[Any]]:
        results: list[list[Any]] = []
        for app, clock in sides:
            transport = httpx.ASGITransport(app=app, client=(IPS[0], 5000))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                out = []
                for dt, _, _, user, _, _ in schedule:
                    clock.advance(dt)
                    resp = await client.get("/limited", headers={"x-early-user": USERS[user]})
                    out.append(_observed(resp))
                results.append(out)
        return results

    fast, general = asyncio.run(run())
    assert fast == general
    assert [r[0] for r in fast] == [200, 200, 200, 429, 403]  # 2 refusals: a ban
    assert '"limit:limited"' in fast[3][3]  # the refused route's policy is advertised
    # the global rules of every request were admitted on the fast path, before routing
    assert built[0][2].admitted == 5 and built[0][2].declined == 0


def test_decorated_routes_take_the_fast_path_and_flows_still_refund() -> None:
    """A decorated route's checkpoint (global rules + its own) is admitted in one `admit`
    call too; a count="success" flow still gives back the unit of a failed response."""
    schedule = [(0.2, 0, None, None, False, route) for route in (4, 3, 4, 3, 3)]
    fast_store, ref_store, seen = asyncio.run(_drive(BASE, schedule))
    # fail (refunded), success, fail (refunded), success, then the flow (2/10 s) is spent
    assert [s[0] for s in seen] == [400, 200, 400, 200, 429]
    assert (fast_store.admitted, fast_store.declined) == (4, 1)
    assert ref_store.admitted == ref_store.declined == 0
