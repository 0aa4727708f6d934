"""Review s16c: attacks on the s16b fixes (`form_page`: a form-encoded login to a route
serving its page by GET is no success by its 2xx alone; `calls_login_result` by `ast`;
`LoginRule.learn` / `make_reporting`; `login_renamed`; `_for_read` keeping flows on a
FastAPI route with a `body_field`; the audit note on a GET+POST login reporting nothing).

The xfail(strict=True) tests are holes found on the reviewed code: each asserts the
secure behaviour, so it fails now and passes once fixed. The others are attacks tried
that were already stopped."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from flask import redirect, request
from flask.views import MethodView
from starlette.requests import Request

from apiguard import Guard
from apiguard.asgi import GuardMiddleware
from apiguard.login import calls_login_result, device_key, device_mac
from login_review_helpers import device_cookies as _cookies
from login_review_helpers import flask_app as _flask
from login_review_helpers import h2_get as _h2_get
from login_review_helpers import marks as _marks

IP = {"REMOTE_ADDR": "192.0.2.10"}


def _helper(guard: Guard, form: Any) -> Any:
    """The app's `services.authenticate(form)`: checks the password and reports it (the
    view's own source never calls `login_result()`)."""
    ok = form.get("password") == "secret"
    guard.login_result(form["username"], ok)
    return redirect("/index" if ok else "/login")


# -- 1. form_page: the request's own encoding decides ---------------------------------------


@pytest.mark.parametrize("shape", ["query string", "text/plain body", "JSON body"])
def test_a_form_login_posted_unencoded_gives_no_victim_cookie(shape: str) -> None:
    """Attack: the s16b helper-reporting form login (GET+POST route, CSRF check in the
    view, password check and `login_result()` in a helper, so the route starts
    status-decides) whose fields are read the tolerant way many apps do:
    `request.values` (query string and form), or `request.form or request.get_json()`
    (Flask-WTF's `wrap_formdata` itself takes a JSON body when there is no form).
    `form_page` only withholds the 2xx's success when the request is form-encoded, and
    the attacker picks the encoding: a POST naming "victim" in the query string (no body,
    or a text/plain one) or as JSON is CSRF-rejected, re-rendered 200 unreported, and
    that 200 is a success: the response sets the victim's device cookie.
    Impact: the s16b fresh-worker hole reopened in one request: a device cookie for any
    account, no password, exempting its holder from that account's takeover holds.
    Severity: high for form logins reporting from a helper (a common layering).
    Fix: judge the route and the answer, not the request: on a route that serves GET
    (or whose methods are unknown) no unreported 2xx is a success unless reports=False;
    or take a 2xx answered text/html as no success whatever the request's encoding."""
    guard = Guard()
    app = _flask(guard)

    def fields() -> Any:
        return request.values if request.values else (request.get_json(silent=True) or {})

    @app.route("/login", methods=["GET", "POST"])
    @guard.login(username=lambda: fields().get("username"))
    def login() -> Any:
        if request.method == "GET":
            return "<form>"
        if fields().get("csrf") != "ok":
            return "<form> invalid token", 200
        return _helper(guard, fields())

    client = app.test_client()  # (a fresh worker: nothing reported on the route yet)
    attack = {"username": "victim", "password": "x"}
    if shape == "query string":
        answer = client.post("/login", query_string=attack, environ_base=IP)
    elif shape == "text/plain body":
        answer = client.post(
            "/login", query_string=attack, data="hi", content_type="text/plain", environ_base=IP
        )
    else:
        answer = client.post("/login", json=attack, environ_base=IP)
    assert answer.status_code == 200
    assert not _marks(guard, answer, "victim")
    honest = client.post(
        "/login", data={"username": "alice", "password": "secret", "csrf": "ok"}, environ_base=IP
    )
    assert honest.status_code == 302 and _marks(guard, honest, "alice")


def test_a_post_only_form_login_view_gives_no_victim_cookie() -> None:
    """Attack: the same helper-reporting form login written the Flask 2 way, the page
    and the post as two views on one URL (`@app.get("/login")` and `@app.post("/login")`;
    likewise Django's `View` with a `post()` only, the page a `TemplateView`, and
    Starlette/FastAPI routes split by method). `form_page` sees a route whose methods
    lack GET, takes it for an OAuth2 token endpoint and lets its 2xx decide: a CSRF-less
    form-encoded POST naming "victim" re-renders 200 unreported, a success, the victim's
    device cookie. `apiguard audit` says nothing either (its note needs GET and POST on
    one route).
    Impact: a device cookie for any account without its password, on every fresh worker
    (the s16b hole, on the other common way to write the view).
    Severity: high for such apps.
    Fix: on a form-encoded POST, look for a GET rule on the same path (Flask's url_map,
    Starlette's routes) before calling it a token endpoint; or take a 2xx answered
    text/html as no success by status; the audit note should cover POST-only logins."""
    guard = Guard()
    app = _flask(guard)

    @app.get("/login")
    def page() -> Any:
        return "<form>"

    @app.post("/login")
    @guard.login(username=lambda: request.form.get("username"))
    def do_login() -> Any:
        if request.form.get("csrf") != "ok":
            return "<form> invalid token", 200
        return _helper(guard, request.form)

    answer = app.test_client().post(
        "/login", data={"username": "victim", "password": "x"}, environ_base=IP
    )
    assert answer.status_code == 200
    assert not _marks(guard, answer, "victim")


def test_odd_form_encodings_on_a_form_page_give_no_victim_cookie() -> None:
    """Attack (stopped): the helper-reporting GET+POST form login reading `request.form`
    (as the README shows), posted with content types the parser still takes for a form
    while hoping `form_page` does not: upper case, a space before `;charset`, tabs,
    multipart, a charset parameter. Werkzeug parses each as a form and `form_page`
    lowercases and strips the same way: no victim cookie; a type Werkzeug does not parse
    as a form reads no username, so no attempt and no cookie either."""
    guard = Guard()
    app = _flask(guard)

    @app.route("/login", methods=["GET", "POST"])
    @guard.login(username=lambda: request.form.get("username"))
    def login() -> Any:
        if request.method == "GET":
            return "<form>"
        if request.form.get("csrf") != "ok":
            return "<form> invalid token", 200
        return _helper(guard, request.form)

    client = app.test_client()
    body = "username=victim&password=x"
    for kind in (
        "APPLICATION/X-WWW-FORM-URLENCODED",
        "application/x-www-form-urlencoded ;charset=utf-8",
        "\tapplication/x-www-form-urlencoded\t",
        "application/x-www-form-urlencoded, text/plain",
        "text/plain; x=application/x-www-form-urlencoded",
    ):
        answer = client.post("/login", data=body, content_type=kind, environ_base=IP)
        assert answer.status_code == 200
        assert not _marks(guard, answer, "victim"), kind
    multipart = client.post(
        "/login",
        data={"username": "victim", "password": "x"},
        content_type="multipart/form-data",
        environ_base=IP,
    )
    assert multipart.status_code == 200 and not _marks(guard, multipart, "victim")


# -- 2. a careless form login: failures counted? ------------------------------------------


@pytest.mark.xfail(
    strict=True,
    reason="a form login reporting nothing is blind: its pages count neither way, since "
    "counting them as failures blocked offices whose login shows a 200 dashboard and let "
    "page views naming an account hold it, review s16d",
)
def test_a_careless_form_login_brute_force_is_counted() -> None:
    """Attack: a careless Flask form login: `@guard.login(username=...)` on a GET+POST
    view that never calls `login_result()` and re-renders a wrong password with 200 (a
    success redirects). Since s16b its form-encoded 200 is no success, but not a failure
    either (`_failed` gives None), so a brute force on one account from rotating
    addresses is never counted: 100 of 100 guesses reach the password check (the same
    view answering 401 is held after 8). Before s16b those 200s were successes (and
    device cookies): no better, but nothing at run time says the view is blind now; only
    `apiguard audit`, if run, names it.
    Impact: brute force / cracking of any account through such a view is invisible to
    the per-account and population detections.
    Severity: medium (a misconfiguration the README warns about, but the default).
    Fix: count an unreported form-page 2xx as a failure for the many-actors-one-account
    and population detections (no device cookie either way), or log once at run time,
    as `_unreported` does, that the route's outcomes are not counted."""
    guard = Guard()
    app = _flask(guard)

    @app.route("/login", methods=["GET", "POST"])
    @guard.login(username=lambda: request.form.get("username"))
    def login() -> Any:
        if request.method == "GET":
            return "<form>"
        if request.form.get("password") == "secret":
            return redirect("/index")
        return "<form> wrong password", 200

    client = app.test_client()
    checked = 0
    for n in range(100):
        answer = client.post(
            "/login",
            data={"username": "victim", "password": f"guess{n}"},
            environ_base={"REMOTE_ADDR": f"198.51.{n}.{n % 200 + 1}"},
        )
        checked += answer.status_code == 200
    assert checked <= 12, f"{checked} of 100 guesses reached the password check"


# -- 3. calls_login_result by ast ---------------------------------------------------------


def test_a_view_calling_login_result_through_an_alias_is_reporting() -> None:
    """Attack: a view whose own code reports, but not as `x.login_result(...)`:
    `report = guard.login_result; report(name, ok)` (a local alias, or one bound at
    module level), `getattr(guard, "login_result")(...)`, `partial(guard.login_result,
    name)(ok)`. The ast walk looks only at a Call whose func is named `login_result`,
    so `make_reporting` leaves these status-decides, contrary to the README ("a view
    whose own code calls login_result() ... reports, for good"). In a fresh worker its
    CSRF-rejected 200 is then a success wherever `form_page` does not catch it (a
    POST-only view, a request not form-encoded: the tests above), the victim's cookie.
    Impact: the s16b fresh-worker hole for such views.
    Severity: medium (needs one of the form_page gaps; plausible code).
    Fix: count any reference to an attribute or name `login_result` (Load context, not
    only a Call's func) and a `getattr(..., "login_result")` as reporting."""
    guard = Guard()

    def aliased() -> None:
        report = guard.login_result
        report("x", True)

    def by_getattr() -> None:
        getattr(guard, "login_result")("x", True)  # noqa: B009

    def by_partial() -> None:
        from functools import partial

        partial(guard.login_result, "x")(True)

    found = {f.__name__: calls_login_result(f) for f in (aliased, by_getattr, by_partial)}
    assert all(found.values()), found


def test_a_method_view_reporting_in_a_nested_or_async_function_is_reporting() -> None:
    """Attack (stopped): the source search on a nested helper function defined in the
    view, an `async def` view, and a Flask `MethodView` whose `post()` carries
    `@guard.login` and calls `login_result()`: each is found (ast.walk covers nested
    functions; the method's own source is read), so the route reports from the start and
    a CSRF-less 200 for "victim" sets no cookie, in any encoding."""
    guard = Guard()

    def nested() -> None:
        def inner() -> None:
            guard.login_result("x", True)

        inner()

    async def coroutine() -> None:
        guard.login_result("x", True)

    assert calls_login_result(nested) and calls_login_result(coroutine)

    app = _flask(guard)

    class Login(MethodView):
        def get(self) -> Any:
            return "<form>"

        @guard.login(username=lambda: request.values.get("username"))
        def post(self) -> Any:
            if request.values.get("csrf") != "ok":
                return "<form> invalid token", 200
            ok = request.values.get("password") == "secret"
            guard.login_result(request.values["username"], ok)
            return redirect("/index" if ok else "/login")

    app.add_url_rule("/login", view_func=Login.as_view("login"))
    client = app.test_client()
    for answer in (
        client.post("/login", data={"username": "victim"}, environ_base=IP),
        client.post("/login", query_string={"username": "victim"}, environ_base=IP),
    ):
        assert answer.status_code == 200
        assert not _marks(guard, answer, "victim")


# -- 4. login_renamed -----------------------------------------------------------------------


def test_login_result_after_an_unreadable_or_missing_name_marks_only_the_reported() -> None:
    """Attack (stopped): `@guard.login`'s callable raises on the attacker's body (it
    reads JSON, the attacker posts a form: the attempt is UNREADABLE's) or reads no name;
    the app checks another field and reports. Reporting "victim" failed sets no cookie;
    the attacker's own account reported successful sets its cookie only; a name reported
    with spaces or another case marks that name as reported (stripped), never "victim"."""
    guard = Guard()
    app = _flask(guard)
    passwords = {"victim": "secret", "mallory": "mallorys", "VICTIM": "mallorys"}

    @app.post("/api/login")
    @guard.login(username=lambda: request.get_json()["username"], reports=True)
    def api_login() -> Any:
        body = request.values
        name = body.get("email")
        ok = passwords.get(name.strip()) == body.get("password")
        guard.login_result(name, ok)
        return ({"token": "t"}, 200) if ok else ({"error": "bad"}, 401)

    client = app.test_client()
    failed = client.post("/api/login", data={"email": "victim", "password": "x"}, environ_base=IP)
    assert failed.status_code == 401 and not _cookies(failed)
    for own in ("mallory", " VICTIM "):
        answer = client.post(
            "/api/login", data={"email": own, "password": "mallorys"}, environ_base=IP
        )
        assert answer.status_code == 200
        assert not _marks(guard, answer, "victim"), own
        assert _marks(guard, answer, own.strip()), own


# -- 5. _for_read: FastAPI body_field -------------------------------------------------------


def test_an_http2_get_whose_body_a_dependency_reads_spends_the_flow() -> None:
    """Attack: the s16b HTTP/2 sign-up, on a FastAPI `api_route(methods=["GET",
    "POST"])` whose JSON body is read by a dependency (`Depends(payload)` doing `await
    request.json()`: a signature check, a shared parser) or by the view itself through
    `Request`. The route has no `body_field`, an HTTP/2 GET carries no Content-Length,
    so `_for_read` drops the flow while the dependency reads and the view acts on the
    body.
    Impact: 20 accounts created past a 5/hour sign-up flow (any number), every HTTP/2
    client.
    Severity: medium-high where served over HTTP/2 (Hypercorn, Granian, Daphne, h2c).
    Fix: keep the flows on any GET whose scope is HTTP/2 or later (headers cannot tell
    a body there), or wrap `receive` so a read yielding body bytes charges the dropped
    flows then."""
    from fastapi import Depends, FastAPI

    guard = Guard()
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)
    created: list[str] = []

    async def payload(req: Request) -> dict[str, Any]:
        return dict(await req.json())

    @app.api_route("/signup", methods=["GET", "POST"])
    @guard.flow("signup", "5/hour", per="ip")
    async def signup(body: dict[str, Any] = Depends(payload)) -> dict[str, str]:  # noqa: B008
        created.append(body["email"])
        return {"created": body["email"]}

    async def run() -> list[int]:
        return [
            await _h2_get(
                app,
                json.dumps({"email": f"bot{n}@x.example"}).encode(),
                n,
                kind=b"application/json",
            )
            for n in range(20)
        ]

    statuses = asyncio.run(run())
    assert len(created) <= 5, (len(created), statuses)


def test_an_http2_get_to_a_form_params_route_spends_the_flow() -> None:
    """Attack (stopped): the same sign-up taking `Form(...)` parameters: FastAPI gives
    the route a `body_field`, so `_for_read` keeps the flow on GETs and a form-encoded
    HTTP/2 GET with no Content-Length creates 5 accounts at most."""
    from fastapi import FastAPI, Form

    guard = Guard()
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)
    created: list[str] = []

    @app.api_route("/signup", methods=["GET", "POST"])
    @guard.flow("signup", "5/hour", per="ip")
    async def signup(email: str = Form(...)) -> dict[str, str]:
        created.append(email)
        return {"created": email}

    async def run() -> list[int]:
        return [
            await _h2_get(
                app,
                f"email=bot{n}%40x.example".encode(),
                n,
                kind=b"application/x-www-form-urlencoded",
            )
            for n in range(12)
        ]

    statuses = asyncio.run(run())
    assert len(created) <= 5, (len(created), statuses)
    assert statuses[:5] == [200] * 5


# -- 6. Django: methods unknown -------------------------------------------------------------


def test_a_django_function_view_token_login_posted_as_a_form_gets_its_cookie() -> None:
    """Careless-user / availability: an OAuth2-style password grant on a Django function
    view (`@csrf_exempt def token(request)`, `request.POST`, 200 JSON on success, 401
    on failure: the status tells, as mobile apps and `requests.post(data=...)` use it).
    A function view's methods are unknown and it has no `view_class`, so `form_page`
    calls every form-encoded POST there a form page: an honest user's 200 is no success,
    no device cookie, ever (its 401 failures still count).
    Impact: the device-cookie exemption is off for every user of such an endpoint:
    during a stuffing alarm or a hold on their account they are challenged or refused on
    their own account (a regression of s16b; before, their 200 gave the cookie).
    Severity: medium (availability).
    Fix: a 2xx answered with a JSON (non-HTML) body is a status-decided success even on
    an unknown-method route; or read `require_POST` / `require_http_methods` (their
    wrapped view) as known methods; at least warn once as `_unreported` does."""
    from django.http import HttpRequest, JsonResponse
    from django.test import Client as DjangoClient
    from django.urls import path
    from django.views.decorators.csrf import csrf_exempt

    from harness import DjangoSite

    guard = Guard()

    @csrf_exempt
    @guard.login(username=lambda request: request.POST.get("username"))
    def token(request: HttpRequest) -> JsonResponse:
        if request.POST.get("password") != "secret":
            return JsonResponse({"error": "invalid_grant"}, status=401)
        return JsonResponse({"access_token": "t"})

    site = DjangoSite(guard, [path("oauth/token", token)])
    try:
        answer = DjangoClient().post(
            "/oauth/token",
            {"grant_type": "password", "username": "alice", "password": "secret"},
            REMOTE_ADDR="192.0.2.10",
        )
    finally:
        site.close()
    assert answer.status_code == 200
    hasher = guard.engine.hasher
    mac = device_mac(hasher, device_key(hasher, "alice"))
    assert mac in (
        answer.cookies.get("apiguard_device").value if "apiguard_device" in answer.cookies else ""
    )
