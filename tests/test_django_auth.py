"""Django's own authentication as login outcomes: `user_login_failed` and `user_logged_in`
seen without `@guard.login` (a form login answering pages, DRF's token view), and
`apiguard.django.LoginGate` holding logins back before the password is checked."""

from __future__ import annotations

import logging
import random
from itertools import count
from typing import Any

import pytest

from harness import DjangoSite, configure_django

configure_django()

from django.contrib.auth import authenticate  # noqa: E402
from django.contrib.auth.models import User  # noqa: E402
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect  # noqa: E402
from django.test import Client  # noqa: E402
from django.urls import path  # noqa: E402
from rest_framework.authtoken.views import obtain_auth_token  # noqa: E402

from apiguard import ConfigurationError, Guard, django_auth  # noqa: E402
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

_runs = count(1)


def site(guard: Guard, *, gate: bool) -> tuple[str, list[str]]:
    """The form login and DRF's token view under `guard`; users' names (password "pw")."""
    backends = [GATE, MODEL] if gate else [MODEL]
    patterns = [path("login/", form_login), path("token/", obtain_auth_token)]
    s = DjangoSite(
        guard,
        patterns,
        AUTHENTICATION_BACKENDS=backends,
        PASSWORD_HASHERS=FAST,
        MIDDLEWARE=MIDDLEWARE,
    )
    SITES.append(s)
    run = next(_runs)
    names = [f"da{run}-user{i}" for i in range(40)]
    for name in names:
        User.objects.create_user(name, password="pw")
    return f"da{run}", names


def detected(caplog: pytest.LogCaptureFixture) -> set[str]:
    """The detectors that logged a finding (`apiguard: <detector> detected ...`)."""
    return {
        r.getMessage().split()[1]
        for r in caplog.records
        if r.name == "apiguard" and " detected " in r.getMessage()
    }


def test_a_form_login_with_no_declaration_is_seen_through_django_signals(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No `@guard.login`: a bad password answered 200 (the form again) is a failure, a
    `login()` a success with its device cookie; one address failing on 30 accounts is
    flagged (recorded: without `LoginGate`, nothing is held back)."""
    clock = FakeClock(1_000_000.0)
    guard = Guard(clock=clock)
    _, names = site(guard, gate=False)
    owner = Client()
    answer = post(owner, "/login/", names[0], "pw", "198.51.100.7")
    assert answer.status_code == 302
    assert "apiguard_device" in answer.cookies
    bot = Client()
    statuses = []
    with caplog.at_level(logging.WARNING, logger="apiguard"):
        for name in names[1:31]:
            clock.advance(20)
            statuses.append(post(bot, "/login/", name, "guess", "192.0.2.9").status_code)
    assert set(statuses) == {200}  # (nothing holds a login back without the gate)
    assert "account_takeover.ip" in detected(caplog)
    told = [r for r in caplog.records if "nothing holds logins back" in r.getMessage()]
    assert len(told) <= 1 and (told or django_auth._told)
    bad = post(Client(), "/login/", names[1], "guess", "198.51.100.8")
    assert "apiguard_device" not in bad.cookies


def test_the_gate_holds_a_brute_force_from_rotating_addresses_and_never_its_owner() -> None:
    """`LoginGate` first: one account guessed from a new address each time is held back
    before its password is checked (the right password too, once held), while its owner's
    browser, which logged in before, always gets in."""
    clock = FakeClock(1_000_000.0)
    guard = Guard(clock=clock)
    _, names = site(guard, gate=True)
    victim = names[3]
    owner = Client()
    assert post(owner, "/login/", victim, "pw", "198.51.100.7").status_code == 302
    rng = random.Random(5)
    statuses = []
    for i in range(120):
        clock.advance(rng.uniform(2, 20))
        password = "pw" if i == 100 else f"guess{i}"
        statuses.append(post(Client(), "/login/", victim, password, rotating_ip(rng)).status_code)
        if i % 30 == 15:
            assert post(owner, "/login/", victim, "pw", "198.51.100.7").status_code == 302
    first = next(i for i, s in enumerate(statuses) if s in (403, 429))
    assert first <= 10, statuses
    assert statuses[100] in (403, 429), statuses  # (held: the right guess is refused too)
    assert 302 not in statuses
    admitted_after = sum(1 for s in statuses[first:] if s == 200)
    assert admitted_after <= 0.1 * len(statuses), statuses


def test_a_token_view_with_the_gate_counts_its_successes_and_holds_a_stuffer() -> None:
    """DRF's `obtain_auth_token` never calls `login()`: with `LoginGate`, a check no
    backend failed is counted as a success (no device cookie: a backend error the view
    swallowed would look the same), a failure answered 400 a failure, and one address
    trying many accounts is held back at its next try."""
    clock = FakeClock(1_000_000.0)
    guard = Guard(clock=clock)
    _, names = site(guard, gate=True)
    ok = post(Client(), "/token/", names[0], "pw", "198.51.100.20")
    assert ok.status_code == 200 and "token" in ok.json()
    assert "apiguard_device" not in ok.cookies
    assert guard.engine.ato.climate._succeeded  # (counted)
    statuses = []
    for name in names[5:35]:
        clock.advance(15)
        statuses.append(post(Client(), "/token/", name, "letmein", "192.0.2.44").status_code)
    assert statuses[0] == 400
    assert any(s in (403, 429) for s in statuses), statuses
    first = next(i for i, s in enumerate(statuses) if s in (403, 429))
    assert all(s in (403, 429) for s in statuses[first:]), statuses
    # a person elsewhere is not held
    assert post(Client(), "/token/", names[1], "pw", "198.51.100.21").status_code == 200


def test_without_the_gate_a_token_view_counts_failures_only() -> None:
    """No `LoginGate`: the 400 of a bad password is a failure (signal), a good one has
    no signal and no `@guard.login`: no login, no device cookie."""
    guard = Guard(clock=FakeClock(1_000_000.0))
    _, names = site(guard, gate=False)
    ok = post(Client(), "/token/", names[0], "pw", "198.51.100.20")
    assert ok.status_code == 200 and "apiguard_device" not in ok.cookies


def test_the_gate_anywhere_but_first_fails_at_start_up() -> None:
    guard = Guard()
    s = DjangoSite(
        guard,
        [path("login/", form_login)],
        AUTHENTICATION_BACKENDS=[MODEL, GATE],
        MIDDLEWARE=MIDDLEWARE,
    )
    SITES.append(s)
    with pytest.raises(ConfigurationError, match="AUTHENTICATION_BACKENDS"):
        Client().get("/login/", REMOTE_ADDR="198.51.100.1")


def test_logins_outside_a_guarded_request_are_ignored() -> None:
    """`authenticate()` and the signals outside any request (a shell, a test's
    `force_login`) record nothing and raise nothing, gate or not."""
    guard = Guard()
    _, names = site(guard, gate=True)
    assert authenticate(username=names[0], password="bad") is None
    assert authenticate(username=names[0], password="pw") is not None
    client = Client()
    client.force_login(User.objects.get(username=names[0]))


async def async_form_login(request: HttpRequest) -> HttpResponse:
    """`form_login` as an async view (`aauthenticate`, `alogin`)."""
    from django.contrib.auth import aauthenticate, alogin

    user = await aauthenticate(
        request, username=request.POST.get("username"), password=request.POST.get("password")
    )
    if user is not None:
        await alogin(request, user)
        return HttpResponseRedirect("/home")
    return HttpResponse("<form>Please enter a correct username and password.</form>")


def test_the_gate_and_the_signals_under_asgi() -> None:
    """The same under Django's ASGI handler: an async view's `aauthenticate()` runs the
    gate, `alogin()` gives the device cookie, and a held account is refused."""
    import asyncio

    from django.test import AsyncClient

    class At(AsyncClient):  # type: ignore[misc]
        ip = "198.51.100.7"

        def _base_scope(self, **request: Any) -> dict[str, Any]:
            scope: dict[str, Any] = super()._base_scope(**request)
            scope["client"] = [self.ip, 40000]
            return scope

    clock = FakeClock(1_000_000.0)
    guard = Guard(clock=clock)
    s = DjangoSite(
        guard,
        [path("alogin/", async_form_login)],
        AUTHENTICATION_BACKENDS=[GATE, MODEL],
        PASSWORD_HASHERS=FAST,
        MIDDLEWARE=MIDDLEWARE,
    )
    SITES.append(s)
    name = f"da{next(_runs)}-async"
    User.objects.create_user(name, password="pw")
    rng = random.Random(8)

    async def go() -> tuple[Any, list[int]]:
        owner = At()
        first = await owner.post("/alogin/", {"username": name, "password": "pw"})
        statuses = []
        for i in range(40):
            clock.advance(rng.uniform(2, 20))
            bot = At()
            bot.ip = rotating_ip(rng)
            answer = await bot.post("/alogin/", {"username": name, "password": f"g{i}"})
            statuses.append(answer.status_code)
        again = await owner.post("/alogin/", {"username": name, "password": "pw"})
        statuses.append(again.status_code)
        return first, statuses

    first, statuses = asyncio.run(go())
    assert first.status_code == 302 and "apiguard_device" in first.cookies
    assert statuses[-1] == 302  # (the owner's browser, during the attack)
    assert statuses[:-1].count(200) <= 10 and 403 in statuses, statuses


@pytest.mark.parametrize("gate", [False, True])
def test_the_audit_says_logins_are_seen_and_whether_they_are_held(gate: bool) -> None:
    """A project with django.contrib.auth: no "add @guard.login" note or warning (its
    signals report every login), and whether `LoginGate` holds them back."""
    from apiguard.audit import audit_django

    site(Guard(), gate=gate)
    audit = audit_django()
    assert not any("no route has @guard.login" in w for w in audit.warnings)
    assert not any("looks like a login" in n for r in audit.routes for n in r.notes)
    said = [w for w in audit.warnings if "django.contrib.auth are seen" in w]
    assert len(said) == 1
    assert ("never held back" in said[0]) is not gate
