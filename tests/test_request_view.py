"""Request view details: credential precedence, blank credentials, proxy warnings."""

from __future__ import annotations

import logging

import pytest

from apiguard import Guard


def _scope(headers: list[tuple[bytes, bytes]], client: str = "198.51.100.7") -> dict[str, object]:
    return {"type": "http", "method": "GET", "path": "/", "headers": headers, "client": (client, 1)}


def test_bearer_token_wins_over_api_key_whatever_the_header_order() -> None:
    """The bearer token is the caller's own credential by HTTP convention; an API key sent
    beside it is often an app key every copy of a client shares. Both are checked for bans."""
    engine = Guard().engine
    token = engine.begin(_scope([(b"authorization", b"Bearer t")])).credential_key
    key = engine.begin(_scope([(b"x-api-key", b"k1")])).credential_key
    first = engine.begin(_scope([(b"x-api-key", b"k1"), (b"authorization", b"Bearer t")]))
    last = engine.begin(_scope([(b"authorization", b"Bearer t"), (b"x-api-key", b"k1")]))
    assert token is not None and key is not None
    assert first.credential_key == last.credential_key == token
    assert first.credentials == last.credentials == (token, key)


@pytest.mark.parametrize(
    "headers",
    [
        [(b"x-api-key", b"   ")],
        [(b"authorization", b"Bearer    ")],
        [(b"authorization", b"Basic dXNlcjpwYXNz")],
        [(b"x-api-key", b"")],
    ],
)
def test_blank_or_non_bearer_credentials_fall_back_to_the_ip(
    headers: list[tuple[bytes, bytes]],
) -> None:
    ctx = Guard().engine.begin(_scope(headers))
    assert ctx.credential_key is None
    assert ctx.ip_key.startswith("ip:")


def test_forwarding_headers_without_trusted_proxies_warn_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = Guard().engine
    with caplog.at_level(logging.WARNING, logger="apiguard"):
        for spoofed in ("203.0.113.1", "203.0.113.2", "203.0.113.3"):
            ctx = engine.begin(_scope([(b"x-forwarded-for", spoofed.encode())]))
            assert ctx.client_ip == "198.51.100.7"  # the header is never believed
    warnings = [r for r in caplog.records if "trusted_proxies" in r.getMessage()]
    assert len(warnings) == 1
    assert "203.0.113" not in warnings[0].getMessage()  # no client data in the log


def test_no_warning_when_proxies_are_trusted(caplog: pytest.LogCaptureFixture) -> None:
    engine = Guard({"client_ip": {"trusted_proxies": ["10.0.0.0/8"]}}).engine
    with caplog.at_level(logging.WARNING, logger="apiguard"):
        ctx = engine.begin(_scope([(b"x-forwarded-for", b"203.0.113.9")], client="10.1.2.3"))
    assert ctx.client_ip == "203.0.113.9"
    assert not [r for r in caplog.records if "trusted_proxies" in r.getMessage()]
