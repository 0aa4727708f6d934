"""A signed-in account guessing gift codes slowly (a held-out Django evaluation: five
accounts from rotating addresses, one guess every few minutes each, 125 of 173 admitted
after the first refusal): under the errors bar of every window, its 404s over
`sustained_window` flag it (`bola.sustained`, errors), on the memory store and on Redis;
people redeeming their codes with a typo or two, and a sync client reading objects
deleted since (some 404s among many reads), are not."""

from __future__ import annotations

import random

import pytest
import redis.asyncio
from fastapi import FastAPI, Header, HTTPException

from apiguard import Guard, identify
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock
from apiguard.simulate.driver import AsgiDriver, Request
from apiguard.store.redis import RedisStore
from detection_support import BROWSERS, run

START = 4_000_000.0
CODES = {f"GIFT-{n:05d}" for n in random.Random(3).sample(range(100_000), 40)}


def coupon_app(guard: Guard) -> FastAPI:
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)
    used: set[str] = set()

    def user_of(authorization: str | None) -> str:
        token = (authorization or "").removeprefix("Bearer ")
        if not token.startswith("tok-"):
            raise HTTPException(401)
        identify(token[4:])
        return token[4:]

    @app.post("/coupons/{code}/redeem")
    async def redeem(code: str, authorization: str | None = Header(None)) -> dict[str, str]:
        user_of(authorization)
        if code not in CODES or code in used:
            raise HTTPException(404, "no such code")
        used.add(code)
        return {"redeemed": code}

    @app.get("/notes/{note_id}")
    def note(note_id: int, authorization: str | None = Header(None)) -> dict[str, int]:
        user_of(authorization)
        if note_id % 4 == 0:  # deleted since the client last synced
            raise HTTPException(404)
        return {"note": note_id}

    return app


@pytest.fixture(params=["memory", "redis"])
def guard_on(request: pytest.FixtureRequest) -> tuple[Guard, FakeClock]:
    clock = FakeClock(START)
    if request.param == "memory":
        return Guard(clock=clock), clock
    url = request.getfixturevalue("redis_url")
    store = RedisStore(redis.asyncio.Redis.from_url(url), server_time=False, timeout=5.0)
    return Guard({"secret": "s" * 32}, clock=clock, store=store), clock


def test_a_slow_code_guesser_is_caught_and_people_and_a_sync_client_are_not(
    guard_on: tuple[Guard, FakeClock],
) -> None:
    guard, clock = guard_on
    driver = AsgiDriver(coupon_app(guard))
    rng = random.Random(11)
    codes = sorted(CODES)

    async def send(user: str, path: str, ip: str, ua: str, method: str = "POST") -> int:
        headers = (("user-agent", ua), ("authorization", f"Bearer tok-{user}"))
        return (await driver.send(Request(method, path, ip, headers))).status

    async def scenario() -> tuple[list[int], list[str]]:
        guesser: list[int] = []
        refused: list[str] = []
        people = [(f"p{n}", f"81.2.{n}.9", rng.choice(BROWSERS)) for n in range(40)]
        end = clock() + 4 * 3600
        next_guess = clock() + 600
        while clock() < end:
            clock.advance(rng.uniform(20, 60))
            user, ip, ua = rng.choice(people)
            if rng.random() < 0.3:  # a person redeems a code: a typo or two first
                for _ in range(rng.choice((0, 0, 1, 2))):
                    typo = f"GIFT-{rng.randrange(100_000):05d}"
                    if await send(user, f"/coupons/{typo}/redeem", ip, ua) in (403, 429):
                        refused.append(f"{user} typo")
                code = rng.choice(codes)
                if await send(user, f"/coupons/{code}/redeem", ip, ua) in (403, 429):
                    refused.append(f"{user} redeem")
            # a sync client reading its 30 notes again and again, a quarter of them
            # deleted since (404)
            sync = await send(
                "sync", f"/notes/{rng.randrange(100, 130)}", "34.120.5.7", "okhttp/4.12.0", "GET"
            )
            if sync in (403, 429):
                refused.append("sync")
            if clock() >= next_guess:  # one guess every 3 to 7 minutes
                next_guess = clock() + rng.uniform(180, 420)
                code = f"GIFT-{rng.randrange(100_000):05d}"
                guesser.append(
                    await send("g", f"/coupons/{code}/redeem", "192.0.2.77", BROWSERS[1])
                )
        return guesser, refused

    guesser, refused = run(scenario())
    assert refused == []
    assert 403 in guesser, guesser
    first = guesser.index(403)
    assert first <= 20, guesser  # the bar: 15 x 1.2 = 18 errors
    assert all(s in (403, 429) for s in guesser[first:]), guesser
