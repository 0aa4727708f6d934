"""Review s16b: attacks on the s16 fixes (`login_result()` naming another account than
`@guard.login` read; an undeclared view whose source calls `login_result(` starting as
reports=True and `LoginRule.learn`; a GET with a body spending flows, `_has_body`).

The xfail(strict=True) tests are holes found on the reviewed code: each asserts the
secure behaviour, so it fails now and passes once fixed. The others are attacks tried
that were already stopped."""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

import pytest
from flask import Flask, redirect, request
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from apiguard import Guard
from apiguard.asgi import GuardMiddleware
from login_review_helpers import flask_app as _flask
from login_review_helpers import h2_get as _h2_get
from login_review_helpers import has_device as _device
from login_review_helpers import marks as _marks

IP = {"REMOTE_ADDR": "192.0.2.10"}


class Signup(BaseModel):
    email: str


# -- 1. login_result() naming another account: login_renamed -------------------------------


@pytest.mark.parametrize("mine", ["VICTIM", "Victim", "\uff56\uff49\uff43\uff54\uff49\uff4d"])
def test_a_look_alike_account_reported_gives_no_cookie_for_the_victim(mine: str) -> None:
    """Attack: the s16 "username or e-mail" login again (`@guard.login` reads `username`,
    the app checks `email or username` and reports `login_result(name_checked, ok)`), on
    an app whose accounts tell case apart (Django's default `User.username`, most
    hand-rolled user tables) or do not NFKC-fold (full-width letters). The attacker owns
    "VICTIM" / "Victim" / full-width "victim" and posts
    {"username": "victim", "email": <own look-alike>, "password": <own>}. The app logs
    the attacker into their own account and reports that name; `login_renamed` compares
    the *normalised* keys (`user_key`: NFKC+casefold), finds them equal and returns
    without touching `login.device`, which is still `device_key("victim")` (the name the
    decorator read): the success sets the victim's device cookie.
    Impact: the s16 hole reopened: anyone able to register a look-alike name gets a
    device cookie for the victim account without its password, exempting them from the
    account-takeover hold on it. `device_key`'s own docstring says the look-alike must
    never mark the real account's device.
    Severity: high on case-sensitive / non-NFKC apps with a two-field login.
    Fix: in `login_renamed`, always set `login.device = device_key(hasher, username)` to
    the reported name as sent (compare device keys, not user keys, before returning)."""
    guard = Guard()
    app = _flask(guard)
    passwords = {"victim": "secret", mine: "mallorys"}

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

    answer = app.test_client().post(
        "/api/login",
        json={"username": "victim", "email": mine, "password": "mallorys"},
        environ_base=IP,
    )
    assert answer.status_code == 200  # logged in to the attacker's own account
    assert not _marks(guard, answer, "victim")


def test_a_reported_failure_on_another_account_never_gives_a_cookie() -> None:
    """Attack (stopped): login_result called twice in one request (a helper reporting
    "victim" as failed, then the view reporting the attacker's own account as a
    success), and with None / "" / an int for the name: the cookie is only ever the
    last reported account's, never the decorator-read victim's; None and "" keep the
    attempt on the read name (a failure)."""
    guard = Guard()
    app = _flask(guard)

    @app.post("/api/login")
    @guard.login(
        username=lambda: (request.get_json(silent=True) or {}).get("username"), reports=True
    )
    def api_login() -> Any:
        body = request.get_json(silent=True) or {}
        for name, ok in body["reports"]:
            guard.login_result(name, ok)
        return {"token": "t"}

    cases = [
        [["victim", False], ["mallory", True]],
        [[None, True]],
        [["", True]],
        [["  ", True]],
        [[42, True]],
    ]
    for reports in cases:
        answer = app.test_client().post(
            "/api/login", json={"username": "victim", "reports": reports}, environ_base=IP
        )
        assert answer.status_code == 200
        if reports[0][0] in (None, "", "  "):
            # (the decorator-read account, reported a success by the app: its call)
            continue
        assert not _marks(guard, answer, "victim"), reports


# -- 2. reports= started from the source, and learned -------------------------------------


def form_login_with_a_403(guard: Guard) -> Flask:
    """A Flask-WTF-style form login, `reports=` undeclared but its source calls
    `login_result(` (so it starts as reports=True): a bad password is reported and
    redirected (302), a CSRF-rejected form re-renders 200 unreported, and an account
    whose e-mail is not confirmed yet is reported as a failure and answered 403 (the
    Flask-Security / django-allauth "confirm your e-mail first" page)."""
    app = _flask(guard)
    users = {"victim": ("secret", True), "mallory": ("mallorys", False)}  # (confirmed?)

    @app.route("/login", methods=["GET", "POST"])
    @guard.login(username=lambda: request.form.get("username"))
    def login() -> Any:
        if request.method == "GET":
            return "<form>"
        if request.form.get("csrf") != "ok":
            return "<form> invalid token", 200
        name = request.form["username"]
        password, confirmed = users.get(name, (None, False))
        ok = password is not None and request.form.get("password") == password
        if ok and not confirmed:
            guard.login_result(name, False)
            return "<p>confirm your e-mail first</p>", 403
        guard.login_result(name, ok)
        return redirect("/index" if ok else "/login")

    return app


def test_a_reported_403_does_not_turn_a_form_login_into_status_decides() -> None:
    """Attack: the form login above in a fresh worker (gunicorn `max_requests`, a deploy,
    autoscaling: before any honest success settles the route). The attacker registers an
    account and does not confirm its e-mail, then logs in to it with its password: the
    app reports a failure answered 403, so `LoginRule.learn` switches the route to
    status-decides (`reported=False`, not settled). Next, a CSRF-less POST naming
    "victim" re-renders 200 without any report, which now counts as a success: the
    response sets the victim's device cookie.
    Impact: the s16 fresh-worker hole, reopened by one request of the attacker's own
    (any app path that reports a failure with 400/401/403/404: an unconfirmed or
    disabled account, a validation error raised after the report, `abort(404)`), no
    password needed; repeatable on every fresh worker.
    Severity: high for undeclared form logins.
    Fix: a view whose source calls `login_result(` stays reports=True unless declared
    `reports=False` (audit already tells JSON logins to declare it); or only learn
    status-decides from a reported failure on a route that has also answered an
    unreported 4xx, or persist the learned flag in the store."""
    client = form_login_with_a_403(Guard()).test_client()
    own = client.post(
        "/login",
        data={"username": "mallory", "password": "mallorys", "csrf": "ok"},
        environ_base=IP,
    )
    assert own.status_code == 403
    rejected = client.post("/login", data={"username": "victim", "password": "x"}, environ_base=IP)
    assert rejected.status_code == 200
    assert not _device(rejected)


def test_a_fresh_worker_form_login_gives_no_victim_cookie_for_a_rejected_form() -> None:
    """Attack (stopped): the same form login without the 403 path; the attacker's own
    bad-password attempts (302, reported) settle it as reporting, and a CSRF-less 200
    for "victim" before or after them sets no device cookie. A handler raising after
    `login_result()` (500) teaches nothing either."""
    client = form_login_with_a_403(Guard()).test_client()
    first = client.post("/login", data={"username": "victim", "password": "x"}, environ_base=IP)
    assert first.status_code == 200 and not _device(first)
    client.post(
        "/login", data={"username": "mallory", "password": "no", "csrf": "ok"}, environ_base=IP
    )
    again = client.post("/login", data={"username": "victim", "password": "x"}, environ_base=IP)
    assert again.status_code == 200 and not _device(again)


def test_a_form_login_reporting_from_a_helper_gives_no_victim_cookie() -> None:
    """Attack: a form login whose password check and report live in a helper (a
    `services.authenticate(form)` module function, a Flask-Login/`LoginForm.validate()`
    method, a FastAPI dependency): the view's own source never contains `login_result(`,
    so `make_reporting` leaves it status-decides. In a fresh worker, a CSRF-less POST
    naming "victim" re-renders 200 unreported: a success, the victim's device cookie.
    Impact: the s16 fresh-worker hole, still open for any reporting done outside the
    view's body (a very common layering). No password needed, every fresh worker.
    Severity: high for such apps.
    Fix: a 2xx on an undeclared login route gives no device cookie until the route has
    been seen to decide by status (or persist what was learned, shared by workers);
    at least warn at startup that `reports=` is undeclared on a form login."""
    guard = Guard()
    app = _flask(guard)

    def authenticate(form: Any) -> Any:
        ok = form.get("password") == "secret"
        guard.login_result(form["username"], ok)
        return redirect("/index" if ok else "/login")

    @app.route("/login", methods=["GET", "POST"])
    @guard.login(username=lambda: request.form.get("username"))
    def login() -> Any:
        if request.method == "GET":
            return "<form>"
        if request.form.get("csrf") != "ok":
            return "<form> invalid token", 200
        return authenticate(request.form)

    rejected = app.test_client().post(
        "/login", data={"username": "victim", "password": "x"}, environ_base=IP
    )
    assert rejected.status_code == 200
    assert not _device(rejected)


def test_a_comment_naming_login_result_does_not_withhold_every_device_cookie() -> None:
    """Careless user: a JSON login whose status tells its outcome (200 / 401) and that
    never reports, but whose docstring or a comment mentions `guard.login_result()`
    ("no need to call guard.login_result(): the status tells"). `calls_login_result`
    greps the source text, so the route starts reports=True; with no report ever made
    it never learns otherwise: an honest user's 200 is no success, and nobody ever gets
    a device cookie.
    Impact: the device-cookie exemption is silently off for the whole app: during a
    stuffing alarm every honest user is challenged/held on their own account. The
    `apiguard audit` note misleads too ("a view that calls login_result()").
    Severity: medium (availability, careless but plausible).
    Fix: look for a real call (`ast`: a Call whose func is a Name/Attribute named
    `login_result`), not the text."""
    guard = Guard()
    app = _flask(guard)

    @app.post("/api/login")
    @guard.login(username=lambda: (request.get_json(silent=True) or {}).get("username"))
    def api_login() -> Any:
        """JSON login: 200 or 401 (no guard.login_result() needed: the status tells)."""
        body = request.get_json(silent=True) or {}
        if body.get("password") != "right":
            return {"error": "bad credentials"}, 401
        return {"token": "t"}

    honest = app.test_client().post(
        "/api/login", json={"username": "alice", "password": "right"}, environ_base=IP
    )
    assert honest.status_code == 200
    assert _device(honest)


def test_a_wrapped_form_view_still_starts_as_reporting() -> None:
    """Attack (stopped): the form login's view wrapped by a `functools.wraps` decorator
    below `@guard.login` (a timing/audit-log decorator): the source is found through
    `__wrapped__`, so a fresh worker's CSRF-less 200 for "victim" sets no cookie."""
    guard = Guard()
    app = _flask(guard)

    def logged(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        return wrapper

    @app.route("/login", methods=["GET", "POST"])
    @guard.login(username=lambda: request.form.get("username"))
    @logged
    def login() -> Any:
        if request.form.get("csrf") != "ok":
            return "<form> invalid token", 200
        ok = request.form.get("password") == "secret"
        guard.login_result(request.form["username"], ok)
        return redirect("/index" if ok else "/login")

    rejected = app.test_client().post(
        "/login", data={"username": "victim", "password": "x"}, environ_base=IP
    )
    assert rejected.status_code == 200
    assert not _device(rejected)


# -- 3. a GET with a body: _has_body ----------------------------------------------------------


def _signup_app() -> tuple[Any, list[str]]:
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

    return app, created


def test_an_http2_get_with_a_body_spends_the_signup_flow() -> None:
    """Attack: the s16 FastAPI `api_route(methods=["GET", "POST"])` sign-up taking a
    JSON body, served over HTTP/2 (Hypercorn, Granian, Daphne; h2c behind a proxy that
    passes h2 through). In HTTP/2 a request body is DATA frames: Content-Length is
    optional and Transfer-Encoding forbidden, so a bot's GET with a JSON body and no
    Content-Length has neither header in the ASGI scope; `_has_body` says no body,
    `_for_read` drops the flow, and FastAPI still reads and parses the body.
    Impact: the s16 bypass back for every HTTP/2 client: 20 accounts past a 5/hour flow
    (any number).
    Severity: high where the app is served over HTTP/2 end to end.
    Fix: do not trust headers for HTTP/2+ (`scope["http_version"] != "1.1"/"1.0"`:
    keep the flows), or wrap `receive` so a read that yields body bytes charges the
    dropped flows then (or keep flows when the FastAPI route has a `body_field`)."""
    app, created = _signup_app()

    async def run() -> list[int]:
        return [
            await _h2_get(app, json.dumps({"email": f"bot{n}@x.example"}).encode(), n)
            for n in range(20)
        ]

    statuses = asyncio.run(run())
    assert len(created) <= 5, (created, statuses)


def test_a_get_body_declared_by_odd_headers_spends_the_flow() -> None:
    """Attack (stopped): the same sign-up by HTTP/1.1 GETs whose body is declared
    oddly: chunked (httpx streams a generator), a Content-Length with a leading zero,
    a duplicated Content-Length `0` then the real one. Each GET that creates an account
    spends the flow: 5 at most."""
    app, created = _signup_app()
    client = TestClient(app)
    for n in range(6):
        payload = json.dumps({"email": f"c{n}@x.example"}).encode()
        client.request(
            "GET",
            "/signup",
            content=iter([payload]),
            headers={"content-type": "application/json"},
        )
    for n in range(6):
        payload = json.dumps({"email": f"z{n}@x.example"}).encode()
        client.request(
            "GET",
            "/signup",
            content=payload,
            headers={"content-type": "application/json", "content-length": f"0{len(payload)}"},
        )
    assert len(created) <= 5, created


def test_a_browser_get_with_a_proxy_added_content_length_zero_spends_nothing() -> None:
    """Careless user (stopped): a proxy or client adding `Content-Length: 0` (or
    ` 0 `) to a browser's GET of a GET+POST form page (Starlette `Route(methods=["GET",
    "POST"])`): the page's GETs spend no sign-up flow, the POSTs do."""
    guard = Guard()

    @guard.flow("signup", "2/hour", per="ip")
    async def register(request: Request) -> PlainTextResponse:
        if request.method == "GET":
            return PlainTextResponse("<form>")
        return PlainTextResponse("created")

    app = Starlette(routes=[Route("/register", register, methods=["GET", "POST"])])
    app.add_middleware(GuardMiddleware, guard=guard)
    client = TestClient(app)
    pages = [
        client.get("/register", headers={"content-length": value}).status_code
        for value in ("0", " 0 ", "0", "0", "0")
    ]
    assert pages == [200] * 5
    posts = [client.post("/register", data={"u": str(n)}).status_code for n in range(3)]
    assert posts == [200, 200, 429]
