"""A real-app trial (s24: a Django + DRF to-do API, MyPlansAPI) found these; each is a
test on the example shop (FastAPI), with its control beside it."""

from __future__ import annotations

import random
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException

from apiguard import Guard
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock
from apiguard.simulate.driver import AsgiDriver
from detection_support import BROWSERS, Client, current_user, is_challenge
from detection_support import run_quietly as run

START = 5_000_000.0
EACH = 60  # to-dos per user: user u owns u * 1000 .. u * 1000 + 59, ids 3 apart


def todos_of(user: int) -> list[int]:
    return [user * 1000 + 3 * k for k in range(EACH)]


def todo_app(guard: Guard) -> FastAPI:
    """A to-do API that checks ownership (no BOLA bug: people read their own)."""
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.get("/todo/{pk}")
    async def todo(pk: int, user: Annotated[int, Depends(current_user)]) -> dict[str, int]:
        if pk not in todos_of(user):
            raise HTTPException(404)
        return {"id": pk}

    @app.post("/challenge")
    async def challenge() -> dict[str, bool]:
        guard.challenge_passed()
        return {"passed": True}

    return app


def _power_user_again(passed_first: bool) -> tuple[int, int]:
    """Twelve light users read 5 of their own orders each (the route's population);
    alice reads 45 of her to-dos in random order (asked once: she passes, as a person
    does), or reads 20 and is never asked; two hours later (her pass over), after
    the light users read again, she reads 30 of hers. Returns (the challenges
    in the first session, the challenges in the second)."""
    clock = FakeClock(START)
    guard = Guard({"secret": "trial-s24-secret"}, clock=clock)
    driver = AsgiDriver(todo_app(guard))
    rng = random.Random(2)
    lights = [
        Client(driver, BROWSERS[k % len(BROWSERS)], f"198.51.100.{k + 1}", token=f"tok-{k + 1}")
        for k in range(12)
    ]
    person = Client(driver, BROWSERS[0], "203.0.113.10", token="tok-20")

    async def read(client: Client, user: int, count: int) -> int:
        asked = 0
        for pk in rng.sample(todos_of(user), count):
            clock.advance(rng.uniform(2, 6))
            resp = await client.send("GET", f"/todo/{pk}")
            if is_challenge(resp):
                asked += 1
                await client.send("POST", "/challenge")
                resp = await client.send("GET", f"/todo/{pk}")
            assert resp.status == 200, resp.status
        return asked

    async def main() -> tuple[int, int]:
        for k, light in enumerate(lights):
            await read(light, k + 1, 5)
        first = await read(person, 20, 45 if passed_first else 20)
        clock.advance(2 * 3600)
        for k, light in enumerate(lights):
            await read(light, k + 1, 5)
        return first, await read(person, 20, 30)

    found: tuple[int, int] = run(main())
    return found


def test_control_a_power_user_never_asked_reads_her_orders_later() -> None:
    assert _power_user_again(False) == (0, 0)


def test_a_power_user_who_passed_a_challenge_is_no_repeat_offender_later() -> None:
    """Passing the challenge once made her a repeat offender for a day (half the bar):
    asked again two hours later, at her 5th read of her own objects."""
    first, later = _power_user_again(True)
    assert first >= 1  # (45 of her own, far over a population reading 5: asked)
    assert later == 0
