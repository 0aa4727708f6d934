"""Settings of the Django example shop: apiguard is one MIDDLEWARE entry and one dict."""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-shop-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "shop.urls"
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

MIDDLEWARE = [
    "apiguard.django.GuardMiddleware",  # first: every request is counted
    "shop.auth.BearerTokenMiddleware",  # the app's own authentication: calls identify()
]

# validated by apiguard.GuardConfig when the middleware loads (a bad value fails start-up,
# naming the setting); the decorators use the guard built from it: apiguard.django.guard
APIGUARD = {
    "limits": {"principal": "120/minute"},
    "secret": os.environ.get("APIGUARD_SECRET", "apiguard-demo-secret-0123"),
    "detection": {"challenge_path": "/challenge"},
}
