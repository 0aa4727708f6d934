"""Every route of the example shop is checked: walk its routes (the same walk the start-up
check uses) and show that each one, whatever its shape, is refused once the caller's
principal budget is spent, while another caller on the same route is not."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
from fastapi.testclient import TestClient

from apiguard import Guard
from apiguard.routes import walk_routes
from apiguard.simulate.clock import FakeClock

SHOP = Path(__file__).resolve().parents[1] / "examples" / "shop.py"


def _shop() -> ModuleType:
    spec = importlib.util.spec_from_file_location("shop_under_test", SHOP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _routes() -> list[tuple[str, str]]:
    shop = _shop()
    app = shop.create_app(Guard(clock=FakeClock(0.0)))
    found = []
    for entry in walk_routes(app):
        if entry.kind != "http":
            continue
        path = re.sub(r"\{[^}]+\}", "1", entry.template)
        found.extend((method, path) for method in sorted(entry.methods - {"HEAD"}))
    return found


ROUTES = _routes()


def test_the_walk_finds_the_shop_routes() -> None:
    templates = {path for _, path in ROUTES}
    for expected in ("/health", "/login", "/products/1", "/coupons/1/redeem", "/api/v1/orders/1"):
        assert expected in templates, templates


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_each_route_refuses_a_spent_principal(method: str, path: str) -> None:
    shop = _shop()
    guard = Guard({"limits": {"principal": "2/minute", "ip": None}}, clock=FakeClock(0.0))
    app = shop.create_app(guard)
    spender = TestClient(app, client=("198.51.100.1", 1))
    other = TestClient(app, client=("198.51.100.2", 1))
    for _ in range(2):  # spend the budget on another route, any status
        spender.get("/nowhere")
    refused = spender.request(method, path, json={})
    assert refused.status_code == 429, (method, path, refused.status_code, refused.text)
    assert refused.headers["content-type"] == "application/problem+json"
    assert other.request(method, path, json={}).status_code != 429
