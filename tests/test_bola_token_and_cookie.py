"""BOLA on a bearer token the app does not vouch for on the walked route, sent beside a
cookie (a trial of a Django + DRF app: drf-jwt's cookie, and apiguard's own device
cookie, set at every login). Such a request was counted only for its address and cookie,
so a walk with one token dealt over three addresses was never flagged (41 of 41); without
the cookie it was refused from the 17th. It now counts for the token too."""

from __future__ import annotations

import random

from fastapi import FastAPI
from starlette.testclient import TestClient

from apiguard import Guard
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock
from detection_support import public_ip


def _app(guard: Guard) -> FastAPI:
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.get("/api/users/{user_id}")
    async def user(user_id: int) -> dict[str, int]:  # (no identify(): a public view)
        return {"id": user_id}

    return app


def _walk(cookie: bool) -> list[int]:
    clock = FakeClock(7_000_000.0)
    app = _app(Guard({"secret": "t" * 32}, clock=clock))
    rng = random.Random(11)
    addresses = [public_ip(rng) for _ in range(3)]
    headers = {"authorization": "Bearer eyJ.stolen.token"}
    if cookie:
        headers["cookie"] = "jwt=eyJ.stolen.token; apiguard_device=x"
    statuses = []
    for n, object_id in enumerate(range(20, 61)):
        clock.advance(rng.uniform(2, 6))
        client = TestClient(app, client=(addresses[n % 3], 40_000))
        statuses.append(client.get(f"/api/users/{object_id}", headers=headers).status_code)
    return statuses


def test_a_token_walk_over_three_addresses_is_refused_with_or_without_a_cookie() -> None:
    for cookie in (False, True):
        statuses = _walk(cookie)
        first = next((i for i, s in enumerate(statuses) if s != 200), None)
        assert first is not None and first <= 20, (cookie, statuses)


def test_people_with_a_token_and_cookies_reading_their_own_objects_are_not_refused() -> None:
    clock = FakeClock(7_000_000.0)
    app = _app(Guard({"secret": "t" * 32}, clock=clock))
    rng = random.Random(12)
    office = public_ip(rng)
    refused = 0
    for _ in range(8):
        for person in range(25):
            clock.advance(rng.uniform(1, 8))
            headers = {
                "authorization": f"Bearer token-of-{person}",
                "cookie": f"jwt=token-of-{person}; theme=dark",
            }
            where = office if person < 10 else public_ip(random.Random(person))
            own = 1000 + person * 10 + rng.randrange(4)
            r = TestClient(app, client=(where, 40_000)).get(f"/api/users/{own}", headers=headers)
            refused += r.status_code != 200
    assert refused == 0
