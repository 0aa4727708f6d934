"""Review s24e (adversarial, default configuration) of the young crowd's marks of what
existed, the write walk, the public route's token reader, the passed challenge's
allowance, the parallel-login allowance and the cookie-session birth inference. Each
finding asserts the right behaviour and is a strict xfail while it fails; controls that
pass guard the figures."""

from __future__ import annotations

import random
from typing import Annotated, Any

from fastapi import Depends, FastAPI

from apiguard import Guard
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.driver import AsgiDriver
from detection_support import (
    BROWSERS,
    Client,
    Credentials,
    current_user,
    public_ip,
)
from test_review_s24 import _harvest_with_cookie

START = 3_000_000.0
SECRET = "review-s24e-secret-0123456789"
OLD_USERS = 300  # (the notes app of `test_bola_young_crowd`)
NOTES_EACH = 10


# --- 1. A token app with a web session beside it: one cookie login flipped every birth -
# (the harvest is review s24's, `test_review_s24._harvest_with_cookie`)


def test_control_junk_cookie_sign_ups_in_a_mixed_app_before_any_cookie_login_are_young() -> None:
    assert _harvest_with_cookie({"sid": "junk"}, 18, 29) <= 20


def test_control_cookieless_sign_ups_after_a_cookie_login_are_young() -> None:
    assert _harvest_with_cookie(None, 18, 29, cookie_login=True) <= 20


def test_one_cookie_login_does_not_make_junk_cookie_sign_ups_old() -> None:
    """Was 522 of 522 foreign orders read (10 without the flip): one request of the
    attacker's own account by cookie set a one-bit `cookie_sessions` for good, and from
    then any sign-up carrying a junk cookie was no birth. A cookie now changes nothing
    of a birth (an old user's session is told by the account having been seen)."""
    assert _harvest_with_cookie({"sid": "junk"}, 18, 29, cookie_login=True) <= 60


# --- 2. One request for a huge id raises the young crowd's mark for every newcomer -----


def _null_notes_app(guard: Guard) -> FastAPI:
    """The notes app of `test_bola_young_crowd` (ids in order of creation), except that a
    missing note is answered 200 `null` (FastAPI returning None: a common sloppy app, the
    kind with the BOLA bug)."""
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)
    owners = {n: 1 + (n - 1) // NOTES_EACH for n in range(1, OLD_USERS * NOTES_EACH + 1)}
    users: list[int] = []

    @app.post("/signup", status_code=201)
    async def signup(body: Credentials) -> dict[str, str]:
        user = 10_000 + len(users)
        users.append(user)
        guard.account_created(user)
        return {"token": f"tok-{user}"}

    @app.post("/notes", status_code=201)
    async def write(user: Annotated[int, Depends(current_user)]) -> dict[str, int]:
        note = len(owners) + 1
        owners[note] = user
        return {"id": note}

    @app.get("/notes/{note_id}")
    async def read(
        note_id: int, user: Annotated[int, Depends(current_user)]
    ) -> dict[str, Any] | None:
        return {"id": note_id, "owner": owners[note_id]} if note_id in owners else None

    @app.post("/challenge")
    async def challenge() -> dict[str, bool]:
        guard.challenge_passed()
        return {"passed": True}

    return app


def _newcomers_after_a_huge_id(attack: bool) -> tuple[int, int]:
    """45 newcomers an hour for 6 hours (three in ten heavy), each writing notes and
    reading them back (`test_bola_young_crowd._newcomer`); the route is judged ordered
    within the first hours; if `attack`, at 2 h one account reads `/notes/10**12` (200
    null). Returns (newcomers' challenges, newcomers' reads)."""
    from test_bola_young_crowd import START as CROWD_START
    from test_bola_young_crowd import Tally, _bola_of, _guard, _newcomer, drive

    guard, clock = _guard()
    driver = AsgiDriver(_null_notes_app(guard))
    rng = random.Random(9)
    tally = Tally()
    actors: list[tuple[float, int, Any]] = []
    t = CROWD_START
    while t < CROWD_START + 6 * 3600:
        t += rng.expovariate(45 / 3600)
        client = Client(driver, rng.choice(BROWSERS), public_ip(rng), jar={})
        steps = _newcomer(client, random.Random(rng.random()), rng.random() < 0.3, tally)
        actors.append((t, len(actors), steps))

    async def attacker() -> Any:
        client = Client(driver, BROWSERS[0], public_ip(rng), jar={})
        await client.signup("mallory")
        yield 5
        assert (await client.send("GET", f"/notes/{10**12}")).status == 200

    if attack:
        actors.append((CROWD_START + 7200, len(actors), attacker()))
    drive(clock, actors)
    assert all(h.ordered for h in _bola_of(guard).crowd._highest.values())
    return tally.honest_challenged, tally.honest_reads


def test_control_newcomers_on_an_ordered_route_are_never_asked() -> None:
    asked, reads = _newcomers_after_a_huge_id(False)
    assert asked == 0 and reads >= 1000, (asked, reads)


def test_one_read_of_a_huge_id_does_not_make_newcomers_own_notes_old() -> None:
    """Was 102 newcomers challenged (0 without the request): the route's highest id
    became 10**12, so every later newcomer's own notes counted as old. A rise past twice
    the highest plus 100,000 is now ignored (a ratchet of such reads, each answered 200
    by an app that answers any id, still climbs: some 23 reads to 10**12)."""
    asked, _ = _newcomers_after_a_huge_id(True)
    assert asked <= 10, asked
