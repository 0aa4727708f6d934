"""Regression tests for the review findings: made-up credentials, NAT bans, refunds after
delivery, stacked decorator order, late identify(), unix sockets, double installation,
client-chosen methods, ban responses, rule names, IPv6 zone ids."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fastapi import BackgroundTasks, Depends, FastAPI, Header
from fastapi.testclient import TestClient

from apiguard import ConfigurationError, Guard, identify
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock
from apiguard.store.memory import MemoryStore


def _client(app: FastAPI, ip: str = "198.51.100.1") -> TestClient:
    return TestClient(app, client=(ip, 5000))


def _guarded(config: dict[str, Any]) -> tuple[Guard, FastAPI]:
    guard = Guard(config, clock=FakeClock(1_000.0))
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)
    return guard, app


def test_made_up_api_keys_cannot_mint_fresh_budgets() -> None:
    guard, app = _guarded(
        {"limits": {"ip": None}, "identity": {"new_credentials_per_ip": "5/hour"}}
    )
    sent: list[int] = []

    @app.post("/password-reset")
    @guard.flow("password-reset", "3/hour")
    async def reset() -> dict[str, bool]:
        sent.append(1)
        return {"ok": True}

    client = _client(app)
    statuses = [
        client.post("/password-reset", headers={"x-api-key": f"fake-{i}"}).status_code
        for i in range(30)
    ]
    assert statuses[:5] == [200] * 5  # five new keys per hour from this IP...
    # ...then refused, and each refusal strikes the IP: 20 strikes (the default) ban it
    assert statuses[5:] == [429] * 19 + [403] * 6
    assert len(sent) == 5
    assert client.post("/password-reset", headers={"x-api-key": "fake-0"}).status_code == 403
    # a key seen before is not new: a real client's repeat requests do not count again
    other = _client(app, ip="203.0.113.9")
    assert [
        other.post("/password-reset", headers={"x-api-key": "real"}).status_code for _ in range(4)
    ] == [200, 200, 200, 429]  # its own flow budget (3/hour), not the churn limit


def test_banned_ip_cannot_escape_with_a_made_up_key() -> None:
    _, app = _guarded(
        {"limits": {"principal": "2/minute", "ip": None}, "bans": {"after": 2, "base": 600}}
    )

    @app.get("/x")
    async def x() -> dict[str, bool]:
        return {"ok": True}

    client = _client(app)
    statuses = [client.get("/x").status_code for _ in range(5)]
    assert statuses == [200, 200, 429, 403, 403]
    assert client.get("/x", headers={"x-api-key": "made-up"}).status_code == 403
    assert client.get("/x", headers={"authorization": "Bearer made-up"}).status_code == 403


def test_ip_ban_spares_signed_in_colleagues_behind_the_same_nat() -> None:
    _, app = _guarded(
        {"limits": {"principal": "2/minute", "ip": None}, "bans": {"after": 2, "base": 600}}
    )

    def session_user(cookie: str | None = Header(default=None)) -> str | None:
        if cookie and cookie.startswith("session="):
            user = cookie.removeprefix("session=")
            identify(user)
            return user
        return None

    @app.get("/me")
    async def me(user: str | None = Depends(session_user)) -> dict[str, str | None]:
        return {"user": user}

    nat = _client(app, ip="192.0.2.10")
    assert [nat.get("/me").status_code for _ in range(5)] == [200, 200, 429, 403, 403]
    alice = nat.get("/me", headers={"cookie": "session=alice"})
    assert alice.status_code == 200 and alice.json() == {"user": "alice"}
    assert nat.get("/me").status_code == 403  # the anonymous abuser is still banned


def test_delivered_success_is_not_refunded_when_a_background_task_fails() -> None:
    guard, app = _guarded({"limits": {"principal": None, "ip": None}})

    def fail() -> None:
        raise RuntimeError("mailer down")

    @app.post("/redeem")
    @guard.flow("redeem", "3/hour", count="success")
    async def redeem(tasks: BackgroundTasks) -> dict[str, bool]:
        tasks.add_task(fail)
        return {"ok": True}

    client = TestClient(app, raise_server_exceptions=False)
    assert [client.post("/redeem").status_code for _ in range(5)] == [200, 200, 200, 429, 429]


def test_stacked_decorators_above_the_route_decorator_are_loud() -> None:
    guard, app = _guarded({})

    @guard.flow("redeem", "2/hour")
    @app.post("/redeem")
    @guard.limit("100/minute")
    async def redeem() -> dict[str, bool]:
        return {"ok": True}

    with pytest.raises(ConfigurationError, match="/redeem"):
        TestClient(app).post("/redeem")


def test_identify_after_the_checkpoint_warns(caplog: pytest.LogCaptureFixture) -> None:
    guard, app = _guarded({})

    @app.post("/redeem")
    @guard.flow("redeem", "2/hour")
    async def redeem() -> dict[str, bool]:
        identify("alice")  # too late: the decorated entry already checked on the IP
        return {"ok": True}

    with caplog.at_level(logging.WARNING, logger="apiguard"):
        TestClient(app).post("/redeem")
        TestClient(app).post("/redeem")
    late = [r for r in caplog.records if "identify() was called" in r.getMessage()]
    assert len(late) == 1 and "alice" not in late[0].getMessage()


def test_unix_socket_proxy_header_is_walked_when_configured() -> None:
    guard = Guard({"client_ip": {"unix_socket_proxy": True}})
    scope = {
        "type": "http",
        "headers": [(b"x-forwarded-for", b"203.0.113.5")],
        "client": None,
    }
    assert guard.engine.begin(scope).client_ip == "203.0.113.5"
    plain = Guard().engine.begin(scope)
    assert plain.client_ip == "unknown"  # without the option the header is not believed


def test_same_guard_installed_twice_counts_once() -> None:
    guard, app = _guarded({"limits": {"principal": None, "ip": None}})
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.get("/x")
    @guard.limit("4/minute")
    async def x() -> dict[str, bool]:
        return {"ok": True}

    client = TestClient(app)
    statuses = [client.get("/x").status_code for _ in range(6)]
    assert statuses == [200, 200, 200, 200, 429, 429]
    assert client.get("/x").headers["ratelimit"].count('"limit:x"') == 1


def test_client_chosen_methods_do_not_mint_route_buckets() -> None:
    _, app = _guarded({"limits": {"principal": None, "ip": None, "route": "3/minute"}})

    @app.api_route("/thing", methods=["GET", "HEAD"])
    async def thing() -> dict[str, bool]:
        return {"ok": True}

    client = TestClient(app)
    odd = [client.request(f"X{i}", "/thing").status_code for i in range(5)]
    assert odd == [405, 405, 405, 429, 429]  # every unknown method shares one bucket
    head_get = [client.head("/thing").status_code, client.get("/thing").status_code]
    head_get += [client.get("/thing").status_code, client.head("/thing").status_code]
    assert head_get == [200, 200, 200, 429]  # HEAD counts with GET


def test_ban_responses_carry_no_quota_fields() -> None:
    _, app = _guarded(
        {"limits": {"principal": "1/minute", "ip": None}, "bans": {"after": 1, "base": 30}}
    )

    @app.get("/x")
    async def x() -> dict[str, bool]:
        return {"ok": True}

    client = TestClient(app)
    client.get("/x")
    banned = client.get("/x")
    assert banned.status_code == 403 and banned.headers["retry-after"] == "30"
    assert "ratelimit" not in banned.headers and "ratelimit-policy" not in banned.headers


@pytest.mark.parametrize("name", ["café", "a\u200bb", "tab\there"])
def test_rule_names_must_be_ascii_tokens(name: str) -> None:
    with pytest.raises(ConfigurationError):
        Guard().limit("1/minute", name=name)(lambda: None)


def test_ipv6_zone_ids_are_one_client() -> None:
    engine = Guard({"client_ip": {"ipv6_prefix": 128}}).engine
    keys = {
        engine.begin({"type": "http", "headers": [], "client": (addr, 1)}).ip_key
        for addr in ("2001:db8::1%eth0", "2001:db8::1%eth1", "2001:db8::1")
    }
    assert len(keys) == 1


def test_decorator_order_checked_when_the_middleware_wraps_the_app() -> None:
    guard = Guard()
    api = FastAPI()

    @guard.limit("1/minute")
    @api.get("/wrong")
    async def wrong() -> dict[str, bool]:
        return {"ok": True}

    app = GuardMiddleware(api, guard=guard)  # outermost, no add_middleware
    with pytest.raises(ConfigurationError, match="/wrong"):
        TestClient(app).get("/wrong")


def test_decorated_websocket_route_is_a_configuration_error() -> None:
    guard = Guard()
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.websocket("/ws")
    @guard.limit("1/minute")
    async def ws(websocket: Any) -> None:
        await websocket.accept()

    with pytest.raises(ConfigurationError, match="websocket"), TestClient(app):
        pass  # lifespan start-up verifies the routes


def test_office_nat_of_honest_api_key_users_is_not_throttled() -> None:
    _, app = _guarded({})  # defaults: 100 new unvouched keys per IP per hour

    @app.get("/data")
    async def data() -> dict[str, bool]:
        return {"ok": True}

    office = _client(app, ip="192.0.2.50")
    statuses = [
        office.get("/data", headers={"x-api-key": f"employee-{n}"}).status_code
        for _ in range(3)
        for n in range(60)
    ]
    assert statuses == [200] * 180  # 60 keys, each counted once


def test_identify_in_a_login_view_limited_per_ip_does_not_warn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard, app = _guarded({})

    @app.post("/login")
    @guard.limit("5/minute", per="ip")
    async def login() -> dict[str, bool]:
        identify("alice")  # after checking the password: the per-IP limit is unaffected
        return {"ok": True}

    with caplog.at_level(logging.WARNING, logger="apiguard"):
        assert TestClient(app).post("/login").status_code == 200
    assert not [r for r in caplog.records if "identify() was called" in r.getMessage()]


def test_verify_accepts_correct_apps_with_shared_or_wrapped_handlers() -> None:
    import functools

    guard, app = _guarded({})

    async def h() -> dict[str, bool]:
        return {"ok": True}

    app.get("/a")(guard.limit("5/minute")(h))  # one function, two routes, two limits
    app.get("/b")(guard.limit("50/minute")(h))
    for path in ("/c", "/d"):  # a route loop
        app.add_api_route(path, guard.flow(f"f{path}", "3/hour")(h), methods=["GET"])

    def logged(fn: Any) -> Any:
        @functools.wraps(fn)
        async def inner(*args: Any, **kwargs: Any) -> Any:
            return await fn(*args, **kwargs)

        return inner

    @app.get("/e")
    @logged  # a decorator between the route decorator and apiguard's
    @guard.limit("2/minute")
    async def e() -> dict[str, bool]:
        return {"ok": True}

    client = TestClient(app)
    for path in ("/a", "/b", "/c", "/d", "/e"):
        assert client.get(path).status_code == 200, path
    assert [client.get("/e").status_code for _ in range(2)] == [200, 429]


def test_a_sub_app_guard_owns_its_rules() -> None:
    outer_guard, inner_guard = Guard(), Guard()
    outer = FastAPI()
    outer.add_middleware(GuardMiddleware, guard=outer_guard)
    sub = FastAPI()
    sub.add_middleware(GuardMiddleware, guard=inner_guard)
    redeemed: list[str] = []

    def user(x_user: str = Header()) -> str:
        identify(x_user)
        return x_user

    @sub.post("/redeem")
    @inner_guard.flow("redeem", "3/hour", count="attempt")
    async def redeem(u: str = Depends(user)) -> dict[str, str]:
        redeemed.append(u)
        return {"ok": u}

    outer.mount("/sub", sub)
    client = TestClient(outer)
    statuses = [
        client.post("/sub/redeem", headers={"x-user": u}).status_code
        for u in ("alice", "alice", "bob", "bob", "alice", "alice")
    ]
    assert statuses == [200, 200, 200, 200, 200, 429]  # per user, not per IP
    assert redeemed == ["alice", "alice", "bob", "bob", "alice"]


def test_evicted_key_marks_give_their_count_back() -> None:
    _, app = _guarded(
        {
            "limits": {"principal": None, "ip": None},
            "identity": {"new_credentials_per_ip": "30/hour"},
            "store": {"max_keys": 100},
        }
    )

    @app.get("/data")
    async def data() -> dict[str, bool]:
        return {"ok": True}

    office = _client(app, ip="192.0.2.50")
    keys = [{"x-api-key": f"employee-{n}"} for n in range(20)]
    assert [office.get("/data", headers=k).status_code for k in keys] == [200] * 20
    for ip in range(20):  # others' junk keys push the office's marks out of the table
        junk = _client(app, ip=f"203.0.113.{ip}")
        for n in range(10):
            junk.get("/data", headers={"x-api-key": f"junk-{ip}-{n}"})
    assert [office.get("/data", headers=k).status_code for k in keys] == [200] * 20


def test_an_ip_ban_earned_through_a_vouched_users_request_does_not_block_that_user() -> None:
    _, app = _guarded(
        {"limits": {"principal": None, "ip": "4/minute"}, "bans": {"after": 2, "base": 60}}
    )

    def user(authorization: str = Header()) -> str:
        identify(authorization)
        return authorization

    @app.get("/me")
    async def me(u: str = Depends(user)) -> dict[str, str]:
        return {"u": u}

    client = _client(app)
    statuses = [
        client.get("/me", headers={"authorization": f"Bearer tok-{i % 2}"}).status_code
        for i in range(8)
    ]
    assert 403 not in statuses  # throttled by the per-IP limit, never banned with the IP
    assert statuses[:4] == [200] * 4 and set(statuses[4:]) == {429}
    assert client.get("/nothing").status_code == 403  # the IP ban holds for anonymous traffic


def test_strict_ip_bans_refuse_before_routing_whatever_the_request_carries() -> None:
    _, app = _guarded(
        {
            "limits": {"principal": "1/minute", "ip": None},
            "bans": {"after": 1, "base": 60, "strict_ip": True},
        }
    )
    runs: list[int] = []

    @app.post("/work")
    async def work() -> dict[str, bool]:
        runs.append(1)
        return {"ok": True}

    client = _client(app)
    assert [client.post("/work").status_code for _ in range(2)] == [200, 403]
    runs.clear()
    for headers in ({"cookie": "junk=1"}, {"x-api-key": "made-up"}):
        assert client.post("/work", headers=headers).status_code == 403
    assert runs == []  # refused before routing: the handler never ran


def test_an_empty_store_given_to_guard_is_the_one_it_uses():
    """Two guards given one (empty, hence len() == 0) store share it, not one each."""
    shared = MemoryStore()
    first, second = Guard(store=shared), Guard(store=shared)
    assert first.store is shared and second.store is shared
    first.engine.check_sync(first.engine.begin({"type": "http", "client": ("192.0.2.1", 1)}))
    assert len(shared) > 0


# -- custom stores and the fast path (review of the fast admission path) ---------------
def _statuses_with(store: Any, n: int = 3) -> list[int]:
    guard = Guard({"secret": "s" * 32, "limits": {"principal": "2/minute"}}, store=store)
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.get("/")
    async def root() -> dict[str, bool]:
        return {"ok": True}

    client = _client(app)
    return [client.get("/").status_code for _ in range(n)]


def test_a_store_subclass_that_changes_execute_sees_every_request() -> None:
    """The fast path must not bypass an `execute` override (auditing, a deny list)."""
    from apiguard.config import BanConfig
    from apiguard.store.base import Ban, Batch, BatchResult

    seen: list[int] = []

    class DenyAll(MemoryStore):
        def execute(self, batch: Batch, now: float, bans: BanConfig) -> BatchResult:
            seen.append(len(batch.hits))
            return BatchResult(False, [], Ban("deny-list", now + 60, 1))

    assert _statuses_with(DenyAll()) == [403, 403, 403]
    assert len(seen) == 3

    # a subclass that only observes `admit` keeps the fast path, and its limits
    class Counting(MemoryStore):
        calls = 0

        def admit(self, *args: Any, **kwargs: Any) -> Any:
            Counting.calls += 1
            return super().admit(*args, **kwargs)

    assert _statuses_with(Counting()) == [200, 200, 429]
    assert Counting.calls == 3


def test_a_store_without_local_bans_is_asked_and_serves() -> None:
    """`local_bans` is optional: a store written to the older protocol still works."""

    class Wrapper:
        local = True

        def __init__(self) -> None:
            self.inner = MemoryStore()

        def execute(self, batch: Any, now: float, bans: Any) -> Any:
            return self.inner.execute(batch, now, bans)

        async def aexecute(self, batch: Any, now: float, bans: Any) -> Any:
            return self.inner.execute(batch, now, bans)

        def impose(self, ban: Any, now: float) -> None:
            self.inner.impose(ban, now)

        def active_ban(self, key: str, now: float) -> Any:
            return self.inner.active_ban(key, now)

        def refund(self, *args: Any) -> None:
            self.inner.refund(*args)

    # 20 refusals (bans.after) earn a ban: the 20th is answered 403, and so is what follows
    assert _statuses_with(Wrapper(), 25) == [200, 200] + [429] * 19 + [403] * 4


def test_pre_keyed_hash_states_are_bounded_and_digests_unchanged() -> None:
    import hashlib

    guard = Guard({"secret": "s" * 32})
    for i in range(1000):
        guard.hash(f"tenant-{i}", "v")
    assert len(guard.hasher._keyed) <= 64
    expected = hashlib.blake2b(b"v", key=b"s" * 32, digest_size=12, person=b"tenant-999")
    assert guard.hash("tenant-999", "v") == "tenant-999:" + expected.hexdigest()
