"""Refusals keep the app's CORS answer under Flask (flask-cors) and Django
(django-cors-headers), and expose Retry-After/RateLimit to the page (trial finding 5)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("flask_cors")
pytest.importorskip("corsheaders")

from flask import Blueprint, Flask, Response
from flask_cors import CORS

from apiguard import Guard
from apiguard.flask import init_app
from harness import close_django, configure_django, django_client

SPA = "http://localhost:4100"
EVIL = "http://evil.example"
EXPOSED = {"retry-after", "ratelimit", "ratelimit-policy"}


@pytest.fixture(autouse=True)
def _close_sites() -> Iterator[None]:
    yield
    close_django()


def exposed(headers: Any) -> set[str]:
    value = headers.get("Access-Control-Expose-Headers") or ""
    return {p.strip().lower() for p in value.split(",") if p.strip()}


def flask_app(guard: Guard, *, blueprint: bool = False, **cors: Any) -> tuple[Flask, list[str]]:
    app = Flask(__name__)
    init_app(app, guard)
    ran: list[str] = []

    @app.before_request
    def seen() -> None:
        ran.append("before")

    @app.after_request
    def meddle(response: Response) -> Response:  # an app hook that would drop headers
        response.headers.pop("Retry-After", None)
        return response

    bp = Blueprint("api", __name__) if blueprint else None
    target: Any = bp if bp is not None else app

    @target.post("/articles")
    @guard.flow("publish", "2/hour", per="ip")
    def publish() -> Any:
        return {"ok": 1}

    @target.get("/open")
    def open_() -> Any:
        return {"ok": 1}

    if bp is not None:
        CORS(bp, origins=[SPA], **cors)
        app.register_blueprint(bp, url_prefix="/api")
    else:
        CORS(app, origins=[SPA], **cors)
    return app, ran


def test_flask_decorated_refusal_keeps_flask_cors_headers() -> None:
    guard = Guard({"limits": {"principal": None, "ip": None}, "bans": {"enabled": False}})
    app, _ = flask_app(guard)
    client = app.test_client()
    o = {"Origin": SPA}
    assert [client.post("/articles", headers=o).status_code for _ in range(2)] == [200, 200]
    r = client.post("/articles", headers=o)
    assert r.status_code == 429
    assert r.headers["Access-Control-Allow-Origin"] == SPA
    assert exposed(r.headers) >= EXPOSED
    assert int(r.headers["Retry-After"]) > 0  # the app's hook could not drop it
    assert r.headers["Content-Type"] == "application/problem+json"
    # an origin the app does not allow gets no CORS header from apiguard either
    r = client.post("/articles", headers={"Origin": EVIL})
    assert r.status_code == 429
    assert "Access-Control-Allow-Origin" not in r.headers
    assert "Access-Control-Expose-Headers" not in r.headers
    # no Origin: what flask-cors itself answers (its `always_send`), nothing more
    own = client.get("/open").headers.get("Access-Control-Allow-Origin")
    r = client.post("/articles")
    assert r.status_code == 429 and r.headers.get("Access-Control-Allow-Origin") == own


def test_flask_global_limit_and_early_ban_keep_cors_with_blueprint_cors() -> None:
    guard = Guard(
        {
            "limits": {"principal": None, "ip": "2/minute"},
            "bans": {"after": 2, "base": 600},
        }
    )
    app, ran = flask_app(guard, blueprint=True, expose_headers=["X-Total"])
    client = app.test_client()
    o = {"Origin": SPA}
    statuses = []
    for _ in range(8):
        r = client.get("/api/open", headers=o)
        statuses.append(r.status_code)
        if r.status_code != 200:
            assert r.headers["Access-Control-Allow-Origin"] == SPA
            assert "x-total" in exposed(r.headers)
            assert "retry-after" in exposed(r.headers)
    assert statuses[:2] == [200, 200] and statuses[-1] == 403
    ran.clear()
    r = client.get("/api/open", headers=o)  # banned: answered before the app runs
    assert r.status_code == 403 and ran == []
    assert r.headers["Access-Control-Allow-Origin"] == SPA
    assert "retry-after" in exposed(r.headers) and "x-total" in exposed(r.headers)
    r = client.get("/api/open", headers={"Origin": EVIL})
    assert r.status_code == 403 and "Access-Control-Allow-Origin" not in r.headers
    assert ran == []  # only flask-cors ran for the banned request, no hook of the app


def _django_views(guard: Guard) -> list[Any]:
    from django.http import HttpResponse, JsonResponse
    from django.urls import path

    @guard.flow("publish", "2/hour", per="ip")
    def publish(request: Any) -> Any:
        return JsonResponse({"ok": 1})

    def open_(request: Any) -> Any:
        return HttpResponse("ok")

    return [path("articles", publish), path("open", open_)]


def _middleware(cors_first: bool) -> list[str]:
    base = [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "apiguard.django.GuardMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
    ]
    cors = "corsheaders.middleware.CorsMiddleware"
    return [cors, *base] if cors_first else [*base, cors]


@pytest.mark.parametrize("cors_first", [False, True])
@pytest.mark.parametrize("asgi", [False, True])
def test_django_refusals_keep_corsheaders_headers(cors_first: bool, asgi: bool) -> None:
    configure_django()
    from django.test.utils import override_settings

    guard = Guard(
        {"limits": {"principal": None, "ip": "4/minute"}, "bans": {"after": 2, "base": 600}}
    )
    call = django_client(guard, asgi=asgi, patterns=_django_views(guard))
    with override_settings(
        MIDDLEWARE=_middleware(cors_first),
        CORS_ALLOWED_ORIGINS=[SPA],
        CORS_EXPOSE_HEADERS=[],
    ):
        o = {"Origin": SPA}
        seen = []
        for _ in range(2):  # the flow's refusal: raised in the view
            seen.append(call("POST", "/articles", headers=o).status)
        r = call("POST", "/articles", headers=o)
        assert seen == [200, 200] and r.status == 429
        assert r.headers["access-control-allow-origin"] == SPA
        assert exposed({"Access-Control-Expose-Headers": r.headers.get(
            "access-control-expose-headers")}) >= EXPOSED
        statuses = []
        for _ in range(8):  # the IP limit (response start), then the ban (early)
            r = call("GET", "/open", headers=o)
            statuses.append(r.status)
            if r.status != 200:
                assert r.headers["access-control-allow-origin"] == SPA, (statuses, r.headers)
                assert "retry-after" in r.headers.get("access-control-expose-headers", "").lower()
        assert 429 in statuses and statuses[-1] == 403
        r = call("GET", "/open", headers={"Origin": EVIL})
        assert r.status == 403 and "access-control-allow-origin" not in r.headers
        if not cors_first:  # (above apiguard, CorsMiddleware has the last word)
            assert "access-control-expose-headers" not in r.headers
        r = call("GET", "/open")  # not cross-origin: no CORS header
        assert r.status == 403 and "access-control-expose-headers" not in r.headers
