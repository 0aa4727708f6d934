"""A real-app trial (s24: MyPlansAPI, Django + DRF, a `DefaultRouter` ViewSet with its own
`authentication_classes`, `obtain_auth_token`, Django's admin) found these; each test runs
on Django and DRF themselves, with its control beside it."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import count
from typing import Any

import pytest

from harness import DjangoSite, close_django, configure_django

configure_django()

from django.contrib.auth.models import User  # noqa: E402
from django.test import Client  # noqa: E402
from django.urls import include, path  # noqa: E402
from rest_framework.authtoken.models import Token  # noqa: E402
from rest_framework.response import Response  # noqa: E402
from rest_framework.routers import DefaultRouter  # noqa: E402
from rest_framework.viewsets import ViewSet  # noqa: E402

from apiguard import Guard, current_request  # noqa: E402
from apiguard.simulate.clock import FakeClock  # noqa: E402

_users = count(1)


@pytest.fixture(autouse=True)
def _close_sites() -> Iterator[None]:
    yield
    close_django()


def make_user() -> tuple[User, str]:
    user = User.objects.create_user(f"s24c{next(_users)}-{id(object())}", password="pw")
    return user, Token.objects.create(user=user).key


class Things(ViewSet):  # type: ignore[misc]
    """A to-do API with a BOLA bug: `retrieve` reads anyone's thing by id."""

    def list(self, request: Any, format: str | None = None) -> Response:
        return Response([])

    def retrieve(self, request: Any, pk: str, format: str | None = None) -> Response:
        ctx = current_request()
        assert ctx is not None
        return Response({"id": pk, "route": ctx.route, "params": ctx.path_params})


def router_patterns(regex: bool = True) -> list[Any]:
    # serves /things/{pk}/ and /things/{pk}.json: `re_path()` routes by default,
    # `path()` routes with DRF's `<drf_format_suffix:format>` converter else
    router = DefaultRouter(use_regex_path=regex)
    router.register("things", Things, basename="thing")
    return [path("", include(router.urls))]


PLAIN = {True: "/^things/(?P<pk>[^/.]+)/$", False: "/things/<str:pk>/"}


def walk(
    guard: Guard, clock: FakeClock, spellings: list[str], regex: bool = True, count_: int = 80
) -> int:
    """A walker reads things 1, 2, ... (none of them its own), one every 10 s, from one
    address, in the URL spellings given in turn; returns how many it read before its
    first refusal."""
    DjangoSite(guard, router_patterns(regex))
    _, token = make_user()
    client = Client(HTTP_AUTHORIZATION=f"Token {token}")
    for n in range(1, count_ + 1):
        clock.advance(10)
        url = spellings[n % len(spellings)].format(n)
        r = client.get(url, REMOTE_ADDR="203.0.113.50")
        if r.status_code != 200:
            return n - 1
    return count_


@pytest.mark.parametrize("regex", [True, False])
def test_format_suffix_route_is_the_plain_route(make_guard: Any, regex: bool) -> None:
    """F1: `/things/7.json` is `/things/7/`'s route, its object `pk=7` (no `format`),
    for `re_path()` and `path()` routers alike."""
    guard = make_guard()
    DjangoSite(guard, router_patterns(regex))
    _, token = make_user()
    client = Client(HTTP_AUTHORIZATION=f"Token {token}")
    plain = client.get("/things/7/").json()
    suffixed = client.get("/things/7.json").json()
    assert suffixed["route"] == plain["route"] == PLAIN[regex]
    assert suffixed["params"] == plain["params"] == {"pk": "7"}
    assert client.get("/things.json").json() == []  # (the list: no object)


def test_format_suffix_patterns_of_allowed_formats_and_no_twin(make_guard: Any) -> None:
    """F1: `format_suffix_patterns(..., allowed=[...])` on the app's own `path()` and
    `re_path()` routes; a suffix-only route (`suffix_required=True`) keeps its template,
    its `format` no object all the same."""
    from django.urls import re_path
    from rest_framework.decorators import api_view
    from rest_framework.urlpatterns import format_suffix_patterns

    @api_view(["GET"])
    def item(request: Any, pk: str, format: str | None = None) -> Response:
        ctx = current_request()
        assert ctx is not None
        return Response({"route": ctx.route, "params": ctx.path_params})

    patterns = format_suffix_patterns(
        [path("items/<int:pk>", item), re_path(r"^docs/(?P<pk>[0-9]+)/$", item)],
        allowed=["json", "api"],
    ) + format_suffix_patterns([path("only/<int:pk>", item)], suffix_required=True)
    DjangoSite(make_guard(), patterns)
    client = Client()
    assert client.get("/items/3.json").json() == {
        "route": "/items/<int:pk>", "params": {"pk": 3}
    }
    assert client.get("/docs/3.json").json()["route"] == "/^docs/(?P<pk>[0-9]+)/$"
    only = client.get("/only/3.json").json()
    assert only == {"route": "/only/<int:pk><drf_format_suffix:format>", "params": {"pk": 3}}


@pytest.mark.parametrize("regex", [True, False])
def test_walker_alternating_format_suffix_is_held_as_fast(
    make_guard: Any, clock: FakeClock, regex: bool
) -> None:
    """F1: a walker alternating `/things/{id}/` and `/things/{id}.json` read 31 things
    before its first refusal, one using one spelling 16: the same now."""
    one = walk(make_guard(), clock, ["/things/{}/"], regex)
    close_django()
    both = walk(make_guard(), clock, ["/things/{}/", "/things/{}.json"], regex)
    assert one <= 20
    assert both == one


def test_audit_drf_format_suffix_and_admin_done_page(make_guard: Any) -> None:
    """F4: `apiguard audit` listed DRF's format-suffix routes as BOLA-watched routes of
    their own (`format` taken for an object) and noted Django admin's
    `password_change/done/` as a sensitive flow; a format-suffix route is its plain
    route's row now, and a confirmation page or a GET-only view is no flow. Controls: the
    object route is watched, a password-change form still noted."""
    from django.contrib.admin.sites import AdminSite
    from django.http import HttpRequest, HttpResponse
    from django.views.decorators.http import require_GET
    from rest_framework.decorators import api_view
    from rest_framework.urlpatterns import format_suffix_patterns

    from apiguard.audit import audit_django

    @require_GET
    def reset_sent(request: HttpRequest) -> HttpResponse:
        return HttpResponse("check your mail")

    def reset(request: HttpRequest) -> HttpResponse:
        return HttpResponse("reset")

    @api_view(["GET"])
    def export(request: Any, format: str | None = None) -> Response:
        return Response([])

    DjangoSite(
        make_guard(),
        [
            path("admin/", AdminSite().urls),
            path("password/reset-sent", reset_sent),
            path("password/reset", reset),
            *format_suffix_patterns([path("export", export)], suffix_required=True),
            *router_patterns(),
        ],
    )
    rows = {r.template: r for r in audit_django().routes}
    # one row per route, whatever the suffix (but a route served only with one)
    assert [t for t in rows if "format" in t] == ["/export<drf_format_suffix:format>"]
    assert rows["/^things/(?P<pk>[^/.]+)/$"].detectors == ["bola", "scraping"]
    assert "bola" not in rows["/^things/$"].detectors
    assert "bola" not in rows["/"].detectors
    assert rows["/admin/password_change/done/"].notes == []
    assert rows["/password/reset-sent"].notes == []
    assert rows["/password/reset"].notes  # (controls: flows)
    assert rows["/admin/password_change/"].notes
    exported = rows["/export<drf_format_suffix:format>"]  # (a suffix-only route)
    assert "bola" not in exported.detectors


def test_startup_summary_logged_once_per_guard(
    make_guard: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """F6: the start-up line was logged once per test `Client()` (49 times in one
    process: Django's test client loads the middleware chain per client); once per
    guard now. Control: a new guard (a settings change) logs its own."""
    import logging

    caplog.set_level(logging.INFO, logger="apiguard")

    def lines() -> int:
        return sum(1 for r in caplog.records if r.getMessage().startswith("apiguard: mode="))

    DjangoSite(make_guard(), router_patterns())
    for _ in range(5):
        assert Client().get("/things/").status_code in (200, 401, 403)
    assert lines() == 1
    close_django()
    DjangoSite(make_guard(), router_patterns())
    Client().get("/things/")
    assert lines() == 2


GATED = ["apiguard.django.LoginGate", "django.contrib.auth.backends.ModelBackend"]


@pytest.mark.parametrize("gated", [True, False])
def test_startup_line_and_audit_tell_django_logins(
    make_guard: Any, caplog: pytest.LogCaptureFixture, gated: bool
) -> None:
    """F3: with `LoginGate` first in AUTHENTICATION_BACKENDS the start-up line said
    "logins: no @guard.login", and the audit listed DRF's `obtain_auth_token` route
    (`POST /auth/`) and the admin's login with no account-takeover detector; the line
    says how Django's logins are seen (and whether held back), and the audit marks the
    login routes watched. Control: a route that is no login is not."""
    import logging

    from django.contrib.admin.sites import AdminSite
    from rest_framework.authtoken.views import obtain_auth_token

    from apiguard.audit import audit_django

    caplog.set_level(logging.INFO, logger="apiguard")
    backends = GATED if gated else GATED[1:]
    DjangoSite(
        make_guard(),
        [path("admin/", AdminSite().urls), path("auth/", obtain_auth_token), *router_patterns()],
        AUTHENTICATION_BACKENDS=backends,
    )
    Client().get("/things/")
    messages = [r.getMessage() for r in caplog.records]
    (line,) = [m for m in messages if m.startswith("apiguard: mode=")]
    assert "no @guard.login" not in line
    assert "logins: django.contrib.auth's authenticate() and login()" in line
    assert ("held back before the password check by apiguard.django.LoginGate" in line) is gated
    assert ("never held back" in line) is not gated
    rows = {r.template: r for r in audit_django().routes}
    assert "account_takeover" in rows["/auth/"].detectors
    assert "account_takeover" in rows["/admin/login/"].detectors
    assert "account_takeover" not in rows["/admin/logout/"].detectors
    assert "account_takeover" not in rows["/^things/$"].detectors


def notes_view(guarded: bool, written: list[str]) -> list[Any]:
    """A DRF ViewSet with its own `authentication_classes` (as MyPlansAPI's): DRF's
    `TokenAuthentication`, or a subclass calling `identify()` (the README's recipe)."""
    from rest_framework.authentication import TokenAuthentication

    from apiguard import identify

    class Identified(TokenAuthentication):  # type: ignore[misc]
        def authenticate_credentials(self, key: str) -> Any:
            user, token = super().authenticate_credentials(key)
            identify(user.pk)
            return user, token

    class Notes(ViewSet):  # type: ignore[misc]
        authentication_classes = (Identified if guarded else TokenAuthentication,)

        def list(self, request: Any) -> Response:
            return Response(written)

        def create(self, request: Any) -> Response:
            written.append(str(request.data.get("title")))
            return Response({"created": True}, status=201)

    router = DefaultRouter()
    router.register("notes", Notes, basename="note")
    return [path("", include(router.urls))]


@pytest.mark.parametrize("guarded", [False, True])
def test_a_view_with_its_own_authentication_classes_needs_the_identifying_class(
    make_guard: Any, guarded: bool
) -> None:
    """F2: on a DRF view whose own `authentication_classes` never call `identify()` (the
    README's recipe put the identifying class in the default only), a user over her
    limit is known only at the response start, after the view ran: her POST is answered
    429 and written (documented: an undecorated handler's side effects have happened).
    With the class in the view's own list (the README's recipe now, control) the POST is
    refused before the view: nothing written. `apiguard audit` names the view that
    cannot refuse its writes."""
    written: list[str] = []
    DjangoSite(make_guard({"principal": "3/minute"}), notes_view(guarded, written))
    _, token = make_user()
    client = Client(HTTP_AUTHORIZATION=f"Token {token}", REMOTE_ADDR="203.0.113.60")
    assert [client.get("/notes/").status_code for _ in range(4)] == [200, 200, 200, 429]
    r = client.post("/notes/", {"title": "late"}, content_type="application/json")
    assert (r.status_code, written) == ((429, []) if guarded else (429, ["late"]))
    from apiguard.audit import audit_django

    warned = [w for w in audit_django().warnings if "never call identify()" in w]
    assert len(warned) == (0 if guarded else 1)
    if warned:
        assert warned[0].endswith(": /^notes/$")
