"""A detector's throttle (here: flow_groups on a farm of accounts made in a burst) is a
429 of its own problem type naming the finding, never a "quota exceeded" with an empty
`violated-policies` (trial finding 8); Flask and Django."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from apiguard import Guard
from apiguard.decision import Action, Decision
from apiguard.flask import init_app
from apiguard.responses import QUOTA_EXCEEDED, UNUSUAL_ACTIVITY, block_response
from harness import close_django, configure_django, django_client

FARM = "198.51.100.7"
UA = "Mozilla/5.0 (Windows NT 10.0) Chrome/120"


@pytest.fixture(autouse=True)
def _close_sites() -> Iterator[None]:
    yield
    close_django()


def header_user(ctx: Any) -> str | None:
    for name, value in ctx.scope.get("headers", ()):
        if name == b"x-user":
            return str(value.decode("latin-1"))
    return None


def make_guard() -> Guard:
    return Guard(
        {"limits": {"principal": None, "ip": None}, "bans": {"enabled": False}},
        principal_resolver=header_user,
    )


def assert_detector_throttle(status: int, headers: dict[str, str], body: dict[str, Any]) -> None:
    assert status == 429
    assert headers["content-type"] == "application/problem+json"
    assert body["type"] == UNUSUAL_ACTIVITY
    assert body["status"] == 429
    assert "violated-policies" not in body
    assert re.fullmatch(r"[a-z_]+(\.[a-z_]+)?", body["detector"])
    assert body["detector"].startswith("flow_groups.")
    assert body["detector"] in body["detail"] and "unusual activity" in body["title"]
    assert "user" not in body["detail"] and "fg:" not in body["detail"]  # no key, no user
    assert int(headers["retry-after"]) >= 1
    assert "ratelimit" not in headers and "ratelimit-policy" not in headers  # not a quota


def test_flask_flow_groups_throttle_names_the_detector() -> None:
    guard = make_guard()
    app = Flask(__name__)
    init_app(app, guard)

    @app.post("/signup")
    def signup() -> Any:
        from flask import request

        guard.account_created(request.headers["X-New"])
        return {"ok": 1}

    @app.post("/articles")
    @guard.flow("publish", "10/hour", per="principal", count="success")
    def publish() -> Any:
        return {"ok": 1}

    client = app.test_client()
    refused = []
    for i in range(30):  # a farm: accounts made in a burst from one address and shape
        env = {"REMOTE_ADDR": FARM}
        client.post("/signup", headers={"X-New": f"bot{i}", "User-Agent": UA}, environ_base=env)
        h = {"X-User": f"bot{i}", "User-Agent": UA}
        r = client.post("/articles", headers=h, environ_base=env)
        if r.status_code != 200:
            refused.append(r)
    assert refused
    for r in refused:
        headers = {k.lower(): v for k, v in r.headers.items()}
        assert_detector_throttle(r.status_code, headers, r.get_json())


def test_django_flow_groups_throttle_names_the_detector() -> None:
    configure_django()
    from django.http import JsonResponse
    from django.urls import path

    guard = make_guard()

    def signup(request: Any) -> Any:
        guard.account_created(request.headers["X-New"])
        return JsonResponse({"ok": 1})

    @guard.flow("publish", "10/hour", per="principal", count="success")
    def publish(request: Any) -> Any:
        return JsonResponse({"ok": 1})

    call = django_client(guard, patterns=[path("signup", signup), path("articles", publish)])
    refused = []
    for i in range(30):  # a farm: accounts made in a burst from one address and shape
        call("POST", "/signup", ip=FARM, headers={"X-New": f"bot{i}", "User-Agent": UA})
        r = call("POST", "/articles", ip=FARM, headers={"X-User": f"bot{i}", "User-Agent": UA})
        if r.status != 200:
            refused.append(r)
    assert refused
    for r in refused:
        assert_detector_throttle(r.status, r.headers, r.json())


def test_quota_refusal_never_lists_an_empty_violated_policies() -> None:
    body = block_response(Decision(Action.THROTTLE, "ban", 30.0)).body
    assert b"violated-policies" not in body and QUOTA_EXCEEDED.encode() in body
    banned = block_response(Decision(Action.BLOCK, "rotation", 60.0, detector="rotation"))
    assert banned.status == 403 and b'"detector":"rotation"' in banned.body
