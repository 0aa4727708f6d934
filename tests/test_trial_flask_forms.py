"""A real-app trial (the Flask Mega-Tutorial's microblog: server-rendered forms, Flask-Login,
a form login answering 302 on success and on failure) found these; each failed before
its fix:

- a successful form login (302, reported with `login_result(name, True)` or `success=`)
  got no device cookie, so its owner was a new device during an attack on the account;
- a form re-rendered 200 (a missing CSRF token) on a login route whose app reports its
  outcomes counted as a successful login, and set a device cookie for any username;
- GETs of a form page (GET and POST on one view) spent the sign-up and reset flows:
  a user who opened the reset page three times was refused the reset itself;
- a signed-in user's browser asking for 40 stale static assets (404) was flagged by BOLA
  and refused everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask, redirect, request

from apiguard import Guard, identify
from apiguard.flask import init_app

IP = {"REMOTE_ADDR": "192.0.2.10"}


def _device(response: Any) -> bool:
    return any(h.startswith("apiguard_device=") for h in response.headers.getlist("Set-Cookie"))


def forms_app(guard: Guard, static: Path | None = None) -> Flask:
    app = Flask(
        __name__,
        static_folder=str(static) if static else None,
        static_url_path="/static",
    )
    app.config["TESTING"] = True
    init_app(app, guard)

    @app.before_request
    def who() -> None:
        user = request.headers.get("x-user")
        if user:
            identify(user)

    @app.route("/login", methods=["GET", "POST"])
    @guard.login(username=lambda: request.form.get("username"))
    def login() -> Any:
        if request.method == "GET":
            return "<form>"
        if request.form.get("csrf") != "ok":  # Flask-WTF: the form re-rendered, 200
            return "<form> invalid", 200
        ok = request.form.get("password") == "right"
        guard.login_result(request.form["username"], ok)
        return redirect("/index" if ok else "/login")

    @app.post("/login-ok-only")  # reports its successes only; a failure is its 401
    @guard.login(username=lambda: request.form.get("username"))
    def login_ok_only() -> Any:
        if request.form.get("password") != "right":
            return "no", 401
        guard.login_result(request.form["username"], True)
        return redirect("/index")

    @app.post("/login-success")
    @guard.login(username=lambda: request.form.get("username"), success=lambda rv: True)
    def login_success() -> Any:
        return redirect("/index")

    @app.route("/register", methods=["GET", "POST"])
    @guard.flow("signup", "5/hour", per="ip", count="success")
    def register() -> Any:
        if request.method == "GET":
            return "<form>"
        return redirect("/login")

    @app.route("/reset", methods=["GET", "POST"])
    @guard.flow("password-reset", "3/hour", key=lambda: request.form.get("email"))
    def reset() -> Any:
        if request.method == "GET":
            return "<form>"
        return redirect("/login")

    @app.route("/confirm/<token>", methods=["GET", "POST"])  # its GET confirms too
    @guard.flow("confirm", "2/hour", per="ip", count_reads=True)
    def confirm(token: str) -> str:
        return "confirmed"

    @app.get("/user/<username>")
    def user(username: str) -> str:
        return username

    return app


def test_a_form_login_answered_302_sets_the_device_cookie() -> None:
    client = forms_app(Guard()).test_client()
    ok = client.post(
        "/login", data={"username": "ann", "password": "right", "csrf": "ok"}, environ_base=IP
    )
    assert ok.status_code == 302 and _device(ok)
    declared = client.post("/login-success", data={"username": "bob"}, environ_base=IP)
    assert declared.status_code == 302 and _device(declared)
    failed = client.post(
        "/login", data={"username": "cy", "password": "wrong", "csrf": "ok"}, environ_base=IP
    )
    assert failed.status_code == 302 and not _device(failed)


def test_a_rejected_form_on_a_reporting_login_route_is_no_login() -> None:
    guard = Guard()
    client = forms_app(guard).test_client()
    client.post(
        "/login", data={"username": "ann", "password": "right", "csrf": "ok"}, environ_base=IP
    )
    # the same route, a POST without the CSRF field: the form re-rendered 200
    for n in range(20):
        rejected = client.post(
            "/login",
            data={"username": f"victim{n}", "password": "x"},
            environ_base={"REMOTE_ADDR": f"198.51.100.{n + 1}"},
        )
        assert rejected.status_code == 200
        assert not _device(rejected), n


def test_the_page_of_a_form_view_spends_no_flow() -> None:
    client = forms_app(Guard()).test_client()
    for _ in range(20):  # the sign-up page, opened again and again
        assert client.get("/register", environ_base=IP).status_code == 200
    answered = [client.post("/register", environ_base=IP).status_code for _ in range(6)]
    assert answered == [302] * 5 + [429]  # the flow is its writes'
    # a forgetful user opening the reset page again and again still gets the reset
    for _ in range(10):
        assert client.get("/reset", environ_base=IP).status_code == 200
    sent = [
        client.post("/reset", data={"email": "ann@example.org"}, environ_base=IP).status_code
        for _ in range(4)
    ]
    assert sent == [302, 302, 302, 429]


def test_a_flow_declared_count_reads_counts_its_gets() -> None:
    client = forms_app(Guard()).test_client()
    answered = [client.get(f"/confirm/t{n}", environ_base=IP).status_code for n in range(3)]
    assert answered == [200, 200, 429]


def test_stale_static_assets_are_no_bola_walk(tmp_path: Path) -> None:
    (tmp_path / "app.js").write_text("ok")
    client = forms_app(Guard(), static=tmp_path).test_client()
    me = {"x-user": "ann"}
    statuses = [
        client.get(f"/static/js/chunk-{k}.js", headers=me, environ_base=IP).status_code
        for k in range(60)
    ]
    assert statuses == [404] * 60
    assert client.get("/static/app.js", headers=me, environ_base=IP).status_code == 200
    assert client.get("/user/ann", headers=me, environ_base=IP).status_code == 200


def test_an_app_reporting_only_successes_keeps_its_failures_counted() -> None:
    client = forms_app(Guard()).test_client()
    ok = client.post(
        "/login-ok-only", data={"username": "ann", "password": "right"}, environ_base=IP
    )
    assert ok.status_code == 302 and _device(ok)
    # a brute force on one account from rotating addresses: its 401s are failures
    answered = [
        client.post(
            "/login-ok-only",
            data={"username": "bob", "password": f"guess{n}"},
            environ_base={"REMOTE_ADDR": f"203.0.113.{n + 1}"},
        ).status_code
        for n in range(30)
    ]
    assert answered[0] == 401
    assert answered[-10:].count(401) == 0, answered  # held back (growing delays)
