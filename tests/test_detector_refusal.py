"""A detector's throttle is a 429 of its own problem type naming the finding, never a
"quota exceeded" with an empty `violated-policies` (trial finding 8); Flask and Django."""

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

OFFICE = "192.0.2.10"
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

    @app.get("/me")
    def me() -> Any:
        return {"ok": 1}

    @app.post("/articles")
    @guard.flow("publish", "10/hour", per="principal", count="success")
    def publish() -> Any:
        return {"ok": 1}

    client = app.test_client()
    for i in range(12):  # each colleague seen before, from home
        h = {"X-User": f"user{i}", "User-Agent": f"ua{i}"}
        client.get("/me", headers=h, environ_base={"REMOTE_ADDR": f"203.0.{i}.7"})
    refused = []
    for i in range(12):  # one post each from the office, same browser build
        h = {"X-User": f"user{i}", "User-Agent": UA}
        r = client.post("/articles", headers=h, environ_base={"REMOTE_ADDR": OFFICE})
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

    def me(request: Any) -> Any:
        return JsonResponse({"ok": 1})

    @guard.flow("publish", "10/hour", per="principal", count="success")
    def publish(request: Any) -> Any:
        return JsonResponse({"ok": 1})

    call = django_client(guard, patterns=[path("me", me), path("articles", publish)])
    for i in range(12):
        h = {"X-User": f"user{i}", "User-Agent": f"u{i}"}
        call("GET", "/me", ip=f"203.0.{i}.7", headers=h)
    refused = []
    for i in range(12):
        h = {"X-User": f"user{i}", "User-Agent": UA}
        r = call("POST", "/articles", ip=OFFICE, headers=h)
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
