"""`EnvironReader.begin` builds the context `Engine.begin(wsgi_scope(environ))` builds."""

from __future__ import annotations

from typing import Any

import pytest

from apiguard import Guard
from apiguard.wsgi import EnvironReader, wsgi_scope

BASE: dict[str, Any] = {
    "REQUEST_METHOD": "POST",
    "SCRIPT_NAME": "/app",
    "PATH_INFO": "/items/7",
    "QUERY_STRING": "a=1",
    "REMOTE_ADDR": "198.51.100.7",
    "HTTP_HOST": "example.test",
    "HTTP_USER_AGENT": "pytest",
    "CONTENT_TYPE": "application/json",
    "wsgi.url_scheme": "http",
}
CASES: list[dict[str, Any]] = [
    {},
    {"PATH_INFO": "/caf\xc3\xa9"},  # UTF-8 bytes as latin-1, as servers pass them
    {"PATH_INFO": ""},
    {"REMOTE_ADDR": None},
    {"REQUEST_METHOD": None, "QUERY_STRING": None, "SCRIPT_NAME": None},
    {"HTTP_X_API_KEY": " k1 "},
    {"HTTP_AUTHORIZATION": "Bearer tok"},
    {"HTTP_AUTHORIZATION": "Bearer tok", "HTTP_X_API_KEY": "k1"},
    {"HTTP_COOKIE": "a=1"},
    {"HTTP_COOKIE": ""},
    {"HTTP_X_FORWARDED_FOR": "203.0.113.9"},
    {"werkzeug.proxy_fix.orig": {"REMOTE_ADDR": "10.0.0.1"}, "REMOTE_ADDR": "203.0.113.9"},
]


def _environ(change: dict[str, Any]) -> dict[str, Any]:
    environ = {**BASE, **change}
    return {k: v for k, v in environ.items() if v is not None}


@pytest.mark.parametrize("change", CASES)
@pytest.mark.parametrize("proxies", [False, True])
def test_the_reader_matches_the_general_path(change: dict[str, Any], proxies: bool) -> None:
    config: dict[str, Any] = {"identity": {"api_key_headers": ["x-api-key"]}}
    if proxies:
        config["client_ip"] = {"trusted_proxies": ["10.0.0.0/8"]}
    engine = Guard(config).engine
    fast = EnvironReader(engine).begin(_environ(change))
    general = engine.begin(wsgi_scope(_environ(change)))
    assert {**fast.scope, "headers": list(fast.scope["headers"])} == general.scope
    for name in ("client_ip", "ip_key", "credential_key", "credentials", "token_key"):
        assert getattr(fast, name) == getattr(general, name), name
    assert fast.has_cookie == general.has_cookie
