"""Adversarial review of the Django login signals and `LoginGate` (review s17).

xfail(strict) tests demonstrate problems found; plain tests pin attacks already stopped."""

from __future__ import annotations

import base64
import json
import logging
import random
from itertools import count
from typing import Any

import pytest

from harness import DjangoSite, configure_django

configure_django()

from django.contrib.auth import authenticate, login  # noqa: E402
from django.contrib.auth.models import User  # noqa: E402
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse  # noqa: E402
from django.test import Client  # noqa: E402
from django.urls import path  # noqa: E402
from rest_framework.authentication import BasicAuthentication  # noqa: E402
from rest_framework.permissions import IsAuthenticated  # noqa: E402
from rest_framework.response import Response  # noqa: E402
from rest_framework.views import APIView  # noqa: E402

from apiguard import ConfigurationError, Guard  # noqa: E402
from apiguard.simulate.clock import FakeClock  # noqa: E402
from django_auth_helpers import (  # noqa: E402
    FAST,
    GATE,
    MIDDLEWARE,
    MODEL,
    SITES,
    close_sites,  # noqa: F401 (autouse)
    form_login,
    post,
    rotating_ip,
)

HELD = (403, 429)
_runs = count(1)


# -- views ------------------------------------------------------------------------------
def json_login(request: HttpRequest) -> HttpResponse:
    """A JSON login of one's own: the body's fields as they came."""
    data = json.loads(request.body)
    user = authenticate(request, username=data.get("username"), password=data.get("password"))
    if user is None:
        return JsonResponse({"error": "bad credentials"}, status=401)
    login(request, user)
    return JsonResponse({"ok": True})


def json_login_kwargs(request: HttpRequest) -> HttpResponse:
    """A JSON login passing the body straight through to authenticate()."""
    data = json.loads(request.body)
    user = authenticate(request, **data)
    if user is None:
        return JsonResponse({"error": "bad credentials"}, status=401)
    login(request, user)
    return JsonResponse({"ok": True})


def careful_login(request: HttpRequest) -> HttpResponse:
    """A login that answers any error of the auth stack with a friendly page."""
    try:
        user = authenticate(
            request, username=request.POST.get("username"), password=request.POST.get("password")
        )
    except Exception:
        return HttpResponse("<p>Login is unavailable right now, please try again.</p>")
    if user is not None:
        login(request, user)
        return HttpResponseRedirect("/home")
    return HttpResponse("<form>Please enter a correct username and password.</form>")


def signup(request: HttpRequest) -> HttpResponse:
    """Sign-up with auto-login (the name as the client sent it)."""
    user = User.objects.create_user(request.POST["username"], password=request.POST["password"])
    login(request, user, backend=MODEL)
    return HttpResponseRedirect("/home")


class BasicAPI(APIView):
    authentication_classes = [BasicAuthentication]
    permission_classes = [IsAuthenticated]

    def get(self, request: Any) -> Response:
        return Response({"me": request.user.username})


class FlakyBackend:
    """A remote directory (LDAP, an identity API) that is sometimes unreachable."""

    def authenticate(self, request: Any, username: str | None = None, password: Any = None) -> Any:
        raise ConnectionError("directory unreachable")

    def get_user(self, user_id: Any) -> None:
        return None


FLAKY = f"{__name__}.FlakyBackend"


def make_site(guard: Guard, backends: list[str], **extra: Any) -> str:
    patterns = [
        path("login/", form_login),
        path("jlogin/", json_login),
        path("klogin/", json_login_kwargs),
        path("careful/", careful_login),
        path("signup/", signup),
        path("api/me/", BasicAPI.as_view()),
    ]
    s = DjangoSite(
        guard,
        patterns,
        AUTHENTICATION_BACKENDS=backends,
        PASSWORD_HASHERS=FAST,
        MIDDLEWARE=extra.pop("MIDDLEWARE", MIDDLEWARE),
        **extra,
    )
    SITES.append(s)
    return f"r17s{next(_runs)}"


def post_json(client: Client, url: str, body: dict[str, Any], ip: str) -> Any:
    return client.post(url, json.dumps(body), content_type="application/json", REMOTE_ADDR=ip)


def hold(clock: FakeClock, victim: str, rng: random.Random, url: str = "/login/") -> None:
    """Guess `victim`'s password from a new address each time until the gate holds it."""
    for i in range(60):
        clock.advance(rng.uniform(2, 10))
        ip = rotating_ip(rng)
        if url in ("/jlogin/", "/klogin/"):
            body = {"username": victim, "password": f"guess{i}"}
            answer = post_json(Client(), url, body, ip)
        else:
            answer = post(Client(), url, victim, f"guess{i}", ip)
        if answer.status_code in HELD:
            return
    raise AssertionError("the account was never held")


# -- findings -----------------------------------------------------------------------------
# Fixed (was a strict xfail, review s17)
def test_whitespace_lookalike_account_gets_the_victims_device_cookie() -> None:
    """device_key is deliberately unnormalised (a look-alike must not mark the victim's
    device), but `_name` and `_logged_in` strip: an attacker who signs up as "victim "
    (Django's create_user keeps the space) and logs in gets the device cookie of
    "victim", and with it passes the gate of the victim's held account."""
    clock = FakeClock(1_000_000.0)
    guard = Guard(clock=clock)
    run = make_site(guard, [GATE, MODEL])
    victim = f"{run}-victim"
    User.objects.create_user(victim, password="secret-pw")
    attacker = Client()
    clock.advance(5)
    signed = post(attacker, "/signup/", victim + " ", "mine", "203.0.113.66")
    assert signed.status_code == 302
    hold(clock, victim, random.Random(3))
    clock.advance(5)
    # the victim's account is held for everyone without its device cookie...
    assert post(Client(), "/login/", victim, "guess-x", "203.0.113.67").status_code in HELD
    # ...but not for the attacker's client, which never knew its password
    answer = post(attacker, "/login/", victim, "guess-y", "203.0.113.66")
    assert answer.status_code in HELD


# Fixed (was a strict xfail, review s17)
def test_a_numeric_username_sent_as_a_json_number_skips_the_gate() -> None:
    """Phone-number usernames: `{"username": 5551234567}` finds the user "5551234567"
    (the ORM casts it), but `_name` reads only str/bytes: the gate never runs and the
    failure is never counted, so a held account is guessed on unhindered."""
    clock = FakeClock(1_000_000.0)
    guard = Guard(clock=clock)
    make_site(guard, [GATE, MODEL])
    number = 5550000000 + next(_runs)
    User.objects.create_user(str(number), password="secret-pw")
    hold(clock, str(number), random.Random(4))
    rng = random.Random(9)
    statuses = []
    for i in range(20):
        clock.advance(5)
        body = {"username": number, "password": "secret-pw" if i == 19 else f"g{i}"}
        statuses.append(post_json(Client(), "/jlogin/", body, rotating_ip(rng)).status_code)
    assert statuses[-1] in HELD, statuses  # (the right guess, on a held account)


# Fixed (was a strict xfail, review s17)
def test_a_backend_error_the_view_swallows_is_a_success_with_a_device_cookie() -> None:
    """LoginGate marks the attempt `checking`; ModelBackend rejects the wrong password,
    a directory backend after it raises (no `user_login_failed` is sent), the view answers
    a friendly 200 page: `started()` calls that a success, and the attacker's client gets
    the victim's device cookie for a wrong password."""
    clock = FakeClock(1_000_000.0)
    guard = Guard(clock=clock)
    run = make_site(guard, [GATE, MODEL, FLAKY])
    victim = f"{run}-victim"
    User.objects.create_user(victim, password="secret-pw")
    answer = post(Client(), "/careful/", victim, "wrong", "203.0.113.70")
    assert answer.status_code == 200
    assert "apiguard_device" not in answer.cookies


# Fixed (was a strict xfail, review s17)
def test_the_gate_by_its_module_path_listed_last_is_not_caught() -> None:
    """`apiguard.django_auth.LoginGate` (where the class is defined) listed after
    ModelBackend: a good password is accepted before the gate runs; no
    ConfigurationError at start-up."""
    guard = Guard()
    make_site(guard, [MODEL, "apiguard.django_auth.LoginGate"])
    with pytest.raises(ConfigurationError, match="AUTHENTICATION_BACKENDS"):
        Client().get("/login/", REMOTE_ADDR="198.51.100.1")


# Fixed (was a strict xfail, review s17)
def test_username_and_email_keys_gate_a_decoy_while_the_victim_is_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A user model whose USERNAME_FIELD is `email` and a view passing the body's fields
    to authenticate(): `username=<victim>` is the account ModelBackend checks, `email=<any>`
    the one `_name` gates and counts (the README says `username` is read first)."""
    monkeypatch.setattr(User, "USERNAME_FIELD", "email")
    clock = FakeClock(1_000_000.0)
    guard = Guard(clock=clock)
    run = make_site(guard, [GATE, MODEL])
    victim = f"{run}-victim@example.com"
    User.objects.create_user(f"{run}-v", email=victim, password="secret-pw")
    hold(clock, victim, random.Random(6), url="/klogin/")
    clock.advance(3)
    # (held: its right password alone is refused)
    plain = {"username": victim, "password": "secret-pw"}
    assert post_json(Client(), "/klogin/", plain, "203.0.113.80").status_code in HELD
    clock.advance(3)
    decoy = {"username": victim, "email": "decoy@example.com", "password": "secret-pw"}
    assert post_json(Client(), "/klogin/", decoy, "203.0.113.81").status_code in HELD


@pytest.mark.xfail(
    strict=True,
    reason="every DRF BasicAuthentication request is a gated login "
    "and API clients keep no device cookie",
)
def test_a_basic_auth_integration_is_locked_out_by_guesses_on_its_account() -> None:
    """An integration calling a DRF API with Basic credentials from its fixed address
    (its HTTP library keeps no cookies) is refused as soon as a botnet guesses its
    account's password: its device cookie, given on every response, is never sent back."""
    clock = FakeClock(1_000_000.0)
    guard = Guard(clock=clock)
    run = make_site(guard, [GATE, MODEL])
    account = f"{run}-integration"
    User.objects.create_user(account, password="api-secret")

    def basic(password: str, ip: str) -> int:
        raw = base64.b64encode(f"{account}:{password}".encode()).decode()
        return (
            Client().get("/api/me/", HTTP_AUTHORIZATION=f"Basic {raw}", REMOTE_ADDR=ip).status_code
        )

    for _ in range(20):
        clock.advance(30)
        assert basic("api-secret", "198.51.100.50") == 200
    rng = random.Random(7)
    for i in range(30):
        clock.advance(rng.uniform(2, 10))
        basic(f"guess{i}", rotating_ip(rng))
    clock.advance(5)
    assert basic("api-secret", "198.51.100.50") == 200


class _Broken(Exception):
    pass


def login_broken_name(request: HttpRequest) -> HttpResponse:
    user = authenticate(
        request, username=request.POST["username"], password=request.POST["password"]
    )
    assert user is not None

    def get_username() -> str:
        raise _Broken("USERNAME_FIELD not loaded")

    user.get_username = get_username  # type: ignore[method-assign]
    login(request, user)
    return HttpResponseRedirect("/home")


# Fixed (was a strict xfail, review s17)
def test_a_user_whose_get_username_raises_still_logs_in() -> None:
    """Django's login() never calls get_username(); apiguard's receiver does, through
    `signal.send` (not `send_robust`): its error breaks a login that works without it."""
    guard = Guard()
    run = make_site(guard, [MODEL])
    s = DjangoSite(
        guard,
        [path("login/", login_broken_name)],
        AUTHENTICATION_BACKENDS=[MODEL],
        PASSWORD_HASHERS=FAST,
        MIDDLEWARE=MIDDLEWARE,
    )
    SITES.append(s)
    User.objects.create_user(f"{run}-u", password="pw")
    client = Client(raise_request_exception=False)
    assert post(client, "/login/", f"{run}-u", "pw", "198.51.100.9").status_code == 302


# -- attacks already stopped ------------------------------------------------------------
def test_a_case_lookalike_signup_does_not_mark_the_victims_device() -> None:
    clock = FakeClock(1_000_000.0)
    guard = Guard(clock=clock)
    run = make_site(guard, [GATE, MODEL])
    victim = f"{run}-victim"
    User.objects.create_user(victim, password="secret-pw")
    attacker = Client()
    assert post(attacker, "/signup/", victim.upper(), "mine", "203.0.113.66").status_code == 302
    hold(clock, victim, random.Random(3))
    clock.advance(5)
    assert post(attacker, "/login/", victim, "guess-y", "203.0.113.66").status_code in HELD


def test_a_swallowed_refusal_is_still_answered_and_the_password_never_checked() -> None:
    """`careful_login` catches every exception around authenticate(): the gate's refusal
    is still what the client gets (the middleware replaces the friendly page), and a
    right password on the held account gets no device cookie."""
    clock = FakeClock(1_000_000.0)
    guard = Guard(clock=clock)
    run = make_site(guard, [GATE, MODEL])
    victim = f"{run}-victim"
    User.objects.create_user(victim, password="secret-pw")
    hold(clock, victim, random.Random(11), url="/careful/")
    clock.advance(3)
    answer = post(Client(), "/careful/", victim, "secret-pw", "203.0.113.90")
    assert answer.status_code in HELD
    assert "apiguard_device" not in answer.cookies


def test_authenticate_with_request_none_inside_a_view_is_still_gated() -> None:
    def view(request: HttpRequest) -> HttpResponse:
        user = authenticate(username=request.POST["username"], password=request.POST["password"])
        return HttpResponse("ok" if user else "no", status=200 if user else 401)

    clock = FakeClock(1_000_000.0)
    guard = Guard(clock=clock)
    run = make_site(guard, [GATE, MODEL])
    s = DjangoSite(
        guard,
        [path("login/", view)],
        AUTHENTICATION_BACKENDS=[GATE, MODEL],
        PASSWORD_HASHERS=FAST,
        MIDDLEWARE=MIDDLEWARE,
    )
    SITES.append(s)
    victim = f"{run}-victim"
    User.objects.create_user(victim, password="secret-pw")
    hold(clock, victim, random.Random(12))
    clock.advance(3)
    assert post(Client(), "/login/", victim, "secret-pw", "203.0.113.91").status_code in HELD


def test_a_wrong_password_gets_no_device_cookie_and_a_token_view_needs_the_right_one() -> None:
    guard = Guard(clock=FakeClock(1_000_000.0))
    run = make_site(guard, [GATE, MODEL])
    victim = f"{run}-victim"
    User.objects.create_user(victim, password="secret-pw")
    assert "apiguard_device" not in post(Client(), "/login/", victim, "x", "203.0.113.9").cookies
    body = {"username": victim, "password": "x"}
    assert "apiguard_device" not in post_json(Client(), "/jlogin/", body, "203.0.113.9").cookies


def test_nothing_logged_holds_a_raw_name_or_password(caplog: pytest.LogCaptureFixture) -> None:
    guard = Guard(clock=FakeClock(1_000_000.0))
    run = make_site(guard, [MODEL])
    name = f"{run}-secretname"
    User.objects.create_user(name, password="pw")
    with caplog.at_level(logging.DEBUG):
        for i in range(40):
            post(Client(), "/login/", name, f"hunter{i}", "192.0.2.44")
        post(Client(), "/login/", name, "pw", "192.0.2.45")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert name not in text and "hunter" not in text


def test_odd_credentials_and_logins_outside_requests_do_not_crash() -> None:
    from apiguard import django_auth

    guard = Guard()
    run = make_site(guard, [GATE, MODEL])
    User.objects.create_user(f"{run}-u", password="pw")
    django_auth._failed(None, credentials=None)
    django_auth._failed(None, credentials=["x"])  # type: ignore[arg-type]
    django_auth._logged_in(None, user=None)
    assert authenticate(None, username=f"{run}-u", password="pw") is not None
    assert authenticate(None, identifier="x", password="pw") is None
    body = {"username": {"$ne": 1}, "password": "pw"}
    assert post_json(Client(), "/jlogin/", body, "203.0.113.5").status_code in (401, 500)


class BasicAuthMiddleware:
    """An app's own middleware (below apiguard's) logging API clients in with Basic
    credentials before any view runs."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if header.startswith("Basic "):
            name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            user = authenticate(request, username=name, password=password)
            if user is None:
                return HttpResponse(status=401)
        return self.get_response(request)


def test_a_refusal_raised_in_a_middleware_below_is_answered_not_a_500() -> None:
    clock = FakeClock(1_000_000.0)
    guard = Guard(clock=clock)
    run = make_site(
        guard, [GATE, MODEL], MIDDLEWARE=[*MIDDLEWARE, f"{__name__}.BasicAuthMiddleware"]
    )
    victim = f"{run}-victim"
    User.objects.create_user(victim, password="secret-pw")
    hold(clock, victim, random.Random(13))
    clock.advance(3)
    raw = base64.b64encode(f"{victim}:secret-pw".encode()).decode()
    client = Client(raise_request_exception=False)
    answer = client.get("/login/", HTTP_AUTHORIZATION=f"Basic {raw}", REMOTE_ADDR="203.0.113.99")
    assert answer.status_code in HELD
