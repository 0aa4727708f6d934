"""`@guard.limit` / `@guard.flow` semantics, refusals, bans, modes, and loud misconfiguration."""

from __future__ import annotations

import asyncio
import gc
import re
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException
from fastapi.responses import JSONResponse
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import apiguard
from apiguard import BlockResponse, ConfigurationError, Guard
from apiguard.asgi import GuardMiddleware
from conftest import IP_B, assert_quota_exceeded

ALICE = {"x-api-key": "alice"}
BOB = {"x-api-key": "bob"}


def codes(client: TestClient, method: str, path: str, n: int, **kw: Any) -> list[int]:
    return [client.request(method, path, **kw).status_code for _ in range(n)]


# -- handlers of every kind -------------------------------------------------------------------


def test_sync_handler_in_threadpool_sees_request_context(make_guard, serve):
    guard = make_guard()
    app = FastAPI()
    seen: list[tuple[bool, bool]] = []

    @app.get("/report/{report_id}")
    @guard.limit("2/minute")
    def report(report_id: int) -> dict[str, int]:
        in_worker = threading.current_thread() is not threading.main_thread()
        seen.append((in_worker, apiguard.current_request() is not None))
        return {"id": report_id}

    client = serve(app, guard)
    assert [client.get(f"/report/{i}").status_code for i in (1, 2, 3)] == [200, 200, 429]
    assert_quota_exceeded(client.get("/report/4"), "limit:report")
    assert seen == [(True, True), (True, True)]


def test_decorated_async_generator_body_does_not_run_when_refused(make_guard, serve):
    """A refused request must not start the handler (side effects, upstream LLM calls...)."""
    guard = make_guard()
    app = FastAPI()
    started: list[int] = []

    @app.get("/completions/{n}")
    @guard.limit("1/minute")
    async def completions(n: int) -> AsyncIterator[dict[str, int]]:
        started.append(n)  # e.g. the expensive upstream call
        yield {"token": 1}
        yield {"token": 2}

    client = serve(app, guard)
    assert client.get("/completions/1").content == b'{"token":1}\n{"token":2}\n'
    assert_quota_exceeded(client.get("/completions/2"), "limit:completions")
    assert_quota_exceeded(client.get("/completions/3"), "limit:completions")
    assert started == [1]


def test_stacked_limit_and_flow_both_fire(make_guard, serve, clock):
    guard = make_guard()
    app = FastAPI()

    @app.post("/redeem")
    @guard.limit("2/minute", name="burst")
    @guard.flow("redeem", "3/hour")
    async def redeem() -> dict[str, bool]:
        return {"ok": True}

    client = serve(app, guard)
    assert codes(client, "POST", "/redeem", 2) == [200, 200]
    assert_quota_exceeded(client.post("/redeem"), "burst")
    clock.advance(70)
    assert client.post("/redeem").status_code == 200  # 3rd flow unit
    clock.advance(70)
    assert_quota_exceeded(client.post("/redeem"), "redeem")
    policies = client.post("/redeem").headers["ratelimit-policy"]
    assert policies == '"redeem";q=3;w=3600, "burst";q=2;w=60'


def test_per_ip_route_and_principal_route_subjects(make_guard, serve):
    guard = make_guard()
    app = FastAPI()

    @app.get("/by-ip")
    @guard.limit("2/minute", per="ip")
    async def by_ip() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/by-route")
    @guard.limit("2/minute", per="route")
    async def by_route() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/pr/{n}")
    @guard.limit("2/minute", per="principal_route")
    async def by_principal_route(n: int) -> dict[str, bool]:
        return {"ok": True}

    a, b = serve(app, guard), serve(app, ip=IP_B)
    # per="ip": two keys behind one IP share; another IP does not
    assert [a.get("/by-ip", headers=h).status_code for h in (ALICE, BOB, ALICE)] == [200, 200, 429]
    assert b.get("/by-ip", headers=ALICE).status_code == 200
    # per="route": one budget for every caller of the handler
    assert a.get("/by-route", headers=ALICE).status_code == 200
    assert b.get("/by-route", headers=BOB).status_code == 200
    assert_quota_exceeded(a.get("/by-route"), "limit:by_route")
    # per="principal_route": per principal, concrete paths of one template share
    assert [a.get(f"/pr/{i}", headers=ALICE).status_code for i in (1, 2, 3)] == [200, 200, 429]
    assert a.get("/pr/9", headers=BOB).status_code == 200


def test_per_callable_and_cost_callable(make_guard, serve):
    guard = make_guard()
    app = FastAPI()

    @app.get("/tenants/{tenant}/export")
    @guard.limit("2/minute", per=lambda ctx: ctx.path_params["tenant"], name="tenant-export")
    async def export(tenant: str) -> dict[str, str]:
        return {"tenant": tenant}

    @app.get("/optional")
    @guard.limit("1/minute", per=lambda ctx: ctx.header("x-tenant"))
    async def optional() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/units")
    @guard.limit("10/minute", cost=lambda ctx: int(ctx.header("x-units") or 1))
    async def units() -> dict[str, bool]:
        return {"ok": True}

    a, b = serve(app, guard), serve(app, ip=IP_B)
    # a tenant's budget is shared by every principal working for it
    assert a.get("/tenants/acme/export", headers=ALICE).status_code == 200
    assert b.get("/tenants/acme/export", headers=BOB).status_code == 200
    assert_quota_exceeded(a.get("/tenants/acme/export", headers=BOB), "tenant-export")
    assert a.get("/tenants/globex/export", headers=ALICE).status_code == 200
    # per(ctx) returning None skips the rule
    assert codes(a, "GET", "/optional", 4) == [200] * 4
    assert codes(a, "GET", "/optional", 2, headers={"x-tenant": "t"}) == [200, 429]
    # a callable cost
    four = {"x-units": "4"}
    assert codes(a, "POST", "/units", 3, headers=four) == [200, 200, 429]
    assert a.post("/units", headers={"x-units": "2"}).status_code == 200
    assert_quota_exceeded(a.post("/units"), "limit:units")


def test_starlette_sync_and_async_endpoints_take_request(make_guard, serve):
    guard = make_guard()

    @guard.limit("1/minute")
    def sync_endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"sync {request.path_params['n']}")

    @guard.flow("starlette-flow", "2/minute")
    async def async_endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"async {request.path_params['n']}")

    app = Starlette(
        routes=[Route("/s/{n:int}", sync_endpoint), Route("/a/{n:int}", async_endpoint)]
    )
    client = serve(app, guard)
    assert client.get("/s/1").text == "sync 1"
    assert_quota_exceeded(client.get("/s/2"), "limit:sync_endpoint")
    assert [client.get(f"/a/{i}").status_code for i in (1, 2, 3)] == [200, 200, 429]


# -- flows -------------------------------------------------------------------------------------


def _login_app(guard: Guard, count: str = "success") -> FastAPI:
    app = FastAPI()

    @app.post("/login/{outcome}")
    @guard.flow("login", "3/minute", count=count)
    async def login(outcome: str) -> Any:
        if outcome == "denied":
            raise HTTPException(401, "bad credentials")
        if outcome == "invalid":
            return JSONResponse({"error": "invalid"}, status_code=400)
        if outcome == "crash":
            raise RuntimeError("boom")
        if outcome == "redirect":
            return JSONResponse({}, status_code=303, headers={"location": "/home"})
        return {"ok": True}

    return app


def test_success_flow_refunds_failures_and_charges_successes(make_guard, serve):
    guard = make_guard()
    client = serve(_login_app(guard), guard, raise_server_exceptions=False)
    for _ in range(4):  # failures of every kind are refunded
        assert client.post("/login/denied").status_code == 401
        assert client.post("/login/invalid").status_code == 400
        assert client.post("/login/crash").status_code == 500
    assert client.post("/login/ok").status_code == 200
    assert client.post("/login/redirect", follow_redirects=False).status_code == 303
    assert client.post("/login/ok").status_code == 200
    # three successes spent the budget: the next attempt is refused, whatever it would do
    assert_quota_exceeded(client.post("/login/ok"), "login")
    assert_quota_exceeded(client.post("/login/denied"), "login")
    assert client.post("/login/ok", headers=BOB).status_code == 200


def test_attempt_flow_charges_failures(make_guard, serve):
    guard = make_guard()
    client = serve(_login_app(guard, count="attempt"), guard)
    assert codes(client, "POST", "/login/denied", 3) == [401, 401, 401]
    assert_quota_exceeded(client.post("/login/ok"), "login")


def test_two_step_flow_counts_completed_flows_once(make_guard, serve):
    guard = make_guard()
    app = FastAPI()
    completed: list[str] = []

    @app.post("/signup/start")
    @guard.flow("signup", "2/hour", per="ip", completes=False)
    async def start() -> dict[str, str]:
        return {"step": "start"}

    @app.post("/signup/verify/{code}")
    @guard.flow("signup", per="ip", count="success")  # the rate comes from the first step
    async def verify(code: str) -> Any:
        if code != "good":
            return JSONResponse({"error": "wrong code"}, status_code=422)
        completed.append(code)
        return {"step": "verified"}

    client = serve(app, guard)
    assert codes(client, "POST", "/signup/start", 5) == [200] * 5  # steps charge nothing
    assert client.post("/signup/verify/bad").status_code == 422  # failed: refunded
    assert client.post("/signup/verify/good").status_code == 200
    assert client.post("/signup/start").status_code == 200
    assert client.post("/signup/verify/good").status_code == 200
    assert completed == ["good", "good"]
    # two completed flows: both steps are now refused, even the one that never charges
    assert_quota_exceeded(client.post("/signup/start"), "signup")
    assert_quota_exceeded(client.post("/signup/verify/good"), "signup")
    assert client.post("/signup/start", headers=ALICE).status_code == 429  # per="ip"
    assert serve(app, ip=IP_B).post("/signup/start").status_code == 200


def test_flow_shared_by_several_routes(make_guard, serve):
    guard = make_guard()
    app = FastAPI()

    @app.post("/cart/checkout")
    @guard.flow("purchase", "3/minute")
    async def checkout() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/cart/express-checkout")
    @guard.flow("purchase", "3/minute")
    def express() -> dict[str, bool]:
        return {"ok": True}

    client = serve(app, guard)
    paths = ["/cart/checkout", "/cart/express-checkout", "/cart/checkout"]
    assert [client.post(p).status_code for p in paths] == [200, 200, 200]
    assert_quota_exceeded(client.post("/cart/express-checkout"), "purchase")


# -- modes -----------------------------------------------------------------------------------


def _decisions(reader: InMemoryMetricReader) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == "apiguard.decisions":
                    for p in metric.data.data_points:
                        key = (p.attributes["apiguard.rule"], p.attributes["apiguard.decision"])
                        out[key] = out.get(key, 0) + p.value
    return out


def test_monitor_rule_never_blocks_but_records(make_guard, serve):
    reader = InMemoryMetricReader()
    guard = make_guard(meter_provider=MeterProvider(metric_readers=[reader]))
    app = FastAPI()

    @app.get("/search")
    @guard.limit("2/minute", mode="monitor")
    async def search() -> dict[str, str]:
        ctx = apiguard.current_request()
        assert ctx is not None and ctx.decision is not None
        return {"decision": ctx.decision.action.value, "rule": str(ctx.decision.rule)}

    client = serve(app, guard)
    answers = [client.get("/search") for _ in range(5)]
    assert [r.status_code for r in answers] == [200] * 5
    assert [r.json()["decision"] for r in answers] == ["allow"] * 2 + ["monitor"] * 3
    assert answers[-1].json()["rule"] == "limit:search"
    assert _decisions(reader) == {("none", "allow"): 2, ("limit:search", "monitor"): 3}


def test_global_monitor_mode_still_enforces_rule_in_enforce_mode(make_guard, serve):
    guard = make_guard({"principal": "1/minute"}, mode="monitor")
    app = FastAPI()

    @app.post("/transfer")
    @guard.limit("2/minute", mode="enforce")
    async def transfer() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/comment")
    @guard.limit("1/minute")  # follows the global mode: monitor
    async def comment() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/feed")
    async def feed() -> dict[str, bool]:
        return {"ok": True}

    client = serve(app, guard)
    assert codes(client, "GET", "/feed", 4) == [200] * 4  # per-principal is monitored
    assert codes(client, "POST", "/comment", 3) == [200] * 3
    assert codes(client, "POST", "/transfer", 2) == [200, 200]
    # only the enforced rule is named, though per-principal is over its limit too
    assert_quota_exceeded(client.post("/transfer"), "limit:transfer")


def test_limits_mode_monitor_applies_to_global_rules_only(make_guard, serve):
    guard = make_guard({"principal": "1/minute", "ip": "1/minute", "mode": "monitor"})
    app = FastAPI()

    @app.post("/pay")
    @guard.flow("pay", "2/minute")
    async def pay() -> dict[str, bool]:
        return {"ok": True}

    client = serve(app, guard)
    assert codes(client, "GET", "/missing", 3) == [404] * 3
    assert codes(client, "POST", "/pay", 3) == [200, 200, 429]


# -- the 429 --------------------------------------------------------------------------------

POLICY_ITEM = re.compile(r'^"(?P<name>[^"]+)";q=(?P<q>\d+);w=(?P<w>\d+)$')
STATE_ITEM = re.compile(r'^"(?P<name>[^"]+)";r=(?P<r>\d+);t=(?P<t>\d+)$')


def _fields(resp: Any) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    policies = [POLICY_ITEM.match(i) for i in resp.headers["ratelimit-policy"].split(", ")]
    states = [STATE_ITEM.match(i) for i in resp.headers["ratelimit"].split(", ")]
    assert all(policies) and all(states), resp.headers
    return [m.groupdict() for m in policies], [m.groupdict() for m in states]  # type: ignore[union-attr]


def test_refusal_is_problem_json_with_ratelimit_fields(make_guard, serve):
    guard = make_guard()
    app = FastAPI()

    @app.post("/checkout")
    @guard.limit("2/minute", name="checkout")
    async def checkout() -> dict[str, bool]:
        return {"ok": True}

    client = serve(app, guard)
    for remaining in (1, 0):
        ok = client.post("/checkout")
        assert ok.status_code == 200
        policies, states = _fields(ok)
        assert policies == [{"name": "checkout", "q": "2", "w": "60"}]
        assert states[0]["name"] == "checkout" and states[0]["r"] == str(remaining)
        assert 60 <= int(states[0]["t"]) <= 66

    refused = client.post("/checkout")
    assert_quota_exceeded(refused, "checkout")
    body = refused.json()
    assert body["title"] and "Retry after" in body["detail"]
    assert refused.headers["cache-control"] == "no-store"
    retry = refused.headers["retry-after"]
    assert retry.isdigit() and 1 <= int(retry) <= 66
    policies, states = _fields(refused)
    assert policies == [{"name": "checkout", "q": "2", "w": "60"}]
    assert states == [{"name": "checkout", "r": "0", "t": retry}]


def test_retry_after_is_exact(make_guard, serve, clock):
    guard = make_guard()
    app = FastAPI()

    @app.get("/quote")
    @guard.limit("2/minute")
    async def quote() -> dict[str, bool]:
        return {"ok": True}

    client = serve(app, guard)
    assert codes(client, "GET", "/quote", 2) == [200, 200]
    retry = int(client.get("/quote").headers["retry-after"])
    clock.advance(retry - 1)
    refused = client.get("/quote")
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    clock.advance(1)
    assert client.get("/quote").status_code == 200


def test_multi_rate_policies_and_global_fields_together(make_guard, serve):
    guard = make_guard({"principal": "100/minute"})
    app = FastAPI()

    @app.get("/lookup")
    @guard.limit("2/minute;5/hour")
    async def lookup() -> dict[str, bool]:
        return {"ok": True}

    client = serve(app, guard)
    ok = client.get("/lookup")
    # an admitted response advertises the policy closest to its limit: 1 of 2 left
    policies, states = _fields(ok)
    assert [(p["name"], p["q"], p["w"]) for p in policies] == [("limit:lookup.60s", "2", "60")]
    assert [s["r"] for s in states] == ["1"]
    client.get("/lookup")
    refused = client.get("/lookup")
    assert_quota_exceeded(refused, "limit:lookup.60s")
    # a refusal lists every enforced policy with its state
    policies, states = _fields(refused)
    assert [(p["name"], p["q"], p["w"]) for p in policies] == [
        ("per-principal", "100", "60"),
        ("limit:lookup.60s", "2", "60"),
        ("limit:lookup.3600s", "5", "3600"),
    ]
    assert [s["r"] for s in states] == ["98", "0", "3"]


def test_ratelimit_headers_can_be_turned_off(make_guard, serve):
    guard = make_guard(ratelimit_headers=False)
    app = FastAPI()

    @app.get("/x")
    @guard.limit("1/minute")
    async def x() -> dict[str, bool]:
        return {"ok": True}

    client = serve(app, guard)
    ok, refused = client.get("/x"), client.get("/x")
    assert ok.status_code == 200 and "ratelimit" not in ok.headers
    assert_quota_exceeded(refused, "limit:x")
    assert "ratelimit" not in refused.headers and "ratelimit-policy" not in refused.headers


def test_on_block_hook_shapes_the_refusal(make_guard, serve):
    seen: list[tuple[str, str | None]] = []

    def on_block(decision: apiguard.Decision, default: BlockResponse) -> BlockResponse:
        seen.append((decision.action.value, decision.rule))
        return BlockResponse(503, [("retry-after", "7")], b"slow down")

    guard = make_guard(on_block=on_block)
    app = FastAPI()

    @app.get("/x")
    @guard.limit("1/minute")
    async def x() -> dict[str, bool]:
        return {"ok": True}

    client = serve(app, guard)
    assert client.get("/x").status_code == 200
    refused = client.get("/x")
    assert (refused.status_code, refused.text, refused.headers["retry-after"]) == (
        503,
        "slow down",
        "7",
    )
    assert seen == [("throttle", "limit:x")]


# -- escalating bans --------------------------------------------------------------------------


def test_repeated_refusals_escalate_to_longer_bans(make_guard, serve, clock):
    guard = make_guard(bans={"after": 3, "within": 60, "base": 10, "factor": 2})
    app = FastAPI()

    @app.post("/otp")
    @guard.limit("1/minute")
    async def otp() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/profile")
    async def profile() -> dict[str, bool]:
        return {"ok": True}

    client = serve(app, guard)
    assert codes(client, "POST", "/otp", 3, headers=ALICE) == [200, 429, 429]
    banned = client.post("/otp", headers=ALICE)
    assert banned.status_code == 403
    assert banned.headers["retry-after"] == "10"
    assert banned.headers["content-type"] == "application/problem+json"
    assert banned.json()["status"] == 403
    # the ban covers every route (and unknown paths) of that principal, nobody else
    clock.advance(4)
    assert client.get("/profile", headers=ALICE).status_code == 403
    during = client.get("/unknown", headers=ALICE)
    assert (during.status_code, during.headers["retry-after"]) == (403, "6")
    assert client.post("/otp", headers=BOB).status_code == 200
    assert client.get("/profile").status_code == 200

    clock.advance(6)  # the first ban is over; the minute window still holds the charge
    assert client.get("/profile", headers=ALICE).status_code == 200
    assert codes(client, "POST", "/otp", 2, headers=ALICE) == [429, 429]
    second = client.post("/otp", headers=ALICE)
    assert second.status_code == 403
    assert second.headers["retry-after"] == "20"
    clock.advance(19)
    assert client.get("/profile", headers=ALICE).status_code == 403
    clock.advance(1)
    assert client.get("/profile", headers=ALICE).status_code == 200


def test_ban_applies_to_the_identified_user_not_their_shared_ip(make_guard, serve):
    guard = make_guard(bans={"after": 2, "within": 60, "base": 30})
    app = FastAPI()

    async def current_user(x_user: str = Header()) -> str:
        apiguard.identify(x_user)
        return x_user

    @app.post("/vote")
    @guard.limit("1/minute")
    async def vote(user: str = Depends(current_user)) -> dict[str, str]:
        return {"user": user}

    @app.get("/me")
    async def me(user: str = Depends(current_user)) -> dict[str, str]:
        return {"user": user}

    client = serve(app, guard)
    ann, ben = {"x-user": "ann"}, {"x-user": "ben"}
    assert codes(client, "POST", "/vote", 3, headers=ann) == [200, 429, 403]
    assert client.get("/me", headers=ann).status_code == 403
    # a colleague behind the same IP is not banned with ann
    assert client.get("/me", headers=ben).json() == {"user": "ben"}
    assert client.post("/vote", headers=ben).status_code == 200


# -- misconfiguration is loud ---------------------------------------------------------------


def _misordered_fastapi(guard: Guard) -> tuple[FastAPI, Any]:
    app = FastAPI()

    @guard.flow("signup", "1/minute")
    @app.post("/signup")
    async def signup() -> dict[str, bool]:
        return {"ok": True}

    return app, signup


def _misordered_nested(guard: Guard) -> tuple[FastAPI, Any]:
    app, outer, inner = FastAPI(), APIRouter(prefix="/api"), APIRouter(prefix="/v1")

    @guard.limit("1/minute")
    @inner.post("/signup")
    def signup() -> dict[str, bool]:
        return {"ok": True}

    outer.include_router(inner)
    app.include_router(outer)
    return app, signup


def _misordered_mounted(guard: Guard) -> tuple[FastAPI, Any]:
    app, sub = FastAPI(), FastAPI()

    @guard.limit("1/minute")
    @sub.post("/signup")
    async def signup() -> dict[str, bool]:
        return {"ok": True}

    app.mount("/sub", sub)
    return app, signup


def _misordered_starlette(guard: Guard) -> tuple[Starlette, Any]:
    async def signup(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/signup", signup, methods=["POST"])])
    return app, guard.limit("1/minute")(signup)  # decorated after it was routed


MISORDERED = [_misordered_fastapi, _misordered_nested, _misordered_mounted, _misordered_starlette]


@pytest.mark.parametrize("build", MISORDERED, ids=lambda f: f.__name__.removeprefix("_"))
def test_decorator_above_route_decorator_fails_on_first_request(build, make_guard, serve):
    guard = make_guard()
    app, _keep = build(guard)
    client = serve(app, guard)
    with pytest.raises(ConfigurationError, match="signup"):
        client.get("/anything")


@pytest.mark.parametrize("build", MISORDERED, ids=lambda f: f.__name__.removeprefix("_"))
def test_decorator_above_route_decorator_fails_at_startup(build, make_guard, serve):
    guard = make_guard()
    app, _keep = build(guard)
    with pytest.raises(ConfigurationError, match=r"below @app\.get/@app\.post"), serve(app, guard):
        pass  # pragma: no cover


def test_decorator_above_route_decorator_detected_in_app_factory(make_guard, serve):
    """The app-factory pattern: nothing keeps the decorated wrapper alive after it returns."""
    guard = make_guard()

    def create_app() -> FastAPI:
        app = FastAPI()

        @guard.flow("signup", "1/minute")
        @app.post("/signup")
        async def signup() -> dict[str, bool]:
            return {"ok": True}

        return app

    app = create_app()
    gc.collect()
    client = serve(app, guard)
    with pytest.raises(ConfigurationError, match="signup"):
        client.post("/signup")


def test_decorated_function_outside_middleware_raises(make_guard, serve):
    guard = make_guard()

    @guard.limit("1/minute")
    async def a() -> str:
        return "a"

    @guard.flow("f", "1/minute")
    def s() -> str:
        return "s"

    @guard.limit("1/minute")
    async def g() -> AsyncIterator[str]:
        yield "g"

    with pytest.raises(RuntimeError, match="GuardMiddleware"):
        asyncio.run(a())
    with pytest.raises(RuntimeError, match="GuardMiddleware"):
        s()

    async def drain() -> None:
        async for _ in g():
            pass  # pragma: no cover

    with pytest.raises(RuntimeError, match="GuardMiddleware"):
        asyncio.run(drain())

    app = FastAPI()
    app.get("/s")(s)
    with pytest.raises(RuntimeError, match="outside a request apiguard is handling"):
        serve(app).get("/s")  # the middleware was never installed


def test_identify_misuse(make_guard, serve):
    with pytest.warns(RuntimeWarning, match="outside a request"):
        apiguard.identify("ann")
    guard = make_guard()
    app = FastAPI()

    @app.get("/x")
    async def x() -> dict[str, bool]:
        apiguard.identify("")
        return {"ok": True}  # pragma: no cover

    with pytest.raises(ValueError, match="non-empty"):
        serve(app, guard).get("/x")


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda g: g.limit("lots"), "'lots' is not a rate"),
        (lambda g: g.limit("0/minute"), "at least 1"),
        (lambda g: g.limit("5/minute", per="tenant"), "per='tenant'"),
        (lambda g: g.limit("2/minute", cost=5), "cost=5"),
        (lambda g: g.limit("2/minute", cost=-1), "cost=-1"),
        (lambda g: g.limit("2/minute", mode="block"), "mode='block'"),
        (lambda g: g.limit("2/minute", name='a"b'), "rule name"),
        (lambda g: g.flow("f", "2/minute", count="sometimes"), "count='sometimes'"),
        (lambda g: g.flow("first"), "first declaration needs a rate"),
    ],
)
def test_bad_decorator_arguments_raise_configuration_error(make, needle, make_guard):
    guard = make_guard()

    def handler() -> None: ...

    with pytest.raises(ConfigurationError, match=re.escape(needle)) as info:
        make(guard)(handler)
    assert "handler" in str(info.value)


def test_flow_redeclared_differently_is_configuration_error(make_guard):
    guard = make_guard()

    @guard.flow("export", "2/minute")
    def one() -> None: ...

    def two() -> None: ...

    with pytest.raises(ConfigurationError, match="different rates, per= or key="):
        guard.flow("export", "3/minute")(two)
    with pytest.raises(ConfigurationError, match="different rates, per= or key="):
        guard.flow("export", "2/minute", per="ip")(two)
    guard.flow("export")(two)  # inheriting the first declaration is fine


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"limits": {"principal": "many"}}, "limits.principal"),
        ({"limits": {"route": "3/fortnightly"}}, "limits.route"),
        ({"mode": "block"}, "mode"),
        ({"bans": {"after": 0}}, "bans.after"),
        ({"client_ip": {"trusted_proxies": ["not-a-network"]}}, "client_ip.trusted_proxies"),
        ({"secret": "short"}, "secret"),
        ({"limit": {"principal": "1/minute"}}, "limit"),
    ],
)
def test_invalid_config_names_the_field(config, field):
    with pytest.raises(ConfigurationError, match=re.escape(field)):
        Guard(config)


def test_middleware_and_clock_arguments_are_checked():
    with pytest.raises(TypeError, match="guard=Guard"):
        GuardMiddleware(FastAPI(), guard=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="clock"):
        Guard(clock=1.0)  # type: ignore[arg-type]


# -- policy names say which limit they are ----------------------------------------------------
def test_handlers_sharing_a_name_get_distinct_policy_names(make_guard, serve):
    """Two routers each with a `get` handler: RateLimit-Policy and violated-policies must
    not advertise one name for two different limits."""
    guard = make_guard(limits={"principal": "100/minute"})
    app = FastAPI()
    first, second = APIRouter(prefix="/a"), APIRouter(prefix="/b")

    @first.get("/")
    @guard.limit("1/minute")
    async def get() -> dict[str, str]:
        return {"r": "a"}

    @second.get("/")  # type: ignore[no-redef]
    @guard.limit("2/minute")
    async def get() -> dict[str, str]:  # noqa: F811
        return {"r": "b"}

    app.include_router(first)
    app.include_router(second)
    client = serve(app, guard)
    assert client.get("/a/").headers["ratelimit-policy"] == '"limit:get";q=1;w=60'
    assert client.get("/b/").headers["ratelimit-policy"] == '"limit:get-2";q=2;w=60'
    assert_quota_exceeded(client.get("/a/"), "limit:get")
    client.get("/b/")
    assert_quota_exceeded(client.get("/b/"), "limit:get-2")
    # a route's limit still shares nothing with its namesake: another caller is served
    assert serve(app, ip=IP_B).get("/a/").status_code == 200


def test_chosen_policy_names_that_are_taken_are_configuration_errors(make_guard):
    guard = make_guard(limits={"principal": "100/minute"})

    @guard.limit("5/minute", name="search")
    async def search() -> None: ...

    with pytest.raises(ConfigurationError, match="'search' is already used"):

        @guard.limit("9/minute", name="search")
        async def other_search() -> None: ...

    with pytest.raises(ConfigurationError, match="'per-principal' is already used"):

        @guard.limit("9/minute", name="per-principal")
        async def shadows_the_global() -> None: ...

    with pytest.raises(ConfigurationError, match="'search' is already used"):

        @guard.flow("search", "3/hour")
        async def flow_named_like_a_limit() -> None: ...

    # one flow over several routes is one policy, not a collision
    @guard.flow("signup", "3/hour")
    async def start() -> None: ...

    @guard.flow("signup", completes=False)
    async def verify() -> None: ...


def test_a_decorated_handler_calling_a_decorated_helper_is_charged_once(make_guard, serve):
    """The helper's checkpoint must not make the handler's own rules run again when the
    response starts (the flow would be charged twice and the request refused after the
    handler ran)."""
    guard = make_guard(limits={"principal": "100/minute"})
    app = FastAPI()

    @guard.limit("50/minute", per="ip")
    async def inventory() -> int:
        return 7

    @guard.limit("50/minute")
    def pricing() -> int:
        return 3

    @app.post("/buy")
    @guard.flow("buy", "3/minute", count="success")
    async def buy() -> dict[str, int]:
        return {"stock": await inventory(), "price": pricing()}

    client = serve(app, guard)
    assert codes(client, "POST", "/buy", 4) == [200, 200, 200, 429]
    policies = client.post("/buy").headers["ratelimit-policy"]
    assert policies.count('"buy"') == 1, policies
