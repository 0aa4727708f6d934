"""`@guard.flow(key=...)`: a flow counted per a value of the request (a password reset
per target e-mail), whatever address or account asks. A trial of a real Flask app: reset
e-mails to one victim from rotating addresses, 59 delivered; `per=` sees no body."""

from __future__ import annotations

import random
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.testclient import TestClient

from apiguard import ConfigurationError, Guard
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock
from detection_support import public_ip


class Reset(BaseModel):
    email: str


def fastapi_reset(guard: Guard, sent: list[str]) -> Any:
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.post("/password-reset")
    @guard.flow("password-reset", "3/hour", key="payload.email")
    def reset(payload: Reset) -> dict[str, bool]:
        sent.append(payload.email)
        return {"sent": True}

    @app.post("/password-reset/confirm")
    @guard.flow("password-reset", key="payload.email", completes=False)
    def confirm(payload: Reset) -> dict[str, bool]:
        return {"ok": True}

    return lambda ip: TestClient(app, client=(ip, 40_000))


def flask_reset(guard: Guard, sent: list[str]) -> Any:
    from flask import Flask, request

    from apiguard.flask import init_app

    app = Flask("flow_key")
    init_app(app, guard)

    @app.post("/password-reset")
    @guard.flow("password-reset", "3/hour", key=lambda: request.get_json()["email"])
    def reset() -> dict[str, bool]:
        sent.append(request.get_json()["email"])
        return {"sent": True}

    client = app.test_client()

    class Caller:
        def __init__(self, ip: str) -> None:
            self.ip = ip

        def post(self, path: str, json: Any) -> Any:
            return client.post(path, json=json, environ_base={"REMOTE_ADDR": self.ip})

    return Caller


@pytest.mark.parametrize("build", [fastapi_reset, flask_reset], ids=["fastapi", "flask"])
def test_reset_bombing_from_rotating_addresses_is_held_per_email(build: Any) -> None:
    clock = FakeClock(9_000_000.0)
    guard = Guard(clock=clock)
    sent: list[str] = []
    client = build(guard, sent)
    rng = random.Random(2)
    statuses = []
    for i in range(20):  # one victim, a fresh address each time, the e-mail's case varied
        clock.advance(rng.uniform(5, 30))
        email = "Victim@Example.org" if i % 2 else " victim@example.org"
        statuses.append(
            client(public_ip(rng)).post("/password-reset", json={"email": email}).status_code
        )
    assert statuses[:3] == [200] * 3 and set(statuses[3:]) == {429}
    assert len(sent) == 3
    # people behind one office address reset their own passwords, each within its budget
    for n in range(10):
        r = client("198.51.100.9").post("/password-reset", json={"email": f"p{n}@corp.example"})
        assert r.status_code == 200


def test_the_steps_of_one_flow_share_the_key() -> None:
    clock = FakeClock(9_000_000.0)
    guard = Guard(clock=clock)
    client = fastapi_reset(guard, [])
    for _ in range(3):
        assert (
            client("192.0.2.1").post("/password-reset", json={"email": "a@x.org"}).status_code
            == 200
        )
    assert (
        client("192.0.2.2").post("/password-reset/confirm", json={"email": "a@x.org"}).status_code
        == 429
    )
    assert (
        client("192.0.2.2").post("/password-reset/confirm", json={"email": "b@x.org"}).status_code
        == 200
    )


def test_bad_key_declarations_fail_clearly() -> None:
    guard = Guard()
    with pytest.raises(ConfigurationError, match="give per= or key=, not both"):
        guard.flow("f", "3/hour", per="ip", key="payload.email")
    with pytest.raises(ConfigurationError, match=r"Reset has no field 'mail'"):

        @guard.flow("g", "3/hour", key="payload.mail")
        def reset(payload: Reset) -> None: ...

    with pytest.raises(ConfigurationError, match="key= reads body"):

        @guard.flow("h", "3/hour", key="body.email")
        def reset2(payload: Reset) -> None: ...


def test_flask_login_declared_with_a_callable_reading_the_request() -> None:
    """On Flask a view gets no body argument: `@guard.login(username=lambda: ...)` reads
    the request, and a client held back is refused before the view checks the password
    (a trial's app reported from the view, hashing every refused guess first)."""
    from flask import Flask, abort, request

    from apiguard.flask import init_app

    clock = FakeClock(9_000_000.0)
    guard = Guard(clock=clock)
    app = Flask("flask_login_decl")
    init_app(app, guard)
    checked: list[str] = []

    @app.post("/login")
    @guard.login(username=lambda: (request.get_json(silent=True) or {}).get("username"))
    def login() -> dict[str, str]:
        body = request.get_json()
        checked.append(body["username"])  # (the password hash would run here)
        if body["password"] != "right":
            abort(401)
        return {"token": "t"}

    client = app.test_client()
    rng = random.Random(4)
    statuses = []
    for i in range(14):
        clock.advance(20)
        ip = public_ip(rng)
        body = {"username": "victim@example.org", "password": f"guess{i}"}
        statuses.append(
            client.post("/login", json=body, environ_base={"REMOTE_ADDR": ip}).status_code
        )
    assert statuses[:8] == [401] * 8 and set(statuses[9:]) == {403}
    assert len(checked) <= 9  # the held-back guesses never reached the password check


def test_a_keyed_flow_through_djangos_method_decorator() -> None:
    """Django's `method_decorator` calls the decorated method as a partial without
    `self`: the key is read from `request` there too (it was bound to the wrong
    argument, so every request fell back to its address)."""
    import json

    from django.http import HttpRequest, JsonResponse
    from django.urls import path
    from django.utils.decorators import method_decorator
    from django.views import View
    from django.views.decorators.csrf import csrf_exempt

    from harness import close_django, django_client

    clock = FakeClock(9_000_000.0)
    guard = Guard(clock=clock)

    def email(request: HttpRequest) -> str:
        return str(json.loads(request.body)["email"])

    @method_decorator(csrf_exempt, name="dispatch")
    @method_decorator(guard.flow("reset", "3/hour", key=email), name="post")
    class Reset(View):
        def post(self, request: HttpRequest) -> JsonResponse:
            return JsonResponse({"sent": True})

    call = django_client(guard, patterns=[path("password-reset", Reset.as_view())])
    try:
        rng = random.Random(3)
        statuses = [
            call("POST", "/password-reset", ip=public_ip(rng), json={"email": "v@x.org"}).status
            for _ in range(6)
        ]
        assert statuses == [200, 200, 200, 429, 429, 429]
    finally:
        close_django()
