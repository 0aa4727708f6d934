"""Review of session 18's changes (run gaps and skips, stolen tokens banned as tokens,
the sustained factor, the scraping volume path, the query-id audit note): each test is
what an attacker or an honest user does, and fails on the code it was written against."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
import redis.asyncio
from fastapi import Depends, FastAPI, Header, HTTPException

from apiguard import Guard, identify
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock
from apiguard.simulate.driver import AsgiDriver, Request
from apiguard.store.redis import RedisStore
from detection_support import (
    BROWSERS,
    Client,
    build_app,
    orders_of,
    owner_of,
    public_ip,
    run,
    run_quietly,
)
from test_audit import _app, _routes, _run
from test_detect_scraping import (
    CALM,
    PRODUCTS,
    Shop,
    Visitor,
    browser_headers,
    honest_visits,
    is_challenge,
)
from test_detect_scraping import (
    START as SHOP_START,
)
from test_rotation_token import START as TOKEN_START
from test_rotation_token import token_app

# --- 1. BOLA runs: gaps and skips ------------------------------------------------------


def _who(authorization: Annotated[str | None, Header()] = None) -> str:
    if not authorization:
        raise HTTPException(401)
    name = authorization.removeprefix("Bearer ")
    identify(name)
    return name


def invoices_app(guard: Guard) -> FastAPI:
    """Invoices numbered from one counter the whole team shares; every signed-in member
    reads their own (the app checks ownership: nothing leaks)."""
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.get("/invoices/{invoice_id}")
    async def invoice(invoice_id: int, who: Annotated[str, Depends(_who)]) -> dict[str, Any]:
        return {"id": invoice_id, "owner": who}

    return app


def test_an_accountant_reading_her_own_invoices_in_order_is_not_refused() -> None:
    """A small team shares one invoice counter, so the accountant's own invoices are
    numbered 1000, 1001, 1002, 1004, 1007, ... (her colleagues' invoices fill the gaps of
    one or two ids). At the month's end she opens each of her 25 invoices from the list,
    oldest first, one a minute or so. Before this session her run broke at every uneven
    gap (25 of 25 answered); now any step of one to three strides extends it and she is
    refused at her 17th invoice (measured: 16 answered, then 9 refused 403). The same
    with her going back to an earlier invoice every third read: refused at the 22nd."""
    rng = random.Random(3)
    ids = [1000, 1001]
    while len(ids) < 25:
        ids.append(ids[-1] + rng.choice([1, 1, 2, 3]))
    clock = FakeClock(1_000_000.0)
    driver = AsgiDriver(invoices_app(Guard(clock=clock)))

    async def read(user: str, ip: str, ua: str, invoice: int) -> int:
        headers = (("user-agent", ua), ("authorization", f"Bearer {user}"))
        return (await driver.send(Request("GET", f"/invoices/{invoice}", ip, headers))).status

    async def scenario() -> list[int]:
        for n in range(30):  # her colleagues and the other customers, a few reads each
            for _ in range(5):
                invoice = 50_000 + n * 100 + rng.randrange(90)
                await read(f"bg{n}", f"203.0.{n}.9", BROWSERS[n % 4], invoice)
        out = []
        for invoice in ids:
            clock.advance(60 * rng.uniform(0.5, 1.5))
            out.append(await read("accountant", "81.2.69.142", BROWSERS[0], invoice))
        return out

    statuses = run_quietly(scenario())
    assert set(statuses) == {200}, statuses


def _stepping(kind: str) -> Iterator[int]:
    """The foreign ids a walker asks for, in order."""
    if kind == "skip4":  # 13 consecutive ids, then 4 skipped (four strides: off the run)
        target = 1000
        while True:
            for _ in range(13):
                yield target
                target += 1
            target += 4
    else:  # two walks interleaved, one id of each in turn
        a, b = 1000, 2500
        while True:
            yield a
            a += 1
            yield b
            b += 1


@pytest.mark.parametrize("kind", ["skip4", "interleave"])
def test_a_slow_walk_that_keeps_its_runs_short_is_caught(kind: str) -> None:
    """A signed-in walker reads other users' orders from one address, one every 60-120
    s (about 7 per 10 minutes: under a quarter of the distinct bar of 30, so the
    sustained count never starts), either 13 consecutive ids then a jump of 5 (4 ids
    skipped: four strides is off the run, and two equal steps after it restart the run
    at 2), or two walks interleaved (no two equal steps in a row). A plain walk at that
    pace is caught after 16 foreign objects; these leaked 1,983 and 2,001 (every order
    the shop has) in 50 hours without a finding. At 8-40 s a step they are caught after
    44 by the sustained count (102 and 98 before the factor went to 1.2)."""
    rng = random.Random(0)
    clock = FakeClock(2_000_000.0)
    driver = AsgiDriver(build_app(Guard(clock=clock)))

    async def scenario() -> int:
        readers = []
        for user in range(40):
            c = Client(driver, rng.choice(BROWSERS), public_ip(rng))
            await c.login(user)
            readers.append((user, c))
        bot = Client(driver, BROWSERS[1], "192.0.2.77")
        await bot.login(120)
        leaked = 0
        for target in _stepping(kind):
            clock.advance(rng.uniform(60, 120))
            user, c = rng.choice(readers)
            await c.send("GET", f"/orders/{rng.choice(orders_of(user))}")
            if owner_of(target) == 120:
                continue
            if (await bot.send("GET", f"/orders/{target}")).status != 200:
                return leaked
            leaked += 1
            if leaked >= 300:
                return leaked
        return leaked

    leaked = run_quietly(scenario())
    assert leaked <= 60, leaked


# --- 2. Rotation: a stolen token banned as a token --------------------------------------


@pytest.fixture(params=["memory", "redis"])
def token_guard(request: pytest.FixtureRequest) -> tuple[Guard, FakeClock]:
    clock = FakeClock(TOKEN_START)
    if request.param == "memory":
        return Guard(clock=clock), clock
    url = request.getfixturevalue("redis_url")
    store = RedisStore(redis.asyncio.Redis.from_url(url), server_time=False, timeout=5.0)
    return Guard({"secret": "s" * 32}, clock=clock, store=store), clock


@pytest.mark.parametrize("every", [0, 8])
def test_an_attacker_with_the_password_who_logs_in_again_per_ban_is_held(
    token_guard: tuple[Guard, FakeClock], every: int
) -> None:
    """The attacker has carol's password. It logs in once from a residential proxy and
    uses that token from a new proxy, with new headers, on every request; when the token
    is refused it logs in again. Every token goes to 12 or 13 networks before it is
    banned, so the user's networks stay over 4 times its tokens and only tokens are
    banned. Measured (memory): 370 of 400 requests answered, with 31 logins; before this
    session the user was banned and 13 of 400 were answered. (An attacker logging in on
    every request is banned as the user: tests/test_rotation_token.py.)

    `every` 8: it logs in again after every 8 requests, whatever happened. Each token
    stays under the bar on its own networks, and a user whose networks are 4 times its
    tokens is then judged only on the token (`used.count < bar`: "another session of the
    user"), so nothing is banned: 400 of 400 answered with 50 logins (memory and Redis);
    13 of 400 before this session."""
    guard, clock = token_guard
    driver = AsgiDriver(token_app(guard))
    rng = random.Random(9)

    async def login(user: str, ip: str, ua: str) -> str | None:
        resp = await driver.send(Request("POST", f"/login/{user}", ip, (("user-agent", ua),)))
        return str(resp.json()["token"]) if resp.status == 200 else None

    async def me(token: str | None, ip: str, ua: str) -> int:
        headers = (("user-agent", ua), ("authorization", f"Bearer {token}"))
        return (await driver.send(Request("GET", "/me", ip, headers))).status

    async def scenario() -> tuple[list[int], list[int]]:
        people = []
        for n in range(35):
            ua, ip = rng.choice(BROWSERS), f"203.0.{n}.10"
            people.append((await login(f"user{n}", ip, ua), ip, ua))
        own = await login("carol", "81.2.69.77", BROWSERS[0])
        owner: list[int] = []
        attacker: list[int] = []
        token = None
        for minute in range(240):
            clock.advance(60)
            for t, ip, ua in people:
                await me(t, ip, ua)
            if minute % 10 == 0:
                owner.append(await me(own, "81.2.69.77", BROWSERS[0]))
            if minute >= 40:
                for _ in range(2):
                    clock.advance(rng.uniform(1, 10))
                    ua = f"{rng.choice(BROWSERS)} r/{rng.randrange(10_000)}"
                    ip = public_ip(rng)
                    if token is None:
                        token = await login("carol", ip, ua)
                    status = await me(token, ip, ua)
                    attacker.append(status)
                    if status != 200 or (every and len(attacker) % every == 0):
                        token = None
        return owner, attacker

    logging.disable(logging.WARNING)
    try:
        owner, attacker = run(scenario())
    finally:
        logging.disable(logging.NOTSET)
    assert set(owner) == {200}, owner
    assert 403 in attacker, attacker
    first = attacker.index(403)
    after = attacker[first:]
    assert after.count(200) <= 0.1 * len(after), (after.count(200), len(after))


# --- 4. Scraping: the volume path -------------------------------------------------------


@pytest.mark.xfail(
    strict=True,
    reason="the volume bar follows the baseline the scraper itself teaches: a scraper "
    "ramping 1.6 times a window is never held; a cap on how fast the bar may grow challenged "
    "an honest crowd polling a live page for an hour",
)
def test_a_scraper_that_ramps_up_is_held_by_its_volume() -> None:
    """Beside the shop's visitors (2.5 new a minute), a scraper brings new addresses that
    each read four products 5-25 s apart (so none is one-shot), starting at 2 a minute
    and 1.6 times more every 30-minute window. Each calm window teaches the route its
    level, the scraper included (browsing addresses are no suspect window), so the
    volume bar (1.5 times max of floor plus baseline, 3 times baseline) rises ahead of
    it. Measured over 4 hours: 16,324 of 16,324 reads answered (growth 1.5: 11,588 of
    11,588), never held, while the same scraper at a flat 10 a minute is held after 474."""
    shop = Shop(seed=61)
    rng = random.Random(161)
    end = CALM + 3 * 3600
    events = honest_visits(shop, rng, 2.5, 0.0, end, bounce=0.1)
    bots: list[tuple[float, str, Visitor, str]] = []
    t = CALM
    while t < end:
        per_minute = 2.0 * 1.6 ** int((t - CALM) // 1800)
        t += rng.expovariate(per_minute / 60)
        bot = Visitor(shop.driver, browser_headers(rng), public_ip(rng), jar=None)
        bot.solves = False
        at = t
        for _ in range(4):
            bots.append((at, "bot", bot, f"/products/{rng.randint(1, PRODUCTS)}"))
            at += rng.uniform(5.0, 25.0)
    statuses: list[int] = []

    async def scenario() -> None:
        for when, who, v, path in sorted([*events, *bots], key=lambda e: e[0]):
            shop.clock.advance_to(SHOP_START + when)
            resp = await v.get(path)
            if who == "bot":
                statuses.append(403 if is_challenge(resp) else resp.status)

    logging.disable(logging.WARNING)
    try:
        run(scenario())
    finally:
        logging.disable(logging.NOTSET)
    served = statuses.count(200)
    assert served <= 0.4 * len(statuses), (served, len(statuses))
    assert statuses[-500:].count(200) <= 25


# --- 5. Audit: query-parameter ids -------------------------------------------------------

QUERY_MODEL_APP = """
from typing import Annotated
from fastapi import FastAPI, Query
from pydantic import BaseModel
from apiguard import Guard
from apiguard.asgi import GuardMiddleware

guard = Guard()
app = FastAPI()
app.add_middleware(GuardMiddleware, guard=guard)

class Filters(BaseModel):
    order_id: int
    limit: int = 10

@app.get("/receipt")
def receipt(filters: Annotated[Filters, Query()]) -> dict[str, int]:
    return {}

@app.get("/batch")
def batch(order_ids: Annotated[list[int], Query()]) -> dict[str, int]:
    return {}
"""


def test_object_ids_in_a_query_model_or_a_list_are_noted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """FastAPI 0.115+ declares query parameters with a Pydantic model
    (`Annotated[Filters, Query()]`), and a batch read takes `order_ids: list[int]`; the
    app's owner runs `apiguard audit` to learn which routes BOLA does not watch. Neither
    route is noted (measured: no notes; `order_id` as a plain parameter is noted), so the
    owner believes these routes need no `detection.bola.query_params`."""
    spec = _app(tmp_path, QUERY_MODEL_APP, "query_model_app")
    routes = _routes(json.loads(_run([spec, "--json"], capsys)[1]))
    assert any("order_id" in note for note in routes["/receipt"]["notes"]), routes["/receipt"]
    assert any("order_ids" in note for note in routes["/batch"]["notes"]), routes["/batch"]


# --- 3. BOLA sustained count: 1.2, four times on public routes ---------------------------


def _maybe_user(authorization: Annotated[str | None, Header()] = None) -> str | None:
    name = authorization.removeprefix("Bearer ") if authorization else None
    identify(name)
    return name


def profiles_app(guard: Guard) -> FastAPI:
    """Profiles: anyone reads a profile's public card; a signed-in user gets its private
    fields too, anyone's (the BOLA bug)."""
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.get("/profiles/{profile_id}")
    async def profile(
        profile_id: int, who: Annotated[str | None, Depends(_maybe_user)]
    ) -> dict[str, Any]:
        return {"id": profile_id, "email": f"p{profile_id}@example.com" if who else None}

    return app


def test_a_walker_who_makes_the_route_public_is_caught_as_soon_as_before() -> None:
    """A signed-in walker harvests the private fields of random profiles, about 22 every
    10 minutes (under the distinct bar in every window). First it reads 3 public cards
    anonymously from 3 proxy addresses: the route is now public, and its sustained bar
    (1.2 times 30) is multiplied by 4. Measured: caught after 153 foreign profiles
    primed, 44 unprimed (a scratch run of the same walk: 149 and 44); before this session
    96 either way (factor 3, no public
    multiplier), so the priming undoes the session's gain and more."""
    rng = random.Random(0)
    clock = FakeClock(3_000_000.0)
    driver = AsgiDriver(profiles_app(Guard(clock=clock)))

    async def get(profile: int, ip: str, ua: str, user: str | None = None) -> int:
        headers: tuple[tuple[str, str], ...] = (("user-agent", ua),)
        if user:
            headers += (("authorization", f"Bearer {user}"),)
        return (await driver.send(Request("GET", f"/profiles/{profile}", ip, headers))).status

    async def scenario() -> int:
        users = [(f"u{n}", public_ip(rng), rng.choice(BROWSERS)) for n in range(40)]
        for name, ip, ua in users:
            for _ in range(3):
                await get(rng.randrange(1, 100_000), ip, ua, name)
        for k in range(3):  # the priming: three public cards, three proxies
            await get(rng.randrange(1, 100_000), f"198.51.100.{k + 1}", BROWSERS[2])
        leaked = 0
        while leaked < 300:
            clock.advance(rng.uniform(20, 35))
            name, ip, ua = rng.choice(users)
            await get(rng.randrange(1, 100_000), ip, ua, name)
            if await get(rng.randrange(1, 100_000), "192.0.2.77", BROWSERS[1], "walker") != 200:
                return leaked
            leaked += 1
        return leaked

    leaked = run_quietly(scenario())
    assert leaked <= 60, leaked


@pytest.mark.xfail(
    strict=True,
    reason="with the sustained factor at 1.2 a support agent reading 20 customers' "
    "orders in each of three sittings in one afternoon is challenged at the 59th",
)
def test_a_support_agent_reading_customers_orders_in_sittings_is_not_refused() -> None:
    """A support agent (signed in, one office address) answers tickets in three sittings
    40 minutes apart, opening 20 customers' orders in each, one every 15-45 s: 20 in 10
    minutes is under the route's distinct bar of 30, but each sitting passes a quarter
    of the bar and its objects add to the sustained count. Measured: challenged (403
    here, no challenge route) at the 59th order; before this session (factor 3) never."""
    rng = random.Random(5)
    clock = FakeClock(1_000_000.0)
    driver = AsgiDriver(invoices_app(Guard(clock=clock)))

    async def read(user: str, ip: str, ua: str, invoice: int) -> int:
        headers = (("user-agent", ua), ("authorization", f"Bearer {user}"))
        return (await driver.send(Request("GET", f"/invoices/{invoice}", ip, headers))).status

    async def scenario() -> list[int]:
        others = [(f"u{n}", rng.sample(range(1, 200_000), 12)) for n in range(40)]
        tickets = rng.sample(range(1, 200_000), 60)
        out: list[int] = []
        while tickets:
            for _ in range(20):  # the customers themselves, meanwhile
                name, mine = rng.choice(others)
                clock.advance(rng.uniform(2, 10))
                await read(name, f"203.0.{int(name[1:])}.9", BROWSERS[1], rng.choice(mine))
            for _ in range(20):
                clock.advance(rng.uniform(15, 45))
                out.append(await read("agent", "81.2.69.142", BROWSERS[0], tickets.pop()))
            clock.advance(2400)
        return out

    statuses = run_quietly(scenario())
    assert set(statuses) == {200}, statuses.index(403) + 1
