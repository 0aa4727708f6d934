"""Flask and plain WSGI: routing shapes, error handlers, streaming, bodies, start-up walk."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Blueprint, Flask, jsonify, request
from flask.views import MethodView

from apiguard import ConfigurationError, Guard, current_request, identify
from apiguard.flask import init_app
from apiguard.wsgi import GuardMiddleware
from conftest import IP_B, Otel
from harness import flask_client


def app_with(guard: Guard) -> Flask:
    app = Flask(__name__)
    init_app(app, guard)
    return app


def test_nested_blueprints_and_converters_record_the_full_template(make_guard):
    guard = make_guard()
    app = app_with(guard)
    api = Blueprint("api", __name__, url_prefix="/api")
    v1 = Blueprint("v1", __name__, url_prefix="/v1")
    seen: list[str | None] = []

    @v1.post("/orders/<int:order_id>/refund")
    @guard.flow("refund", "2/minute")
    def refund(order_id: int) -> dict[str, int]:
        ctx = current_request()
        assert ctx is not None
        seen.append(ctx.route)
        return {"refunded": order_id}

    api.register_blueprint(v1)
    app.register_blueprint(api)
    call = flask_client(guard, app)
    assert [call("POST", f"/api/v1/orders/{i}/refund").status for i in (1, 2, 3)] == [200, 200, 429]
    assert seen == ["/api/v1/orders/<int:order_id>/refund"] * 2
    assert call("POST", "/api/v1/orders/3/refund", ip=IP_B).status == 200


def test_method_view_and_async_view(make_guard):
    guard = make_guard()
    app = app_with(guard)

    class Items(MethodView):
        @guard.limit("2/minute")
        def get(self) -> str:
            return "items"

        def post(self) -> str:  # undecorated: not limited by get's rule
            return "created"

    app.add_url_rule("/items", view_func=Items.as_view("items"))

    @app.get("/slow")
    @guard.limit("1/minute")
    async def slow() -> str:
        return "async"

    call = flask_client(guard, app)
    assert [call("GET", "/items").status for _ in range(3)] == [200, 200, 429]
    assert [call("POST", "/items").status for _ in range(3)] == [200, 200, 200]
    assert [call("GET", "/slow").status for _ in range(2)] == [200, 429]


def test_users_own_decorator_above_apiguards(make_guard):
    guard = make_guard()
    app = app_with(guard)
    calls: list[str] = []

    def audited(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls.append(fn.__name__)
            return fn(*args, **kwargs)

        return wrapper

    @app.get("/report/<int:report_id>")
    @audited
    @guard.limit("2/minute")
    def report(report_id: int) -> str:
        return "report"

    call = flask_client(guard, app)
    assert [call("GET", f"/report/{i}").status for i in range(3)] == [200, 200, 429]
    assert call("GET", "/report/1", ip=IP_B).status == 200


def test_decorator_above_the_route_fails_at_first_request(make_guard):
    guard = make_guard()
    app = app_with(guard)

    @guard.limit("2/minute")  # wrong order: Flask routes the bare function
    @app.get("/wrong")
    def wrong() -> str:
        return "unprotected"

    with pytest.raises(ConfigurationError, match="/wrong"):
        app.test_client().get("/wrong")


def test_error_handlers_cannot_rewrite_a_refusal(make_guard, caplog):
    """An app-wide errorhandler(Exception) and a blueprint's: the client still gets
    apiguard's 429 with its headers, and Flask logs no server error for it."""
    guard = make_guard()
    app = app_with(guard)
    bp = Blueprint("bp", __name__, url_prefix="/bp")

    @app.errorhandler(Exception)
    def everything(exc: Exception) -> Any:
        return jsonify(error="app handler"), 500

    @bp.errorhandler(Exception)
    def blueprint_everything(exc: Exception) -> Any:
        return jsonify(error="blueprint handler"), 500

    @bp.get("/thing")
    @guard.limit("1/minute")
    def thing() -> str:
        return "thing"

    app.register_blueprint(bp)
    call = flask_client(guard, app)
    with caplog.at_level(logging.ERROR):
        assert call("GET", "/bp/thing").status == 200
        refused = call("GET", "/bp/thing")
    assert refused.status == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["violated-policies"] == ["limit:thing"]
    assert "retry-after" in refused.headers
    assert not [r for r in caplog.records if r.name.startswith("flask") or "Exception on" in r.msg]


def test_request_body_stays_readable(make_guard):
    guard = make_guard({"principal": "5/minute"})
    app = app_with(guard)

    @app.post("/echo")
    @guard.limit("2/minute")
    def echo() -> Any:
        identify(request.get_json()["user"])
        return jsonify(got=request.get_json())

    client = app.test_client()
    r = client.post("/echo", json={"user": "ann", "n": 1})
    assert r.status_code == 200 and r.get_json() == {"got": {"user": "ann", "n": 1}}
    client.post("/echo", json={"user": "ann"})
    assert client.post("/echo", json={"user": "ann"}).status_code == 429


def test_streaming_view_is_not_buffered_and_is_limited(make_guard):
    guard = make_guard()
    app = app_with(guard)
    produced: list[int] = []

    @app.get("/feed")
    @guard.limit("1/minute")
    def feed() -> Iterator[str]:
        for i in range(3):
            produced.append(i)
            yield f"{i};"

    response = app.test_client().get("/feed", buffered=False)
    assert response.status_code == 200
    chunks = response.response  # the WSGI iterable, consumed lazily
    first = next(iter(chunks))
    assert first == b"0;" and produced == [0]  # nothing ahead of what was read
    assert b"".join(chunks) == b"1;2;" and produced == [0, 1, 2]
    response.close()
    assert app.test_client().get("/feed").status_code == 429


def test_finished_body_ends_the_request_as_it_starts_a_streamed_one_after(make_guard):
    """A view's finished body (a list, sent by werkzeug's own code) is handed to the server
    as Flask returns it, the request over; a body produced as it is iterated (a generator
    view, a response class of its own) is wrapped, its request over only once sent."""
    from apiguard.wsgi import _Exchange

    guard = make_guard()
    app = app_with(guard)

    class Custom(app.response_class):  # type: ignore[name-defined,misc]
        def iter_encoded(self) -> Iterator[bytes]:
            yield from super().iter_encoded()

    @app.get("/done")
    def done() -> str:
        return "ok"

    @app.get("/gen")
    def gen() -> Iterator[str]:
        yield "a"

    @app.get("/custom")
    def custom() -> Any:
        return Custom("ok")

    bodies = {}
    for path in ("/done", "/gen", "/custom"):
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "REMOTE_ADDR": "203.0.113.9",
                   "SCRIPT_NAME": "", "SERVER_NAME": "t", "SERVER_PORT": "80",
                   "wsgi.url_scheme": "http"}
        body = app.wsgi_app(environ, lambda status, headers, exc=None: None)
        bodies[path] = body
        assert b"".join(body) in (b"ok", b"a")
        body.close()
    assert not isinstance(bodies["/done"], _Exchange)
    assert isinstance(bodies["/gen"], _Exchange) and isinstance(bodies["/custom"], _Exchange)


def plain_wsgi(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    """A WSGI app that starts its response only as its body is iterated."""
    ctx = current_request()
    assert ctx is not None  # identify() and decorators work inside a bare WSGI app too
    start_response("200 OK", [("content-type", "text/plain")])
    yield b"hello "
    yield b"world"


def run_wsgi(app: Any, ip: str = "203.0.113.7", path: str = "/") -> tuple[str, dict[str, str], Any]:
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started.append((status, headers))
        return lambda data: None

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "REMOTE_ADDR": ip, "SCRIPT_NAME": ""}
    body = app(environ, start_response)
    try:
        data = b"".join(body)
    finally:
        getattr(body, "close", lambda: None)()
    status, headers = started[-1]
    return status, {k.lower(): v for k, v in headers}, data


def test_plain_wsgi_app_lazily_started_is_limited(make_guard):
    guard = make_guard({"principal": "2/minute"})
    app = GuardMiddleware(plain_wsgi, guard=guard)
    first = run_wsgi(app)
    assert first[0] == "200 OK" and first[2] == b"hello world"
    assert first[1]["ratelimit-policy"] == '"per-principal";q=2;w=60'
    assert run_wsgi(app)[0] == "200 OK"
    status, headers, body = run_wsgi(app)
    assert status == "429 Too Many Requests"
    assert headers["content-type"] == "application/problem+json"
    assert b"per-principal" in body
    assert run_wsgi(app, ip=IP_B)[0] == "200 OK"


def test_flask_server_span_carries_apiguard_attributes(make_guard):
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    otel = Otel()
    guard = make_guard()
    app = Flask(__name__)
    FlaskInstrumentor().instrument_app(app, tracer_provider=otel.tracer_provider)
    init_app(app, guard)

    @app.get("/orders/<int:order_id>")
    @guard.limit("1/minute")
    def order(order_id: int) -> str:
        return "order"

    client = app.test_client()
    assert client.get("/orders/1").status_code == 200
    assert client.get("/orders/2").status_code == 429
    spans = otel.server_spans()
    assert len(spans) == 2
    attrs = [dict(s.attributes or {}) for s in spans]
    assert [a.get("apiguard.decision") for a in attrs] == ["allow", "throttle"]
    assert attrs[1]["apiguard.rule"] == "limit:order"
    assert attrs[1]["http.route"] == "/orders/<int:order_id>"
    assert str(attrs[0]["apiguard.principal"]).startswith("ip:")
    assert [e.name for e in spans[1].events] == ["apiguard.detection"]
    FlaskInstrumentor().uninstrument_app(app)


def test_init_app_twice_and_other_guard(make_guard):
    guard = make_guard()
    app = app_with(guard)
    assert init_app(app, guard) is guard  # idempotent
    with pytest.raises(RuntimeError):
        init_app(app, make_guard())


def test_proxyfix_around_apiguard_does_not_make_spoofed_headers_trusted(make_guard):
    """ProxyFix wrapped outside apiguard rewrites REMOTE_ADDR from X-Forwarded-For; apiguard
    still keys on the TCP peer unless that peer is one of its own trusted proxies."""
    from werkzeug.middleware.proxy_fix import ProxyFix

    guard = make_guard({"ip": "2/minute"})
    app = app_with(guard)

    @app.get("/open")
    def open_() -> str:
        return "ok"

    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)  # type: ignore[method-assign]
    client = app.test_client()
    statuses = [
        client.get(
            "/open",
            headers={"X-Forwarded-For": f"192.0.2.{i}"},
            environ_base={"REMOTE_ADDR": "198.51.100.1"},
        ).status_code
        for i in range(3)
    ]
    assert statuses == [200, 200, 429]  # rotating the header buys nothing
    other = client.get("/open", environ_base={"REMOTE_ADDR": "198.51.100.2"})
    assert other.status_code == 200
