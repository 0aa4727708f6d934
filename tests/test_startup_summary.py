"""One INFO line at start-up says what apiguard does for this app.

Logged from the "apiguard" logger once per app, when the guard is first verified against
it (lifespan start-up, or the first request without one), in both installation styles:
the mode (and an override), the global rules with their rates, the routes with rules
(methods, template, rule names and rates; long lists cut with "... and N more"), the store
and its cap, the trusted proxies ("none"), bans on or off. No secret ever appears in it.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from apiguard import Guard
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock
from apiguard.store.memory import MemoryStore

SECRET = "do-not-log-this-secret-0123456789"


def summaries(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "apiguard" and r.levelno == logging.INFO and "global rules" in r.getMessage()
    ]


def shop(guard: Guard) -> FastAPI:
    app = FastAPI()
    v1 = APIRouter(prefix="/v1")

    @v1.post("/coupons/{code}/redeem")
    @guard.flow("redeem-coupon", "3/hour", count="success")
    async def redeem(code: str) -> dict[str, str]:
        return {"code": code}

    @app.get("/reports/{report_id}")
    @guard.limit("30/minute;1000/day", mode="monitor")
    def report(report_id: int) -> dict[str, int]:
        return {"report": report_id}

    @app.api_route("/search", methods=["GET", "POST"])
    @guard.limit("5/minute", per="ip", name="search")
    async def search() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    app.include_router(v1)
    return app


@pytest.mark.parametrize("style", ["add_middleware", "outside"])
@pytest.mark.parametrize("lifespan", [True, False])
def test_one_line_says_what_is_on(
    caplog: pytest.LogCaptureFixture, style: str, lifespan: bool
) -> None:
    caplog.set_level(logging.INFO, logger="apiguard")
    guard = Guard(
        {
            "secret": SECRET,
            "client_ip": {"trusted_proxies": ["10.0.0.0/8", "fd00::/8"]},
            "identity": {"api_key_headers": ["x-api-key"]},
        }
    )
    app = shop(guard)
    if style == "add_middleware":
        app.add_middleware(GuardMiddleware, guard=guard)
        client = TestClient(app)
    else:
        client = TestClient(GuardMiddleware(app, guard=guard))
    if lifespan:
        with client:
            assert len(summaries(caplog)) == 1  # at start-up, before any request
            for _ in range(3):
                client.get("/health", headers={"x-api-key": "sk_live_secret_key"})
    else:
        for _ in range(3):
            client.get("/health", headers={"x-api-key": "sk_live_secret_key"})
    lines = summaries(caplog)
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("apiguard: mode=enforce;")
    assert (
        "global rules: per-principal 600/minute, per-ip 3000/minute, "
        "new-credentials-per-ip 100/hour;" in line
    )
    assert "routes with rules (3): " in line
    assert "POST /v1/coupons/{code}/redeem [flow redeem-coupon 3/hour]" in line
    assert "GET /reports/{report_id} [limit:report 30/minute;1000/day monitor]" in line
    assert "GET,POST /search [search 5/minute per ip]" in line
    assert "/health" not in line  # no rules of its own: only the global ones apply
    assert "store: MemoryStore (max_keys=200000)" in line
    assert "trusted proxies: 10.0.0.0/8, fd00::/8 (header x-forwarded-for)" in line
    assert "bans: on (after 20 refusals in 60s, 60s x2 up to 86400s)" in line
    every = " ".join(r.getMessage() for r in caplog.records)
    assert SECRET not in every
    assert "sk_live_secret_key" not in every


def test_defaults_say_none_and_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="apiguard")
    guard = Guard(
        {
            "mode": "monitor",
            "limits": {"principal": None, "ip": "100/minute", "mode": "enforce"},
            "identity": {"new_credentials_per_ip": None},
            "bans": {"enabled": False},
            "store": {"max_keys": 5000},
        }
    )
    app = Starlette(routes=[Route("/", lambda r: PlainTextResponse("ok"))])
    app.add_middleware(GuardMiddleware, guard=guard)
    TestClient(app).get("/")
    (line,) = summaries(caplog)
    assert line.startswith("apiguard: mode=monitor;")
    assert "global rules: per-ip 100/minute enforce;" in line
    assert "routes with rules (0): none" in line
    assert "functions with rules not seen on a route: none" in line
    assert "store: MemoryStore (max_keys=5000)" in line
    assert "trusted proxies: none" in line
    assert line.endswith("bans: off")


def test_mode_override_is_shown(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="apiguard")
    guard = Guard()
    guard.override_mode("monitor")
    app = shop(guard)
    app.add_middleware(GuardMiddleware, guard=guard)
    TestClient(app).get("/health")
    (line,) = summaries(caplog)
    assert line.startswith("apiguard: mode=enforce (overridden: monitor);")


def test_long_route_lists_are_cut(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="apiguard")
    guard = Guard()
    app = FastAPI()
    for n in range(75):

        async def handler() -> dict[str, int]:
            return {"n": 1}

        handler.__name__ = f"h{n}"
        app.get(f"/things/{n}/" + "x" * 200)(guard.limit("10/minute")(handler))
    app.add_middleware(GuardMiddleware, guard=guard)
    TestClient(app).get("/nowhere")
    (line,) = summaries(caplog)
    assert "routes with rules (75): " in line
    assert line.count("[limit:h") == 20
    assert "; ... and 55 more;" in line
    assert len(line) < 4000
    assert "x" * 200 not in line  # a long template is cut too


def test_once_per_app_and_again_for_another(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="apiguard")
    guard = Guard()

    def make() -> Starlette:
        async def ok(request: Request) -> PlainTextResponse:
            return PlainTextResponse("ok")

        app = Starlette(routes=[Route("/", ok), Mount("/sub", routes=[Route("/x", ok)])])
        app.add_middleware(GuardMiddleware, guard=guard)
        return app

    first, second = make(), make()
    for app in (first, second, first):
        client = TestClient(app)
        with client:
            client.get("/")
    assert len(summaries(caplog)) == 2


def test_custom_store_is_named_without_its_settings(caplog: pytest.LogCaptureFixture) -> None:
    class VaultStore(MemoryStore):
        def __init__(self) -> None:
            super().__init__(1000)
            self.url = "redis://:hunter2-password@cache:6379/0"

        def __repr__(self) -> str:
            return f"VaultStore({self.url})"

    caplog.set_level(logging.INFO, logger="apiguard")
    guard = Guard(store=VaultStore(), clock=FakeClock(1.0))
    app = Starlette(routes=[Route("/", lambda r: PlainTextResponse("ok"))])
    app.add_middleware(GuardMiddleware, guard=guard)
    TestClient(app).get("/")
    (line,) = summaries(caplog)
    assert "store: VaultStore (max_keys=1000)" in line
    assert "hunter2" not in line


def test_summary_is_available_to_code() -> None:
    guard = Guard({"bans": {"enabled": False}})
    text: Any = guard.summary()
    assert "routes with rules" not in text  # no app walked
    assert "global rules: per-principal 600/minute" in text
    assert text.endswith("bans: off")


def _workers_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "one of several workers" in r.getMessage()]


def test_one_of_several_workers_on_the_in_process_store_is_warned(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The full-stack FastAPI template runs `fastapi run --workers 4`: on the in-process
    store each worker counted alone, with no word (19 made-up usernames from one address
    before its block, against 8 with one worker). Once per process, a warning."""
    import apiguard.guard as guard_module

    caplog.set_level(logging.INFO, logger="apiguard")
    monkeypatch.setattr(guard_module, "_workers_warned", False)
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    for _ in range(2):
        app = Starlette(routes=[Route("/", lambda r: PlainTextResponse("ok"))])
        app.add_middleware(GuardMiddleware, guard=Guard())
        TestClient(app).get("/")
    (warning,) = _workers_warnings(caplog)
    assert "WEB_CONCURRENCY=4" in warning and 'store="redis://...' in warning


def test_a_single_process_is_not_warned_about_workers(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import apiguard.guard as guard_module

    caplog.set_level(logging.INFO, logger="apiguard")
    monkeypatch.setattr(guard_module, "_workers_warned", False)
    monkeypatch.setenv("WEB_CONCURRENCY", "1")
    app = Starlette(routes=[Route("/", lambda r: PlainTextResponse("ok"))])
    app.add_middleware(GuardMiddleware, guard=Guard())
    TestClient(app).get("/")
    assert _workers_warnings(caplog) == []


def test_the_summary_says_whether_people_asked_to_pass_a_challenge_can() -> None:
    """A real-app trial: the young-account rules ask people to pass a challenge, and the
    start-up line did not say whether the app has a route where they can."""
    bare = Guard({"secret": "summary-challenge-secret"}).summary()
    assert "challenge route: none declared (people the detectors bola" in bare, bare
    declared = Guard(
        {"secret": "summary-challenge-secret", "detection": {"challenge_path": "/challenge"}}
    ).summary()
    assert "challenge route: /challenge" in declared, declared
    blocking = Guard(
        {
            "secret": "summary-challenge-secret",
            "detection": {
                name: {"person_action": "block"} for name in ("bola", "recon", "flow_groups")
            },
        }
    ).summary()
    assert "challenge route: none" not in blocking, blocking
