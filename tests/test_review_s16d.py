"""Review s16d: attacks on the s16c fixes (`login.html_answer`: a login answered with an
HTML page is no success by its 2xx, and on a route reporting nothing such a page is a
FAILED login; `_body_marker` / `BODY_KEY` for HTTP/2 reads; `calls_login_result` taking
any reference to `login_result` as reporting).

The xfail(strict=True) tests are holes found on the reviewed code: each asserts the
secure (or benign-safe) behaviour, so it fails now and passes once fixed. The others are
attacks tried that were already stopped."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from flask import redirect, request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from apiguard import Guard
from apiguard.asgi import GuardMiddleware
from login_review_helpers import flask_app as _flask
from login_review_helpers import h2_get as _h2_get
from login_review_helpers import marks as _marks

IP = {"REMOTE_ADDR": "192.0.2.10"}


# -- 1. page_failed: denial of service on honest users --------------------------------------


def test_page_views_naming_the_victim_do_not_hold_the_victims_login() -> None:
    """Attack: a careless form login (GET+POST route, no `login_result()`, success
    redirects) whose `username=` reads `request.values`, as login pages prefilling the
    name from the query string do (`/login?username=alice` in a "sign in again" e-mail).
    Every GET of the page naming an account now records a login attempt answered with
    an HTML page, so `page_failed` counts it as a FAILED login. GETs need no password
    and no CSRF token: `<img src=/login?username=victim>` on any busy page makes its
    visitors' browsers (many addresses) send them, or a bot from rotating addresses.
    Measured: 8 such GETs from 8 addresses put "victim" under protection: the victim's
    own correct password from a new device is then refused (challenged) instead of
    logged in; the same number of GETs with random names raises failures everywhere.
    Honest prefilled page views count as failures too.
    Severity: medium (availability: any account held for free; cross-site triggerable,
    unlike wrong-password POSTs a same-site form protects).
    Fix: a read (GET/HEAD/OPTIONS) to a login route is no login attempt: neither
    success nor failure (do not record it in `login_started`, or have `page_failed`
    require a write method)."""
    guard = Guard()
    app = _flask(guard)

    @app.route("/login", methods=["GET", "POST"])
    @guard.login(username=lambda: request.values.get("username"))
    def login() -> Any:
        if request.method == "GET":
            return f"<form><input name=username value={request.values.get('username')}>"
        if request.form.get("password") == "secret":
            return redirect("/index")
        return "<form> wrong password", 200

    client = app.test_client()
    for n in range(8):
        client.get(
            "/login",
            query_string={"username": "victim"},
            environ_base={"REMOTE_ADDR": f"198.51.{n}.7"},
        )
    own = client.post(
        "/login",
        data={"username": "victim", "password": "secret"},
        environ_base={"REMOTE_ADDR": "203.0.113.77"},
    )
    assert own.status_code == 302, own.status_code


def test_an_office_logging_in_to_a_dashboard_page_is_not_blocked() -> None:
    """Benign side: a form login that reports nothing and answers a correct password
    with the dashboard rendered 200 (no post/redirect/get: common in small Flask apps).
    Every honest login is an HTML 2xx on an unreported route: `page_failed` counts it as
    a FAILED login, never resolved (no success is ever seen). Measured: 8 colleagues
    behind one office address each log in once, correctly: 8 distinct usernames failed,
    100% failed share, so the one-actor-many-accounts rule blocks the office address:
    the 9th colleague's correct login is refused 403. By the account rule, one user
    logging in from 8 devices in an hour would likewise hold their own account (not
    measured here), and no login ever gives a device cookie. The run
    time warning is logged once; the default behaviour punishes users meanwhile.
    Severity: medium (availability regression of s16c for a default setup; before, such
    logins counted as nothing).
    Fix: count an unreported HTML 2xx as a failure only for the population and
    many-actors-one-account signals, not for the actor's failed-usernames count (or cap
    its weight); better, treat an unreported HTML 2xx as unknown until one 4xx or one
    report shows the route's failures are answered 2xx."""
    guard = Guard()
    app = _flask(guard)

    @app.route("/login", methods=["GET", "POST"])
    @guard.login(username=lambda: request.form.get("username"))
    def login() -> Any:
        if request.method == "GET":
            return "<form>"
        if request.form.get("password") == "secret":
            return f"<h1>Dashboard of {request.form['username']}</h1>"
        return "<form> wrong password", 200

    client = app.test_client()
    office = {"REMOTE_ADDR": "192.0.2.50"}
    statuses = [
        client.post(
            "/login", data={"username": f"colleague{n}", "password": "secret"}, environ_base=office
        ).status_code
        for n in range(9)
    ]
    assert statuses == [200] * 9, statuses


def test_plain_401_failures_hold_the_account_as_before() -> None:
    """Attack (baseline, stopped as designed): the same 8 guesses at "victim" from 8
    addresses on a JSON login answering 401 put the account under protection; the
    victim's correct login from a device holding its device cookie still passes, and the
    held response never tells the guess. Shown for comparison with the GET case above:
    there the attacker needs no POST at all."""
    guard = Guard()
    app = _flask(guard)

    @app.post("/api/login")
    @guard.login(username=lambda: request.get_json()["username"])
    def api_login() -> Any:
        if request.get_json().get("password") == "secret":
            return {"token": "t"}
        return {"error": "bad"}, 401

    client = app.test_client()
    first = client.post(
        "/api/login", json={"username": "victim", "password": "secret"}, environ_base=IP
    )
    assert first.status_code == 200 and _marks(guard, first, "victim")
    for n in range(8):
        client.post(
            "/api/login",
            json={"username": "victim", "password": f"guess{n}"},
            environ_base={"REMOTE_ADDR": f"198.51.{n}.9"},
        )
    again = client.post(
        "/api/login", json={"username": "victim", "password": "secret"}, environ_base=IP
    )
    assert again.status_code == 200


# -- 1b. html_answer: content-type variants ---------------------------------------------------


def _starlette(guard: Guard, answer: Any) -> TestClient:
    """A Starlette form login reporting from a helper (the route starts status-decided);
    a CSRF-less post is answered `answer()` 200."""

    @guard.login(username=lambda request: request.query_params.get("username"))
    async def login(request: Request) -> Response:
        form = await request.form()
        if form.get("csrf") != "ok":
            return answer()
        ok = form.get("password") == "secret"
        helper = guard
        helper.__getattribute__("login_" + "result")(request.query_params["username"], ok)
        return RedirectResponse("/index" if ok else "/login", status_code=302)

    app = Starlette(routes=[Route("/login", login, methods=["GET", "POST"])])
    app.add_middleware(GuardMiddleware, guard=guard)
    return TestClient(app, client=("192.0.2.10", 1234))


@pytest.mark.parametrize(
    "answer",
    [
        lambda: HTMLResponse("<form> invalid token"),
        lambda: Response("<form>", headers={"Content-Type": "TEXT/HTML ; charset=utf-8"}),
        lambda: Response("<form/>", media_type="application/xhtml+xml"),
    ],
    ids=["HTMLResponse", "upper case", "xhtml"],
)
def test_html_answer_variants_give_no_victim_cookie(answer: Any) -> None:
    """Attack (stopped): the helper-reporting Starlette form login (its source reaches
    `login_result` only through a computed name, so it starts status-decided) answering
    a CSRF-less post for "victim" with HTMLResponse, an upper-case `TEXT/HTML ;
    charset`, or XHTML: each is an HTML answer, no success, no victim cookie."""
    guard = Guard()
    client = _starlette(guard, answer)
    got = client.post("/login", params={"username": "victim"}, data={"password": "x"})
    assert got.status_code == 200
    assert not _marks(guard, got, "victim")


def test_a_form_page_answered_without_content_type_gives_no_victim_cookie() -> None:
    """Attack: the same Starlette form login re-rendering its form with a bare
    `Response(html)` (Starlette sends no Content-Type when `media_type` is not given;
    likewise a raw ASGI app or a Werkzeug `Response(..., mimetype=None)` proxying a
    template). `html_answer` finds no content type, so the CSRF-less 200 for "victim"
    is a status-decided success: the response sets the victim's device cookie.
    Impact: a device cookie for any account without its password (exempts its holder
    from the account's holds and the population alarm).
    Severity: medium (needs a page answered with no Content-Type; browsers sniff it as
    HTML, so such apps work and nobody notices).
    Fix: take a 2xx with no Content-Type (or one sniffable as a document: not a JSON
    or other data type) as no success by status; only a data answer (application/json,
    +json, text/plain...) lets the status decide."""
    guard = Guard()
    client = _starlette(guard, lambda: Response("<html><form> invalid token</form></html>"))
    got = client.post("/login", params={"username": "victim"}, data={"password": "x"})
    assert got.status_code == 200
    assert not _marks(guard, got, "victim")


# -- 2. _body_marker: HTTP/2 GET bodies ------------------------------------------------------


def test_an_http2_get_whose_body_the_view_reads_spends_the_flow() -> None:
    """Attack: the s16c HTTP/2 sign-up, on a FastAPI `api_route(methods=["GET",
    "POST"])` whose view takes `request: Request` and reads `await request.json()`
    itself (no dependency): the flow's check runs when the view is entered, before the
    body is read, so `BODY_KEY` is unset then and `_for_read` drops the flow. The README
    admits it ("a body such a GET's handler reads only after the flow's check is not
    seen"), but this is the most common way to read a raw body in FastAPI/Starlette.
    Measured: 20 accounts past a 5/hour sign-up flow (any number).
    Severity: medium-high where served over HTTP/2 (Hypercorn, Granian, Daphne).
    Fix: on HTTP/2 and later keep the flows on reads of a route that also takes a write
    method (headers cannot tell a body there), or have the marker charge the dropped
    flows (and refuse past the limit) when the first body byte arrives."""
    from fastapi import FastAPI

    guard = Guard()
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)
    created: list[str] = []

    @app.api_route("/signup", methods=["GET", "POST"])
    @guard.flow("signup", "5/hour", per="ip")
    async def signup(request: Request) -> dict[str, str]:
        body = await request.json()
        created.append(body["email"])
        return {"created": body["email"]}

    async def run() -> list[int]:
        return [
            await _h2_get(app, json.dumps({"email": f"bot{n}@x.example"}).encode(), n)
            for n in range(20)
        ]

    statuses = asyncio.run(run())
    assert len(created) <= 5, (len(created), statuses)


def test_http2_browser_gets_with_empty_data_frames_spend_no_flow() -> None:
    """Careless case (stopped): HTTP/2 browser GETs to a GET+POST FastAPI route whose
    body a dependency may read, each carrying an empty DATA frame (`body: b""`,
    `more_body` then the END_STREAM frame, as some clients send): `_body_marker` marks
    only a non-empty body, so 20 honest page reads spend nothing of a 5/hour flow."""
    from fastapi import Depends, FastAPI

    guard = Guard()
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    async def payload(req: Request) -> bytes:
        return await req.body()

    @app.api_route("/signup", methods=["GET", "POST"])
    @guard.flow("signup", "5/hour", per="ip")
    async def signup(body: bytes = Depends(payload)) -> dict[str, int]:
        return {"read": len(body)}

    async def run() -> list[int]:
        return [await _h2_get(app, b"", n, frames=2) for n in range(20)]

    assert asyncio.run(run()) == [200] * 20


# -- 3. calls_login_result: false positives ---------------------------------------------------


def test_a_json_login_answering_a_login_result_key_gets_its_device_cookie() -> None:
    """Careless / availability: a JSON login that reports nothing (the status tells:
    200 token, 401 bad password) but answers `{"login_result": "ok"}`, or stores
    `self.login_result` / reads `auth.login_result` of its own auth library.
    `calls_login_result` now takes any `login_result` name, attribute or string constant
    for a report, so `make_reporting` makes the route reporting for good: its honest
    200s are no success, no device cookie ever (a warning is logged once).
    Measured: a correct login answered 200 sets no `apiguard_device` cookie, so during a
    stuffing alarm or a hold on their account these users are challenged on their own
    account.
    Severity: low-medium (availability; plausible names).
    Fix: count only a Load of an attribute `login_result` on something that is the
    Guard (or a name bound from it), a bare call `login_result(...)`, and a
    `getattr(..., "login_result")`; not a dict key, a Store, or other constants."""
    guard = Guard()
    app = _flask(guard)

    @app.post("/api/login")
    @guard.login(username=lambda: request.get_json()["username"])
    def api_login() -> Any:
        if request.get_json().get("password") != "secret":
            return {"login_result": "bad password"}, 401
        return {"login_result": "ok", "token": "t"}

    answer = app.test_client().post(
        "/api/login", json={"username": "alice", "password": "secret"}, environ_base=IP
    )
    assert answer.status_code == 200
    assert _marks(guard, answer, "alice")
