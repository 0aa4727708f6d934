"""An address challenge must leave the app's challenge route open, or nobody there can
ever pass it: every detector's challenge on an address (recon's at an office, here) was
applied before routing to every request the address sent unvouched, the challenge route
included (found in a trial of a Django + DRF app). And BOLA's answer to an anonymous walk
at an office address: still a block (a challenge there was tried and reverted: with no
challenge route it held the office's signed-out people for a day, and an untrusted
forwarding header or one login of its own bought a walker with a CAPTCHA solver an
endless walk: tests/test_review_s10.py)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI, Request
from starlette.testclient import TestClient

from apiguard import Guard, identify
from apiguard.asgi import GuardMiddleware
from apiguard.responses import CHALLENGE_REQUIRED
from apiguard.simulate.clock import FakeClock

OFFICE = "203.0.113.10"
# 47 paths: well past recon's floor (30) and a distinct sketch's error
WORDS = (
    "admin",
    "backup",
    "config",
    "debug",
    "dump",
    "env",
    "git",
    "hidden",
    "internal",
    "logs",
    "manage",
    "metrics",
    "old",
    "panel",
    "phpinfo",
    "private",
    "secret",
    "server",
    "setup",
    "shell",
    "staging",
    "status",
    "swagger",
    "temp",
    "test",
    "upload",
    "users",
    "vendor",
    "wp",
    "xmlrpc",
    "zabbix",
    "actuator",
    "console",
    "cron",
    "druid",
    "graphql",
    "jenkins",
    "jolokia",
    "kibana",
    "mail",
    "monitor",
    "owa",
    "portal",
    "robots",
    "solr",
    "trace",
    "webdav",
)


CHALLENGE: dict[str, Any] = {"detection": {"challenge_path": "/challenge"}}


def office_app(
    config: dict[str, Any], store: Any = None, route: str = "/challenge"
) -> tuple[FastAPI, FakeClock]:
    """The app these tests and tests/test_review_s10.py share (`config` beside a fixed
    secret): a login that identifies its user, a public object route (no identify()),
    and the app's challenge route at `route`."""
    clock = FakeClock(8_000_000.0)
    guard = Guard({"secret": "o" * 32, **config}, clock=clock, store=store)
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.post("/login")
    async def login(request: Request) -> dict[str, bool]:
        identify(request.headers["x-user"])
        return {"ok": True}

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:  # public, no identify()
        return {"id": item_id}

    @app.post(route)
    async def challenge() -> dict[str, bool]:
        guard.challenge_passed()  # the person solved the app's CAPTCHA
        return {"passed": True}

    return app, clock


def test_a_challenged_office_can_reach_the_challenge_route_and_pass_it() -> None:
    _challenged_office(office_app(CHALLENGE), settle=0)


def test_a_challenged_office_can_pass_on_redis(redis_url: str) -> None:
    """On Redis the first request after the pass may still be refused (the lift is
    written after the response, and that request's admission learned the ban back: it
    was then never lifted again, and the person stayed refused for a day); whether it is
    depends on when the write lands (CI saw 0 of 6 refused)."""
    _challenged_office(office_app({**CHALLENGE, "store": {"timeout": 2}}, redis_url), settle=1)


def _challenged_office(built: tuple[FastAPI, FakeClock], settle: int) -> None:
    app, clock = built
    for who in ("alice", "bob"):  # two people log in there: an office
        TestClient(app, client=(OFFICE, 40_000)).post("/login", headers={"x-user": who})
    scanner = TestClient(app, client=(OFFICE, 40_001))
    answers = []
    for word in WORDS:
        clock.advance(20)
        answers.append(scanner.get(f"/{word}").json())
    assert any(a.get("type") == CHALLENGE_REQUIRED for a in answers)  # recon's challenge
    carol = TestClient(app, client=(OFFICE, 40_002))
    clock.advance(5)
    assert carol.get("/items/7").json().get("type") == CHALLENGE_REQUIRED
    assert carol.post("/challenge").status_code == 200  # was 403: nobody could pass
    statuses = []
    for n in range(6):
        clock.advance(3)
        statuses.append(carol.get(f"/items/{7 + n}").status_code)
    # at most `settle` refused, all before the first request through, none after it
    refused = statuses.index(200) if 200 in statuses else len(statuses)
    assert refused <= settle, statuses
    assert statuses == [403] * refused + [200] * (6 - refused), statuses


def _walk(app: FastAPI, clock: FakeClock, address: str) -> tuple[int | None, dict[str, object]]:
    walker = TestClient(app, client=(address, 40_001))
    for n, item_id in enumerate(range(1, 41)):
        clock.advance(3)
        r = walker.get(f"/items/{item_id}")
        if r.status_code != 200:
            return n, r.json()
    return None, {}


def test_a_lone_walkers_address_is_blocked() -> None:
    app, clock = office_app(CHALLENGE)
    first, body = _walk(app, clock, "198.51.100.77")
    assert first is not None and first <= 20
    assert body.get("type") != CHALLENGE_REQUIRED and body.get("status") == 403


@pytest.mark.xfail(
    strict=True,
    reason="known trade-off (README): an anonymous walk at an office address blocks it, and "
    "a colleague signed out there cannot log in until the block ends (up to 10 minutes)",
)
def test_a_colleague_signed_out_logs_in_at_an_office_an_anonymous_walker_used() -> None:
    app, clock = office_app(CHALLENGE)
    TestClient(app, client=(OFFICE, 40_000)).post("/login", headers={"x-user": "alice"})
    first, _ = _walk(app, clock, OFFICE)
    assert first is not None
    clock.advance(5)
    bob = TestClient(app, client=(OFFICE, 40_002))
    assert bob.post("/login", headers={"x-user": "bob"}).status_code == 200
