"""A decorator the router bypasses (written above the route decorator) fails every
request until the app is fixed, never only the first (Flask, Django, FastAPI), and the
walk can be run at start-up (`guard.check(app)`, `init_app`, `apiguard.django.check()`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from flask import Blueprint, Flask

from apiguard import ConfigurationError, Guard
from apiguard.asgi import GuardMiddleware as AsgiGuard
from apiguard.flask import init_app
from harness import close_django, configure_django, django_client

ABOVE = "sit above the route decorator"


@pytest.fixture(autouse=True)
def _close_sites() -> Iterator[None]:
    yield
    close_django()


def test_flask_wrong_order_fails_every_request_not_only_the_first() -> None:
    guard = Guard()
    app = Flask(__name__)
    init_app(app, guard)

    @guard.limit("1/hour")  # wrong: above the route decorator
    @app.post("/a")
    def a() -> Any:
        return {"ok": 1}

    client = app.test_client()
    for _ in range(3):
        with pytest.raises(ConfigurationError, match=ABOVE):
            client.post("/a")
    app.testing = False  # production error handling changes nothing: apiguard raises
    for _ in range(2):  # outside the app, so the server answers 500 and logs it
        with pytest.raises(ConfigurationError, match=r"/a -> .*a"):
            client.post("/a")
    with pytest.raises(ConfigurationError, match=r"/a -> .*a"):
        guard.check(app)


def test_flask_right_order_checked_once_then_served() -> None:
    guard = Guard()
    app = Flask(__name__)
    init_app(app, guard)

    @app.post("/a")
    @guard.limit("2/hour")
    def a() -> Any:
        return {"ok": 1}

    guard.check(app)
    client = app.test_client()
    assert [client.post("/a").status_code for _ in range(3)] == [200, 200, 429]


def test_flask_check_at_startup_app_factory_with_blueprints() -> None:
    guard = Guard()

    def create_app() -> Flask:
        app = Flask(__name__)
        init_app(app, guard)  # before the blueprints: nothing to check yet
        bp = Blueprint("api", __name__)

        @guard.flow("publish", "3/hour")  # wrong order, in a blueprint
        @bp.post("/articles")
        def publish() -> Any:
            return {}

        app.register_blueprint(bp, url_prefix="/api")
        return app

    app = create_app()
    with pytest.raises(ConfigurationError, match=r"/api/articles -> .*publish"):
        guard.check(app)


def test_flask_init_app_checks_routes_already_registered() -> None:
    guard = Guard({"detection": {"bola": {"routes": {"/later/<int:n>": 0}}}})
    app = Flask(__name__)

    @app.get("/fine")
    @guard.limit("1/hour")
    def fine() -> Any:
        return {}

    # a template of a route not registered yet is not an error at init_app
    init_app(app, guard)

    @app.get("/later/<int:n>")
    def later(n: int) -> Any:
        return {}

    guard.check(app)

    other = Flask(__name__)

    @guard.limit("1/hour")
    @other.get("/b")
    def b() -> Any:
        return {}

    with pytest.raises(ConfigurationError, match=r"/b -> .*b"):
        init_app(other, guard)


@pytest.mark.parametrize("asgi", [False, True])
def test_django_wrong_order_fails_every_request(asgi: bool) -> None:
    configure_django()
    from django.urls import path
    from rest_framework.decorators import api_view
    from rest_framework.response import Response

    import apiguard.django as agd

    guard = Guard()

    @guard.limit("1/minute")  # wrong: above @api_view
    @api_view(["GET"])
    def ping(request: Any) -> Response:
        return Response("pong")

    call = django_client(guard, asgi=asgi, patterns=[path("ping", ping)])
    for _ in range(3):
        with pytest.raises(ConfigurationError, match="/ping"):
            call("GET", "/ping")
    with pytest.raises(ConfigurationError, match="/ping"):
        agd.check()


def test_django_check_passes_on_a_correct_urlconf() -> None:
    configure_django()
    from django.http import HttpResponse
    from django.urls import path

    import apiguard.django as agd

    guard = Guard()

    @guard.limit("1/minute")
    def ping(request: Any) -> HttpResponse:
        return HttpResponse("pong")

    call = django_client(guard, patterns=[path("ping", ping)])
    agd.check()
    assert [call("GET", "/ping").status for _ in range(2)] == [200, 429]


def test_fastapi_wrong_order_fails_every_request_without_lifespan(caplog: Any) -> None:
    guard = Guard()
    app = FastAPI()
    app.add_middleware(AsgiGuard, guard=guard)

    @guard.limit("1/hour")
    @app.post("/a")
    async def a() -> Any:
        return {"ok": 1}

    client = TestClient(app, raise_server_exceptions=False)  # no `with`: no lifespan
    caplog.set_level(logging.ERROR)
    assert [client.post("/a").status_code for _ in range(3)] == [500, 500, 500]
    with pytest.raises(ConfigurationError, match=r"/a -> .*a"):
        guard.check(app)
    with pytest.raises(ConfigurationError), TestClient(app):  # lifespan: start-up fails
        pass
