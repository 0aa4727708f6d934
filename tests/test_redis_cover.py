"""Covered windows on the Redis store with quota leases (`apiguard.store.redis_cover`).

A window keyed on the principal (a per-route limit, a decorated limit, a flow) whose limit
is at least the global per-principal limit's, over the same window, is not checked in
Redis: it is charged after the response into the bucket the principal's window was
charged in. Under test, against a real redis-server: what the script sees, what Redis
counts once the writes are drained (exactly the admitted charges, in their buckets, so a
worker without leases checking the same window sees the true count), the bound over
random interleavings of leasing and plain workers, and every key's expiry.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import redis
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apiguard.config import BanConfig
from apiguard.rules import FlowRule, WindowRule
from apiguard.store.base import Batch, Hit
from apiguard.store.redis import RedisStore
from apiguard.store.redis_cover import covered
from apiguard.window import WindowSpec

BANS = BanConfig(enabled=False)
_prefixes = itertools.count()
P = "ip:1"


def _rules(principal: str, route: str, flow: str = "1000/minute") -> list[WindowRule]:
    return [
        WindowRule("per-principal", principal, key="g.principal"),
        WindowRule("per-route", route, per="principal_route", key="g.route"),
        FlowRule("browse", flow),
    ]


def _batch(rules: list[WindowRule], principal: str = P, enforce: bool = True) -> Batch:
    hits = []
    for n, rule in enumerate(rules):
        subject = principal if n != 1 else f"{principal}@GET /r"
        hits.append(
            Hit(rule.prefixes[0] + subject, rule.specs[0], 1, True, enforce, principal, rule)
        )
    return Batch(hits, (principal,))


def _astore(url: str, prefix: str, **kw: Any) -> RedisStore:
    kw.setdefault("server_time", False)
    return RedisStore(redis.asyncio.Redis.from_url(url), prefix=prefix, timeout=2.0, **kw)


def _total(url: str, prefix: str, key: str, spec: WindowSpec, now: float) -> int:
    probe = RedisStore(redis.Redis.from_url(url), prefix=prefix, server_time=False)
    hit = Hit(key, spec, 1, consume=False)
    probe.execute(Batch([hit]), now, BANS)
    return spec.limit - hit.remaining


def test_which_hits_are_covered() -> None:
    rules = _rules("100/minute", "100/minute")
    assert covered(_batch(rules).hits) == [(1, 0), (2, 0)]
    # a smaller limit, another window length or bucket count: checked in Redis
    assert covered(_batch(_rules("100/minute", "99/minute", "5/hour")).hits) is None
    assert covered(_batch(_rules("100/minute", "100/second")).hits) == [(2, 0)]
    # the principal's limit in monitor mode covers nothing
    assert covered(_batch(rules, enforce=False).hits) is None
    # a per-IP rule is not keyed on the principal; one window named twice: not covered
    ip = WindowRule("per-ip", "1000/minute", per="ip", key="g.ip")
    batch = _batch([rules[0], ip])
    assert covered(batch.hits) is None
    twice = _batch(rules)
    twice.hits.append(twice.hits[1])
    assert covered(twice.hits) is None


def test_covered_window_charged_after_the_response(redis_url: str) -> None:
    asyncio.run(_charged_after(redis_url))


async def _charged_after(url: str) -> None:
    rules = _rules("1000/minute", "1000/minute")
    p = f"c{next(_prefixes)}"
    store = _astore(url, p, lease=True, lease_life=30.0)
    sent: list[int] = []
    execute = store._aexecute

    async def spy(batch: Batch, now: float, bans: BanConfig) -> Any:
        sent.append(len(batch.hits))
        return await execute(batch, now, bans)

    store._aexecute = spy  # type: ignore[method-assign]
    now = 1000.0
    for i in range(12):
        r = await store.aexecute(_batch(rules), now + i * 0.01, BANS)
        assert r.admitted and all(h.fits for h in r.hits) and len(r.hits) == 3
        route = r.hits[1]
        assert route.remaining >= r.hits[0].remaining
    assert sent and set(sent) == {1}  # only the principal's window reached the script
    await store.drain()
    spec = rules[1].specs[0]
    key = rules[1].prefixes[0] + f"{P}@GET /r"
    assert _total(url, p, key, spec, now + 1) == 12
    assert _total(url, p, rules[2].prefixes[0] + P, rules[2].specs[0], now + 1) == 12
    await store.aclose()
    assert _total(url, p, rules[0].prefixes[0] + P, rules[0].specs[0], now + 1) == 12
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match="{" + p + "}:*"))
    assert len(keys) >= 3
    for k in keys:
        assert client.pttl(k) > 0, k
    # a late charge lands in the bucket it names (counted while that bucket is in the
    # window, not as long as the current one), and is dropped once that bucket has left
    later = _astore(url, p, lease=True)
    bucket = int(now // spec.width)
    for at, cost in ((now + 30, 5), (now + 70, 7)):
        later._flusher_for(asyncio.get_running_loop()).add(
            ["N", repr(at), "C", key, bucket, cost, spec.buckets, repr(spec.width)], 1
        )
        await later.drain()
        if cost == 5:
            assert _total(url, p, key, spec, now + 30) == 17
            assert _total(url, p, key, spec, now + 63) == 0
    assert _total(url, p, key, spec, now + 60) == 17
    await later.aclose()


def test_refused_batch_charges_no_covered_window(redis_url: str) -> None:
    asyncio.run(_refused(redis_url))


async def _refused(url: str) -> None:
    rules = _rules("3/minute", "3/minute")
    p = f"c{next(_prefixes)}"
    store = _astore(url, p, lease=True)
    now = 1000.0
    admitted = 0
    for i in range(6):
        r = await store.aexecute(_batch(rules), now + i, BANS)
        admitted += r.admitted
        if not r.admitted:
            assert [h.fits for h in r.hits] == [False, True, True]
    assert admitted == 3
    await store.aclose()
    key = rules[1].prefixes[0] + f"{P}@GET /r"
    assert _total(url, p, key, rules[1].specs[0], now + 6) == 3


plan_step = st.tuples(
    st.integers(0, 2),  # worker (2: without leases, checks every window in Redis)
    st.sampled_from((0.0, 0.0, 0.01, 0.2, 0.5, 0.999, 1.0, 2.5)),  # time step
    st.integers(0, 1),  # principal
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(plan_step, min_size=20, max_size=120), st.sampled_from((5, 12, 30)))
def test_interleaved_workers_covered_window_exact(
    redis_url: str, plan: list[tuple[int, float, int]], limit: int
) -> None:
    """Two leasing workers (covering) and a plain one: every window's bound holds over
    every interval, the plain worker never finds a covered window fuller than the
    principal's, and Redis counts exactly the admitted charges once writes are drained."""
    asyncio.run(_interleaved(redis_url, plan, limit))


async def _interleaved(url: str, plan: list[tuple[int, float, int]], limit: int) -> None:
    # 4 s windows of 4 buckets: boundaries are crossed
    rate = f"{limit} per 4 seconds"
    rules = [
        WindowRule("per-principal", rate, buckets=4, key="g.principal"),
        WindowRule("per-route", rate, per="principal_route", buckets=4, key="g.route"),
    ]
    p = f"c{next(_prefixes)}"
    workers = [
        _astore(url, p, lease=True, lease_life=60.0),
        _astore(url, p, lease=True, lease_life=0.4),
        _astore(url, p),
    ]
    now = 1000.0
    admitted: dict[int, list[float]] = {0: [], 1: []}
    for who, step, principal in plan:
        now += step
        batch = _batch(rules, f"ip:{principal}")
        r = await workers[who].aexecute(batch, now, BANS)
        if who == 2:
            # checked in Redis: the route's window is never the one that refuses
            assert r.hits[1].fits or not r.hits[0].fits
        if r.admitted:
            admitted[principal].append(now)
        for w in workers[:2]:
            await w.drain()
    spec = rules[0].specs[0]
    for times in admitted.values():
        for i, t in enumerate(times):
            assert sum(1 for u in times[i:] if u < t + spec.window - 1e-9) <= limit
    for w in workers:
        await w.aclose()
    for principal, times in admitted.items():
        inside = sum(
            1 for t in times if int(t // spec.width) > int(now // spec.width) - spec.buckets - 1
        )
        key = rules[1].prefixes[0] + f"ip:{principal}@GET /r"
        assert _total(url, p, key, spec, now) == inside


def test_two_guards_on_the_fast_path_admit_exactly_the_limit(redis_url: str) -> None:
    asyncio.run(_two_guards(redis_url))


def _app(guard: Any) -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from apiguard.asgi import GuardMiddleware

    async def endpoint(request: Any) -> Any:
        return PlainTextResponse("ok")

    def wrap(handler: Any) -> Any:
        return guard.limit("20/minute")(guard.flow("browse", "20/minute")(handler))

    app = Starlette(routes=[Route(f"/r{i}/{{item}}", wrap(endpoint)) for i in range(3)])
    app.add_middleware(GuardMiddleware, guard=guard)
    return app


async def _call(app: Any, path: str) -> int:
    status: list[int] = []
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": [(b"host", b"t")], "client": ("203.0.113.7", 4000),
        "server": ("t", 80),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    return status[0]


async def _two_guards(url: str) -> None:
    """Two workers (guards on one prefix, leases on): the global limits and every
    covered window's count hold exactly; most admissions take the fast path (no Redis)."""
    from apiguard import Guard
    from apiguard.simulate.clock import FakeClock

    clock = FakeClock(1000.0)
    p = f"c{next(_prefixes)}"
    config = {
        "secret": "s" * 32,
        "limits": {"principal": "20/minute", "ip": "20/minute", "route": "20/minute"},
        "bans": {"enabled": False},
        "identity": {"new_credentials_per_ip": None},
        "store": {"prefix": p, "timeout": 2.0, "lease": True, "lease_life": 30.0},
    }
    guards = [Guard(config, store=url, clock=clock) for _ in range(2)]
    apps = [_app(g) for g in guards]
    admitted = 0
    for i in range(30):
        clock.advance(0.01)
        status = await _call(apps[i % 2], f"/r{i % 3}/{i}")
        assert status in (200, 429)
        admitted += status == 200
    assert admitted <= 20
    assert sum(g.store.local_admissions for g in guards) > 5  # type: ignore[attr-defined]
    for g in guards:
        g.store.release_leases()  # type: ignore[attr-defined]
        await g.store.drain()  # type: ignore[attr-defined]
    for i in range(10):
        clock.advance(0.01)
        admitted += await _call(apps[0], f"/r{i % 3}/x") == 200
    assert admitted == 20
    for g in guards:
        g.store.release_leases()  # type: ignore[attr-defined]
        await g.store.drain()  # type: ignore[attr-defined]
    client = redis.Redis.from_url(url)
    keys = [k.decode() for k in client.scan_iter(match="{" + p + "}:w:*")]
    flows = [k for k in keys if ":w:flow:browse" in k]
    routes = [k for k in keys if ":w:g.route" in k]
    assert len(flows) == 1 and len(routes) == 3
    spec = WindowSpec(20, 60.0, 10)
    now = clock()
    prefix = "{" + p + "}:w:"
    assert _total(url, p, flows[0].removeprefix(prefix), spec, now) == 20
    assert sum(_total(url, p, k.removeprefix(prefix), spec, now) for k in routes) == 20
    for k in client.scan_iter(match="{" + p + "}:*"):
        assert client.pttl(k) > 0, k


def test_writes_falling_behind_send_covered_windows_to_the_script(
    redis_url: str, monkeypatch: Any
) -> None:
    """With many writes waiting (a quarter of what may wait), covered windows are checked
    and charged in the checkpoint instead of queued, so none is dropped later."""
    from apiguard.store.redis_after import Flusher

    monkeypatch.setattr(Flusher, "busy", property(lambda self: True))
    asyncio.run(_behind(redis_url))


async def _behind(url: str) -> None:
    rules = _rules("1000/minute", "1000/minute")
    p = f"c{next(_prefixes)}"
    store = _astore(url, p, lease=True)
    sent: list[int] = []
    execute = store._aexecute

    async def spy(batch: Batch, now: float, bans: BanConfig) -> Any:
        sent.append(len(batch.hits))
        return await execute(batch, now, bans)

    store._aexecute = spy  # type: ignore[method-assign]
    queued: list[Any] = []
    flusher = store._flusher_for(asyncio.get_running_loop())
    add = flusher.add

    def spy_add(args: list[Any], count: int, *rest: Any, **kw: Any) -> bool:
        queued.extend(args)
        return add(args, count, *rest, **kw)

    flusher.add = spy_add  # type: ignore[method-assign]
    for i in range(3):
        assert (await store.aexecute(_batch(rules), 1000.0 + i, BANS)).admitted
    assert sent[0] == 3  # the covered windows went to the script (and got leases)
    assert "C" not in queued
    await store.aclose()
