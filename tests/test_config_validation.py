"""Silent or late misconfiguration (issue 6, items 6-9): a protection that looks on and is
not. Each wrong setting fails at construction (or decoration) with a `ConfigurationError`,
or, where it can only be seen per request (what a resolver returns), is reported once and
handled safely."""

from __future__ import annotations

import functools
import ipaddress
import logging
import math
import time
import traceback
import typing
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import Depends, FastAPI, Header
from opentelemetry.sdk.metrics import MeterProvider
from starlette.applications import Starlette
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    BaseUser,
    SimpleUser,
)
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import apiguard
import apiguard.guard
from apiguard import BlockResponse, ConfigurationError, Guard, GuardConfig, identify
from apiguard.asgi import GuardMiddleware
from apiguard.config import BanConfig
from apiguard.simulate.clock import FakeClock
from apiguard.store.memory import MemoryStore
from conftest import IP_A, IP_B, assert_quota_exceeded

YEAR = 31_536_000
SECRET = "s" * 32


def _errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Records that report a ConfigurationError (logged with it as exc_info)."""
    return [
        r
        for r in caplog.records
        if r.name == "apiguard" and r.exc_info is not None and r.exc_info[0] is ConfigurationError
    ]


def _principal_app(guard: Guard, *, with_identify: bool = False) -> FastAPI:
    """`/who` reports the principal the checkpoint used; `/me` calls identify() first."""
    app = FastAPI()

    def report() -> dict[str, Any]:
        ctx = apiguard.current_request()
        assert ctx is not None
        return {"principal": ctx.principal, "ip_key": ctx.ip_key, "vouched": ctx.vouched}

    @app.get("/who")
    @guard.limit("100000/minute", name="who")
    async def who() -> dict[str, Any]:
        return report()

    if with_identify:
        holder: dict[str, Any] = {}

        def auth() -> None:
            identify(holder["user"]())

        app.state.user = holder

        @app.get("/me", dependencies=[Depends(auth)])
        @guard.limit("100000/minute", name="me")
        async def me() -> dict[str, Any]:
            return report()

    return app


# -- item 6: only str, int and uuid.UUID are identities ----------------------------------


class _User:
    """An app's user object (what `request.user` holds), returned by mistake."""

    def __init__(self, user_id: int) -> None:
        self.id = user_id


BAD_IDENTITIES: dict[str, Callable[[], object]] = {
    "object": object,  # a fresh object per request: each one a fresh principal before
    "user-object": lambda: _User(7),
    "starlette-user": lambda: SimpleUser("alice"),
    "true": lambda: True,  # everyone one principal before
    "false": lambda: False,
    "bytes": lambda: b"alice",
    "float": lambda: 1.5,
    "list": lambda: ["alice"],
    "dict": lambda: {"id": 7},
}


@pytest.mark.parametrize("bad", list(BAD_IDENTITIES))
def test_resolver_returning_a_non_identity_is_anonymous_and_reported_once(
    bad: str, make_guard: Callable[..., Guard], serve: Callable[..., TestClient], caplog: Any
) -> None:
    """60 requests from one IP are one principal (the IP), not vouched: the per-principal
    limit keyed on the IP refuses the 61st; another IP has its own budget."""
    make = BAD_IDENTITIES[bad]
    guard = make_guard({"principal": "60/minute"}, principal_resolver=lambda ctx: make())
    app = _principal_app(guard)
    client_a = serve(app, guard)
    with caplog.at_level(logging.ERROR, logger="apiguard"):
        seen = [client_a.get("/who").json() for _ in range(60)]
        assert_quota_exceeded(client_a.get("/who"), "per-principal")
        client_b = serve(app, guard, ip=IP_B)
        other = client_b.get("/who")
    assert other.status_code == 200
    assert {s["principal"] for s in seen} == {seen[0]["ip_key"]}
    assert not any(s["vouched"] for s in seen)
    assert other.json()["principal"] == other.json()["ip_key"] != seen[0]["ip_key"]
    reports = _errors(caplog)
    assert len(reports) == 1  # once per type, not per request
    message = reports[0].getMessage()
    assert "principal_resolver" in message and "str, an int or a uuid.UUID" in message
    assert "alice" not in message  # the type is named, never the value


def test_resolver_returning_a_starlette_user_through_authentication_middleware(
    caplog: Any,
) -> None:
    """The classic mistake on Starlette: the resolver returns `scope["user"]` (the user
    object) instead of its id. Signed-in or not, callers from one IP share the IP's budget
    and are not vouched (the old code made every request a fresh, vouched principal)."""

    class Backend(AuthenticationBackend):
        async def authenticate(
            self, conn: HTTPConnection
        ) -> tuple[AuthCredentials, BaseUser] | None:
            name = conn.headers.get("x-session")
            return (AuthCredentials(["user"]), SimpleUser(name)) if name else None

    guard = Guard(
        {"limits": {"principal": "5/minute", "ip": None}, "bans": {"enabled": False}},
        clock=FakeClock(1_000.0),
        principal_resolver=lambda ctx: ctx.scope.get("user"),
    )
    vouched: list[bool] = []

    @guard.limit("1000/minute")
    async def export(request: Request) -> JSONResponse:
        ctx = apiguard.current_request()
        assert ctx is not None
        vouched.append(ctx.vouched)
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[Route("/export", export)],
        middleware=[
            Middleware(GuardMiddleware, guard=guard),
            Middleware(AuthenticationMiddleware, backend=Backend()),
        ],
    )
    client = TestClient(app, client=(IP_A, 50_000))
    with caplog.at_level(logging.ERROR, logger="apiguard"):
        statuses = [
            client.get("/export", headers={"x-session": f"user-{i}"}).status_code for i in range(6)
        ]
    assert statuses == [200] * 5 + [429]
    assert vouched == [False] * 5
    assert len(_errors(caplog)) >= 1
    assert "SimpleUser" in _errors(caplog)[0].getMessage()


@pytest.mark.parametrize(
    "value",
    [42, uuid.UUID("12345678-1234-5678-1234-567812345678"), "tenant-1"],
    ids=["int", "uuid", "str"],
)
def test_resolver_returning_an_int_or_uuid_is_a_vouched_principal(
    value: object,
    make_guard: Callable[..., Guard],
    serve: Callable[..., TestClient],
    caplog: Any,
) -> None:
    guard = make_guard({"principal": "3/minute"}, principal_resolver=lambda ctx: value)
    app = _principal_app(guard)
    with caplog.at_level(logging.ERROR, logger="apiguard"):
        first = serve(app, guard, ip=IP_A).get("/who").json()
        serve(app, guard, ip=IP_B).get("/who")
        serve(app, guard, ip="192.0.2.1").get("/who")
        # one principal across IPs: the fourth request, from a fourth IP, is refused
        assert_quota_exceeded(serve(app, guard, ip="192.0.2.2").get("/who"), "per-principal")
    assert first["vouched"] is True
    assert first["principal"] == guard.hash("c", str(value))
    assert not _errors(caplog)


@pytest.mark.parametrize("blank", ["", " ", "\t\n", "\u3000"])
def test_resolver_returning_an_empty_string_is_anonymous(
    blank: str, make_guard: Callable[..., Guard], serve: Callable[..., TestClient], caplog: Any
) -> None:
    guard = make_guard(principal_resolver=lambda ctx: blank)
    with caplog.at_level(logging.ERROR, logger="apiguard"):
        body = serve(_principal_app(guard), guard).get("/who").json()
    assert body["principal"] == body["ip_key"] and body["vouched"] is False
    assert not _errors(caplog)


@pytest.mark.parametrize("bad", ["object", "starlette-user", "true", "bytes", "float", "list"])
def test_identify_with_a_non_identity_is_ignored_and_reported_once(
    bad: str, make_guard: Callable[..., Guard], serve: Callable[..., TestClient], caplog: Any
) -> None:
    """`identify(user)` instead of `identify(user.id)`: no exception into the app, the
    request stays anonymous (keyed on the IP, not vouched), one logged ConfigurationError."""
    guard = make_guard({"principal": "3/minute"})
    app = _principal_app(guard, with_identify=True)
    app.state.user["user"] = BAD_IDENTITIES[bad]
    client = serve(app, guard)
    with caplog.at_level(logging.ERROR, logger="apiguard"):
        seen = [client.get("/me") for _ in range(3)]
        assert_quota_exceeded(client.get("/me"), "per-principal")
    assert [r.status_code for r in seen] == [200] * 3
    assert all(r.json()["principal"] == r.json()["ip_key"] for r in seen)
    assert not any(r.json()["vouched"] for r in seen)
    reports = _errors(caplog)
    assert len(reports) == 1 and "identify()" in reports[0].getMessage()


@pytest.mark.parametrize(
    "value", [7, uuid.UUID("12345678-1234-5678-1234-567812345678")], ids=["int", "uuid"]
)
def test_identify_accepts_int_and_uuid(
    value: object, make_guard: Callable[..., Guard], serve: Callable[..., TestClient]
) -> None:
    guard = make_guard()
    app = _principal_app(guard, with_identify=True)
    app.state.user["user"] = lambda: value
    body = serve(app, guard).get("/me").json()
    assert body["vouched"] is True
    assert body["principal"] == guard.hash("u", str(value))


def test_identify_type_hint_names_every_identity_and_none() -> None:
    hints = typing.get_type_hints(identify)
    assert set(typing.get_args(hints["user_id"])) == {str, int, uuid.UUID, type(None)}


def test_identify_keeps_refusing_an_empty_id() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        identify("")


def test_per_callable_returning_an_object_keys_on_the_principal(
    make_guard: Callable[..., Guard], serve: Callable[..., TestClient], caplog: Any
) -> None:
    """The same mistake in a `per=` callable: a fresh object per request was a fresh
    bucket per request. It now counts against the principal's own budget."""
    guard = make_guard()
    app = FastAPI()

    @app.get("/x")
    @guard.limit("3/minute", per=lambda ctx: _User(1))
    async def x() -> dict[str, bool]:
        return {"ok": True}

    client = serve(app, guard)
    with caplog.at_level(logging.ERROR, logger="apiguard"):
        assert [client.get("/x").status_code for _ in range(4)] == [200, 200, 200, 429]
    assert len(_errors(caplog)) == 1


# -- item 7: the clock's scale is checked once -------------------------------------------


@pytest.mark.parametrize(
    "clock",
    [
        time.monotonic_ns,
        time.time_ns,
        time.perf_counter_ns,
        time.process_time_ns,
        lambda: time.time() * 1000,  # milliseconds since the epoch
        lambda: time.time_ns() // 1000,  # microseconds
        lambda: time.monotonic_ns(),  # not the builtin itself: caught by its scale
        lambda: time.monotonic() * 1000,  # small numbers, but a millisecond clock
        lambda: time.perf_counter() * 1_000_000,
        functools.partial(time.perf_counter_ns),
    ],
    ids=[
        "monotonic_ns",
        "time_ns",
        "perf_counter_ns",
        "process_time_ns",
        "epoch-ms",
        "epoch-us",
        "lambda-monotonic_ns",
        "monotonic-ms",
        "perf_counter-us",
        "partial-perf_counter_ns",
    ],
)
def test_a_clock_not_counting_seconds_is_refused(clock: Callable[[], float]) -> None:
    with pytest.raises(ConfigurationError, match="seconds"):
        Guard(clock=clock)


@pytest.mark.parametrize(
    "clock",
    [
        lambda: "1000",
        lambda: float("nan"),
        lambda: float("inf"),
        lambda: -math.inf,
        lambda: None,
        lambda: True,
        lambda: [1.0],
        lambda: 1e12,  # a constant, but not seconds
        lambda: 10**400,  # too large for a float
        FakeClock,  # the class, not a clock: calling it returns a FakeClock
    ],
    ids=["str", "nan", "inf", "-inf", "none", "bool", "list", "1e12", "huge-int", "clock-class"],
)
def test_a_clock_returning_no_finite_number_of_seconds_is_refused(
    clock: Callable[[], Any],
) -> None:
    with pytest.raises(ConfigurationError, match="clock"):
        Guard(clock=clock)


def test_a_clock_that_raises_or_takes_arguments_is_refused() -> None:
    def broken() -> float:
        raise RuntimeError("no time")

    with pytest.raises(ConfigurationError, match="clock"):
        Guard(clock=broken)
    with pytest.raises(ConfigurationError, match="clock"):
        Guard(clock=lambda now: 1.0)  # type: ignore[arg-type,misc]
    with pytest.raises(ConfigurationError, match="clock"):
        Guard(clock=1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "clock",
    [
        time.monotonic,
        time.time,
        time.perf_counter,
        FakeClock(0.0),
        FakeClock(1_700_000_000.0),
        lambda: 1_000.0,  # frozen: never advances by itself
        lambda: 5,  # an int is seconds too
        lambda: time.monotonic(),
        lambda: time.time_ns() / 1e9,
    ],
    ids=[
        "monotonic",
        "time",
        "perf_counter",
        "fake",
        "fake-epoch",
        "frozen",
        "int",
        "wrapped",
        "ns-to-s",
    ],
)
def test_clocks_counting_seconds_are_accepted(clock: Callable[[], float]) -> None:
    assert Guard(clock=clock).clock is clock


def test_an_accepted_custom_clock_makes_limits_bite(serve: Callable[..., TestClient]) -> None:
    now = [1_000.0]
    guard = Guard(
        {"limits": {"principal": "2/minute", "ip": None}, "bans": {"enabled": False}},
        clock=lambda: now[0],
    )
    app = FastAPI()

    @app.get("/")
    async def root() -> dict[str, bool]:
        return {"ok": True}

    client = serve(app, guard)
    assert [client.get("/").status_code for _ in range(3)] == [200, 200, 429]
    now[0] += 70  # a window plus one bucket
    assert client.get("/").status_code == 200


# -- item 8: proxies and key headers that would hand control to the client -----------------


@pytest.mark.parametrize(
    "network",
    [
        "0.0.0.0/0",
        "::/0",
        "0.0.0.0/1",
        "128.0.0.0/2",
        "10.0.0.0/7",
        "2000::/3",
        "::/1",
        "fc00::/6",
        "::ffff:0:0/96",  # all of IPv4, written mapped
        "::ffff:0.0.0.0/100",  # 0.0.0.0/4
        "::ffff:10.0.0.0/90",  # a mapped network shorter than /96
        "::/8",  # covers the mapped range, which never matches
    ],
)
def test_trusted_proxies_covering_too_much_are_refused(network: str) -> None:
    config = {"client_ip": {"trusted_proxies": ["10.0.0.0/8", network]}}
    with pytest.raises(ConfigurationError, match=r"client_ip\.trusted_proxies"):
        Guard(config)
    with pytest.raises(ConfigurationError, match=r"client_ip\.trusted_proxies"):
        GuardConfig(**config)
    with pytest.raises(ConfigurationError, match=r"client_ip\.trusted_proxies"):
        GuardConfig.from_env(
            environ={"APIGUARD_CLIENT_IP__TRUSTED_PROXIES": f"10.0.0.0/8,{network}"}
        )


@pytest.mark.parametrize(
    "network", ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "fd00::/8", "::1"]
)
def test_proxy_networks_of_a_real_deployment_are_accepted(network: str) -> None:
    config = GuardConfig(client_ip={"trusted_proxies": [network]})
    assert config.client_ip.trusted_proxies == (str(ipaddress.ip_network(network)),)


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ("::ffff:192.168.1.0/120", "192.168.1.0/24"),
        ("::ffff:10.1.2.3", "10.1.2.3/32"),
        ("::FFFF:0A00:0/104", "10.0.0.0/8"),
    ],
)
def test_ipv4_mapped_proxy_networks_mean_their_ipv4_network(written: str, meant: str) -> None:
    assert GuardConfig(client_ip={"trusted_proxies": [written]}).client_ip.trusted_proxies == (
        meant,
    )


@pytest.mark.parametrize("peer", ["10.1.2.3", "::ffff:10.1.2.3"])
def test_a_mapped_proxy_network_trusts_its_proxies(
    peer: str, make_guard: Callable[..., Guard], serve: Callable[..., TestClient]
) -> None:
    """Before, `::ffff:10.0.0.0/104` never matched (addresses are compared unmapped): the
    proxy was the client, and everyone behind it shared one budget."""
    guard = make_guard(client_ip={"trusted_proxies": ["::ffff:10.0.0.0/104"]})
    app = FastAPI()

    @app.get("/ip")
    async def ip() -> dict[str, Any]:
        ctx = apiguard.current_request()
        assert ctx is not None
        return {"client": ctx.client_ip}

    client = serve(app, guard, ip=peer)
    assert client.get("/ip", headers={"x-forwarded-for": IP_B}).json() == {"client": IP_B}
    assert guard.engine.ip.is_trusted(peer)


@pytest.mark.parametrize(
    "header",
    [
        "cookie",
        "Cookie",
        "authorization",
        "proxy-authorization",
        "host",
        "forwarded",
        "x-forwarded-for",
        "X-Real-IP",
        "user-agent",
        "accept",
        "content-type",
        "content-length",
        "connection",
    ],
)
def test_api_key_headers_that_are_not_keys_are_refused(header: str) -> None:
    config = {"identity": {"api_key_headers": ["x-api-key", header]}}
    with pytest.raises(ConfigurationError, match=r"identity\.api_key_headers"):
        Guard(config)
    with pytest.raises(ConfigurationError, match=r"identity\.api_key_headers"):
        GuardConfig.from_env(environ={"APIGUARD_IDENTITY__API_KEY_HEADERS": f"x-api-key,{header}"})


@pytest.mark.parametrize("proxy_header", ["forwarded", "x-forwarded-for"])
def test_the_configured_proxy_header_cannot_hold_keys(proxy_header: str) -> None:
    config = {
        "client_ip": {"proxy_header": proxy_header, "trusted_proxies": ["10.0.0.0/8"]},
        "identity": {"api_key_headers": [proxy_header]},
    }
    with pytest.raises(ConfigurationError, match=r"identity\.api_key_headers"):
        Guard(config)


def test_ordinary_key_headers_are_accepted() -> None:
    config = GuardConfig(identity={"api_key_headers": ["X-API-Key", "x-token", "apikey"]})
    assert config.identity.api_key_headers == ("x-api-key", "x-token", "apikey")


# -- item 9: wrong types fail at construction --------------------------------------------


@pytest.mark.parametrize(
    "config",
    ["enforce", "monitor", 5, ["mode", "monitor"], b"{}", GuardConfig],
    ids=["str", "str-monitor", "int", "list", "bytes", "class"],
)
def test_guard_config_argument_of_the_wrong_type(config: Any) -> None:
    with pytest.raises(ConfigurationError, match="GuardConfig"):
        Guard(config)


@pytest.mark.parametrize(
    "store",
    [
        "mongodb://:hunter2-password@cache:6379/0",  # not a store scheme
        "cache:6379",
        b"redis://cache",
        Path("/tmp/store"),
        object(),
        5,
        {},
        MemoryStore,  # the class, not an instance
    ],
    ids=["url", "no-scheme", "bytes", "path", "object", "int", "dict", "class"],
)
def test_guard_store_that_is_not_a_store(store: Any) -> None:
    with pytest.raises(ConfigurationError, match="store") as raised:
        Guard(store=store)
    assert "hunter2" not in str(raised.value)  # a store URL may carry a password


def test_a_store_missing_one_method_is_named() -> None:
    class Partial:
        local = True

        def execute(self, *args: Any) -> None: ...

    with pytest.raises(ConfigurationError, match="aexecute, refund, impose, active_ban"):
        Guard(store=Partial())  # type: ignore[arg-type]


class _NoMeters:
    def get_meter(self, *args: Any, **kwargs: Any) -> None:
        return None


async def _async_resolver(ctx: Any) -> str:
    return "alice"


async def _async_on_block(decision: Any, default: BlockResponse) -> BlockResponse:
    return default


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"principal_resolver": 5}, "principal_resolver"),
        ({"principal_resolver": "user.id"}, "principal_resolver"),
        ({"principal_resolver": lambda: "alice"}, "principal_resolver"),
        ({"principal_resolver": lambda ctx, request: "alice"}, "principal_resolver"),
        ({"on_block": 5}, "on_block"),
        ({"on_block": lambda decision: None}, "on_block"),
        ({"on_block": lambda decision, default, extra: default}, "on_block"),
        ({"meter_provider": "x"}, "meter_provider"),
        ({"meter_provider": object()}, "meter_provider"),
        ({"meter_provider": _NoMeters()}, "meter_provider"),
        ({"principal_resolver": _async_resolver}, "principal_resolver"),
        ({"on_block": _async_on_block}, "on_block"),
    ],
    ids=[
        "resolver-int",
        "resolver-str",
        "resolver-no-args",
        "resolver-two-args",
        "on_block-int",
        "on_block-one-arg",
        "on_block-three-args",
        "meter_provider-str",
        "meter_provider-object",
        "meter_provider-get_meter-none",
        "resolver-async",
        "on_block-async",
    ],
)
def test_guard_hooks_of_the_wrong_type_or_arity(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        Guard(**kwargs)


def test_hooks_that_accept_their_arguments_are_accepted() -> None:
    def resolver(ctx: apiguard.RequestContext, *, extra: int = 0) -> str | None:
        return None

    class Hook:
        def __call__(self, decision: Any, default: BlockResponse) -> BlockResponse:
            return default

    Guard(principal_resolver=resolver, on_block=Hook(), meter_provider=MeterProvider())
    Guard(principal_resolver=lambda *args: None, on_block=lambda *args: args[1])
    Guard(principal_resolver=str)  # signature unreadable on some Pythons: accepted


@pytest.mark.parametrize("returned", [None, "blocked", 429, {"status": 429}])
def test_on_block_returning_no_block_response_sends_the_default_refusal(
    returned: object,
    make_guard: Callable[..., Guard],
    serve: Callable[..., TestClient],
    caplog: Any,
) -> None:
    calls: list[str] = []

    def on_block(decision: Any, default: BlockResponse) -> Any:
        calls.append(decision.rule)
        return returned

    guard = make_guard(on_block=on_block)
    app = FastAPI()

    @app.get("/x")
    @guard.limit("1/minute")
    async def x() -> dict[str, bool]:
        return {"ok": True}

    client = serve(app, guard)
    with caplog.at_level(logging.ERROR, logger="apiguard"):
        assert client.get("/x").status_code == 200
        for _ in range(3):
            assert_quota_exceeded(client.get("/x"), "limit:x")  # not a 500
    assert calls == ["limit:x"] * 3
    assert len(_errors(caplog)) == 1


def test_on_block_that_raises_sends_the_default_refusal(
    make_guard: Callable[..., Guard], serve: Callable[..., TestClient], caplog: Any
) -> None:
    def on_block(decision: Any, default: BlockResponse) -> BlockResponse:
        raise KeyError("template")

    guard = make_guard({"principal": "1/minute"}, on_block=on_block)
    app = FastAPI()

    @app.get("/")
    async def root() -> dict[str, bool]:
        return {"ok": True}

    client = serve(app, guard)
    with caplog.at_level(logging.ERROR, logger="apiguard"):
        assert client.get("/").status_code == 200
        assert_quota_exceeded(client.get("/"), "per-principal")
        assert_quota_exceeded(client.get("/"), "per-principal")
    assert len([r for r in caplog.records if "on_block raised" in r.getMessage()]) == 1


@pytest.mark.parametrize(
    "decorate",
    [
        lambda g: g.limit("5/minute", per=lambda: "k"),
        lambda g: g.limit("5/minute", per=lambda ctx, other: "k"),
        lambda g: g.limit("5/minute", per=lambda *, ctx: "k"),
        lambda g: g.limit("5/minute", cost=lambda: 1),
        lambda g: g.limit("5/minute", cost=lambda ctx, n: n),
        lambda g: g.flow("checkout", "5/minute", per=lambda: "k"),
        lambda g: g.flow("checkout", "5/minute", per=lambda a, b: "k"),
        lambda g: g.limit("5/minute", per=_async_resolver),
    ],
    ids=[
        "limit-per-0",
        "limit-per-2",
        "limit-per-kwonly",
        "limit-cost-0",
        "limit-cost-2",
        "flow-per-0",
        "flow-per-2",
        "limit-per-async",
    ],
)
def test_decorator_callables_of_the_wrong_arity_fail_at_decoration(
    decorate: Callable[[Guard], Callable[[Any], Any]],
) -> None:
    guard = Guard()
    with pytest.raises(ConfigurationError, match="handler_name"):

        @decorate(guard)
        async def handler_name() -> None: ...


def test_decorator_callables_taking_the_context_are_accepted() -> None:
    guard = Guard()

    @guard.limit("5/minute", per=lambda ctx: ctx.path, cost=lambda ctx, weight=1: weight)
    @guard.flow("export", "5/minute", per=lambda *args: "k")
    async def handler() -> None: ...


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("factor", 1e308),
        ("factor", 1001),
        ("max", 1e308),
        ("max", YEAR + 1),
        ("base", 1e308),
        ("within", 1e308),
        ("memory", 1e308),
        ("after", 10**9),
        ("factor", math.inf),
        ("max", math.inf),
        ("base", math.nan),
    ],
)
def test_ban_settings_are_bounded(setting: str, value: float) -> None:
    with pytest.raises(ConfigurationError, match=rf"bans\.{setting}"):
        Guard({"bans": {setting: value}})


def test_ban_escalation_never_overflows_nor_exceeds_the_bound() -> None:
    """Level after level at the largest factor: no OverflowError from the power, and no
    ban longer than `bans.max` (so Retry-After stays within a year)."""
    bans = BanConfig(after=1, base=60, factor=1000, max=YEAR, memory=YEAR)
    store = MemoryStore()
    now = 0.0
    levels: list[int] = []
    for _ in range(400):
        ban = store._strike("p", now, bans)
        assert ban is not None
        assert 0 < ban.until - now <= YEAR
        levels.append(ban.level)
        now = ban.until + 1  # the next ban starts within `memory` of the end of this one
    assert levels[-1] == 400
    assert [bans.duration(n) for n in (1, 2, 3, 10**6)] == [60, 60_000, YEAR, YEAR]


def test_the_largest_ban_settings_give_a_retry_after_within_a_year(
    serve: Callable[..., TestClient],
) -> None:
    clock = FakeClock(1_000.0)
    guard = Guard(
        {
            "limits": {"principal": "1/minute", "ip": None},
            "bans": {"after": 1, "base": YEAR, "factor": 1000, "max": YEAR, "memory": YEAR},
        },
        clock=clock,
    )
    app = FastAPI()

    @app.get("/")
    async def root() -> dict[str, bool]:
        return {"ok": True}

    client = serve(app, guard)
    assert client.get("/").status_code == 200
    for _ in range(3):
        refused = client.get("/")
        assert refused.status_code == 403
        assert 1 <= int(refused.headers["retry-after"]) <= YEAR
        clock.advance(YEAR + 1)
        assert client.get("/").status_code == 200


# -- item 9: errors are ConfigurationErrors that never echo the input ---------------------

SHORT_SECRET = "hunter2-secret"  # 14 bytes: too short
LONG_SECRET = "correct-horse-battery-staple-42"


def _assert_hidden(exc: BaseException, *secrets: str) -> None:
    shown = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    for secret in secrets:
        assert secret not in str(exc)
        assert secret not in repr(exc)
        assert secret not in shown  # nor in a chained exception
    assert isinstance(exc, ConfigurationError) and isinstance(exc, ValueError)


def test_a_short_secret_is_never_echoed(tmp_path: Path) -> None:
    attempts: list[Callable[[], object]] = [
        lambda: Guard({"secret": SHORT_SECRET}),
        lambda: GuardConfig(secret=SHORT_SECRET),
        lambda: GuardConfig.model_validate({"secret": SHORT_SECRET}),
        lambda: GuardConfig.from_env(environ={"APIGUARD_SECRET": SHORT_SECRET}),
        lambda: GuardConfig.from_env(environ={"APP_SECRET": SHORT_SECRET}, prefix="APP_"),
    ]
    path = tmp_path / "settings.toml"
    path.write_text(f'[apiguard]\nsecret = "{SHORT_SECRET}"\n')
    attempts.append(lambda: GuardConfig.from_toml(path))
    for attempt in attempts:
        with pytest.raises(ConfigurationError, match="secret") as raised:
            attempt()
        _assert_hidden(raised.value, SHORT_SECRET)


def test_a_valid_secret_is_not_echoed_by_another_error(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(f'[apiguard]\nsecret = "{LONG_SECRET}"\nmode = "block"\n')
    env = {"APIGUARD_SECRET": LONG_SECRET, "APIGUARD_MODE": "block"}
    for attempt in (
        lambda: GuardConfig.from_toml(path),
        lambda: GuardConfig.from_env(environ=env),
        lambda: Guard({"secret": LONG_SECRET, "mode": "block"}),
        lambda: GuardConfig(secret=LONG_SECRET, mode="block"),
    ):
        with pytest.raises(ConfigurationError, match="mode") as raised:
            attempt()
        _assert_hidden(raised.value, LONG_SECRET)


@pytest.mark.parametrize(
    "load",
    [
        lambda p: GuardConfig.from_env(environ={"APIGUARD_LIMITS__PRINCIPAL": "lots"}),
        lambda p: GuardConfig.from_env(environ={"APIGUARD_NONSENSE": "1"}),
        lambda p: GuardConfig.from_env(environ={"APIGUARD_BANS__FACTOR": "1e308"}),
        lambda p: GuardConfig.from_env(
            environ={"APIGUARD_MODE": "monitor", "APIGUARD_MODE__X": "1"}
        ),
        lambda p: GuardConfig.from_toml(p, table="nope"),
        lambda p: GuardConfig.from_toml(p, table="apiguard.mode"),
        lambda p: GuardConfig(mode="bogus"),
        lambda p: GuardConfig(limits={"principal": "lots"}),
    ],
    ids=[
        "env-rate",
        "env-unknown",
        "env-factor",
        "env-section",
        "toml-no-table",
        "toml-not-a-table",
        "direct-mode",
        "direct-nested",
    ],
)
def test_every_loader_raises_configuration_error(
    load: Callable[[Path], Any], tmp_path: Path
) -> None:
    path = tmp_path / "settings.toml"
    path.write_text('[apiguard]\nmode = "monitor"\n')
    with pytest.raises(ConfigurationError) as raised:
        load(path)
    assert raised.value.__cause__ is None


def test_invalid_toml_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(f'[apiguard]\nsecret = "{LONG_SECRET}\n')  # unterminated string
    with pytest.raises(ConfigurationError, match="not valid TOML") as raised:
        GuardConfig.from_toml(path)
    _assert_hidden(raised.value, LONG_SECRET)


def test_configuration_error_is_one_class_everywhere() -> None:
    from apiguard.errors import ConfigurationError as from_errors

    assert apiguard.ConfigurationError is apiguard.guard.ConfigurationError is from_errors
    assert issubclass(ConfigurationError, ValueError)


def test_sections_validated_inside_the_top_level_model_name_the_path() -> None:
    with pytest.raises(ConfigurationError) as raised:
        GuardConfig(client_ip={"trusted_proxies": ["0.0.0.0/0"]}, bans={"factor": 1e308})
    message = str(raised.value)
    assert "client_ip.trusted_proxies" in message and "bans.factor" in message
    assert message.count("invalid apiguard configuration") == 1


def test_auth_header_dependency_still_identifies(
    make_guard: Callable[..., Guard], serve: Callable[..., TestClient]
) -> None:
    """The documented pattern (identify(user_id: str) in an auth dependency) is unchanged."""
    guard = make_guard({"principal": "2/minute"})
    app = FastAPI()

    def auth(x_user: str | None = Header(None)) -> None:
        identify(x_user)

    @app.get("/", dependencies=[Depends(auth)])
    async def root() -> dict[str, bool]:
        return {"ok": True}

    a, b = serve(app, guard, ip=IP_A), serve(app, guard, ip=IP_B)
    assert a.get("/", headers={"x-user": "bob"}).status_code == 200
    assert b.get("/", headers={"x-user": "bob"}).status_code == 200
    assert_quota_exceeded(a.get("/", headers={"x-user": "bob"}), "per-principal")


@pytest.mark.parametrize("blank", [" ", "\t", "\n\u00a0"])
def test_identify_with_a_blank_id_is_an_error(blank: str) -> None:
    guard = Guard({"limits": {"principal": None, "ip": None}})
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.get("/me")
    def me() -> dict[str, bool]:
        identify(blank)  # would merge every caller with a blank id into one principal
        return {"ok": True}

    with pytest.raises(ValueError, match="non-empty"):
        TestClient(app).get("/me")


def test_a_challenge_names_the_detector_family_that_asked() -> None:
    """A held-out evaluation: a challenge said nothing of who asked, while bans and
    throttles name their detector. It names the family, never the finding (at the login,
    whether one account is held is no bot's to learn)."""
    import json

    from apiguard.decision import Action, Decision
    from apiguard.responses import block_response

    asked = block_response(Decision(Action.CHALLENGE, detector="account_takeover.account"))
    body = json.loads(asked.body)
    assert asked.status == 403 and body["detector"] == "account_takeover"
    plain = json.loads(block_response(Decision(Action.CHALLENGE)).body)
    assert "detector" not in plain
