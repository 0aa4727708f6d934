"""Review s16: attacks on the last commits (`@guard.login(reports=...)` and the route
learning it; flows not spent by reads of a write route, HEAD spending them, Flask's
dispatched method).

The xfail(strict=True) tests are holes found on the reviewed code: each asserts the
secure behaviour, so it fails now and passes once fixed. The others are attacks tried
that were already stopped."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask, redirect, request
from flask.views import MethodView
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from apiguard import Guard
from apiguard.asgi import GuardMiddleware
from login_review_helpers import flask_app as _flask
from login_review_helpers import has_device as _device

IP = {"REMOTE_ADDR": "192.0.2.10"}


class Signup(BaseModel):
    email: str


# -- 1. logins: reports= and the route learning it -----------------------------------------


def json_login_app(guard: Guard, refusal: int, reports: bool | None = False) -> Flask:
    """A JSON login whose status tells its outcome (200 / 401), reporting only its
    failures (with `exists=`), declared `reports=False` as the README asks (since review
    s16b, an undeclared view calling login_result() reports for good); after 3 failures
    for an account it answers `refusal` (a lockout: 423 Locked, 429 Too Many Requests,
    503) and reports it as the failure it is."""
    app = _flask(guard)
    fails: dict[str, int] = {}

    @app.post("/api/login")
    @guard.login(
        username=lambda: (request.get_json(silent=True) or {}).get("username"), reports=reports
    )
    def api_login() -> Any:
        body = request.get_json(silent=True) or {}
        name = str(body.get("username", ""))
        if fails.get(name, 0) >= 3:
            guard.login_result(name, False)
            return {"error": "account locked, try later"}, refusal
        if body.get("password") != "right":
            fails[name] = fails.get(name, 0) + 1
            guard.login_result(name, False, exists=True)
            return {"error": "bad credentials"}, 401
        return {"token": "t"}

    return app


@pytest.mark.parametrize("refusal", [423, 429, 503])
def test_an_attacker_lockout_does_not_strip_everyones_device_cookie(refusal: int) -> None:
    """Attack: on a JSON login (200 success, 401 failure) that reports only its failures
    with `login_result(name, False)` and locks an account after 3 failures with a
    423/429/503 (a common lockout or backend-busy answer, reported as a failure), an
    attacker fails 4 times on any account (their own). `LoginRule.learn` counts any status
    outside {400, 401, 403, 404} as 'a failure the status cannot tell', so the route
    learns reports=True for the life of the process.
    Impact: every honest user's unreported 200 success from then on is no success: no
    device cookie is issued to anybody, so the attacker can then get every account it
    stuffs challenged/locked at the login gate for its real owners (the device cookie is
    what exempts them). README itself says 422, 429 and 5xx 'are not attempts'.
    Severity: medium-high (one request from anyone disables device cookies process-wide).
    Fix: learn only from `success or 200 <= status < 400`."""
    client = json_login_app(Guard(), refusal).test_client()
    for _ in range(4):
        client.post("/api/login", json={"username": "mallory", "password": "x"}, environ_base=IP)
    honest = client.post(
        "/api/login",
        json={"username": "alice", "password": "right"},
        environ_base={"REMOTE_ADDR": "198.51.100.7"},
    )
    assert honest.status_code == 200
    assert _device(honest)


def test_an_undeclared_reporting_route_withholds_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same route undeclared: its view calls login_result(), so it reports for good
    (nothing an attacker answers can change that): an unreported 200 is no login and
    sets no device cookie, and the log says once how to declare it."""
    client = json_login_app(Guard(), 401, reports=None).test_client()
    with caplog.at_level("WARNING", logger="apiguard"):
        for name in ("alice", "bob"):
            honest = client.post("/api/login", json={"username": name, "password": "right"})
            assert honest.status_code == 200 and not _device(honest)
    said = [r for r in caplog.records if "reports=False" in r.getMessage()]
    assert len(said) == 1


def test_a_401_reported_failure_does_not_strip_device_cookies() -> None:
    """Attack (stopped): the same route, failures answered 401 and reported. The route
    keeps reports=None (its status tells), and honest successes keep their device
    cookie."""
    client = json_login_app(Guard(), 401).test_client()
    for _ in range(2):
        client.post("/api/login", json={"username": "mallory", "password": "x"}, environ_base=IP)
    honest = client.post("/api/login", json={"username": "alice", "password": "right"})
    assert honest.status_code == 200 and _device(honest)


def test_a_success_reported_for_my_account_gives_no_cookie_for_the_victim() -> None:
    """Attack: a JSON login accepting 'username or email' (`lookup(email or username)`),
    declared `@guard.login(username=... body["username"], reports=True)` and reporting with
    `login_result(user.name, ok)` the account it actually checked. The attacker sends
    {"username": "victim", "email": "mallory", "password": <mallory's>}. `login_result`
    ignores its `username` when the decorator already recorded an attempt, so the
    success is booked for "victim" and the response sets the victim's device cookie.
    Impact: anyone with one account gets a device cookie for any victim account without
    its password, which exempts them from the account-takeover gate on that account
    (stuffing/brute force of the victim unthrottled until device-failure bans).
    Severity: high (wherever the reported name can differ from the decorator's).
    Fix: when login_result's name does not normalise to the recorded attempt's user,
    issue no device cookie (or book a separate attempt for the reported name)."""
    guard = Guard()
    app = _flask(guard)
    passwords = {"mallory": "mallorys", "victim": "secret"}

    @app.post("/api/login")
    @guard.login(
        username=lambda: (request.get_json(silent=True) or {}).get("username"), reports=True
    )
    def api_login() -> Any:
        body = request.get_json(silent=True) or {}
        name = body.get("email") or body.get("username")
        ok = passwords.get(name) == body.get("password")
        guard.login_result(name, ok)
        return ({"token": "t"}, 200) if ok else ({"error": "bad"}, 401)

    client = app.test_client()
    answer = client.post(
        "/api/login",
        json={"username": "victim", "email": "mallory", "password": "mallorys"},
        environ_base=IP,
    )
    assert answer.status_code == 200  # mallory is logged in, as the app decided
    cookie = answer.headers.get("Set-Cookie") or ""
    # the cookie must not mark "victim" (its entry is the MAC of the name as sent)
    from apiguard.login import device_key, device_mac

    victim_mac = device_mac(guard.engine.hasher, device_key(guard.engine.hasher, "victim"))
    assert victim_mac not in cookie


def form_login_app(guard: Guard) -> Flask:
    """The microblog's form login: 302 either way, reported with login_result; a form
    rejected before the password check (Flask-WTF's missing CSRF token) re-renders 200.
    `reports=` not declared (the careless, and README-allowed, default)."""
    app = _flask(guard)

    @app.route("/login", methods=["GET", "POST"])
    @guard.login(username=lambda: request.form.get("username"))
    def login() -> Any:
        if request.method == "GET":
            return "<form>"
        if request.form.get("csrf") != "ok":
            return "<form> invalid", 200
        ok = request.form.get("password") == "right"
        guard.login_result(request.form["username"], ok)
        return redirect("/index" if ok else "/login")

    return app


def test_a_fresh_worker_gives_no_victim_cookie_for_a_rejected_form() -> None:
    """Attack: an undeclared form login (the view calls `login_result()`, `reports=`
    omitted: README allows it, only `apiguard audit` warns). In a fresh worker (gunicorn
    `max_requests` recycling, a deploy, autoscaling) the attacker posts the form for
    "victim" without a CSRF token: the view re-renders 200 without reporting, and the
    route has not learned yet, so the 200 is a success and sets the victim's device
    cookie.
    Impact: a device cookie for any account, no password needed: the attacker is then
    exempt from the login gate on that account. Repeatable on every fresh worker.
    Severity: high for undeclared form logins.
    Fix: decide `reports=True` at decoration when the view's source calls
    `login_result(` (what audit already checks), or keep the learned flag in the
    store so it survives restarts and is shared by workers."""
    client = form_login_app(Guard()).test_client()
    rejected = client.post("/login", data={"username": "victim", "password": "x"}, environ_base=IP)
    assert rejected.status_code == 200
    assert not _device(rejected)


def test_a_handler_raising_after_a_reported_success_sets_no_device_cookie() -> None:
    """Attack (stopped): the view reports `login_result(name, True)` and then fails (the
    session store is down): Flask answers 500, and no device cookie is issued for a login
    that never completed."""
    guard = Guard()
    app = _flask(guard)
    app.config["TESTING"] = False  # (a real deployment: Flask answers 500)

    @app.post("/login")
    @guard.login(username=lambda: request.form.get("username"), reports=True)
    def login() -> Any:
        guard.login_result(request.form["username"], request.form.get("password") == "right")
        raise RuntimeError("session store down")

    answer = app.test_client().post(
        "/login", data={"username": "victim", "password": "right"}, environ_base=IP
    )
    assert answer.status_code == 500
    assert not _device(answer)


def test_fastapi_login_reported_from_a_dependency_learns_and_gives_no_cookie() -> None:
    """Attack (stopped): a FastAPI form login whose password check and `login_result()`
    live in a dependency (run before the decorated endpoint, so `login_result` starts
    the attempt). Once it reported a 200 failure, the route learned reports=True (the
    decorator attaches its rule to the attempt the dependency started): a later
    CSRF-less post for "victim" answered 200 unreported gets no device cookie."""
    from fastapi import Depends, FastAPI, Form

    guard = Guard()
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    def check(
        username: str = Form(), password: str = Form(""), csrf: str = Form("")
    ) -> bool | None:
        if csrf != "ok":
            return None  # rejected before the password check: nothing reported
        ok = password == "right"
        guard.login_result(username, ok)
        return ok

    @app.post("/login")
    @guard.login(username="username", reports=None)
    async def login(username: str = Form(), outcome: bool | None = Depends(check)) -> Any:
        return {"ok": bool(outcome)}

    client = TestClient(app)
    first = client.post("/login", data={"username": "ann", "password": "no", "csrf": "ok"})
    assert first.status_code == 200 and not _device(first)
    rejected = client.post("/login", data={"username": "victim", "password": "x"})
    assert rejected.status_code == 200
    assert not _device(rejected)


def test_reports_rejects_truthy_non_bools() -> None:
    """Careless user (stopped): `reports="false"` or `reports=1` is refused at
    decoration instead of being read as truthy/True."""
    from apiguard import ConfigurationError

    for value in ("false", 1, 0):
        with pytest.raises(ConfigurationError, match="reports"):
            Guard().login(username="form_data.username", reports=value)  # type: ignore[arg-type]


# -- 2. flows: reads of a write route -------------------------------------------------------


def test_a_flow_on_a_method_views_get_handler_spends_on_gets() -> None:
    """Attack: a Flask `MethodView` whose `get` is the step itself (an e-mailed
    confirmation / reset-code link, `GET /verify?code=...`) and whose `post` resends the
    mail; the app puts `@guard.flow("verify", "5/hour")` on `get` only. The URL rule's
    methods are {GET, HEAD, OPTIONS, POST}, so `_for_read` drops the flow from every GET:
    the decorated handler's flow is never spent, and the code is brute-forced freely (a
    6-digit code: 10^6 free guesses). README's `count_reads` is for 'a page that renders a
    form', which a decorated get() handler never is (the Starlette HTTPEndpoint twin
    counts, since its route's methods are unknown).
    Severity: high (a declared limit silently does nothing on Flask/Flask-RESTful
    class-based views). Fix: for a class-based view (`view_class`), judge the
    decorated handler's own method (treat the route's methods as unknown, as for
    Starlette endpoint classes)."""
    guard = Guard()
    app = _flask(guard)
    tried: list[str] = []

    class Verify(MethodView):
        @guard.flow("verify", "5/hour", per="ip")
        def get(self) -> Any:
            tried.append(request.args.get("code", ""))
            return ("verified", 200) if request.args.get("code") == "424242" else ("no", 400)

        def post(self) -> Any:
            return "mail sent"

    app.add_url_rule("/verify", view_func=Verify.as_view("verify"))
    client = app.test_client()
    statuses = [client.get(f"/verify?code={n:06d}", environ_base=IP).status_code for n in range(20)]
    assert statuses.count(429) >= 14, statuses
    assert len(tried) <= 6


def test_a_flow_on_a_get_only_function_view_spends_on_gets() -> None:
    """Attack (stopped; the control of the MethodView hole): the same code check as a
    GET-only function view is limited to 5 guesses per hour (a 400 answer spends too)."""
    guard = Guard()
    app = _flask(guard)
    tried: list[str] = []

    @app.get("/verify")
    @guard.flow("verify", "5/hour", per="ip")
    def verify() -> Any:
        tried.append(request.args.get("code", ""))
        return ("verified", 200) if request.args.get("code") == "424242" else ("no", 400)

    client = app.test_client()
    statuses = [client.get(f"/verify?code={n:06d}", environ_base=IP).status_code for n in range(20)]
    assert statuses.count(429) >= 14, statuses
    assert len(tried) <= 6


def test_fastapi_get_with_a_body_spends_the_signup_flow() -> None:
    """Attack: `@app.api_route("/signup", methods=["GET", "POST"])` over an endpoint
    taking a required JSON body (`body: Signup`): it renders no page, its GET cannot
    even answer without the body. FastAPI parses a body on GET as on POST, so every
    `GET /signup` with a JSON body creates an account, and `_for_read` drops the flow
    because the route's methods include POST: 50 accounts past a 5/hour flow.
    Severity: high for such routes (a plausible 'accept both' API). Fix: keep flows on
    a read whose endpoint takes a body (FastAPI `route.body_field`), or whose request
    carries one (Content-Length/Transfer-Encoding), or whose flow `key=` read a value."""
    from fastapi import FastAPI

    guard = Guard()
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)
    created: list[str] = []

    @app.api_route("/signup", methods=["GET", "POST"])
    @guard.flow("signup", "5/hour", per="ip")
    async def signup(body: Signup) -> dict[str, str]:
        created.append(body.email)
        return {"created": body.email}

    client = TestClient(app)
    for n in range(20):
        client.request("GET", "/signup", json={"email": f"bot{n}@x.example"})
    assert len(created) <= 5, created


def test_fastapi_post_still_spends_the_signup_flow() -> None:
    """Attack (stopped): the same route by POST is limited to 5."""
    from fastapi import FastAPI

    guard = Guard()
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.api_route("/signup", methods=["GET", "POST"])
    @guard.flow("signup", "5/hour", per="ip")
    async def signup(body: Signup) -> dict[str, str]:
        return {"created": body.email}

    client = TestClient(app)
    statuses = [
        client.post("/signup", json={"email": f"b{n}@x.example"}).status_code for n in range(7)
    ]
    assert statuses == [200] * 5 + [429, 429]


def test_raw_lowercase_wsgi_method_is_judged_as_dispatched() -> None:
    """Attack (stopped): a raw WSGI REQUEST_METHOD of "post"/"PoSt" (or "get" with a form
    body) to a Flask sign-up form view. Werkzeug upper-cases it and apiguard judges the
    dispatched method: "post" spends the flow, "get" renders the form and creates
    nothing."""
    guard = Guard()
    app = _flask(guard)
    created: list[str] = []

    @app.route("/register", methods=["GET", "POST"])
    @guard.flow("signup", "5/hour", per="ip")
    def register() -> Any:
        if request.method == "GET":
            return "<form>"
        created.append(request.form.get("username", ""))
        return redirect("/login")

    client = app.test_client()
    for n in range(10):
        for method in ("post", "PoSt", "get"):
            client.open("/register", method=method, data={"username": f"u{n}"}, environ_base=IP)
    # (a GET carrying a form body spends the flow too, since the FastAPI finding above:
    # 4 or 5 made, never more than the budget)
    assert 0 < len(created) <= 5


def test_starlette_function_route_without_methods_counts_gets() -> None:
    """Attack (stopped): a Starlette `Route` with no `methods=` (a GET-only route for a
    function endpoint) whose GET completes the step (an e-mailed link): a read-only
    route keeps its flow."""
    guard = Guard()

    @guard.flow("confirm", "2/hour", per="ip")
    async def confirm(request: Request) -> PlainTextResponse:
        return PlainTextResponse("confirmed")

    app = Starlette(routes=[Route("/confirm", confirm)])
    app.add_middleware(GuardMiddleware, guard=guard)
    client = TestClient(app)
    assert [client.get("/confirm").status_code for _ in range(3)] == [200, 200, 429]


def test_a_brute_force_through_the_other_field_is_counted_on_the_account_checked() -> None:
    """Attack (stopped since the fix above): the same "username or e-mail" login, where
    the decorator reads `username`. A botnet brute-forces one account through the
    `email` field, one guess per address and browser shape, naming a fresh made-up
    `username` each time, so the account the decorator sees is never the same. The
    failures are now the account checked, which is held past a few guesses: the
    password, sent as guess 60, is refused, and so is every guess after the hold."""
    guard = Guard()
    app = _flask(guard)
    passwords = {"target": "hunter2"}

    @app.post("/api/login")
    @guard.login(username=lambda: (request.get_json(silent=True) or {}).get("username"))
    def api_login() -> Any:
        body = request.get_json(silent=True) or {}
        name = body.get("email") or body.get("username")
        ok = passwords.get(name) == body.get("password")
        guard.login_result(name, ok)
        return ({"token": "t"}, 200) if ok else ({"error": "bad"}, 401)

    client = app.test_client()
    answers = []
    for n in range(60):
        password = "hunter2" if n == 59 else f"guess{n}"
        answers.append(
            client.post(
                "/api/login",
                json={"username": f"x{n}", "email": "target", "password": password},
                headers={"User-Agent": f"Mozilla/5.0 (bot {n})", "Accept-Language": f"en-{n}"},
                environ_base={"REMOTE_ADDR": f"203.0.{n // 200}.{n % 200 + 1}"},
            ).status_code
        )
    assert answers[-1] != 200, "the brute force found the password"
    assert answers.count(401) <= 20, answers
