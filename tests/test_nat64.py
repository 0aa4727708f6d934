"""NAT64 clients (RFC 6052 well-known prefix 64:ff9b::/96) count as their IPv4 address.

An IPv6-only network reaches IPv4 servers through a NAT64 gateway; the server (or a dual-
stack proxy in front of it) sees `64:ff9b::a.b.c.d`. Grouped as IPv6 into one /64, every
NAT64 client in the world would share one budget (and one ban).
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from apiguard import Guard
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock


def ip_key(guard: Guard, address: str, xff: str | None = None) -> str:
    headers = [(b"x-forwarded-for", xff.encode())] if xff else []
    scope: dict[str, Any] = {"type": "http", "headers": headers, "client": (address, 1)}
    return guard.engine.begin(scope).ip_key


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("64:ff9b::192.0.2.1", "64:ff9b::198.51.100.9"),
        ("64:ff9b::c000:201", "64:ff9b::c000:202"),  # one /64, one /120 apart
    ],
)
def test_two_nat64_clients_are_two_principals(a: str, b: str) -> None:
    guard = Guard()
    assert ip_key(guard, a) != ip_key(guard, b)


@pytest.mark.parametrize(
    "nat64", ["64:ff9b::192.0.2.1", "64:ff9b::c000:201", "64:FF9B:0:0:0:0:C000:0201"]
)
def test_nat64_and_native_ipv4_of_one_address_are_one(nat64: str) -> None:
    guard = Guard()
    assert ip_key(guard, nat64) == ip_key(guard, "192.0.2.1")
    assert ip_key(guard, nat64) == ip_key(guard, "::ffff:192.0.2.1")  # mapped, as before


def test_ipv4_prefix_applies_to_nat64_clients() -> None:
    guard = Guard({"client_ip": {"ipv4_prefix": 24}})
    assert ip_key(guard, "64:ff9b::192.0.2.1") == ip_key(guard, "192.0.2.200")
    assert ip_key(guard, "64:ff9b::192.0.2.1") != ip_key(guard, "64:ff9b::192.0.3.1")


def test_behind_a_trusted_proxy() -> None:
    guard = Guard({"client_ip": {"trusted_proxies": ["10.0.0.0/8"]}})
    via_proxy = ip_key(guard, "10.0.0.1", xff="64:ff9b::203.0.113.5")
    assert via_proxy == ip_key(guard, "203.0.113.5")
    assert via_proxy != ip_key(guard, "10.0.0.1", xff="64:ff9b::203.0.113.6")


def test_other_ipv6_is_still_grouped_by_64() -> None:
    guard = Guard()
    assert ip_key(guard, "2001:db8::1") == ip_key(guard, "2001:db8::ffff:1")
    # the local-use NAT64 prefix (RFC 8215) embeds the address where the operator chose:
    # not decoded, grouped like any IPv6 address
    assert ip_key(guard, "64:ff9b:1::c000:201") == ip_key(guard, "64:ff9b:1::c633:6409")


def test_per_ip_limit_on_a_real_app() -> None:
    guard = Guard(
        {"limits": {"principal": None, "ip": "1/minute"}, "bans": {"enabled": False}},
        clock=FakeClock(1_000.0),
    )
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.get("/items")
    async def items() -> dict[str, bool]:
        return {"ok": True}

    def get(address: str) -> int:
        return TestClient(app, client=(address, 1)).get("/items").status_code

    assert get("64:ff9b::192.0.2.1") == 200
    assert get("64:ff9b::198.51.100.9") == 200  # another IPv4 host behind NAT64: its own
    assert get("192.0.2.1") == 429  # the same IPv4 host reached natively: the same budget
    assert get("64:ff9b::192.0.2.1") == 429
