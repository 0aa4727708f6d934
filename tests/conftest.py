"""Shared fixtures: a fake clock, guards built on it, and guarded test clients."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from starlette.testclient import TestClient

from apiguard import Guard
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock

QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"
IP_A = "203.0.113.7"
IP_B = "198.51.100.9"
GUARD_KWARGS = ("principal_resolver", "on_block", "meter_provider")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000.0)


@pytest.fixture
def make_guard(clock: FakeClock) -> Callable[..., Guard]:
    """Guard on the fake clock. Global limits and bans are OFF unless a test turns them on."""

    def factory(limits: dict[str, Any] | None = None, **config: Any) -> Guard:
        extra = {k: config.pop(k) for k in GUARD_KWARGS if k in config}
        config.setdefault("bans", {"enabled": False})
        merged = {"principal": None, "ip": None, **(limits or {})}
        return Guard({"limits": merged, **config}, clock=clock, **extra)

    return factory


@pytest.fixture
def serve() -> Callable[..., TestClient]:
    """`serve(app, guard, ip=..., **kw)`: install the middleware once, return a TestClient."""

    def factory(app: Any, guard: Guard | None = None, *, ip: str = IP_A, **kw: Any) -> TestClient:
        if guard is not None and not any(m.cls is GuardMiddleware for m in app.user_middleware):
            app.add_middleware(GuardMiddleware, guard=guard)
        return TestClient(app, client=(ip, 50_000), **kw)

    return factory


def assert_quota_exceeded(resp: Any, *policies: str) -> None:
    """A 429 problem+json naming exactly `policies` as violated."""
    assert resp.status_code == 429, (resp.status_code, resp.text)
    assert resp.headers["content-type"] == "application/problem+json"
    body = resp.json()
    assert body["type"] == QUOTA_EXCEEDED
    assert body["status"] == 429
    assert body["violated-policies"] == list(policies)
    assert int(resp.headers["retry-after"]) >= 1


async def asgi_call(
    app: Any,
    method: str,
    path: str,
    ip: str,
    headers: dict[str, str] | None = None,
    query: bytes = b"",
) -> int:
    """One request straight through ASGI, no HTTP client (tests that send thousands);
    the response status, 0 when the app sent none."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": (ip, 40000),
        "server": ("testserver", 80),
    }
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


class Otel:
    """The real OpenTelemetry SDK with in-memory exporters (providers are passed
    explicitly, never set globally)."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def server_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.kind is SpanKind.SERVER]

    def fastapi_server_spans(self) -> list[ReadableSpan]:
        return [s for s in self.server_spans() if s.instrumentation_scope.name == "fastapi"]

    def clear(self) -> None:
        self.exporter.clear()

    def _points(self, name: str) -> Iterator[Any]:
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        yield from metric.data.data_points

    def counter(self, name: str) -> Counter[tuple[tuple[str, Any], ...]]:
        """A counter's sums by attribute set."""
        counts: Counter[tuple[tuple[str, Any], ...]] = Counter()
        for point in self._points(name):
            counts[tuple(sorted(point.attributes.items()))] += point.value
        return counts

    def http_statuses(self) -> Counter[int]:
        """Requests by status in FastAPI's own `http.server.request.duration` histogram."""
        counts: Counter[int] = Counter()
        for point in self._points("http.server.request.duration"):
            counts[int(dict(point.attributes)["http.response.status_code"])] += point.count
        return counts

    def decisions(self) -> Counter[tuple[str, str]]:
        """`apiguard.decisions` by (rule, decision)."""
        counts: Counter[tuple[str, str]] = Counter()
        for point in self._points("apiguard.decisions"):
            attrs = dict(point.attributes)
            counts[(str(attrs["apiguard.rule"]), str(attrs["apiguard.decision"]))] += point.value
        return counts


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    """A redis-server for the whole session (skipped, or failed in CI, without one)."""
    from redisproc import RedisServer

    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: Any) -> str:
    """The session's redis-server, emptied for this test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return str(redis_server.url)
