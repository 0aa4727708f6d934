"""A login whose `username=` callable fails (a trial of a Django + DRF app: the README's
`json.loads(request.body)[...]` recipe, and a form-encoded body, which the app accepts):
the attempt was not counted at all, so a brute force on one account from rotating
addresses went through 60 of 60 by changing its body's encoding. Now it counts for one
account that every unreadable attempt shares (as a flow's `key=` does), which gets no
device cookie."""

from __future__ import annotations

import random

from flask import Flask, request

from apiguard import Guard
from apiguard.simulate.clock import FakeClock
from detection_support import public_ip


def _app(guard: Guard) -> Flask:
    from apiguard.flask import init_app

    app = Flask(__name__)
    init_app(app, guard)
    passwords = {f"user{n}@x.org": f"pw{n}" for n in range(30)}

    @app.post("/login")
    @guard.login(username=lambda: request.get_json()["username"])  # JSON only: a form fails
    def login() -> tuple[dict[str, bool], int]:
        data = request.get_json(silent=True) or request.form  # (the app reads both)
        ok = passwords.get(data["username"]) == data["password"]
        return {"ok": ok}, 200 if ok else 401

    return app


def test_a_brute_force_in_form_bodies_is_counted_and_held() -> None:
    clock = FakeClock(5_000_000.0)
    guard = Guard({"secret": "k" * 32}, clock=clock)
    client = _app(guard).test_client()
    rng = random.Random(3)
    checked = refused = 0
    for n in range(60):
        clock.advance(rng.uniform(20, 40))
        r = client.post(
            "/login",
            data={"username": "user0@x.org", "password": f"guess{n}"},
            environ_base={"REMOTE_ADDR": public_ip(rng)},
        )
        checked += r.status_code == 401
        refused += r.status_code in (403, 429)
    assert checked <= 15 and refused >= 45, (checked, refused)


def _people_beside(form: bool) -> list[int]:
    clock = FakeClock(5_000_000.0)
    guard = Guard({"secret": "k" * 32}, clock=clock)
    client = _app(guard).test_client()
    rng = random.Random(4)
    people = {n: public_ip(rng) for n in range(1, 30)}
    statuses = []
    for n in range(60):
        clock.advance(rng.uniform(20, 40))
        guess = {"username": "user0@x.org", "password": f"guess{n}"}
        where = {"REMOTE_ADDR": public_ip(rng)}
        if form:
            client.post("/login", data=guess, environ_base=where)
        else:
            client.post("/login", json=guess, environ_base=where)
        if n % 2:
            who = 1 + n // 2 % 29
            typo = rng.random() < 0.2
            body = {"username": f"user{who}@x.org", "password": f"pw{who}" + "x" * typo}
            r = client.post("/login", json=body, environ_base={"REMOTE_ADDR": people[who]})
            statuses.append(r.status_code)
    return statuses


def test_people_logging_in_beside_it_fare_as_beside_the_same_attack_in_json() -> None:
    """The unreadable account is one account: the people beside it (their usernames
    read) are answered as beside the same brute force sent as JSON (in an app without a
    challenge route, the population alarm's challenge refuses new devices in both)."""
    beside_form = _people_beside(form=True)
    assert beside_form == _people_beside(form=False)
    assert beside_form.count(200) >= 5  # (people got in before the alarm)


def test_a_login_counted_as_unreadable_gets_no_device_cookie() -> None:
    guard = Guard({"secret": "k" * 32}, clock=FakeClock(5_000_000.0))
    client = _app(guard).test_client()
    form = client.post("/login", data={"username": "user1@x.org", "password": "pw1"})
    assert form.status_code == 200
    assert "apiguard_device" not in form.headers.get("set-cookie", "")
    sent = client.post("/login", json={"username": "user2@x.org", "password": "pw2"})
    assert "apiguard_device" in sent.headers.get("set-cookie", "")  # (the control)
