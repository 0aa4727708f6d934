"""Django and Django REST Framework: settings, routing shapes, principals, start-up walk."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from itertools import count
from typing import Any

import pytest

from harness import DjangoSite, close_django, configure_django, django_client

configure_django()

from django.contrib.auth.models import User  # noqa: E402
from django.http import HttpRequest, HttpResponse, JsonResponse  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import override_settings  # noqa: E402
from django.urls import include, path  # noqa: E402
from django.views import View  # noqa: E402
from rest_framework.authtoken.models import Token  # noqa: E402
from rest_framework.decorators import api_view  # noqa: E402
from rest_framework.response import Response  # noqa: E402
from rest_framework.routers import SimpleRouter  # noqa: E402
from rest_framework.views import APIView  # noqa: E402
from rest_framework.viewsets import ViewSet  # noqa: E402

import apiguard.django as agd  # noqa: E402
from apiguard import ConfigurationError, Guard, current_request, identify  # noqa: E402
from conftest import IP_A, IP_B, Otel  # noqa: E402

_users = count(1)


@pytest.fixture(autouse=True)
def _close_sites() -> Iterator[None]:
    yield
    close_django()


def make_user() -> tuple[User, str]:
    n = next(_users)
    user = User.objects.create_user(f"user{n}-{id(object())}", password="pw")
    return user, Token.objects.create(user=user).key


def route_of(request: HttpRequest, **kwargs: Any) -> HttpResponse:
    ctx = current_request()
    assert ctx is not None
    return JsonResponse({"route": ctx.route, "params": ctx.path_params})


@pytest.mark.parametrize("asgi", [False, True])
def test_include_two_levels_deep_records_the_full_template(make_guard, asgi):
    guard = make_guard({"route": "2/minute"})
    orders = [path("orders/<int:order_id>", route_of)]
    v1 = [path("v1/", include(orders))]
    call = django_client(guard, asgi=asgi, patterns=[path("api/", include(v1))])
    r = call("GET", "/api/v1/orders/7")
    assert r.json() == {"route": "/api/v1/orders/<int:order_id>", "params": {"order_id": 7}}
    assert call("GET", "/api/v1/orders/8").status == 200
    assert call("GET", "/api/v1/orders/9").status == 429  # one template, one bucket
    assert call("GET", "/api/v1/orders/9", ip=IP_B).status == 200


@pytest.mark.parametrize("asgi", [False, True])
def test_class_based_view_and_async_view(make_guard, asgi):
    guard = make_guard()

    class Items(View):
        @guard.limit("2/minute")
        def get(self, request: HttpRequest) -> HttpResponse:
            return HttpResponse("items")

        def post(self, request: HttpRequest) -> HttpResponse:
            return HttpResponse("created")

    @guard.limit("1/minute")
    async def slow(request: HttpRequest) -> HttpResponse:
        return HttpResponse("async")

    from django.views.decorators.csrf import csrf_exempt

    call = django_client(
        guard,
        asgi=asgi,
        patterns=[path("items", csrf_exempt(Items.as_view())), path("slow", slow)],
    )
    assert [call("GET", "/items").status for _ in range(3)] == [200, 200, 429]
    assert [call("POST", "/items").status for _ in range(3)] == [200, 200, 200]
    assert [call("GET", "/slow").status for _ in range(2)] == [200, 429]


def drf_patterns(guard: Guard) -> list[Any]:
    class Orders(APIView):
        @guard.limit("2/minute")
        def get(self, request: Any) -> Response:
            return Response({"user": request.user.username if request.user else None})

    class Profile(APIView):  # undecorated: only the global rules
        def get(self, request: Any) -> Response:
            return Response({"ok": True})

    class Coupons(ViewSet):
        def list(self, request: Any) -> Response:
            return Response([])

        @guard.flow("coupon", "1/hour")
        def create(self, request: Any) -> Response:
            return Response({"created": True}, status=201)

    @api_view(["GET"])
    @guard.limit("1/minute")
    def ping(request: Any) -> Response:
        return Response("pong")

    router = SimpleRouter()
    router.register("coupons", Coupons, basename="coupon")
    return [
        path("orders", Orders.as_view()),
        path("profile", Profile.as_view()),
        path("ping", ping),
        path("api/", include(router.urls)),
    ]


@pytest.mark.parametrize("asgi", [False, True])
def test_drf_views_viewsets_and_api_view(make_guard, asgi):
    guard = make_guard()
    call = django_client(guard, asgi=asgi, patterns=drf_patterns(guard))
    assert [call("GET", "/orders").status for _ in range(3)] == [200, 200, 429]
    assert [call("POST", "/api/coupons/").status for _ in range(2)] == [201, 429]
    assert call("GET", "/api/coupons/").status == 200  # list is not the flow
    assert [call("GET", "/ping").status for _ in range(2)] == [200, 429]
    assert call("GET", "/orders", ip=IP_B).status == 200


@pytest.mark.parametrize("asgi", [False, True])
def test_drf_token_user_is_the_principal(make_guard, asgi):
    """TokenAuthentication runs inside the view: the principal must be the user DRF
    authenticated, on decorated and undecorated views, whatever the IP."""
    guard = make_guard({"principal": "3/minute"})
    call = django_client(guard, asgi=asgi, patterns=drf_patterns(guard))
    (_, alice), (_, bob) = make_user(), make_user()
    as_alice = {"authorization": f"Token {alice}"}
    ips = [f"192.0.2.{i}" for i in range(1, 5)]
    statuses = [call("GET", "/profile", ip=ip, headers=as_alice).status for ip in ips]
    assert statuses == [200, 200, 200, 429]  # rotating IPs does not help alice
    as_bob = {"authorization": f"Token {bob}"}
    assert call("GET", "/profile", ip=ips[0], headers=as_bob).status == 200
    # the decorated view's own rule is per user too
    carol = {"authorization": f"Token {make_user()[1]}"}
    dave = {"authorization": f"Token {make_user()[1]}"}
    assert [call("GET", "/orders", ip=ip, headers=carol).status for ip in ips[:3]] == [
        200,
        200,
        429,
    ]
    assert call("GET", "/orders", ip=ips[0], headers=dave).status == 200


def test_session_user_is_the_principal(make_guard):
    guard = make_guard({"principal": "2/minute"})
    DjangoSite(guard, [path("me", route_of)])
    user, _ = make_user()
    agd_client = Client()
    agd_client.force_login(user)
    ips = ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    assert [agd_client.get("/me", REMOTE_ADDR=ip).status_code for ip in ips] == [200, 200, 429]
    other = Client()
    other.force_login(make_user()[0])
    assert other.get("/me", REMOTE_ADDR=ips[0]).status_code == 200


def test_identify_wins_over_the_session_user(make_guard):
    guard = make_guard({"principal": "2/minute"})

    def team(request: HttpRequest) -> HttpResponse:
        identify(f"team-{request.headers['x-team']}")
        return HttpResponse("team")

    DjangoSite(guard, [path("team", team)])
    client = Client()
    client.force_login(make_user()[0])
    statuses = [client.get("/team", headers={"x-team": "a"}).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert client.get("/team", headers={"x-team": "b"}).status_code == 200


def test_guard_from_settings_dict(clock):
    with override_settings(
        APIGUARD={"limits": {"principal": "2/minute", "ip": None}, "bans": {"enabled": False}},
        APIGUARD_CLOCK=clock,
    ):
        guard = agd.guard
        assert isinstance(guard, Guard) and agd.get_guard() is guard
        assert guard.config.limits.principal == "2/minute"
        DjangoSite(guard, [path("x", route_of)])
        client = Client()
        assert [client.get("/x").status_code for _ in range(3)] == [200, 200, 429]
        assert client.get("/x", REMOTE_ADDR=IP_B).status_code == 200
    assert agd.get_guard() is not guard  # settings changed: built again


def test_bad_settings_fail_at_startup_naming_the_key_not_the_secret():
    secret = "short"
    bad = {"secret": secret, "limits": {"principal": "lots"}}
    with override_settings(APIGUARD=bad), pytest.raises(ConfigurationError) as err:
        Client().get("/")
    message = str(err.value)
    assert "settings.APIGUARD" in message and "limits.principal" in message
    assert "secret" in message and "'short'" not in message and " short" not in message
    with (
        override_settings(APIGUARD=["not", "a", "dict"]),
        pytest.raises(ConfigurationError, match=r"settings\.APIGUARD"),
    ):
        Client().get("/")
    with (
        override_settings(APIGUARD={}, APIGUARD_CLOCK="no.such.clock"),
        pytest.raises(ConfigurationError, match="APIGUARD_CLOCK"),
    ):
        Client().get("/")


def test_guard_above_api_view_is_refused_at_startup(make_guard):
    guard = make_guard()

    @guard.limit("1/minute")  # wrong order: checks before DRF authenticates the user
    @api_view(["GET"])
    def ping(request: Any) -> Response:
        return Response("pong")

    call = django_client(guard, patterns=[path("v1/", include([path("ping", ping)]))])
    with pytest.raises(ConfigurationError, match="/v1/ping"):
        call("GET", "/v1/ping")


def test_refusal_is_not_logged_as_a_server_error(make_guard, caplog):
    guard = make_guard()

    @guard.limit("1/minute")
    def once(request: HttpRequest) -> HttpResponse:
        return HttpResponse("once")

    call = django_client(guard, patterns=[path("once", once)])
    assert call("GET", "/once").status == 200
    assert call("GET", "/once").status == 429
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_django_server_span_carries_apiguard_attributes(make_guard):
    from opentelemetry.instrumentation.django import DjangoInstrumentor

    otel = Otel()
    guard = make_guard()

    @guard.limit("1/minute")
    def order(request: HttpRequest, order_id: int) -> HttpResponse:
        return HttpResponse("order")

    DjangoInstrumentor().instrument(tracer_provider=otel.tracer_provider)
    try:
        call = django_client(guard, patterns=[path("orders/<int:order_id>", order)])
        assert call("GET", "/orders/1").status == 200
        assert call("GET", "/orders/2").status == 429
    finally:
        DjangoInstrumentor().uninstrument()
    spans = otel.server_spans()
    assert len(spans) == 2
    attrs = [dict(s.attributes or {}) for s in spans]
    assert [a.get("apiguard.decision") for a in attrs] == ["allow", "throttle"]
    assert attrs[1]["apiguard.rule"] == "limit:order"
    assert [e.name for e in spans[1].events] == ["apiguard.detection"]


def test_async_client_with_session_user(make_guard):
    """Under ASGI the session user is loaded the async way for the checkpoint."""
    guard = make_guard({"principal": "2/minute"})
    from django.test import AsyncClient

    DjangoSite(guard, [path("me", route_of)])
    user, _ = make_user()

    async def run() -> list[int]:
        client = AsyncClient()
        await client.aforce_login(user)
        return [(await client.get("/me")).status_code for _ in range(3)]

    assert asyncio.run(run()) == [200, 200, 429]
    assert Client().get("/me", REMOTE_ADDR=IP_A).status_code == 200  # anonymous: own budget


def test_middleware_listed_twice_counts_once(make_guard):
    guard = make_guard({"principal": "2/minute"})
    twice = ["apiguard.django.GuardMiddleware", "apiguard.django.GuardMiddleware"]
    DjangoSite(guard, [path("x", route_of)], MIDDLEWARE=twice)
    client = Client()
    assert [client.get("/x").status_code for _ in range(3)] == [200, 200, 429]
    assert client.get("/x", REMOTE_ADDR=IP_B).status_code == 200


def test_included_re_path_templates_match_what_django_resolves(make_guard):
    """Django drops the leading ^ of an include()d regex when it joins routes
    (`^api/` + `^` + `^items/(?P<pk>[0-9]+)$` resolves as `^api/items/(?P<pk>[0-9]+)$`):
    the start-up walk must list the template requests carry, so a per-route setting
    written as the request's template is accepted and applies."""
    from django.urls import re_path

    template = "/^api/items/(?P<pk>[0-9]+)$"
    guard = make_guard(detection={"bola": {"routes": {template: 0}}})
    items = [re_path(r"^items/(?P<pk>[0-9]+)$", route_of)]
    call = django_client(
        guard, patterns=[re_path(r"^api/", include([re_path(r"^", include(items))]))]
    )
    r = call("GET", "/api/items/7")
    assert r.status == 200  # the walk accepted the template the request carries
    assert r.json()["route"] == template
    assert [e.template for e in agd.DjangoRoutes().__apiguard_routes__()] == [template]


def bare_wsgi_get(handler: Any, path: str, ip: str, authorization: str | None = None) -> int:
    """GET through Django's WSGI handler with no Cookie header at all (Django's test
    clients always send one, empty or not), as a mobile or script client calls."""
    import io
    import sys

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": ip,
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.url_scheme": "http",
    }
    if authorization is not None:
        environ["HTTP_AUTHORIZATION"] = authorization
    status: list[str] = []
    body = handler(environ, lambda s, h, *a: status.append(s))
    b"".join(body)
    body.close()
    return int(status[0].split()[0])


def test_drf_token_user_behind_a_banned_nat_address_is_not_banned_with_it(make_guard, clock):
    """DRF's TokenAuthentication sends `Authorization: Token <key>` and no cookie: a
    colleague signed in that way behind an office address that an anonymous abuser got
    banned is vouched at the checkpoint and must not be refused before routing with
    the address (as a session cookie or a bearer token is not); a made-up token from
    the banned address is still refused, at the checkpoint."""
    from django.core.handlers.wsgi import WSGIHandler

    guard = make_guard(
        {"ip": "2/minute"}, bans={"enabled": True, "after": 2, "within": 60, "base": 600}
    )
    site = DjangoSite(guard, drf_patterns(guard))
    try:
        handler = WSGIHandler()
        nat = "198.51.100.40"
        statuses = [bare_wsgi_get(handler, "/profile", nat) for _ in range(4)]
        assert statuses == [200, 200, 429, 403]  # the second strike bans the address
        clock.advance(120)  # the per-IP window is over, the ban is not
        assert bare_wsgi_get(handler, "/profile", nat) == 403
        colleague = f"Token {make_user()[1]}"
        assert bare_wsgi_get(handler, "/profile", nat, colleague) == 200
        assert bare_wsgi_get(handler, "/profile", nat, "Token not-a-real-key") == 403
    finally:
        site.close()


def test_drf_new_account_is_challenged_at_its_first_object_during_a_young_harvest(make_guard):
    """The sign-up calls `guard.account_created(user.pk)` and never `identify()`: DRF's
    user is the principal afterwards. Once a young account was flagged for reading too
    many objects, the next new account must be asked for the challenge at its first
    object (README: *Young accounts*), under the key DRF's user is limited by."""
    import random

    guard = make_guard()

    @api_view(["POST"])
    @guard.flow("signup", "100/hour", per="ip", count="success")
    def signup(request: Any) -> Response:
        user, key = make_user()
        guard.account_created(user.pk)
        return Response({"token": key}, status=201)

    class Item(APIView):
        def get(self, request: Any, item_id: int) -> Response:
            return Response({"id": item_id})

    call = django_client(
        guard, patterns=[path("signup", signup), path("items/<int:item_id>", Item.as_view())]
    )
    ids = random.Random(3).sample(range(1, 100_000), 40)

    def harvest(n: int) -> list[int]:
        ip = f"198.51.100.{n}"
        token = call("POST", "/signup", ip=ip).json()["token"]
        auth = {"authorization": f"Token {token}"}
        return [call("GET", f"/items/{i}", ip=ip, headers=auth).status for i in ids[:12]]

    # young: held to young_floor (10) distinct objects, counted with a 1,024-slot sketch
    # (two of 11 ids share a slot in about one run in twenty: then the 11th is read too)
    first = harvest(1)
    assert first[:10] == [200] * 10 and first[-1] == 403 and first.count(200) <= 11
    assert harvest(2) == [403] * 12  # the alarm: the next newcomer is asked at once


def test_drf_identify_in_the_authentication_class_refuses_before_an_undecorated_view(
    make_guard,
):
    """README (Django): on an undecorated DRF view the checkpoint is the response start,
    so a refused user's write happens; `identify()` in the authentication class moves the
    checkpoint before the view."""
    from rest_framework.authentication import TokenAuthentication

    class IdentifyingTokenAuthentication(TokenAuthentication):
        def authenticate_credentials(self, key: str) -> Any:
            user, token = super().authenticate_credentials(key)
            identify(user.pk)
            return user, token

    written: list[str] = []

    class Plain(APIView):
        def post(self, request: Any) -> Response:
            written.append("plain")
            return Response(status=201)

    class Identifying(Plain):
        authentication_classes = [IdentifyingTokenAuthentication]

    guard = make_guard({"principal": "2/minute"})
    call = django_client(
        guard, patterns=[path("plain", Plain.as_view()), path("identifying", Identifying.as_view())]
    )
    auth = {"authorization": f"Token {make_user()[1]}"}
    assert [call("POST", "/plain", headers=auth).status for _ in range(3)] == [201, 201, 429]
    assert written == ["plain"] * 3  # the refused request's write happened
    written.clear()
    auth = {"authorization": f"Token {make_user()[1]}"}
    assert [call("POST", "/identifying", headers=auth).status for _ in range(3)] == [
        201,
        201,
        429,
    ]
    assert written == ["plain"] * 2  # refused before the view ran


def test_root_urlconf_follows_every_settings_change():
    from django.conf import settings

    def same() -> None:
        assert agd._root_urlconf() == settings.ROOT_URLCONF

    same()
    before = settings.ROOT_URLCONF
    with override_settings(ROOT_URLCONF="tests.other_urls"):
        assert agd._root_urlconf() == "tests.other_urls"
        same()
    same()
    try:
        settings.ROOT_URLCONF = "tests.assigned_urls"
        assert agd._root_urlconf() == "tests.assigned_urls"
    finally:
        settings.ROOT_URLCONF = before
    same()
