"""Client IP resolution, principals, keyed hashing, `identify()` and config validation."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi import Depends, FastAPI, Header
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import ValidationError
from starlette.testclient import TestClient

import apiguard
from apiguard import ConfigurationError, Guard, GuardConfig, current_request, identify
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock

SECRET = "s" * 32
PEER = "203.0.113.7"
PROXY = "10.0.0.1"
TRUSTED = {"trusted_proxies": ["10.0.0.0/8"]}
HASHED = re.compile(r"^(k|u|c|ip):[0-9a-f]{24}$")


def auth(x_user: str | None = Header(None)) -> None:
    identify(x_user)  # None: anonymous, ignored


def make(
    *,
    principal: str | None = None,
    ip: str | None = None,
    client_ip: dict[str, Any] | None = None,
    identity: dict[str, Any] | None = None,
    bans: dict[str, Any] | None = None,
    secret: str = SECRET,
    app: FastAPI | None = None,
    **guard_kw: Any,
) -> tuple[FastAPI, Guard]:
    config: dict[str, Any] = {
        "limits": {"principal": principal, "ip": ip},
        "bans": bans or {"enabled": False},
        "secret": secret,
    }
    if client_ip is not None:
        config["client_ip"] = client_ip
    if identity is not None:
        config["identity"] = identity
    guard = Guard(config, clock=FakeClock(1_000.0), **guard_kw)
    app = app or FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    def view() -> dict[str, Any]:
        ctx = current_request()
        assert ctx is not None
        return {"client_ip": ctx.client_ip, "principal": ctx.principal, "ip_key": ctx.ip_key}

    @app.get("/who")
    @guard.limit("100000/minute", name="who")
    async def who() -> dict[str, Any]:
        return view()

    @app.get("/me", dependencies=[Depends(auth)])
    @guard.limit("100000/minute", name="me")
    async def me() -> dict[str, Any]:
        return view()

    @app.get("/plain")
    async def plain() -> dict[str, bool]:
        return {"ok": True}

    return app, guard


def client(app: FastAPI, peer: str = PEER) -> TestClient:
    return TestClient(app, client=(peer, 50_000))


def who(app: FastAPI, peer: str = PEER, headers: Any = None, path: str = "/who") -> dict:
    response = client(app, peer).get(path, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def client_ip(app: FastAPI, peer: str, *headers: tuple[str, str]) -> str:
    return who(app, peer, list(headers))["client_ip"]


# -- client IP -------------------------------------------------------------------------------


def test_default_trusts_no_proxy():
    app, _ = make()
    assert client_ip(app, PEER, ("x-forwarded-for", "198.51.100.1")) == PEER
    assert client_ip(app, PROXY, ("x-forwarded-for", "198.51.100.1")) == PROXY
    assert client_ip(app, PEER, ("forwarded", "for=198.51.100.1")) == PEER


def test_rotating_x_forwarded_for_from_a_direct_peer_gives_no_fresh_budget():
    app, _ = make(principal="3/minute", ip="3/minute")
    c = client(app)
    statuses = [
        c.get("/plain", headers={"x-forwarded-for": f"198.51.100.{i}"}).status_code
        for i in range(1, 7)
    ]
    assert statuses == [200, 200, 200, 429, 429, 429]


@pytest.mark.parametrize(
    ("peer", "headers", "expected"),
    [
        # walked right to left; the spoofed leftmost entry is ignored
        (PROXY, [("x-forwarded-for", "198.51.100.66, 203.0.113.9, 10.0.0.2")], "203.0.113.9"),
        (PROXY, [("x-forwarded-for", "203.0.113.9")], "203.0.113.9"),
        # several header lines form one list, in order
        (
            PROXY,
            [("x-forwarded-for", "198.51.100.66"), ("x-forwarded-for", "203.0.113.9, 10.0.0.2")],
            "203.0.113.9",
        ),
        # an all-trusted chain: the leftmost hop is the best we have
        (PROXY, [("x-forwarded-for", "10.0.0.3, 10.0.0.2")], "10.0.0.3"),
        # a trusted peer without the header is the client itself
        (PROXY, [], PROXY),
        # an untrusted peer's header is ignored
        (PEER, [("x-forwarded-for", "198.51.100.66")], PEER),
        # ports and IPv6
        (PROXY, [("x-forwarded-for", "203.0.113.9:5555, 10.0.0.2:443")], "203.0.113.9"),
        (PROXY, [("x-forwarded-for", "[2001:db8::1]:4711, 10.0.0.2")], "2001:db8::1"),
        (PROXY, [("x-forwarded-for", "[2001:DB8:0::1]")], "2001:db8::1"),
        (PROXY, [("x-forwarded-for", "2001:db8::1")], "2001:db8::1"),
        # IPv4-mapped IPv6 peers and hops are matched against IPv4 trusted networks
        ("::ffff:10.0.0.1", [("x-forwarded-for", "203.0.113.9")], "203.0.113.9"),
        (PROXY, [("x-forwarded-for", "203.0.113.9, ::ffff:10.0.0.2")], "203.0.113.9"),
        # malformed hops stop the walk at the last trusted address; nothing left of
        # them is believed
        (PROXY, [("x-forwarded-for", "198.51.100.66, not-an-ip, 10.0.0.2")], "10.0.0.2"),
        (PROXY, [("x-forwarded-for", "198.51.100.66, unknown")], PROXY),
        (PROXY, [("x-forwarded-for", "198.51.100.66,,10.0.0.2")], "10.0.0.2"),
        (PROXY, [("x-forwarded-for", "198.51.100.66, 1.2.3.4.5")], PROXY),
        (PROXY, [("x-forwarded-for", "198.51.100.66, [2001:db8::1")], PROXY),
        (PROXY, [("x-forwarded-for", "198.51.100.66, 999.1.1.1")], PROXY),
    ],
)
def test_x_forwarded_for_behind_trusted_proxies(peer, headers, expected):
    app, _ = make(client_ip=TRUSTED)
    assert client_ip(app, peer, *headers) == expected


def test_rotating_spoofed_entries_behind_a_proxy_gives_no_fresh_budget():
    app, _ = make(principal="3/minute", client_ip=TRUSTED)
    c = client(app, PROXY)
    statuses = [
        c.get(
            "/plain", headers={"x-forwarded-for": f"198.51.100.{i}, 203.0.113.9, 10.0.0.2"}
        ).status_code
        for i in range(1, 7)
    ]
    assert statuses == [200, 200, 200, 429, 429, 429]
    # a different real client behind the same proxy has its own budget
    other = c.get("/plain", headers={"x-forwarded-for": "203.0.113.10, 10.0.0.2"})
    assert other.status_code == 200


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([("forwarded", 'for="[2001:db8::1]:4711"')], "2001:db8::1"),
        ([("forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43")], "192.0.2.60"),
        (
            [("forwarded", "for=198.51.100.66, For=203.0.113.9;proto=https, for=10.0.0.2")],
            "203.0.113.9",
        ),
        ([("forwarded", "for=198.51.100.66"), ("forwarded", "for=203.0.113.9")], "203.0.113.9"),
        ([("forwarded", 'for="_hidden", for=10.0.0.2')], "10.0.0.2"),
        # the other header is not believed when `forwarded` is configured
        ([("x-forwarded-for", "203.0.113.9")], PROXY),
    ],
)
def test_forwarded_header(headers, expected):
    app, _ = make(client_ip={**TRUSTED, "proxy_header": "forwarded"})
    assert client_ip(app, PROXY, *headers) == expected


def budget_shared(app: FastAPI, first: str, second: str) -> bool:
    """Spend the 1/minute principal budget from `first`; is `second` refused now?"""
    assert client(app, first).get("/plain").status_code == 200
    return client(app, second).get("/plain").status_code == 429


@pytest.mark.parametrize(
    ("config", "first", "second", "shared"),
    [
        ({}, "2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:fffe", True),
        ({}, "2001:db8:1:2::1", "2001:db8:1:3::1", False),
        ({"ipv6_prefix": 128}, "2001:db8:1:2::1", "2001:db8:1:2::2", False),
        ({"ipv6_prefix": 48}, "2001:db8:1:2::1", "2001:db8:1:3::1", True),
        ({}, "198.51.100.1", "198.51.100.2", False),
        ({"ipv4_prefix": 24}, "198.51.100.1", "198.51.100.254", True),
        ({"ipv4_prefix": 24}, "198.51.100.1", "198.51.101.1", False),
        ({}, "::ffff:198.51.100.1", "198.51.100.1", True),
        ({"ipv4_prefix": 24}, "::ffff:198.51.100.1", "198.51.100.77", True),
    ],
)
def test_ip_grouping(config, first, second, shared):
    app, _ = make(principal="1/minute", client_ip=config)
    assert budget_shared(app, first, second) is shared


def test_ip_grouping_applies_to_the_per_ip_rule_too():
    app, _ = make(ip="1/minute")
    # different API keys (so different principals), one /64
    a = client(app, "2001:db8:1:2::1").get("/plain", headers={"x-api-key": "a"})
    b = client(app, "2001:db8:1:2::99").get("/plain", headers={"x-api-key": "b"})
    assert (a.status_code, b.status_code) == (200, 429)


# -- principals ------------------------------------------------------------------------------


def test_principal_order_identify_then_bearer_then_api_key_then_ip():
    app, guard = make()
    key, token = {"x-api-key": "the-key"}, {"authorization": "Bearer the-token"}
    both = {**key, **token}
    assert who(app, headers={**both, "x-user": "alice"}, path="/me")["principal"] == guard.hash(
        "u", "alice"
    )
    assert who(app, headers=both, path="/me")["principal"] == guard.hash("k", "the-token")
    assert who(app, headers=key, path="/me")["principal"] == guard.hash("k", "the-key")
    assert who(app, headers=token)["principal"] == guard.hash("k", "the-token")
    anonymous = who(app)
    assert anonymous["principal"] == anonymous["ip_key"]
    assert anonymous["ip_key"] == guard.hash("ip", PEER)


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": "Basic dXNlcjpwYXNz"},
        {"authorization": "Bearer "},
        {"x-api-key": ""},
    ],
)
def test_unusable_credentials_fall_back_to_the_ip(headers):
    app, _ = make()
    seen = who(app, headers=headers)
    assert seen["principal"] == seen["ip_key"]


def test_identity_settings():
    app, guard = make(identity={"api_key_headers": ["X-Token"], "bearer_tokens": False})
    assert who(app, headers={"x-token": "t1"})["principal"] == guard.hash("k", "t1")
    seen = who(app, headers={"x-api-key": "k1", "authorization": "Bearer b1"})
    assert seen["principal"] == seen["ip_key"]


def test_two_api_keys_behind_one_nat_ip_have_separate_budgets():
    app, _ = make(principal="2/minute")
    c = client(app)
    a = [c.get("/plain", headers={"x-api-key": "key-a"}).status_code for _ in range(3)]
    b = [c.get("/plain", headers={"x-api-key": "key-b"}).status_code for _ in range(3)]
    assert a == [200, 200, 429]
    assert b == [200, 200, 429]
    # one principal's bearer token and API key are the same credential
    assert c.get("/plain", headers={"authorization": "Bearer key-a"}).status_code == 429


def test_custom_principal_resolver_is_used_unless_identify_is_called():
    seen: list[str] = []

    def resolver(ctx: apiguard.RequestContext) -> str | None:
        seen.append(ctx.path)
        return ctx.header("x-tenant")

    app, guard = make(principal_resolver=resolver)
    key = {"x-api-key": "the-key"}
    assert who(app, headers={**key, "x-tenant": "t-1"})["principal"] == guard.hash("c", "t-1")
    assert who(app, headers=key)["principal"] == guard.hash("k", "the-key")  # resolver: None
    calls = len(seen)
    identified = who(app, headers={**key, "x-tenant": "t-1", "x-user": "bob"}, path="/me")
    assert identified["principal"] == guard.hash("u", "bob")
    assert len(seen) == calls  # not consulted when identify() declared the principal


def test_custom_resolver_principals_get_their_own_budgets():
    app, _ = make(principal="1/minute", principal_resolver=lambda ctx: ctx.header("x-tenant"))
    c = client(app)
    assert c.get("/plain", headers={"x-tenant": "t-1"}).status_code == 200
    assert c.get("/plain", headers={"x-tenant": "t-1"}).status_code == 429
    assert c.get("/plain", headers={"x-tenant": "t-2"}).status_code == 200


# -- identify() ------------------------------------------------------------------------------


def test_identify_rejects_an_empty_id_inside_a_request():
    app, _ = make()
    outcome: list[str] = []

    @app.get("/empty")
    async def empty() -> dict[str, bool]:
        try:
            identify("")
        except ValueError:
            outcome.append("ValueError")
        return {"ok": True}

    assert client(app).get("/empty").status_code == 200
    assert outcome == ["ValueError"]


def test_identify_none_is_ignored():
    app, guard = make()
    seen = who(app, headers={"x-api-key": "the-key"}, path="/me")  # no x-user: identify(None)
    assert seen["principal"] == guard.hash("k", "the-key")


def test_identify_outside_a_request_warns():
    with pytest.warns(RuntimeWarning, match="outside a request"):
        identify("alice")
    with pytest.raises(ValueError):
        identify("")
    identify(None)  # nothing to say


def test_identified_principals_get_their_own_budgets_behind_one_ip():
    app, _ = make(principal="1/minute")

    @app.get("/login")
    async def login(x_user: str = Header()) -> dict[str, bool]:
        identify(x_user)
        return {"ok": True}

    c = client(app)
    assert c.get("/login", headers={"x-user": "alice"}).status_code == 200
    assert c.get("/login", headers={"x-user": "alice"}).status_code == 429
    assert c.get("/login", headers={"x-user": "bob"}).status_code == 200


# -- only keyed hashes are kept --------------------------------------------------------------

RAW = ["sk_live_RAWKEY_123", "RAWBEARER_456", "alice@example.com", "tenant-RAW-789", PEER]


def traffic(app: FastAPI) -> None:
    c = client(app)
    for _ in range(4):
        c.get("/plain", headers={"x-api-key": RAW[0]})
        c.get("/plain", headers={"authorization": f"Bearer {RAW[1]}"})
        c.get("/me", headers={"x-user": RAW[2]})
        c.get("/plain", headers={"x-tenant": RAW[3]})
        c.get("/who")


def all_keys(guard: Guard) -> list[str]:
    store = guard.store
    return [*store._windows.keys(), *store._strikes.keys(), *store._bans.keys()]


def test_raw_credentials_never_reach_the_store_or_telemetry():
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    app = FastAPI(telemetry={"tracer_provider": tracer_provider, "meter_provider": meter_provider})
    app, guard = make(
        principal="2/minute",
        ip="1000/minute",
        bans={"after": 2, "within": 60},
        app=app,
        meter_provider=meter_provider,
        principal_resolver=lambda ctx: ctx.header("x-tenant"),
    )
    traffic(app)
    keys = all_keys(guard)
    assert guard.store._bans, "the traffic should have produced bans"
    for key in keys:
        for raw in RAW:
            assert raw not in key, (raw, key)
    subjects = {k.rsplit("|", 1)[-1] for k in guard.store._windows}
    assert subjects and all(HASHED.match(s) for s in subjects), subjects
    assert all(HASHED.match(k) for k in [*guard.store._strikes.keys(), *guard.store._bans])

    principals = set()
    for span in exporter.get_finished_spans():
        items = [dict(span.attributes or {})] + [dict(e.attributes or {}) for e in span.events]
        for attrs in items:
            for name, value in attrs.items():
                for raw in RAW:
                    assert raw not in str(value), (span.name, name, value)
            if "apiguard.principal" in attrs:
                principals.add(attrs["apiguard.principal"])
    assert len(principals) >= 4 and all(HASHED.match(p) for p in principals), principals
    data = reader.get_metrics_data()
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    for raw in RAW:
                        assert raw not in str(dict(point.attributes or {}))


def test_the_hash_is_keyed_by_the_secret():
    one, two = Guard({"secret": "a" * 16}), Guard({"secret": "a" * 16})
    other = Guard({"secret": "b" * 16})
    for kind, value in [("k", "the-key"), ("u", "alice"), ("ip", PEER)]:
        assert one.hash(kind, value) == two.hash(kind, value)
        assert one.hash(kind, value) != other.hash(kind, value)
        assert HASHED.match(one.hash(kind, value))
    assert Guard().hash("k", "x") != Guard().hash("k", "x")  # no secret: a random one
    assert one.hash("k", "alice") != one.hash("u", "alice")  # kinds never collide


def test_same_secret_same_store_keys_other_secret_disjoint():
    stores = []
    for secret in ("a" * 16, "a" * 16, "b" * 16):
        app, guard = make(principal="100/minute", ip="100/minute", secret=secret)
        traffic(app)
        stores.append({k.rsplit("|", 1)[-1] for k in guard.store._windows})  # subjects
    assert stores[0] == stores[1]
    assert not (stores[0] & stores[2])


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"limits": {"principal": "lots/forever"}}, "limits.principal"),
        ({"limits": {"ip": "0/minute"}}, "limits.ip"),
        ({"limits": {"route": "10 per fortnight"}}, "limits.route"),
        ({"client_ip": {"trusted_proxies": ["10.0.0.0/33"]}}, "client_ip.trusted_proxies"),
        ({"client_ip": {"trusted_proxies": ["proxy.internal"]}}, "client_ip.trusted_proxies"),
        ({"client_ip": {"proxy_header": "x-real-ip"}}, "client_ip.proxy_header"),
        ({"client_ip": {"ipv4_prefix": 33}}, "client_ip.ipv4_prefix"),
        ({"secret": "too-short"}, "secret"),
        ({"limitz": {"principal": "1/minute"}}, "limitz"),
        ({"bans": {"afterr": 3}}, "bans.afterr"),
        ({"mode": "block"}, "mode"),
        ({"limits": {"mode": "shadow"}}, "limits.mode"),
        ({"store": {"window_buckets": 1}}, "store.window_buckets"),
    ],
)
def test_invalid_configuration_names_the_field(config, field):
    with pytest.raises(ConfigurationError) as raised:
        Guard(config)
    assert field in str(raised.value)
    assert not isinstance(raised.value, ValidationError)
    with pytest.raises(ConfigurationError) as raised_model:  # constructed directly: the same
        GuardConfig(**config)
    assert field in str(raised_model.value)


def test_invalid_decorator_arguments_name_the_handler():
    guard = Guard()
    with pytest.raises(ConfigurationError, match="handler_name"):

        @guard.limit("often")
        def handler_name() -> None: ...

    with pytest.raises(ConfigurationError, match="handler_name"):

        @guard.flow("f", "3/hour", count="sometimes")  # type: ignore[arg-type]
        def handler_name() -> None: ...
