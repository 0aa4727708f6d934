"""An unknown template in `detection.bola.routes` / `detection.scraping.routes` is
answered in the app's own router syntax: its closest routes, or an example of its own
templates — never a FastAPI example on Flask or Django (trial finding 10)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from flask import Blueprint, Flask

from apiguard import ConfigurationError, Guard
from apiguard.flask import init_app
from harness import close_django, configure_django, django_client


@pytest.fixture(autouse=True)
def _close_sites() -> Iterator[None]:
    yield
    close_django()


def routes_guard(detector: str, *templates: str) -> Guard:
    return Guard({"detection": {detector: {"routes": dict.fromkeys(templates, 0)}}})


def flask_error(guard: Guard) -> str:
    app = Flask(__name__)
    init_app(app, guard)
    bp = Blueprint("api", __name__)

    @bp.get("/articles/<slug>")
    def article(slug: str) -> Any:
        return {}

    @bp.get("/articles/<slug>/comments/<int:cid>")
    def comment(slug: str, cid: int) -> Any:
        return {}

    @bp.get("/tags")
    def tags() -> Any:
        return {}

    app.register_blueprint(bp, url_prefix="/api")
    with pytest.raises(ConfigurationError) as err:
        guard.check(app)
    with pytest.raises(ConfigurationError):  # and on the first request
        app.test_client().get("/api/tags")
    return str(err.value)


@pytest.mark.parametrize("detector", ["bola", "scraping"])
def test_flask_fastapi_style_template_gets_the_flask_route(detector: str) -> None:
    text = flask_error(routes_guard(detector, "/api/articles/{slug}"))
    assert f"detection.{detector}.routes" in text
    assert "'/api/articles/<slug>'" in text
    assert "{invoice_id}" not in text and "'/invoices" not in text


def test_flask_unrelated_template_gets_an_example_of_the_apps_own_syntax() -> None:
    text = flask_error(routes_guard("bola", "/v2/zzz/{qqq}/xxxxxxxx"))
    assert "'/api/articles/<slug>" in text and "{invoice_id}" not in text


def test_django_templates_in_djangos_syntax() -> None:
    configure_django()
    from django.http import HttpResponse
    from django.urls import include, path, re_path

    def view(request: Any, **kwargs: Any) -> HttpResponse:
        return HttpResponse("ok")

    patterns = [
        path("api/", include([path("orders/<int:pk>", view)])),
        re_path(r"^legacy/(?P<pk>[0-9]+)/$", view),
    ]
    guard = routes_guard("bola", "/api/orders/{pk}", "/legacy/{pk}/")
    call = django_client(guard, patterns=patterns)
    with pytest.raises(ConfigurationError) as err:
        call("GET", "/api/orders/1")
    text = str(err.value)
    assert "'/api/orders/<int:pk>'" in text
    assert "(?P<pk>[0-9]+)" in text
    assert "{invoice_id}" not in text


def test_fastapi_flask_style_template_gets_the_fastapi_route() -> None:
    guard = routes_guard("bola", "/items/<int:item_id>")
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> Any:
        return {}

    with pytest.raises(ConfigurationError, match=re.escape("'/items/{item_id}'")):
        guard.check(app)


def test_config_level_error_shows_both_syntaxes() -> None:
    with pytest.raises(ConfigurationError) as err:
        Guard({"detection": {"bola": {"routes": {"orders/<int:id>": 0}}}})
    assert "'/orders/<int:id>' on Flask" in str(err.value)
