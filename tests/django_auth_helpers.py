"""What the Django login tests share (`test_django_auth.py`, `test_review_s17.py`): the
settings of a site with `LoginGate`, a form login, a client's post and addresses."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from harness import DjangoSite, close_django, configure_django

configure_django()

from django.contrib.auth import authenticate, login  # noqa: E402
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect  # noqa: E402
from django.test import Client  # noqa: E402

GATE = "apiguard.django.LoginGate"
MODEL = "django.contrib.auth.backends.ModelBackend"
FAST = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # (a test's password checks)
MIDDLEWARE = [  # (the README's order)
    "apiguard.django.GuardMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
SITES: list[DjangoSite] = []  # the sites a test opened, closed after it (`close_sites`)


@pytest.fixture(autouse=True)
def close_sites() -> Iterator[None]:
    """(autouse where imported) Close the sites a test opened, then Django's state."""
    yield
    while SITES:
        SITES.pop().close()
    close_django()


def form_login(request: HttpRequest) -> HttpResponse:
    """Django's `LoginView` in short: the form again (200, a page) on a bad password, a
    redirect after `login()`."""
    if request.method == "POST":
        user = authenticate(
            request, username=request.POST.get("username"), password=request.POST.get("password")
        )
        if user is not None:
            login(request, user)
            return HttpResponseRedirect("/home")
        return HttpResponse("<form>Please enter a correct username and password.</form>")
    return HttpResponse("<form></form>")


def post(client: Client, url: str, username: str, password: str, ip: str) -> Any:
    return client.post(url, {"username": username, "password": password}, REMOTE_ADDR=ip)


def rotating_ip(rng: random.Random) -> str:
    """A residential-looking address, new each time."""
    first = rng.choice([23, 45, 81, 104, 151, 185])
    return f"{first}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
