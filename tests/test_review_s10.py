"""Review of session 10: the anonymous BOLA walk's downgrade from block to challenge
(`Bola._address_found`) at an address the app vouched for somebody at, or one sending a
forwarding header no setting trusts. Its findings below got the change reverted; they are
regression tests now (a fifth, on Redis a colleague who passed an address's challenge
held again by the same request's admission re-learning the ban, was written against the
reverted change and is in the session's note, not re-tested).

Both conditions are the attacker's to meet: a forwarding header is free to send, and a
login to an account of its own is one request. And an anonymous address that passed the
challenge is never judged on more evidence nor blocked afterwards (only a *person* who
passed gets four times the bar, then a block), so a walker with a CAPTCHA solver walks
on without bound at one solve per ~10 objects."""

from __future__ import annotations

from typing import Any

import redis
from fastapi import FastAPI
from starlette.testclient import TestClient

from apiguard.responses import CHALLENGE_REQUIRED
from apiguard.simulate.clock import FakeClock
from apiguard.store.redis import RedisStore
from test_bola_shared_address import CHALLENGE, office_app

WALKER = "198.51.100.77"
XFF = {"x-forwarded-for": "10.0.0.1"}  # (no trusted_proxies: ignored, but remembered)


def _walk(
    app: FastAPI, clock: FakeClock, headers: dict[str, str], solve: bool, last: int = 400
) -> tuple[int, int, str | None]:
    """Walk /items/1..last anonymously from WALKER; on a challenge, solve it (when
    `solve`) and go on. Returns (objects read, challenges solved, the refusal that
    ended the walk: its problem type, or None)."""
    port = 40_001
    read = solved = 0
    for item_id in range(1, last):
        clock.advance(3)
        r = TestClient(app, client=(WALKER, port)).get(f"/items/{item_id}", headers=headers)
        if r.status_code == 200:
            read += 1
            continue
        kind = r.json().get("type")
        if kind != CHALLENGE_REQUIRED or not solve:
            return read, solved, str(kind)
        for _ in range(3):  # (on Redis the first pass may not lift it: see below)
            port += 1
            solver = TestClient(app, client=(WALKER, port))
            assert solver.post("/challenge", headers=headers).status_code == 200
            solved += 1
            # one request with the pass answers the address's challenge
            if solver.get(f"/items/{item_id}", headers=headers).status_code == 200:
                read += 1
                break
        else:
            return read, solved, "unanswered"
    return read, solved, None


def test_control_a_lone_walker_without_headers_is_blocked() -> None:
    app, clock = office_app(CHALLENGE)
    read, solved, ended = _walk(app, clock, {}, solve=True)
    assert read <= 20 and solved == 0 and ended != CHALLENGE_REQUIRED, (read, ended)


# Fixed (was a strict xfail): BOLA's office challenge reverted
def test_a_forwarding_header_does_not_downgrade_a_lone_walkers_block() -> None:
    app, clock = office_app(CHALLENGE)
    read, _, ended = _walk(app, clock, XFF, solve=False)
    assert read <= 20
    assert ended != CHALLENGE_REQUIRED, (read, ended)


# Fixed (was a strict xfail): BOLA's office challenge reverted
def test_a_walker_with_a_forwarding_header_and_a_solver_is_stopped() -> None:
    app, clock = office_app(CHALLENGE)
    read, solved, _ = _walk(app, clock, XFF, solve=True)
    assert read <= 80, (read, solved)


# Fixed (was a strict xfail): BOLA's office challenge reverted
def test_a_login_to_its_own_account_does_not_buy_an_endless_walk() -> None:
    app, clock = office_app(CHALLENGE)
    me = TestClient(app, client=(WALKER, 40_000))
    assert me.post("/login", headers={"x-user": "mallory"}).status_code == 200
    read, solved, _ = _walk(app, clock, {}, solve=True)
    assert read <= 80, (read, solved)


# Fixed (was a strict xfail): BOLA's office challenge reverted
def test_the_forwarding_header_walk_on_redis(redis_url: str) -> None:
    store = RedisStore(redis.asyncio.Redis.from_url(redis_url), server_time=False, timeout=5.0)
    app, clock = office_app(CHALLENGE, store)
    read, solved, _ = _walk(app, clock, XFF, solve=True)
    assert read <= 80, (read, solved)


def _colleague_after_a_walk(store: Any) -> list[int]:
    """An anonymous walk at an office where alice is signed in (challenged, as this
    session intends); then bob, signed out there, is asked, passes the challenge and
    reads on. His statuses: the read that asked, the challenge route, four reads."""
    app, clock = office_app(CHALLENGE, store)
    office = "203.0.113.10"
    TestClient(app, client=(office, 40_000)).post("/login", headers={"x-user": "alice"})
    walker = TestClient(app, client=(office, 40_001))
    for item_id in range(1, 41):
        clock.advance(3)
        if walker.get(f"/items/{item_id}").status_code != 200:
            break
    clock.advance(60)
    bob = TestClient(app, client=(office, 40_002))
    statuses = [bob.get("/items/7").status_code, bob.post("/challenge").status_code]
    for k in range(4):
        clock.advance(5)
        statuses.append(bob.get(f"/items/{7 + k}").status_code)
    return statuses


def _colleague_locked_out_for(config: dict[str, Any], alice: bool, route: str) -> float:
    """Seconds a signed-out colleague at the walker's address cannot log in after one
    anonymous walk (he tries the app's challenge route `route`, then logs in, every
    10 minutes); `alice`: somebody is signed in at the address (people_at = 1)."""
    app, clock = office_app(config, route=route)
    office = ("203.0.113.10", 40_000)
    if alice:
        TestClient(app, client=office).post("/login", headers={"x-user": "alice"})
    walker = TestClient(app, client=office)
    for item_id in range(1, 41):
        clock.advance(3)
        if walker.get(f"/items/{item_id}").status_code != 200:
            break
    bob = TestClient(app, client=office)
    start = clock()
    for _ in range(200):
        clock.advance(600)
        bob.post(route)
        if bob.post("/login", headers={"x-user": "bob"}).status_code == 200:
            break
    return clock() - start


def test_control_a_lone_walkers_block_ends_within_ten_minutes() -> None:
    assert _colleague_locked_out_for({}, alice=False, route="/challenge") <= 600


# Fixed (was a strict xfail): BOLA's office challenge reverted
def test_an_app_without_a_challenge_route_locks_an_office_out_no_longer() -> None:
    assert _colleague_locked_out_for({}, alice=True, route="/challenge") <= 3600


# Fixed (was a strict xfail): BOLA's office challenge reverted
def test_a_trailing_slash_on_the_challenge_route_does_not_lock_an_office_out() -> None:
    config = {"detection": {"challenge_path": "/challenge"}}
    assert _colleague_locked_out_for(config, alice=True, route="/challenge/") <= 3600
