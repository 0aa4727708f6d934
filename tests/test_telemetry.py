"""OpenTelemetry with the real SDK and FastAPI's native telemetry.

FastAPI (0.165) opens the HTTP server span itself; apiguard must annotate THAT span (never
open its own): apiguard.principal (a keyed hash), apiguard.rule, apiguard.decision, and an
"apiguard.detection" event when it refuses. Counters: "apiguard.decisions" by rule and
decision, "apiguard.bans" per ban. Providers are passed explicitly, never set globally.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest
from fastapi import Depends, FastAPI, Header
from opentelemetry import metrics, trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode
from starlette.testclient import TestClient

from apiguard import Guard, identify
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock
from conftest import Otel

KEY = "sk_live_telemetry_KEY"
USER = "alice@example.com"
HASHED = re.compile(r"^(k|u|c|ip):[0-9a-f]{24}$")


@pytest.fixture
def otel() -> Otel:
    return Otel()


def build(
    otel: Otel,
    *,
    principal: str = "2/minute",
    bans: dict[str, Any] | None = None,
    operation_spans: bool = True,
) -> tuple[TestClient, Guard]:
    guard = Guard(
        {
            "limits": {"principal": principal, "ip": None},
            "bans": bans or {"enabled": False},
            "secret": "t" * 32,
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
    app.add_middleware(GuardMiddleware, guard=guard)

    def auth(x_user: str | None = Header(None)) -> None:
        identify(x_user)

    @app.get("/plain")
    async def plain() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/limited")
    @guard.limit("2/minute", name="limited")
    async def limited() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/me", dependencies=[Depends(auth)])
    async def me() -> dict[str, bool]:
        return {"ok": True}

    return TestClient(app, client=("203.0.113.7", 50_000)), guard


def apiguard_attrs(span: ReadableSpan) -> dict[str, Any]:
    return {k: v for k, v in (span.attributes or {}).items() if k.startswith("apiguard.")}


def detections(span: ReadableSpan) -> list[dict[str, Any]]:
    return [dict(e.attributes or {}) for e in span.events if e.name == "apiguard.detection"]


def assert_annotated(span: ReadableSpan, principal: str, rule: str, decision: str) -> None:
    attrs = apiguard_attrs(span)
    assert attrs.get("apiguard.principal") == principal, (span.name, attrs)
    assert HASHED.match(principal)
    assert attrs.get("apiguard.rule") == rule, attrs
    assert attrs.get("apiguard.decision") == decision, attrs
    events = detections(span)
    if decision == "allow":
        assert events == []
    else:
        assert len(events) == 1, span.events
        assert events[0]["apiguard.rule"] == rule
        assert events[0]["apiguard.decision"] == decision
        assert events[0]["apiguard.principal"] == principal
        assert events[0]["apiguard.retry_after"] > 0


def where_annotated(otel: Otel) -> list[str]:
    """Names of the spans that carry apiguard attributes (for failure messages)."""
    return [f"{s.name} ({s.kind.name})" for s in otel.spans() if apiguard_attrs(s)]


# -- the server span carries the decision ----------------------------------------------------


def test_undecorated_route_annotates_the_server_span(otel):
    client, guard = build(otel)
    statuses = [client.get("/plain", headers={"x-api-key": KEY}).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    spans = otel.server_spans()
    assert len(spans) == 3
    principal = guard.hash("k", KEY)
    assert principal != KEY
    for span in spans[:2]:
        assert_annotated(span, principal, "none", "allow")
    assert_annotated(spans[2], principal, "per-principal", "throttle")


@pytest.mark.parametrize("operation_spans", [True, False])
def test_decorated_route_annotates_the_server_span(otel, operation_spans):
    """The checkpoint runs at the decorated handler's entry. With FastAPI's default
    operation spans the current span there is "fastapi.endpoint", not the server span."""
    client, guard = build(otel, principal="100/minute", operation_spans=operation_spans)
    statuses = [client.get("/limited", headers={"x-api-key": KEY}).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    spans = otel.server_spans()
    assert len(spans) == 3
    principal = guard.hash("k", KEY)
    try:
        for span in spans[:2]:
            assert_annotated(span, principal, "none", "allow")
        assert_annotated(spans[2], principal, "limited", "throttle")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; apiguard annotated: {where_annotated(otel)}") from None


@pytest.mark.parametrize("operation_spans", [True, False])
def test_identify_in_a_dependency_annotates_the_server_span(otel, operation_spans):
    """identify() runs the checkpoint inside dependency resolution ("fastapi.dependencies")."""
    client, guard = build(otel, operation_spans=operation_spans)
    statuses = [client.get("/me", headers={"x-user": USER}).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    spans = otel.server_spans()
    principal = guard.hash("u", USER)
    assert principal != USER
    try:
        for span in spans[:2]:
            assert_annotated(span, principal, "none", "allow")
        assert_annotated(spans[2], principal, "per-principal", "throttle")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; apiguard annotated: {where_annotated(otel)}") from None


def test_a_404_is_annotated_too(otel):
    client, guard = build(otel, principal="1/minute")
    assert client.get("/nowhere").status_code == 404
    assert client.get("/nowhere").status_code == 429
    first, second = otel.server_spans()
    principal = guard.hash("ip", "203.0.113.7")
    assert_annotated(first, principal, "none", "allow")
    assert_annotated(second, principal, "per-principal", "throttle")


# -- metrics ---------------------------------------------------------------------------------


def test_decisions_counter_by_rule_and_decision(otel):
    client, _ = build(otel)
    for _ in range(3):
        client.get("/plain", headers={"x-api-key": KEY})
    for _ in range(3):
        client.get("/limited", headers={"x-api-key": "other"})
    for _ in range(4):
        client.get("/me", headers={"x-user": USER})
    counts = otel.counter("apiguard.decisions")
    assert counts == Counter(
        {
            (("apiguard.decision", "allow"), ("apiguard.rule", "none")): 6,
            (("apiguard.decision", "throttle"), ("apiguard.rule", "per-principal")): 4,
        }
    )
    assert sum(counts.values()) == 10  # exactly one decision per request


def test_bans_counter_and_block_decision(otel):
    client, guard = build(otel, principal="1/minute", bans={"after": 2, "within": 60})
    statuses = [client.get("/plain", headers={"x-api-key": KEY}).status_code for _ in range(4)]
    assert statuses == [200, 429, 403, 403]
    assert otel.counter("apiguard.bans") == Counter({(("apiguard.ban.level", 1),): 1})
    principal = guard.hash("k", KEY)
    spans = otel.server_spans()
    assert_annotated(spans[2], principal, "per-principal", "block")
    assert detections(spans[2])[0]["apiguard.ban.level"] == 1
    assert_annotated(spans[3], principal, "ban", "block")  # the ban itself refuses
    counts = otel.counter("apiguard.decisions")
    assert counts[(("apiguard.decision", "block"), ("apiguard.rule", "ban"))] == 1
    assert counts[(("apiguard.decision", "block"), ("apiguard.rule", "per-principal"))] == 1


# -- apiguard opens no span ------------------------------------------------------------------


def test_one_server_span_per_request_and_no_apiguard_spans(otel):
    client, _ = build(otel, principal="1/minute", bans={"after": 2, "within": 60})
    paths = ["/plain", "/plain", "/limited", "/me", "/nowhere", "/plain"]
    for path in paths:
        client.get(path, headers={"x-api-key": KEY, "x-user": USER})
    spans = otel.spans()
    servers = otel.server_spans()
    assert len(servers) == len(paths)
    assert {s.instrumentation_scope.name for s in spans} == {"fastapi"}
    server_ids = {s.context.span_id for s in servers}
    for span in spans:
        if span.kind is SpanKind.SERVER:
            assert span.parent is None
        else:
            assert span.kind is SpanKind.INTERNAL
            assert span.parent is not None and span.parent.span_id in server_ids
    assert otel.counter("apiguard.decisions").total() == len(paths)


def test_refusals_are_not_recorded_as_span_errors(otel):
    """A 429/403 is apiguard working, not a server failure: no span should end in ERROR
    (the refusal travels as an exception through FastAPI's operation spans)."""
    client, _ = build(otel, principal="100/minute")
    statuses = [client.get("/limited", headers={"x-api-key": KEY}).status_code for _ in range(3)]
    other, _ = build(otel, principal="1/minute")
    statuses += [other.get("/me", headers={"x-user": USER}).status_code for _ in range(2)]
    assert statuses == [200, 200, 429, 200, 429]
    errors = [
        (s.name, dict(s.attributes or {}).get("error.type"))
        for s in otel.spans()
        if s.status.status_code is StatusCode.ERROR
    ]
    assert errors == []


def test_no_global_provider_is_installed(otel):
    before = (trace.get_tracer_provider(), metrics.get_meter_provider())
    client, _ = build(otel)
    client.get("/plain")
    assert (trace.get_tracer_provider(), metrics.get_meter_provider()) == before


def test_works_without_any_sdk():
    guard = Guard({"limits": {"principal": "1/minute", "ip": None}}, clock=FakeClock(1_000.0))
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.get("/plain")
    async def plain() -> dict[str, bool]:
        return {"ok": True}

    client = TestClient(app)
    assert [client.get("/plain").status_code for _ in range(2)] == [200, 429]
