"""Which span carries apiguard's attributes and events, in both installation styles.

`app.add_middleware(GuardMiddleware, guard=guard)` runs apiguard inside FastAPI's own
server span; `GuardMiddleware(app, guard=guard)` wraps the app from outside, so the
request enters apiguard before FastAPI opens its span. Either way the decision must land
on FastAPI's server span (not on a child operation span, and not nowhere), at every
checkpoint: `identify()` in a sync dependency (run in a threadpool), a decorated sync or
async handler's entry, the response start, and a ban before routing.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import Depends, FastAPI, Header
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from apiguard import Guard, identify
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock
from conftest import Otel

HASHED = re.compile(r"^(k|u|c|ip):[0-9a-f]{24}$")
STYLES = ["add_middleware", "outside"]


class ServerSpan:
    """A stand-in for an ASGI instrumentation (uvicorn's, opentelemetry-instrumentation-
    asgi): opens a SERVER span and makes it current around the app it wraps."""

    def __init__(self, app: ASGIApp, tracer_provider: TracerProvider) -> None:
        self.app = app
        self.tracer = tracer_provider.get_tracer("test-asgi-instrumentation")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with self.tracer.start_as_current_span(f"asgi {scope['path']}", kind=SpanKind.SERVER):
            await self.app(scope, receive, send)


@pytest.fixture
def otel() -> Otel:
    return Otel()


def apiguard_attrs(span: ReadableSpan) -> dict[str, Any]:
    return {k: v for k, v in (span.attributes or {}).items() if k.startswith("apiguard.")}


def detections(span: ReadableSpan) -> list[dict[str, Any]]:
    return [dict(e.attributes or {}) for e in span.events if e.name == "apiguard.detection"]


def annotated_elsewhere(otel: Otel, server: ReadableSpan) -> list[str]:
    return [
        f"{s.name} ({s.kind.name})"
        for s in otel.spans()
        if s is not server and (apiguard_attrs(s) or detections(s))
    ]


def assert_on_server_span(
    otel: Otel, principal: str, rule: str, decision: str, *, status: int
) -> ReadableSpan:
    """Exactly one FastAPI server span (this request's); it carries the decision, its
    detection event for a refusal, and no other span carries anything of apiguard's."""
    servers = otel.fastapi_server_spans()
    assert len(servers) == 1, [s.name for s in otel.spans()]
    server = servers[0]
    assert (server.attributes or {}).get("http.response.status_code") == status
    attrs = apiguard_attrs(server)
    where = annotated_elsewhere(otel, server)
    assert attrs.get("apiguard.decision") == decision, (attrs, where)
    assert attrs.get("apiguard.rule") == rule, (attrs, where)
    assert attrs.get("apiguard.principal") == principal, (attrs, where)
    assert HASHED.match(principal)
    events = detections(server)
    if decision == "allow":
        assert events == []
    else:
        assert len(events) == 1, server.events
        assert events[0]["apiguard.rule"] == rule
        assert events[0]["apiguard.decision"] == decision
        assert events[0]["apiguard.principal"] == principal
    assert where == []
    return server


def build(
    otel: Otel, style: str, *, operation_spans: bool = True, bans: bool = False
) -> tuple[Callable[..., Any], Guard]:
    guard = Guard(
        {
            "limits": {"principal": "2/minute", "ip": None},
            "bans": {"after": 2, "within": 60} if bans else {"enabled": False},
            "secret": "s" * 32,
        },
        clock=FakeClock(1_000.0),
        meter_provider=otel.meter_provider,
    )
    app = FastAPI(
        telemetry={
            "tracer_provider": otel.tracer_provider,
            "meter_provider": otel.meter_provider,
            "operation_spans": operation_spans,
        }
    )
    app_tracer = otel.tracer_provider.get_tracer("the-app")

    def auth(x_user: str | None = Header(None)) -> str | None:  # sync: runs in a threadpool
        identify(x_user)
        return x_user

    def traced_auth(x_user: str | None = Header(None)) -> str | None:
        with app_tracer.start_as_current_span("app.lookup-user"):  # the app's own child span
            identify(x_user)
        return x_user

    @app.get("/plain")
    async def plain() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/async-limited")
    @guard.limit("1/minute", name="async-limited")
    async def async_limited() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/sync-limited")
    @guard.limit("1/minute", name="sync-limited")
    def sync_limited() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/me", dependencies=[Depends(auth)])
    def me() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/traced-me", dependencies=[Depends(traced_auth)])
    async def traced_me() -> dict[str, bool]:
        return {"ok": True}

    if style == "add_middleware":
        app.add_middleware(GuardMiddleware, guard=guard)
        client = TestClient(app, client=("203.0.113.7", 50_000))
    else:
        client = TestClient(GuardMiddleware(app, guard=guard), client=("203.0.113.7", 50_000))

    def get(path: str, **headers: str) -> int:
        otel.clear()
        return client.get(path, headers=headers).status_code

    return get, guard


@pytest.mark.parametrize("operation_spans", [True, False])
@pytest.mark.parametrize("style", STYLES)
def test_admitted_and_refused_at_response_start(otel, style, operation_spans):
    get, guard = build(otel, style, operation_spans=operation_spans)
    principal = guard.hash("k", "key-plain")
    assert get("/plain", **{"x-api-key": "key-plain"}) == 200
    assert_on_server_span(otel, principal, "none", "allow", status=200)
    assert get("/plain", **{"x-api-key": "key-plain"}) == 200
    assert get("/plain", **{"x-api-key": "key-plain"}) == 429
    assert_on_server_span(otel, principal, "per-principal", "throttle", status=429)
    # FastAPI's HTTP metrics count what the client got, not the response apiguard replaced
    assert otel.http_statuses() == Counter({200: 2, 429: 1})


@pytest.mark.parametrize("style", STYLES)
def test_unrouted_request_is_annotated(otel, style):
    get, guard = build(otel, style)
    principal = guard.hash("ip", "203.0.113.7")
    assert [get("/nowhere") for _ in range(2)] == [404, 404]
    assert get("/nowhere") == 429
    assert_on_server_span(otel, principal, "per-principal", "throttle", status=429)


@pytest.mark.parametrize("operation_spans", [True, False])
@pytest.mark.parametrize("path", ["/async-limited", "/sync-limited"])
@pytest.mark.parametrize("style", STYLES)
def test_refusal_at_a_decorated_handler(otel, style, path, operation_spans):
    """The checkpoint runs at the handler's entry, inside "fastapi.endpoint" when FastAPI
    opens operation spans: the decision still goes on the server span."""
    get, guard = build(otel, style, operation_spans=operation_spans)
    principal = guard.hash("k", "key-deco")
    assert get(path, **{"x-api-key": "key-deco"}) == 200
    assert_on_server_span(otel, principal, "none", "allow", status=200)
    assert get(path, **{"x-api-key": "key-deco"}) == 429
    assert_on_server_span(otel, principal, path.lstrip("/"), "throttle", status=429)


@pytest.mark.parametrize("operation_spans", [True, False])
@pytest.mark.parametrize("path", ["/me", "/traced-me"])
@pytest.mark.parametrize("style", STYLES)
def test_refusal_at_identify_in_a_dependency(otel, style, path, operation_spans):
    """identify() in a sync dependency (a worker thread, inside "fastapi.dependencies"),
    or under a span the app opened itself: the server span gets the decision."""
    get, guard = build(otel, style, operation_spans=operation_spans)
    principal = guard.hash("u", "alice")
    assert get(path, **{"x-user": "alice"}) == 200
    assert_on_server_span(otel, principal, "none", "allow", status=200)
    assert get(path, **{"x-user": "alice"}) == 200
    assert get(path, **{"x-user": "alice"}) == 429
    assert_on_server_span(otel, principal, "per-principal", "throttle", status=429)


def test_early_ban_inside_fastapi_is_on_its_server_span(otel):
    """add_middleware: a ban refused before routing still runs inside FastAPI's span."""
    get, guard = build(otel, "add_middleware", bans=True)
    principal = guard.hash("k", "key-ban")
    statuses = [get("/plain", **{"x-api-key": "key-ban"}) for _ in range(4)]
    assert statuses == [200, 200, 429, 403]  # the second refusal earns the ban
    assert_on_server_span(otel, principal, "per-principal", "block", status=403)
    assert get("/plain", **{"x-api-key": "key-ban"}) == 403  # refused before routing
    server = assert_on_server_span(otel, principal, "ban", "block", status=403)
    assert detections(server)[0]["apiguard.ban.level"] == 1
    assert otel.decisions()[("ban", "block")] == 1


def test_early_ban_from_outside_never_reaches_fastapi(otel):
    """Wrapped from outside, a request refused before routing never enters FastAPI, so
    there is no FastAPI span for it (apiguard opens none): it is counted, and the span of
    an instrumentation around apiguard gets it (next test)."""
    get, guard = build(otel, "outside", bans=True)
    statuses = [get("/plain", **{"x-api-key": "key-ban"}) for _ in range(4)]
    assert statuses == [200, 200, 429, 403]
    principal = guard.hash("k", "key-ban")
    assert_on_server_span(otel, principal, "per-principal", "block", status=403)
    assert get("/plain", **{"x-api-key": "key-ban"}) == 403
    assert otel.spans() == []  # FastAPI never saw it; apiguard opened nothing
    assert otel.decisions()[("ban", "block")] == 1


@pytest.mark.parametrize("style", STYLES)
def test_instrumentation_around_apiguard_gets_the_early_ban(otel, style):
    guard = Guard(
        {"limits": {"principal": "1/minute", "ip": None}, "bans": {"after": 1, "within": 60}},
        clock=FakeClock(1_000.0),
        meter_provider=otel.meter_provider,
    )
    app = FastAPI(telemetry={"tracing": False, "metrics": False})

    @app.get("/plain")
    async def plain() -> dict[str, bool]:
        return {"ok": True}

    if style == "add_middleware":
        app.add_middleware(GuardMiddleware, guard=guard)
        outer: ASGIApp = app
    else:
        outer = GuardMiddleware(app, guard=guard)
    client = TestClient(ServerSpan(outer, otel.tracer_provider), client=("203.0.113.7", 1))
    headers = {"x-api-key": "key-outer"}
    assert [client.get("/plain", headers=headers).status_code for _ in range(3)] == [
        200,
        403,  # refused and banned at once (after=1)
        403,  # the ban, before routing
    ]
    spans = otel.spans()
    assert [apiguard_attrs(s).get("apiguard.rule") for s in spans] == [
        "none",
        "per-principal",
        "ban",
    ]


@pytest.mark.parametrize("style", STYLES)
def test_starlette_app_with_its_own_instrumentation(otel, style):
    """No FastAPI telemetry: the span current at the checkpoint (an instrumentation added
    inside the app, which apiguard wraps from outside, or around apiguard) is annotated."""
    guard = Guard(
        {"limits": {"principal": "1/minute", "ip": None}, "bans": {"enabled": False}},
        clock=FakeClock(1_000.0),
    )

    async def whoami(request: Request) -> JSONResponse:
        identify(request.headers.get("x-user"))
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/who", whoami)])
    if style == "add_middleware":
        app.add_middleware(GuardMiddleware, guard=guard)
        app.add_middleware(ServerSpan, tracer_provider=otel.tracer_provider)
        served: ASGIApp = app
    else:
        app.add_middleware(ServerSpan, tracer_provider=otel.tracer_provider)
        served = GuardMiddleware(app, guard=guard)
    client = TestClient(served, client=("203.0.113.7", 1))
    statuses = [client.get("/who", headers={"x-user": "bob"}).status_code for _ in range(2)]
    assert statuses == [200, 429]
    principal = guard.hash("u", "bob")
    spans = otel.spans()
    assert [s.kind for s in spans] == [SpanKind.SERVER, SpanKind.SERVER]
    assert [apiguard_attrs(s) for s in spans] == [
        {"apiguard.rule": "none", "apiguard.decision": "allow", "apiguard.principal": principal},
        {
            "apiguard.rule": "per-principal",
            "apiguard.decision": "throttle",
            "apiguard.principal": principal,
        },
    ]
    assert len(detections(spans[1])) == 1


def test_no_sdk_no_span_no_error():
    guard = Guard({"limits": {"principal": "1/minute", "ip": None}}, clock=FakeClock(1.0))
    app = FastAPI()

    @app.get("/plain")
    async def plain() -> dict[str, bool]:
        return {"ok": True}

    client = TestClient(GuardMiddleware(app, guard=guard))
    assert [client.get("/plain").status_code for _ in range(2)] == [200, 429]
    assert not trace.get_current_span().is_recording()
