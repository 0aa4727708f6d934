"""An app whose views are generated from an OpenAPI file: connexion 3's FlaskApp (an ASGI
stack around Flask, with its own problem+json error handlers). apiguard's ASGI middleware
goes into connexion's stack; the decorated operation's limit fires through it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

connexion = pytest.importorskip("connexion")

SPEC = """
openapi: 3.0.0
info: {title: shop, version: "1"}
paths:
  /orders/{order_id}:
    get:
      operationId: cx_views.get_order
      parameters:
        - {name: order_id, in: path, required: true, schema: {type: integer}}
      responses:
        "200": {description: ok}
  /health:
    get:
      operationId: cx_views.health
      responses:
        "200": {description: ok}
"""

def test_connexion_flask_app_limits_operations(make_guard: Any, tmp_path: Path) -> None:
    from connexion.middleware import MiddlewarePosition

    from apiguard.asgi import GuardMiddleware

    guard = make_guard()
    (tmp_path / "api.yaml").write_text(SPEC)
    module = type(sys)("cx_views")

    @guard.limit("2/minute")
    def get_order(order_id: int) -> dict[str, int]:
        return {"order": order_id}

    def health() -> dict[str, str]:
        return {"status": "ok"}

    module.get_order = get_order  # type: ignore[attr-defined]
    module.health = health  # type: ignore[attr-defined]
    sys.modules["cx_views"] = module
    try:
        app = connexion.FlaskApp(__name__, specification_dir=str(tmp_path))
        app.add_api("api.yaml")
        app.add_middleware(
            GuardMiddleware, position=MiddlewarePosition.BEFORE_EXCEPTION, guard=guard
        )
        client = app.test_client()
        statuses = [client.get(f"/orders/{i}").status_code for i in range(3)]
        assert statuses == [200, 200, 429]  # one budget for the operation, any order id
        refused = client.get("/orders/9")
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["violated-policies"] == ["limit:get_order"]
        assert "retry-after" in refused.headers
        assert client.get("/health").status_code == 200  # another operation: its own rules
        other = app.test_client(client=("198.51.100.9", 50_000))
        assert other.get("/orders/1").status_code == 200  # another client is not refused
        assert other.get("/health").status_code == 200
    finally:
        del sys.modules["cx_views"]
