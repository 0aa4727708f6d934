"""The Flask and Django example shops: the coupon flow, the login limit and the
per-account identity fire there as in the FastAPI shop, and honest traffic passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from apiguard.simulate.clock import FakeClock

EXAMPLES = Path(__file__).parents[1] / "examples"


@pytest.fixture
def flask_shop() -> Any:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import flask_shop

        yield flask_shop
    finally:
        sys.path.remove(str(EXAMPLES))


def test_flask_shop(flask_shop: Any) -> None:
    app = flask_shop.create_app(flask_shop.demo_guard(FakeClock(1000.0)))
    client = app.test_client()
    u1 = {"Authorization": f"Bearer {flask_shop.BY_USERNAME['user1'].token}"}
    u2 = {"Authorization": f"Bearer {flask_shop.BY_USERNAME['user2'].token}"}
    assert client.post("/coupons/NOPE/redeem", headers=u1).status_code == 404  # refunded
    codes = ["WELCOME10", "SPRING25", "FREESHIP", "LOYAL15"]
    ips = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"]
    statuses = [
        client.post(f"/coupons/{c}/redeem", headers=u1, environ_base={"REMOTE_ADDR": ip})
        for ip, c in zip(ips, codes, strict=True)
    ]
    statuses = [r.status_code for r in statuses]
    assert statuses == [200, 200, 200, 429]  # per account, whatever the IP
    refused = client.post("/coupons/VIP30/redeem", headers=u1)
    assert refused.get_json()["violated-policies"] == ["redeem-coupon"]
    assert client.post("/coupons/VIP30/redeem", headers=u2).status_code == 200
    assert client.get("/api/v1/orders/1", headers=u1).status_code == 200
    assert client.get("/api/v1/orders/2", headers=u1).status_code == 404  # user2's
    # the login reports its outcome: after 8 failures on one account an unknown client
    # must pass the challenge first (403), and the per-IP login limit still holds (429)
    logins = [
        client.post("/login", json={"username": "user3", "password": "x"}).status_code
        for _ in range(21)
    ]
    assert logins == [401] * 8 + [403] * 12 + [429]
    # the owner, on another network and a new device: asked to pass the challenge, then in
    owner = {"REMOTE_ADDR": "198.51.100.4"}
    right = {"username": "user3", "password": "password3"}
    assert client.post("/login", json=right, environ_base=owner).status_code == 403
    answer = client.post("/challenge", json={"answer": "human-ok"}, environ_base=owner)
    assert answer.status_code == 200
    assert client.post("/login", json=right, environ_base=owner).status_code == 200


DJANGO_SCRIPT = r"""
import json, django
django.setup()
from django.test import Client
from shop.data import BY_USERNAME
c = Client()
u1 = {"Authorization": "Bearer " + BY_USERNAME["user1"].token}
u2 = {"Authorization": "Bearer " + BY_USERNAME["user2"].token}
out = {"unknown": c.post("/coupons/NOPE/redeem", headers=u1).status_code}
out["flow"] = [
    c.post(f"/coupons/{code}/redeem", headers=u1, REMOTE_ADDR=f"192.0.2.{i}").status_code
    for i, code in enumerate(["WELCOME10", "SPRING25", "FREESHIP", "LOYAL15"])
]
out["other_user"] = c.post("/coupons/VIP30/redeem", headers=u2).status_code
out["orders"] = [c.get(f"/api/v1/orders/{n}", headers=u1).status_code for n in (1, 2)]
out["logins"] = [
    c.post("/login", json.dumps({"username": "user3", "password": "x"}),
           content_type="application/json").status_code
    for _ in range(21)
]
from apiguard.django import guard
out["principal_limit"] = guard.config.limits.principal
print(json.dumps(out))
"""


def test_django_shop_with_its_own_settings() -> None:
    """The example as a user runs it: DJANGO_SETTINGS_MODULE=shop.settings, APIGUARD dict."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "shop.settings"}
    env["PYTHONPATH"] = os.pathsep.join([str(EXAMPLES / "django_shop"), env.get("PYTHONPATH", "")])
    run = subprocess.run(
        [sys.executable, "-c", DJANGO_SCRIPT],
        cwd=EXAMPLES / "django_shop",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["unknown"] == 404
    assert out["flow"] == [200, 200, 200, 429]
    assert out["other_user"] == 200
    assert out["orders"] == [200, 404]
    assert out["logins"] == [401] * 8 + [403] * 12 + [429]  # challenged after 8 failures
    assert out["principal_limit"] == "120/minute"
