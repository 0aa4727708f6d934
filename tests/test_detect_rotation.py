"""IP rotation and stolen keys, both ways: a credential used from many provider networks
by several client shapes is banned AND a phone hopping across its carrier's address pool,
a traveller and a person with a laptop and a phone are not."""

from __future__ import annotations

import random

from fastapi import FastAPI, Header, HTTPException

from apiguard import Guard, identify
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock
from apiguard.simulate.driver import AsgiDriver, Request
from detection_support import BROWSERS, public_ip, run

START = 3_000_000.0


def key_app(guard: Guard) -> FastAPI:
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.get("/v1/reports")
    async def reports(x_api_key: str | None = Header(None)) -> dict[str, bool]:
        if not x_api_key:
            raise HTTPException(401)
        return {"ok": True}

    @app.get("/v1/me")
    def me(authorization: str | None = Header(None)) -> dict[str, str]:
        if not authorization:
            raise HTTPException(401)
        user = authorization.removeprefix("Bearer ")
        identify(user)
        return {"user": user}

    return app


def carrier_ip(rng: random.Random) -> str:
    """A CGNAT pool: a new address (and /24) on every connection, one provider /16."""
    return f"100.64.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def test_stolen_api_key_used_from_many_networks_is_banned_and_honest_keys_are_not() -> None:
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    driver = AsgiDriver(key_app(guard))
    rng = random.Random(1)

    async def call(key: str, ip: str, ua: str) -> int:
        req = Request("GET", "/v1/reports", ip, (("user-agent", ua), ("x-api-key", key)))
        return (await driver.send(req)).status

    async def scenario() -> tuple[list[tuple[str, int]], list[int]]:
        honest: list[tuple[str, int]] = []
        thief: list[int] = []
        for minute in range(120):
            clock.advance(60)
            for n in range(40):  # 40 integrations, each from its own server
                key = f"key-{n}"
                honest.append((key, await call(key, f"203.0.{n}.10", "acme-sync/2.1")))
            honest.append(("key-phone", await call("key-phone", carrier_ip(rng), BROWSERS[3])))
            if minute >= 30:  # the leaked key, from a proxy pool, now and then by its owner
                thief.append(await call("key-7", public_ip(rng), f"python-requests/2.{minute}"))
        return honest, thief

    honest, thief = run(scenario())
    # key-7 is the stolen one: its owner's calls are refused with it once it is banned
    # (the credential is what was stolen); no other key ever is
    assert {(k, s) for k, s in honest if k != "key-7"} == {
        (k, 200) for k, _ in honest if k != "key-7"
    }
    assert 403 in thief and thief.index(403) < 20


def test_a_user_on_a_phone_and_a_laptop_travelling_is_not_flagged() -> None:
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    driver = AsgiDriver(key_app(guard))
    rng = random.Random(2)

    async def scenario() -> set[int]:
        statuses = set()
        for step in range(600):
            clock.advance(rng.uniform(2, 20))
            if step % 3:
                ip, ua = carrier_ip(rng), BROWSERS[3]  # the phone
            else:  # the laptop: home, a café, a hotel, the office
                ip, ua = (
                    ("198.51.100.4", "192.0.2.77", "203.0.113.200", "198.18.0.9")[step // 150],
                    BROWSERS[1],
                )
            req = Request(
                "GET", "/v1/me", ip, (("user-agent", ua), ("authorization", "Bearer alice"))
            )
            statuses.add((await driver.send(req)).status)
        return statuses

    assert run(scenario()) == {200}


def test_a_session_token_used_from_everywhere_is_banned_with_its_user() -> None:
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    driver = AsgiDriver(key_app(guard))
    rng = random.Random(3)

    async def scenario() -> list[int]:
        out = []
        for _ in range(80):
            clock.advance(rng.uniform(5, 40))
            ua = f"{rng.choice(BROWSERS)} build/{rng.randrange(999)}"  # randomised
            req = Request(
                "GET",
                "/v1/me",
                public_ip(rng),
                (("user-agent", ua), ("authorization", "Bearer mallory")),
            )
            out.append((await driver.send(req)).status)
        return out

    statuses = run(scenario())
    assert 403 in statuses and statuses.index(403) < 20
