"""One app, four ways: the same endpoints on FastAPI, Flask, Django (WSGI) and Django
(ASGI, async middleware), each guarded by the `Guard` a test passes, and a client that
sends a request from any IP and returns (status, headers, body).

Endpoints (the shared behaviour suite in test_frameworks_shared.py drives them):
- GET  /open                      undecorated
- GET  /items/<int:item_id>       @guard.limit("3/minute")
- POST /coupons/<code>/redeem     @guard.flow("redeem", "2/hour", count="success"),
                                  200 for code GOOD*, 400 otherwise
- GET  /me                        identify(x-user header), undecorated
- GET  /boom                      raises RuntimeError
- GET  /watched                   @guard.limit("1/minute", mode="monitor")
- GET  /audited                   @audited (the app's own decorator) above
                                  @guard.limit("2/minute")
- POST /login                     JSON {username, password}; guard.login_result(); 401 or 200
- GET  /orders/<int:order_id>     identify(x-user); any order (a real BOLA bug)
- POST /lookup                    JSON {order_id}; @guard.objects(ids=...); identify(x-user)
- POST /batch                     JSON {ids: [...]}; guard.objects_touched(); identify(x-user)
"""

from __future__ import annotations

import asyncio
import functools
import json as _json
import types
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from typing import Any

from fastapi import Depends, Request, Response
from pydantic import BaseModel

from apiguard import Guard, identify

AUDIT: list[str] = []  # what the app's own decorator saw


class Lookup(BaseModel):
    order_id: int


def audited(fn: Callable[..., Any]) -> Callable[..., Any]:
    """An app's own decorator (logging, caching, auth...) written above apiguard's."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        AUDIT.append(fn.__name__)
        return fn(*args, **kwargs)

    return wrapper


FRAMEWORKS = ("fastapi", "flask", "django", "django-asgi")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body)


Client = Callable[..., Answer]  # client(method, path, ip=..., headers=...) -> Answer


# -- FastAPI -----------------------------------------------------------------------------
def fastapi_client(guard: Guard) -> Client:
    from fastapi import FastAPI
    from starlette.testclient import TestClient

    from apiguard.asgi import GuardMiddleware

    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.get("/open")
    def open_() -> str:
        return "ok"

    @app.get("/items/{item_id}")
    @guard.limit("3/minute")
    def item(item_id: int) -> dict[str, int]:
        return {"item": item_id}

    @app.post("/coupons/{code}/redeem")
    @guard.flow("redeem", "2/hour", count="success")
    def redeem(code: str, response: Response) -> dict[str, str]:
        if not code.startswith("GOOD"):
            response.status_code = 400
        return {"code": code}

    @app.get("/me")
    def me(request: Request) -> str:
        identify(request.headers.get("x-user"))
        return "me"

    @app.get("/orders/{order_id}")
    async def order(order_id: int, request: Request) -> dict[str, int]:
        identify(request.headers.get("x-user"))
        return {"order": order_id}  # anyone's: the BOLA bug is real

    def signed_in(request: Request) -> None:  # the app's auth dependency
        identify(request.headers.get("x-user"))

    @app.post("/lookup", dependencies=[Depends(signed_in)])
    @guard.objects(ids="payload.order_id")
    def lookup(payload: Lookup) -> dict[str, int]:
        return {"order": payload.order_id}  # anyone's: the BOLA bug is real

    @app.post("/batch")
    async def batch(request: Request) -> dict[str, int]:
        identify(request.headers.get("x-user"))
        guard.objects_touched((await request.json())["ids"], name="order_id")
        return {"orders": 0}

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("boom")

    @app.get("/watched")
    @guard.limit("1/minute", mode="monitor")
    def watched() -> str:
        return "watched"

    @app.get("/audited")
    @audited
    @guard.limit("2/minute")
    def audited_view() -> str:
        return "audited"

    @app.post("/login")
    async def login(request: Request, response: Response) -> dict[str, bool]:
        body = await request.json()
        ok = body.get("password") == "right"
        guard.login_result(body.get("username"), ok)
        if not ok:
            response.status_code = 401
        return {"ok": ok}

    clients: dict[str, TestClient] = {}

    def call(
        method: str, path: str, ip: str = "203.0.113.7", headers: Any = None, json: Any = None
    ) -> Answer:
        client = clients.get(ip)
        if client is None:
            client = clients[ip] = TestClient(
                app, client=(ip, 50_000), raise_server_exceptions=False
            )
        r = client.request(method, path, headers=headers, json=json)
        return Answer(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)

    return call


# -- Flask -------------------------------------------------------------------------------
def flask_app(guard: Guard) -> Any:
    from flask import Flask, request

    from apiguard.flask import init_app

    app = Flask(f"harness{next(_ids)}")
    init_app(app, guard)

    @app.get("/open")
    def open_() -> str:
        return "ok"

    @app.get("/items/<int:item_id>")
    @guard.limit("3/minute")
    def item(item_id: int) -> dict[str, int]:
        return {"item": item_id}

    @app.post("/coupons/<code>/redeem")
    @guard.flow("redeem", "2/hour", count="success")
    def redeem(code: str) -> tuple[dict[str, str], int]:
        return {"code": code}, 200 if code.startswith("GOOD") else 400

    @app.get("/me")
    def me() -> str:
        identify(request.headers.get("x-user"))
        return "me"

    @app.get("/orders/<int:order_id>")
    def order(order_id: int) -> dict[str, int]:
        identify(request.headers.get("x-user"))
        return {"order": order_id}  # anyone's: the BOLA bug is real

    def signed_in(view: Callable[..., Any]) -> Callable[..., Any]:  # the app's own
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            identify(request.headers.get("x-user"))
            return view(*args, **kwargs)

        return wrapper

    @app.post("/lookup")
    @signed_in
    @guard.objects(ids=lambda: request.get_json()["order_id"])
    def lookup() -> dict[str, int]:
        return {"order": request.get_json()["order_id"]}

    @app.post("/batch")
    def batch() -> dict[str, int]:
        identify(request.headers.get("x-user"))
        guard.objects_touched(request.get_json()["ids"], name="order_id")
        return {"orders": 0}

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("boom")

    @app.get("/watched")
    @guard.limit("1/minute", mode="monitor")
    def watched() -> str:
        return "watched"

    @app.get("/audited")
    @audited
    @guard.limit("2/minute")
    def audited_view() -> str:
        return "audited"

    @app.post("/login")
    def login() -> tuple[dict[str, bool], int]:
        body = request.get_json()
        ok = body.get("password") == "right"
        guard.login_result(body.get("username"), ok)
        return {"ok": ok}, 200 if ok else 401

    return app


def flask_client(guard: Guard, app: Any = None) -> Client:
    app = app if app is not None else flask_app(guard)
    client = app.test_client()

    def call(
        method: str, path: str, ip: str = "203.0.113.7", headers: Any = None, json: Any = None
    ) -> Answer:
        r = client.open(
            path, method=method, headers=headers, json=json, environ_base={"REMOTE_ADDR": ip}
        )
        return Answer(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.data)

    return call


# -- Django ------------------------------------------------------------------------------
_ids = count(1)


def _db_file() -> str:
    import os
    import tempfile

    return os.path.join(tempfile.mkdtemp(prefix="apiguard-django-"), "db.sqlite3")


def configure_django() -> None:
    """Settings for the Django tests (once per process), and the tables DRF tokens need."""
    import django
    from django.conf import settings

    if settings.configured:
        return
    settings.configure(
        DEBUG=False,
        SECRET_KEY="apiguard-tests-not-secret",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=types.ModuleType("empty_urls"),
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "rest_framework",
            "rest_framework.authtoken",
        ],
        # a file, not ":memory:": async views and the ASGI handler use other threads
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": _db_file()}},
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "apiguard.django.GuardMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
        ],
        REST_FRAMEWORK={
            "DEFAULT_AUTHENTICATION_CLASSES": [
                "rest_framework.authentication.TokenAuthentication",
                "rest_framework.authentication.SessionAuthentication",
            ],
            "UNAUTHENTICATED_USER": None,
        },
        USE_TZ=True,
        LOGGING_CONFIG=None,
    )
    settings.ROOT_URLCONF.urlpatterns = []
    django.setup()
    from django.core.management import call_command

    call_command("migrate", run_syncdb=True, verbosity=0)


def urlconf(patterns: list[Any]) -> types.ModuleType:
    """A URLconf module made of `patterns`."""
    module = types.ModuleType(f"urls_{next(_ids)}")
    module.urlpatterns = patterns  # type: ignore[attr-defined]
    return module


def django_patterns(guard: Guard) -> list[Any]:
    from django.http import HttpRequest, HttpResponse, JsonResponse
    from django.urls import path

    def open_(request: HttpRequest) -> HttpResponse:
        return HttpResponse("ok")

    @guard.limit("3/minute")
    def item(request: HttpRequest, item_id: int) -> HttpResponse:
        return JsonResponse({"item": item_id})

    @guard.flow("redeem", "2/hour", count="success")
    def redeem(request: HttpRequest, code: str) -> HttpResponse:
        return JsonResponse({"code": code}, status=200 if code.startswith("GOOD") else 400)

    def me(request: HttpRequest) -> HttpResponse:
        identify(request.headers.get("x-user"))
        return HttpResponse("me")

    def order(request: HttpRequest, order_id: int) -> HttpResponse:
        identify(request.headers.get("x-user"))
        return JsonResponse({"order": order_id})  # anyone's: the BOLA bug is real

    def signed_in(view: Callable[..., Any]) -> Callable[..., Any]:  # the app's own
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            identify(request.headers.get("x-user"))
            return view(request, *args, **kwargs)

        return wrapper

    @signed_in
    @guard.objects(ids=lambda request: _json.loads(request.body)["order_id"])
    def lookup(request: HttpRequest) -> HttpResponse:
        return JsonResponse({"order": _json.loads(request.body)["order_id"]})

    def batch(request: HttpRequest) -> HttpResponse:
        identify(request.headers.get("x-user"))
        guard.objects_touched(_json.loads(request.body)["ids"], name="order_id")
        return JsonResponse({"orders": 0})

    def boom(request: HttpRequest) -> HttpResponse:
        raise RuntimeError("boom")

    @guard.limit("1/minute", mode="monitor")
    def watched(request: HttpRequest) -> HttpResponse:
        return HttpResponse("watched")

    @audited
    @guard.limit("2/minute")
    def audited_view(request: HttpRequest) -> HttpResponse:
        return HttpResponse("audited")

    def login(request: HttpRequest) -> HttpResponse:
        body = _json.loads(request.body)
        ok = body.get("password") == "right"
        guard.login_result(body.get("username"), ok)
        return JsonResponse({"ok": ok}, status=200 if ok else 401)

    from django.views.decorators.csrf import csrf_exempt

    return [
        path("open", open_),
        path("items/<int:item_id>", item),
        path("coupons/<str:code>/redeem", csrf_exempt(redeem)),
        path("me", me),
        path("orders/<int:order_id>", order),
        path("lookup", csrf_exempt(lookup)),
        path("batch", csrf_exempt(batch)),
        path("boom", boom),
        path("watched", watched),
        path("audited", audited_view),
        path("login", csrf_exempt(login)),
    ]


class DjangoSite:
    """`override_settings` for one guard and URLconf, entered until `close()`."""

    def __init__(self, guard: Guard, patterns: list[Any], **extra: Any) -> None:
        from django.test.utils import override_settings

        configure_django()
        self.urls = urlconf(patterns)
        self.override = override_settings(APIGUARD=guard, ROOT_URLCONF=self.urls, **extra)
        self.override.enable()

    def close(self) -> None:
        self.override.disable()


def django_client(guard: Guard, *, asgi: bool = False, patterns: list[Any] | None = None) -> Client:
    """A Django test client for `patterns` (the harness's by default); the caller's
    fixture must call `close_django()` (the `clients` fixture does)."""
    from django.test import AsyncClient
    from django.test import Client as SyncClient

    configure_django()
    site = DjangoSite(guard, patterns if patterns is not None else django_patterns(guard))
    _open_sites.append(site)
    if asgi:

        class IPClient(AsyncClient):  # type: ignore[misc]
            ip = "127.0.0.1"

            def _base_scope(self, **request: Any) -> dict[str, Any]:
                scope: dict[str, Any] = super()._base_scope(**request)
                scope["client"] = [self.ip, 0]
                return scope

        aclient = IPClient(raise_request_exception=False)

        def acall(
            method: str, path: str, ip: str = "203.0.113.7", headers: Any = None, json: Any = None
        ) -> Answer:
            data = _json.dumps(json) if json is not None else ""

            async def go() -> Any:
                aclient.ip = ip
                return await aclient.generic(
                    method, path, data, "application/json", headers=headers or {}
                )

            r = asyncio.run(go())
            return Answer(r.status_code, {k.lower(): v for k, v in r.items()}, r.content)

        return acall
    client = SyncClient(raise_request_exception=False)

    def call(
        method: str, path: str, ip: str = "203.0.113.7", headers: Any = None, json: Any = None
    ) -> Answer:
        data = _json.dumps(json) if json is not None else ""
        r = client.generic(
            method, path, data, "application/json", headers=headers or {}, REMOTE_ADDR=ip
        )
        return Answer(r.status_code, {k.lower(): v for k, v in r.items()}, r.content)

    return call


_open_sites: list[DjangoSite] = []


def close_django() -> None:
    while _open_sites:
        _open_sites.pop().close()


def make_client(framework: str, guard: Guard) -> Client:
    if framework == "fastapi":
        return fastapi_client(guard)
    if framework == "flask":
        return flask_client(guard)
    if framework == "django":
        return django_client(guard)
    if framework == "django-asgi":
        return django_client(guard, asgi=True)
    raise ValueError(framework)
