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


def todo_app(guard: Guard, vulnerable: bool = False) -> FastAPI:
    """A to-do API that checks ownership (no BOLA bug: people read their own), unless
    `vulnerable` (anyone deletes any to-do by id)."""
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)
    gone: set[int] = set()

    @app.delete("/todo/{pk}", status_code=204)
    async def delete(pk: int, user: Annotated[int, Depends(current_user)]) -> None:
        if pk in gone or (pk not in todos_of(user) and not vulnerable):
            raise HTTPException(404)
        gone.add(pk)

    @app.get("/todo/{pk}")
    async def todo(pk: int, user: Annotated[int, Depends(current_user)]) -> dict[str, int]:
        if pk not in todos_of(user) or pk in gone:
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


def _bulk_delete(vulnerable: bool, ids: list[int]) -> list[int]:
    """Twelve light users read 5 of their to-dos each; then user 20 sends `DELETE` for
    `ids` in order, 2 s apart. Returns the answers' statuses."""
    clock = FakeClock(START)
    guard = Guard({"secret": "trial-s24-secret"}, clock=clock)
    driver = AsgiDriver(todo_app(guard, vulnerable))
    rng = random.Random(4)

    async def main() -> list[int]:
        for k in range(12):
            light = Client(driver, BROWSERS[0], f"198.51.100.{k + 1}", token=f"tok-{k + 1}")
            for pk in rng.sample(todos_of(k + 1), 5):
                clock.advance(3)
                await light.send("GET", f"/todo/{pk}")
        person = Client(driver, BROWSERS[1], "203.0.113.10", token="tok-20")
        found = []
        for pk in ids:
            clock.advance(2)
            found.append((await person.send("DELETE", f"/todo/{pk}")).status)
        return found

    statuses: list[int] = run(main())
    return statuses


def test_a_person_clearing_her_completed_to_dos_in_id_order_is_no_walk() -> None:
    """Was challenged at the 17th of 25 DELETEs (bola.sequential, run 15), then her
    other device on every read: a change answered 2xx extends no walk."""
    assert _bulk_delete(False, todos_of(20)[:25]) == [204] * 25


def test_a_walk_deleting_others_to_dos_in_id_order_is_held() -> None:
    """On a route where anyone deletes any to-do, a walk deleting others' in id order is
    held by the distinct objects' bar (a walk it no longer makes)."""
    ids = [user * 1000 + 3 * k for user in range(30, 60) for k in range(EACH)]
    statuses = _bulk_delete(True, ids[:300])
    assert statuses.count(204) <= 45, statuses.count(204)
