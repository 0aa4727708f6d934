"""A DRF view with no authentication class: DRF writes `AnonymousUser` over the session
user Django's middleware set; that user is still the principal (a verified session),
under WSGI and ASGI, and an anonymous client stays its address."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from itertools import count
from typing import Any

import pytest

from harness import DjangoSite, close_django, configure_django

configure_django()

from django.contrib.auth.models import User  # noqa: E402
from django.test import AsyncClient, Client  # noqa: E402
from django.urls import path  # noqa: E402
from rest_framework.response import Response  # noqa: E402
from rest_framework.views import APIView  # noqa: E402

from apiguard import Guard, current_request  # noqa: E402

_users = count(1)
_SESSION = "django.contrib.sessions.middleware.SessionMiddleware"
_AUTH = "django.contrib.auth.middleware.AuthenticationMiddleware"
_GUARD = "apiguard.django.GuardMiddleware"
ORDERS = {  # the README's (apiguard first), and apiguard after Django's auth
    "first": [_GUARD, _SESSION, _AUTH],
    "last": [_SESSION, _AUTH, _GUARD],
}


@pytest.fixture(autouse=True)
def _close_sites() -> Iterator[None]:
    yield
    close_django()


def make_user() -> User:
    return User.objects.create_user(f"drfs{next(_users)}-{id(object())}", password="pw")


def open_view(guard: Guard, limited: bool) -> list[Any]:
    def get(self: Any, request: Any, pk: int) -> Response:
        ctx = current_request()
        assert ctx is not None
        return Response({"item": pk, "principal": ctx.principal})

    class Items(APIView):  # type: ignore[misc]
        authentication_classes: list[Any] = []
        permission_classes: list[Any] = []

    # (the view's own limit, checked at its entry, after DRF authenticated: per principal)
    Items.get = guard.limit("2/minute")(get) if limited else get
    return [path("items/<int:pk>", Items.as_view())]


@pytest.mark.parametrize("order", sorted(ORDERS))
@pytest.mark.parametrize("limited", [False, True])
def test_session_user_is_the_principal_of_a_drf_view_without_authenticators(
    make_guard: Any, limited: bool, order: str
) -> None:
    guard = make_guard({"principal": "2/minute"} if not limited else None)
    DjangoSite(guard, open_view(guard, limited), MIDDLEWARE=ORDERS[order])
    alice, bob = Client(), Client()
    alice.force_login(make_user())
    bob.force_login(make_user())
    ip = "192.0.2.77"
    got = [alice.get(f"/items/{n}", REMOTE_ADDR=ip).status_code for n in range(3)]
    assert got == [200, 200, 429]  # alice's own budget...
    # ...not the address's: bob, signed in at the same address, has his own
    assert bob.get("/items/1", REMOTE_ADDR=ip).status_code == 200
    # an anonymous client there is the address, which alice did not spend
    anonymous = Client()
    assert anonymous.get("/items/1", REMOTE_ADDR=ip).status_code == 200


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_session_user_is_the_principal_of_a_drf_view_without_authenticators_asgi(
    make_guard: Any, order: str
) -> None:
    guard = make_guard({"principal": "2/minute"})
    DjangoSite(guard, open_view(guard, False), MIDDLEWARE=ORDERS[order])
    alice, bob = make_user(), make_user()

    async def run() -> tuple[list[int], int, int]:
        a, b = AsyncClient(), AsyncClient()
        await a.aforce_login(alice)
        await b.aforce_login(bob)
        statuses = [(await a.get(f"/items/{n}")).status_code for n in range(3)]
        return (
            statuses,
            (await b.get("/items/1")).status_code,
            (await AsyncClient().get("/items/1")).status_code,
        )

    statuses, bob_status, anonymous = asyncio.run(run())
    assert statuses == [200, 200, 429]
    assert bob_status == 200
    assert anonymous == 200
