"""`guard.account_created(user_id, username=...)`: the client that created an account gets
its device cookie with the 2xx answer, so its first login is not held back by a login
alarm raised by a stuffing elsewhere (a real-app trial: 9 or 10 of 10 people who had just
signed up were refused their first login for as long as the attack lasted). Both sides:
the stuffing is still refused, a sign-up without `username=` is still a new device, and a
sign-up the app refused (an existing username) marks nothing."""

from __future__ import annotations

import random
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from apiguard import Guard
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock
from detection_support import BROWSERS, public_ip

START = 3_000_000.0


class Credentials(BaseModel):
    username: str
    password: str


def accounts_app(guard: Guard, *, with_username: bool) -> FastAPI:
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)
    accounts: dict[str, str] = {f"user{i}@example.org": f"pw-{i}" for i in range(200)}

    @app.post("/signup", status_code=201)
    async def signup(body: Credentials) -> dict[str, str]:
        if body.username.lower() in accounts:
            raise HTTPException(409, "taken")
        accounts[body.username.lower()] = body.password
        uid = f"id-{len(accounts)}"
        if with_username:
            guard.account_created(uid, username=body.username)
        else:
            guard.account_created(uid)
        return {"id": uid}

    @app.post("/login")
    @guard.login(username="body.username")
    async def login(body: Credentials) -> dict[str, str]:
        if accounts.get(body.username.lower()) != body.password:
            raise HTTPException(401, "bad credentials")
        return {"token": "t"}

    return app


async def call(
    app: FastAPI, ip: str, path: str, body: dict[str, str], cookies: httpx.Cookies | None = None
) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=(ip, 40_000))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://shop", cookies=cookies
    ) as client:
        response = await client.post(
            path, json=body, headers={"user-agent": random.choice(BROWSERS)}
        )
        if cookies is not None:
            cookies.update(client.cookies)
        return response


async def stuffing(app: FastAPI, clock: FakeClock, rng: random.Random, n: int) -> list[int]:
    """One guess per fresh address, mostly usernames the app never had."""
    statuses = []
    for _ in range(n):
        clock.advance(rng.uniform(1, 4))
        name = (
            f"{rng.getrandbits(40):x}@mail.example"
            if rng.random() < 0.6
            else (f"user{rng.randrange(200)}@example.org")
        )
        r = await call(app, public_ip(rng), "/login", {"username": name, "password": "x"})
        statuses.append(r.status_code)
    return statuses


def run(with_username: bool) -> dict[str, Any]:
    import asyncio

    rng = random.Random(5)
    clock = FakeClock(START)
    guard = Guard(
        {"detection": {"account_takeover": {"population_action": "throttle"}}}, clock=clock
    )
    app = accounts_app(guard, with_username=with_username)

    async def scenario() -> dict[str, Any]:
        attack = await stuffing(app, clock, rng, 120)
        # during the alarm, ten people sign up at home and log in for the first time
        first_logins = []
        for n in range(10):
            clock.advance(rng.uniform(5, 30))
            ip, jar = public_ip(rng), httpx.Cookies()
            name = f"Newcomer{n}@Example.org"
            creds = {"username": name, "password": f"new-{n}"}
            assert (await call(app, ip, "/signup", creds, jar)).status_code == 201
            clock.advance(rng.uniform(5, 60))
            login = {"username": name, "password": f"new-{n}"}  # (as signed up)
            first_logins.append((await call(app, ip, "/login", login, jar)).status_code)
        # the mark is of the name as sent: the same account typed in lower case (this
        # app tells no case apart) is a new device's login (a look-alike account on an app
        # that does tell case apart must not mark its victim's device)
        ip, jar = public_ip(rng), httpx.Cookies()
        creds = {"username": "Casey@Example.org", "password": "pw-casey"}
        assert (await call(app, ip, "/signup", creds, jar)).status_code == 201
        lowered = {"username": "casey@example.org", "password": "pw-casey"}
        other_case = (await call(app, ip, "/login", lowered, jar)).status_code
        # an attacker "signs up" a victim's username (refused 409), then guesses at it
        ip, jar = public_ip(rng), httpx.Cookies()
        taken = {"username": "user7@example.org", "password": "guess"}
        refused_signup = (await call(app, ip, "/signup", taken, jar)).status_code
        guesses = [
            (
                await call(app, ip, "/login", {"username": "user7@example.org", "password": g}, jar)
            ).status_code
            for g in ("a", "b", "c")
        ]
        more = await stuffing(app, clock, rng, 40)
        return {
            "other_case": other_case,
            "attack": attack + more,
            "first_logins": first_logins,
            "refused_signup": refused_signup,
            "guesses": guesses,
        }

    return asyncio.run(scenario())


@pytest.mark.parametrize("with_username", [True, False])
def test_a_new_account_s_first_login_during_a_login_alarm(with_username: bool) -> None:
    result = run(with_username)
    attack = result["attack"]
    first_refused = next(i for i, s in enumerate(attack) if s in (403, 429))
    assert first_refused < 50, attack  # the stuffing raised the alarm
    assert attack[-40:].count(401) <= 4, attack[-40:]  # and is refused after it
    assert result["refused_signup"] == 409
    assert result["guesses"] == [429, 429, 429]  # a refused sign-up marks no device
    assert result["other_case"] == 429
    if with_username:
        assert result["first_logins"] == [200] * 10
    else:  # the control: a new device, held back while the alarm lasts (documented)
        assert result["first_logins"].count(429) >= 8, result["first_logins"]


def test_a_brute_force_on_one_account_raises_no_site_wide_alarm() -> None:
    """300 guesses at one account, each from a fresh address (a Flask trial: the site-wide
    login alarm fired, and with `population_action = "throttle"` 61 of 73 people were
    refused): the account is protected by its own detection, and people logging in on
    new devices elsewhere meanwhile are not refused. Beside it, a stuffing over many
    accounts still raises the alarm (the control)."""
    import asyncio

    rng = random.Random(8)
    clock = FakeClock(START)
    guard = Guard(
        {"detection": {"account_takeover": {"population_action": "throttle"}}}, clock=clock
    )
    app = accounts_app(guard, with_username=True)

    async def scenario() -> tuple[list[int], list[int], list[int]]:
        guesses, people = [], []
        for n in range(300):
            clock.advance(rng.uniform(2, 8))
            body = {"username": "user7@example.org", "password": f"guess{n}"}
            guesses.append((await call(app, public_ip(rng), "/login", body)).status_code)
            if n % 10 == 0:  # someone else logs in on a new device
                u = 20 + n // 10
                mine = {"username": f"user{u}@example.org", "password": f"pw-{u}"}
                people.append((await call(app, public_ip(rng), "/login", mine)).status_code)
        return guesses, people, await stuffing(app, clock, rng, 120)

    guesses, people, stuffed = asyncio.run(scenario())
    assert guesses.count(401) <= 30, guesses  # the account's own protection holds it
    assert people == [200] * 30, people
    assert stuffed.count(429) >= 60, stuffed  # a stuffing still raises the alarm


def test_an_owner_who_logged_in_with_capitals_keeps_their_reset_budget() -> None:
    """A keyed reset flow's owner exemption (the device cookie of the account the key
    names) looks the key up as sent: the owner logged in as `Vic@X.org`, an attacker
    spends the key's budget as `vic@x.org` (one budget: keys compare lower-cased), and the
    owner's own reset, typed as at the login, still goes through."""
    from starlette.testclient import TestClient

    from test_review_s7 import _guard, _login_and_reset

    clock = FakeClock(START)
    app = _login_and_reset(_guard(clock))
    victim = TestClient(app, client=("198.51.100.40", 1))
    assert victim.post("/login", json={"email": "Vic@X.org", "password": "p"}).status_code == 200
    rng = random.Random(6)
    for _ in range(3):
        clock.advance(60)
        TestClient(app, client=(public_ip(rng), 1)).post("/reset", json={"email": "vic@x.org"})
    clock.advance(60)
    stranger = TestClient(app, client=(public_ip(rng), 1))
    assert stranger.post("/reset", json={"email": "VIC@x.org"}).status_code == 429
    assert victim.post("/reset", json={"email": "Vic@X.org"}).status_code == 200
