"""Floods cannot reset counters (issue 6, item 2).

Refused requests create no state, a full table drops only state that no longer counts,
and a flood of made-up credentials ends in a ban of its source. The property test mixes
honest users with floods of made-up keys and addresses at tiny table sizes and checks the
window guarantee for every honest principal: in every interval of length W, at most the
limit was admitted.
"""

from __future__ import annotations

import asyncio
import itertools

from fastapi import Depends, FastAPI, Header, HTTPException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from apiguard import Guard, identify
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock
from apiguard.store.memory import MemoryStore
from conftest import asgi_call

FLOW_LIMIT, FLOW_WINDOW = 3, 60.0
USER_LIMIT, USER_WINDOW = 8, 30.0
USERS = {f"tok-{n}": f"user-{n}" for n in range(3)}


def _shop(guard: Guard) -> FastAPI:
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    def user(authorization: str = Header(default="")) -> str:
        name = USERS.get(authorization.removeprefix("Bearer "))
        if name is None:
            raise HTTPException(401)
        identify(name)
        return name

    @app.post("/coupons/{code}/redeem")
    @guard.flow("redeem", f"{FLOW_LIMIT}/minute", count="success")
    async def redeem(code: str, u: str = Depends(user)) -> dict[str, str]:
        return {"by": u}

    @app.get("/orders/{order_id}")
    @guard.limit(f"{USER_LIMIT} per 30 seconds")
    def order(order_id: int, u: str = Depends(user)) -> dict[str, int]:
        return {"order": order_id}

    @app.get("/catalog")
    async def catalog() -> dict[str, bool]:
        return {"ok": True}

    return app


def _window_holds(times: list[float], limit: int, window: float) -> bool:
    """At most `limit` of `times` in every interval [s, s + window)."""
    times = sorted(times)
    return all(times[i + limit] - times[i] >= window for i in range(len(times) - limit))


# one step: (seconds to wait, who, a number the flood uses for its made-up values)
STEP = st.tuples(
    st.sampled_from([0.0, 0.0, 0.0, 0.5, 2.0, 7.0]),
    st.sampled_from(
        ["honest", "honest", "flood-keys", "flood-keys", "flood-addresses", "flood-both"]
    ),
    st.integers(0, 2),
    st.integers(0, 10**6),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    schedule=st.lists(STEP, min_size=20, max_size=220),
    max_keys=st.sampled_from([4, 9, 25, 100]),
    burst=st.integers(5, 60),
)
def test_floods_never_let_an_honest_principal_exceed_its_limits(
    schedule: list[tuple[float, str, int, int]], max_keys: int, burst: int
) -> None:
    clock = FakeClock(1_000.0)
    config = {
        "limits": {"principal": "40/minute", "ip": "200/minute"},
        "identity": {"new_credentials_per_ip": "10/minute"},
        "bans": {"after": 5, "within": 60, "base": 30},
    }
    guard = Guard(config, clock=clock, store=MemoryStore(max_keys=max_keys))
    app = _shop(guard)
    admitted: dict[str, list[float]] = {}  # "user-n/route" -> admission times
    fresh = itertools.count()

    async def run() -> None:
        for dt, who, n, value in schedule:
            clock.advance(dt)
            if who == "honest":
                auth = {"authorization": f"Bearer tok-{n}"}
                ip = f"192.0.2.{n + 1}" if value % 3 else f"198.51.100.{value % 200}"  # mobile
                for i in range(1 + value % 4):
                    path = f"/coupons/c{value}/redeem" if i % 2 == 0 else f"/orders/{value}"
                    method = "POST" if i % 2 == 0 else "GET"
                    if await asgi_call(app, method, path, ip, auth) == 200:
                        route = "redeem" if method == "POST" else "order"
                        admitted.setdefault(f"user-{n}/{route}", []).append(clock())
                continue
            for _ in range(burst):  # a flood step: `burst` requests at this instant
                k = next(fresh)
                if who == "flood-keys":  # made-up keys from one address
                    ip, headers = "203.0.113.66", {"x-api-key": f"junk-{value}-{k}"}
                elif who == "flood-addresses":  # a new address per request, no key
                    ip, headers = f"2001:db8:{k % 65536:x}:{k // 65536:x}::1", {}
                else:  # both: new address and new key
                    ip = f"10.{k // 65536 % 256}.{k // 256 % 256}.{k % 256}"
                    headers = {"x-api-key": f"junk-{k}"}
                path = (f"/coupons/x{k}/redeem", f"/orders/{k}", "/catalog", "/nope")[k % 4]
                method = "POST" if k % 4 == 0 else "GET"
                await asgi_call(app, method, path, ip, headers)

    asyncio.run(run())
    for name, times in admitted.items():
        route = name.split("/")[1]
        limit, window = (
            (FLOW_LIMIT, FLOW_WINDOW) if route == "redeem" else (USER_LIMIT, USER_WINDOW)
        )
        assert _window_holds(times, limit, window), (name, times)
    per_user: dict[str, list[float]] = {}
    for name, times in admitted.items():
        per_user.setdefault(name.split("/")[0], []).extend(times)
    for user, times in per_user.items():  # the global per-principal limit, across routes
        assert _window_holds(times, 40, 60.0), (user, times)
    store = guard.store
    assert isinstance(store, MemoryStore)
    assert len(store._windows) <= max_keys and len(store._seen) <= max_keys
    assert len(store._strikes) <= max_keys and len(store._bans) <= max_keys


def test_a_spent_flow_survives_a_flood_of_made_up_keys_from_the_same_address() -> None:
    """The review's reproduction, scaled: an account spends its flow, floods the store from
    its own address with made-up keys (404s and 429s), then tries again at once."""
    clock = FakeClock(1_000.0)
    guard = Guard(
        {"store": {"max_keys": 100}, "limits": {"principal": "600/minute", "ip": None}},
        clock=clock,
    )
    app = _shop(guard)
    client = TestClient(app, client=("192.0.2.1", 5000))
    auth = {"authorization": "Bearer tok-0"}
    assert [client.post(f"/coupons/c{i}/redeem", headers=auth).status_code for i in range(4)] == [
        200,
        200,
        200,
        429,
    ]
    statuses = [
        asyncio.run(asgi_call(app, "GET", f"/nope/{i}", "192.0.2.1", {"x-api-key": f"made-up-{i}"}))
        for i in range(2_000)
    ]
    assert statuses.count(404) == 100  # new-credentials-per-ip: 100/hour by default...
    assert statuses[-1] == 403  # ...then refusals, which strike the address: it is banned
    assert client.get("/catalog").status_code == 403  # anonymous traffic from it too
    # the account's spent flow was not pushed out
    assert client.post("/coupons/again/redeem", headers=auth).status_code == 429
    other = TestClient(app, client=("198.51.100.7", 5000))  # the account, elsewhere
    assert other.post("/coupons/again/redeem", headers=auth).status_code == 429
    # an honest user on another address is unaffected by the flood and the ban
    bob = {"authorization": "Bearer tok-1"}
    assert other.post("/coupons/b/redeem", headers=bob).status_code == 200


def test_a_flood_of_new_addresses_cannot_push_out_live_windows() -> None:
    """Admitted requests from a million-address botnet (scaled down) fill a small table:
    the honest user's live windows stay, newcomers share one overflow budget per rule."""
    clock = FakeClock(1_000.0)
    guard = Guard(
        {"store": {"max_keys": 100}, "limits": {"principal": "600/minute", "ip": None}},
        clock=clock,
    )
    app = _shop(guard)
    alice = TestClient(app, client=("192.0.2.1", 5000))
    auth = {"authorization": "Bearer tok-0"}
    assert [alice.post(f"/coupons/{i}/redeem", headers=auth).status_code for i in range(3)] == [
        200
    ] * 3
    for k in range(1_000):  # a new address per request, all admitted at first
        asyncio.run(asgi_call(app, "GET", "/catalog", f"10.0.{k // 256}.{k % 256}", {}))
    assert len(guard.store) <= 100  # type: ignore[arg-type]
    assert alice.post("/coupons/again/redeem", headers=auth).status_code == 429
    clock.advance(70)  # the flood's windows have expired: room again for everyone
    assert alice.post("/coupons/again/redeem", headers=auth).status_code == 200
    carol = TestClient(app, client=("192.0.2.77", 5000))
    assert carol.get("/catalog").status_code == 200


def test_newcomers_are_served_while_a_flood_keeps_the_table_full() -> None:
    """A flood of new addresses keeps the window table full of live windows: the oldest are
    spilled into a count-min sketch, so newcomers still get windows of their own (served),
    while a spent flow that was spilled stays spent."""
    clock = FakeClock(1_000.0)
    guard = Guard(
        {"store": {"max_keys": 200}, "limits": {"principal": "600/minute", "ip": None}},
        clock=clock,
    )
    app = _shop(guard)
    auth = {"authorization": "Bearer tok-0"}
    assert [
        asyncio.run(asgi_call(app, "POST", f"/coupons/c{i}/redeem", "192.0.2.1", auth))
        for i in range(4)
    ] == [200, 200, 200, 429]
    served = 0
    for k in range(5_000):  # a new address per request, 50 requests a second
        asyncio.run(asgi_call(app, "GET", "/catalog", f"2001:db8:{k:x}::1"))
        if k % 100 == 99:  # a newcomer every 2 s, between the flood's requests
            clock.advance(2)
            ip = f"198.51.100.{k // 100}"
            served += asyncio.run(asgi_call(app, "GET", "/catalog", ip)) == 200
        if k == 1_000:  # 20 s in: the account's flow window was spilled long ago
            store = guard.store
            assert isinstance(store, MemoryStore) and store._spills
            assert not any(key.startswith("flow:") for key in store._windows)
            again = asgi_call(app, "POST", "/coupons/x/redeem", "203.0.113.5", auth)
            assert asyncio.run(again) == 429  # rebuilt from the sketch: still spent
    assert served == 50
    assert len(store._windows) <= 200 and len(store._spills) <= 3
