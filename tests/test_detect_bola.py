"""BOLA enumeration, both ways: walks over other users' orders are caught (the route
answers 200 to all of them: the bug is real) AND honest users reading their own orders,
often and many, are not refused."""

from __future__ import annotations

import json
import random

import pytest
from fastapi import APIRouter, FastAPI
from fastapi import Response as FastAPIResponse
from starlette.routing import Mount

from apiguard import Guard
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock
from apiguard.simulate.driver import AsgiDriver, Request
from detection_support import (
    BROWSERS,
    ORDERS_PER_USER,
    USERS,
    Client,
    build_app,
    is_challenge,
    orders_of,
    owner_of,
    public_ip,
    run,
    run_quietly,
)

START = 2_000_000.0


async def honest_readers(
    driver: AsgiDriver, clock: FakeClock, rng: random.Random, users: range, minutes: float
) -> tuple[list[int], list[Client]]:
    """Honest users signed in, each reading some of their own orders again and again,
    some all of them; returns (refused statuses, the clients)."""
    refused: list[int] = []
    clients = []
    for user in users:
        c = Client(driver, rng.choice(BROWSERS), public_ip(rng))
        await c.login(user)
        clients.append(c)
    end = clock() + minutes * 60
    while clock() < end:
        clock.advance(rng.expovariate(2.0))
        c = rng.choice(clients)
        user = int(c.token.removeprefix("tok-"))  # type: ignore[union-attr]
        mine = orders_of(user)
        order = rng.choice(mine if rng.random() < 0.9 else mine[:2])
        resp = await c.send("GET", f"/orders/{order}")
        if resp.status != 200:
            refused.append(resp.status)
    return refused, clients


def walk(kind: str, rng: random.Random, attacker: int) -> list[int]:
    """Order ids an attacker reads: a sequential walk, or random ids mixed with the
    attacker's own orders (to look like a user)."""
    if kind == "sequential":
        return list(range(1, 400))
    mine = orders_of(attacker)
    ids = []
    for _ in range(400):
        ids.append(rng.choice(mine) if rng.random() < 0.3 else rng.randrange(1, USERS * 12))
    return ids


@pytest.mark.parametrize("kind", ["sequential", "random"])
def test_walk_over_other_users_orders_is_caught_and_owners_are_not(kind: str) -> None:
    rng = random.Random(11)
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    driver = AsgiDriver(build_app(guard))

    async def scenario() -> tuple[list[int], int, int, list[int]]:
        refused, clients = await honest_readers(driver, clock, rng, range(0, 120), 20)
        attacker = Client(driver, BROWSERS[2], "192.0.2.66")
        await attacker.login(250)
        leaked = admitted_after = 0
        blocked = False
        for order in walk(kind, rng, 250):
            clock.advance(rng.uniform(1.0, 6.0))  # human-like jitter
            resp = await attacker.send("GET", f"/orders/{order}")
            if resp.status in (403, 429):
                blocked = True
                continue
            if owner_of(order) != 250:
                if blocked:
                    admitted_after += 1
                else:
                    leaked += 1
            # honest users keep reading meanwhile
            c = rng.choice(clients)
            user = int(c.token.removeprefix("tok-"))  # type: ignore[union-attr]
            r = await c.send("GET", f"/orders/{rng.choice(orders_of(user))}")
            if r.status != 200:
                refused.append(r.status)
        more, _ = await honest_readers(driver, clock, rng, range(120, 150), 5)
        return refused + more, leaked, admitted_after, []

    refused, leaked, after, _ = run(scenario())
    assert refused == []
    assert 0 < leaked < 50
    # each ban ends; the first objects walked after it re-ban a repeat offender
    assert after <= 0.10 * 400


def test_a_user_reading_every_one_of_their_orders_many_times_is_not_flagged() -> None:
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    driver = AsgiDriver(build_app(guard))

    async def scenario() -> list[int]:
        c = Client(driver, BROWSERS[0], "203.0.113.9")
        await c.login(5)
        statuses = []
        for _ in range(30):
            for order in orders_of(5):  # all 12, in id order (a constant stride!)
                clock.advance(0.5)
                statuses.append((await c.send("GET", f"/orders/{order}")).status)
        return statuses

    assert set(run(scenario())) == {200}


def test_walk_from_rotating_addresses_with_one_token_is_one_principal() -> None:
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    driver = AsgiDriver(build_app(guard))
    rng = random.Random(2)

    async def scenario() -> int:
        attacker = Client(driver, BROWSERS[1], "192.0.2.1", jar=None)
        await attacker.login(9)
        leaked = 0
        for order in rng.sample(range(1, USERS * ORDERS_PER_USER), 200):
            clock.advance(rng.uniform(1, 4))
            resp = await attacker.send("GET", f"/orders/{order}", ip=public_ip(rng))
            if resp.status == 200:
                leaked += 1
        return leaked

    assert run(scenario()) < 50


def test_a_walk_answered_404_is_caught_early() -> None:
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    driver = AsgiDriver(build_app(guard))
    rng = random.Random(3)

    async def scenario() -> list[int]:
        attacker = Client(driver, BROWSERS[1], "192.0.2.1")
        await attacker.login(9)
        out = []
        for _ in range(60):
            clock.advance(2)
            order = rng.randrange(10_000, 10**9)
            out.append((await attacker.send("GET", f"/orders/{order}")).status)
        return out

    statuses = run(scenario())
    assert statuses[:10] == [404] * 10
    assert statuses.index(403) <= 20


def test_memory_per_principal_is_bounded() -> None:
    clock = FakeClock(START)
    guard = Guard(clock=clock, config={"detection": {"bola": {"mode": "monitor"}}})
    driver = AsgiDriver(build_app(guard))

    async def scenario() -> None:
        c = Client(driver, BROWSERS[0], "192.0.2.5")
        await c.login(1)
        for order in range(1, 3001):
            clock.advance(0.01)
            await c.send("GET", f"/orders/{order}")

    run(scenario())
    store = guard.store
    keys = [*store._tallies, *store._runs, *store._objects]  # type: ignore[attr-defined]
    assert 0 < len(keys) < 30  # a record per (principal, route), not an entry per id
    assert "/orders/1" not in " ".join(keys)


@pytest.mark.parametrize("shape", ["nested", "mounted", "sync"])
def test_walks_are_caught_on_every_routing_shape(shape: str) -> None:
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)
    if shape == "nested":
        inner = APIRouter(prefix="/items")

        @inner.get("/{item_id}")
        async def item(item_id: int) -> dict[str, int]:
            return {"id": item_id}

        outer = APIRouter(prefix="/v1/{tenant}")
        outer.include_router(inner)
        app.include_router(outer)
        path = "/v1/acme/items/{}"
    elif shape == "mounted":
        sub = FastAPI()

        @sub.get("/items/{item_id}")
        async def sub_item(item_id: str) -> dict[str, str]:
            return {"id": item_id}

        app.router.routes.append(Mount("/shop", app=sub))
        path = "/shop/items/{}"
    else:

        @app.get("/items/{item_id}")
        def sync_item(item_id: int) -> dict[str, int]:
            return {"id": item_id}

        path = "/items/{}"
    driver = AsgiDriver(app)
    rng = random.Random(1)

    async def scenario() -> list[int]:
        out = []
        for _ in range(120):
            clock.advance(1)
            req = Request(
                "GET",
                path.format(rng.randrange(10**6)),
                "192.0.2.9",
                (("user-agent", "x"), ("authorization", "Bearer a-client-key")),
            )
            out.append((await driver.send(req)).status)
        return out

    statuses = run(scenario())
    assert 403 in statuses and statuses.index(403) <= 45, statuses


def test_a_person_reading_many_of_their_own_objects_passes_the_challenge_a_bot_does_not() -> None:
    """A signed-in person over the bar is asked for the app's challenge, not banned: one
    who passes it (a buyer reading all of their 60 orders) goes on; a bot that does not
    is held; a walker with a human solver is blocked past four times the bar."""
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    driver = AsgiDriver(build_app(guard))
    rng = random.Random(7)

    async def reader(user: int, orders: list[int], solves: bool) -> tuple[int, int, int]:
        """(answered 200, challenged, blocked) for `user` reading `orders` in order."""
        c = Client(driver, BROWSERS[0], public_ip(rng))
        await c.login(user)
        ok = challenged = blocked = 0
        for order in orders:
            clock.advance(rng.uniform(0.8, 3.0))
            resp = await c.send("GET", f"/orders/{order}")
            if is_challenge(resp):
                challenged += 1
                if solves:
                    assert (await c.send("POST", "/challenge")).status == 200
                    resp = await c.send("GET", f"/orders/{order}")
            if resp.status == 200:
                ok += 1
            elif resp.status == 403 and not is_challenge(resp):
                blocked += 1
        return ok, challenged, blocked

    async def scenario() -> list[tuple[int, int, int]]:
        buyer_orders = [o for u in range(40, 45) for o in orders_of(u)]  # 60, in id order
        return [
            await reader(40, sorted(buyer_orders), solves=True),  # the buyer's own 60
            await reader(101, list(range(1000, 1300)), solves=False),  # a bot walking
            await reader(102, list(range(2000, 2400)), solves=True),  # a walker + solver
        ]

    buyer, bot, solver = run(scenario())
    assert buyer[0] == 60 and buyer[1] >= 1 and buyer[2] == 0
    assert bot[0] < 40 and bot[1] > 200
    assert solver[2] > 0 and solver[0] < 200


def test_an_unanswered_challenge_holds_a_walker_that_waits_it_out() -> None:
    """A bot that waits out each refusal is still asked for the challenge when it comes
    back hours later (a challenge is a question: it stands until answered, up to
    `detection.challenge_hold`); routes that name no object stay open to it; a person who
    passes it goes on at once."""
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    driver = AsgiDriver(build_app(guard))
    rng = random.Random(11)

    async def scenario() -> tuple[list[int], list[bool], int, int]:
        c = Client(driver, BROWSERS[2], public_ip(rng))
        await c.login(103)
        admitted: list[int] = []
        order = 3000
        while not is_challenge(await c.send("GET", f"/orders/{order}")):
            admitted.append(order)
            order += 1
            clock.advance(rng.uniform(1.0, 4.0))
        later = []
        for _ in range(6):  # waits an hour each time, then tries the next order
            clock.advance(3600)
            later.append(is_challenge(await c.send("GET", f"/orders/{order}")))
        other = (await c.send("GET", "/me")).status
        await c.send("POST", "/challenge")
        after_pass = (await c.send("GET", f"/orders/{order}")).status
        return admitted, later, other, after_pass

    admitted, later, other, after_pass = run(scenario())
    assert 10 <= len(admitted) <= 45, admitted
    assert later == [True] * 6
    assert other == 200
    assert after_pass == 200


def test_a_harvest_over_fresh_accounts_is_caught_and_honest_newcomers_pass() -> None:
    """A script signs up account after account, each from a new address and browser, and
    reads 12 random orders with each: under the population's bar per account, but a young
    account owns nothing yet, so it is challenged past 10; once one went unanswered, each
    new account is challenged before its first order. A person who signs up meanwhile
    passes the challenge and goes on; signed-in customers reading 8 of their own orders
    each (more than a young account may) are never asked."""
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    driver = AsgiDriver(build_app(guard))
    rng = random.Random(13)

    async def scenario() -> tuple[list[int], list[str], list[int], bool]:
        leaked: list[int] = []  # foreign orders each fresh account read
        honest_statuses: list[int] = []
        customers = []
        for user in range(30):
            c = Client(driver, rng.choice(BROWSERS), public_ip(rng))
            await c.login(user)
            customers.append((user, c))
        newcomer_met: list[str] = []
        for n in range(15):
            for user, c in rng.sample(customers, 10):  # honest traffic between sign-ups
                clock.advance(rng.uniform(1, 6))
                order = rng.choice(orders_of(user)[:8])
                honest_statuses.append((await c.send("GET", f"/orders/{order}")).status)
            bot = Client(driver, rng.choice(BROWSERS), public_ip(rng), jar=None)
            clock.advance(rng.uniform(30, 120))
            assert (await bot.signup(f"bot{n}")).status == 201
            got = 0
            for _ in range(12):
                clock.advance(rng.uniform(2, 10))
                resp = await bot.send("GET", f"/orders/{rng.randrange(1, USERS * 12)}")
                if resp.status != 200:
                    break  # burnt: the next account
                got += 1
            leaked.append(got)
            if n == 10:  # a person signs up in the middle of it
                person = Client(driver, BROWSERS[1], public_ip(rng))
                await person.signup("newcomer")
                resp = await person.send("GET", "/orders/5")
                newcomer_met.append("challenge" if is_challenge(resp) else str(resp.status))
                await person.send("POST", "/challenge")
                newcomer_met.append(str((await person.send("GET", "/orders/5")).status))
        return leaked, newcomer_met, honest_statuses, True

    leaked, newcomer, honest, _ = run(scenario())
    # a young account stops at the young floor (the distinct count is a sketch's estimate:
    # two ids sharing a slot count once, so it may read one or two more)
    assert 10 <= leaked[0] <= 12, leaked
    assert sum(leaked[1:]) == 0, leaked  # then none reads a single order
    assert newcomer == ["challenge", "200"]
    assert set(honest) == {200}


def test_account_created_marks_a_sign_up_that_does_not_sign_the_user_in() -> None:
    """A sign-up that sets a CSRF cookie and returns no token (the user signs in after):
    `guard.account_created()` names the new account, which is then young wherever it is
    identified, on a sync route as on an async one; a customer who signed up long ago is
    not."""
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    app = build_app(guard)
    created: list[int] = []

    @app.post("/register")
    def register(response: FastAPIResponse) -> dict[str, int]:
        user = 200_000 + len(created)
        created.append(user)
        response.set_cookie("csrftoken", "x")
        guard.account_created(user)
        return {"id": user}

    driver = AsgiDriver(app)
    rng = random.Random(17)

    async def read(token: str, n: int) -> list[int]:
        statuses = []
        for _ in range(n):
            clock.advance(rng.uniform(2, 9))
            headers = (("user-agent", BROWSERS[0]), ("authorization", f"Bearer {token}"))
            req = Request("GET", f"/orders/{rng.randrange(1, 3000)}", public_ip(rng), headers)
            statuses.append((await driver.send(req)).status)
        return statuses

    async def scenario() -> tuple[list[int], list[int]]:
        req = Request("POST", "/register", public_ip(rng), (("cookie", "csrftoken=x"),))
        user = (await driver.send(req)).json()["id"]
        clock.advance(60)
        return await read(f"tok-{user}", 13), await read("tok-7", 13)

    young, old = run(scenario())
    assert young[:10] == [200] * 10 and 403 in young[10:13], young  # (an estimate)
    assert old == [200] * 13


def test_account_created_rejects_what_is_not_an_id() -> None:
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    app = build_app(guard)

    @app.post("/bad")
    async def bad() -> dict[str, bool]:
        guard.account_created("  ")
        return {"ok": True}

    with pytest.raises(RuntimeError, match="outside a request"):
        guard.account_created(5)
    driver = AsgiDriver(app)
    with pytest.raises(ValueError, match="non-empty"):
        run(driver.send(Request("POST", "/bad", "198.51.100.1", ())))


def test_a_challenge_holds_the_query_ids_bola_counts_and_nothing_that_merely_looks_alike() -> None:
    """With `query_params=["id"]`, a challenged walker is held where a request names an
    `id` (decoded as the framework decodes it) and not on `?userid=` or `?x=id=3`."""
    clock = FakeClock(START)
    guard = Guard({"detection": {"bola": {"query_params": ["id"]}}}, clock=clock)
    driver = AsgiDriver(build_app(guard))
    rng = random.Random(19)

    async def scenario() -> dict[str, bool]:
        c = Client(driver, BROWSERS[0], public_ip(rng))
        await c.login(104)
        order = 4000
        while not is_challenge(await c.send("GET", f"/orders/{order}")):
            order += 1
            clock.advance(rng.uniform(1.0, 3.0))
        return {
            q: is_challenge(await c.send("GET", f"/me?{q}"))
            for q in ("id=3", "%69d=3", "userid=3", "x=id%3D3", "id=")
        }

    held = run(scenario())
    assert held == {
        "id=3": True,
        "%69d=3": True,
        "userid=3": False,
        "x=id%3D3": False,
        "id=": False,
    }


def test_a_young_account_that_passes_the_challenge_gets_the_population_bar() -> None:
    """A new customer who reads 40 orders on their first day (an app whose every login is
    a sign-up-like flow, say) is asked once, passes, and is never blocked: the young
    floor holds only until the person passes, not four times the young floor after."""
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    driver = AsgiDriver(build_app(guard))
    rng = random.Random(23)

    async def scenario() -> tuple[int, int, int]:
        c = Client(driver, BROWSERS[1], public_ip(rng))
        await c.signup("newcustomer")
        ok = challenged = blocked = 0
        for order in range(1000, 1040):
            clock.advance(rng.uniform(1.0, 4.0))
            resp = await c.send("GET", f"/orders/{order}")
            if is_challenge(resp):
                challenged += 1
                await c.send("POST", "/challenge")
                resp = await c.send("GET", f"/orders/{order}")
            if resp.status == 200:
                ok += 1
            elif resp.status == 403:
                blocked += 1
        return ok, challenged, blocked

    assert run(scenario()) == (40, 1, 0)


def shop_with_server_errors(guard: Guard) -> FastAPI:
    """The shop, with a delete route whose bug answers another user's order with a server
    error: a 500 response (`answer`), or an exception the framework turns into one
    (`raise`)."""
    app = build_app(guard)

    @app.delete("/orders/{order_id}")
    async def delete(order_id: int, how: str = "answer") -> FastAPIResponse:
        if how == "raise":
            raise AttributeError("'NoneType' object has no attribute 'author'")
        return FastAPIResponse(status_code=500)

    return app


@pytest.mark.parametrize("how", ["answer", "raise"])
def test_a_walk_the_app_answers_with_server_errors_is_caught_and_an_outage_retry_is_not(
    how: str,
) -> None:
    """A walk over other users' orders that the app answers 500 (a bug beside the BOLA
    bug) is caught like one answered 200, both sequential and random ids; a user retrying
    their own order through an outage, and users reading theirs meanwhile, are not
    refused."""
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    driver = AsgiDriver(shop_with_server_errors(guard), server_errors=True)
    rng = random.Random(6)

    async def scenario() -> tuple[list[int], list[int], list[int], list[int]]:
        refused, _ = await honest_readers(driver, clock, rng, range(0, 30), 2)
        walks: list[list[int]] = []
        for n, ids in enumerate(
            (list(range(1, 120)), [rng.randrange(1, 3600) for _ in range(120)])
        ):
            attacker = Client(driver, BROWSERS[n], f"192.0.2.{n + 1}")
            await attacker.login(50 + n)
            statuses = []
            for order in ids:
                clock.advance(1)
                statuses.append(
                    (await attacker.send("DELETE", f"/orders/{order}?how={how}")).status
                )
            walks.append(statuses)
        # an outage: one user retries deleting one of their orders 200 times
        patient = Client(driver, BROWSERS[2], public_ip(rng))
        await patient.login(70)
        retries = []
        for _ in range(200):
            clock.advance(1)
            retries.append(
                (await patient.send("DELETE", f"/orders/{orders_of(70)[0]}?how={how}")).status
            )
        return walks[0], walks[1], retries, refused

    sequential, scattered, retries, refused = run(scenario())
    assert refused == []
    assert set(retries) == {500}
    assert sequential[:10] == [500] * 10 and 403 in sequential
    assert sequential.index(403) <= 20
    assert 403 in scattered and scattered.index(403) <= 60


# -- public routes: a catalogue the app answers anonymous readers ---------------------

CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"


def example_shop() -> tuple[FakeClock, AsgiDriver]:
    from apiguard.simulate.demo import load_shop

    clock = FakeClock(START)
    guard = Guard({"detection": {"challenge_path": "/challenge"}}, clock=clock)
    return clock, AsgiDriver(load_shop().create_app(guard))


def test_an_anonymous_reader_pressing_next_through_the_catalogue_is_not_banned() -> None:
    """FP hunt finding 4: an anonymous reader pressing "next" (/products/1, /2, ...) one
    page every 20-60 s was banned at page 17 as a walk, and a colleague behind the same
    office address with it. The catalogue answers anonymous readers: its objects are
    public (once anonymous GETs for 3 objects from 3 addresses were answered there), so
    an address walks 4 times `sequential_run` there before it is a walk."""
    clock, driver = example_shop()
    rng = random.Random(1)
    for pid in (3, 70, 120):  # others read the catalogue anonymously too (3 addresses)
        await_send(driver, Request("GET", f"/products/{pid}", public_ip(rng), ()))
    office = "198.51.100.20"
    statuses = []
    for pid in range(1, 51):
        req = Request("GET", f"/products/{pid}", office, (("user-agent", CHROME),))
        statuses.append(await_send(driver, req))
        clock.advance(rng.uniform(20, 60))
    assert statuses == [200] * 50
    colleague = Request("GET", "/health", office, (("user-agent", BROWSERS[1]),))
    assert await_send(driver, colleague) == 200


def test_a_script_walking_the_whole_public_catalogue_from_one_address_is_still_stopped() -> None:
    """Both sides: a script reading every product in id order from one address is still
    a walk, after 4 times `sequential_run` steps."""
    clock, driver = example_shop()
    rng = random.Random(2)
    for pid in (3, 70, 120):
        await_send(driver, Request("GET", f"/products/{pid}", public_ip(rng), ()))
    statuses = []
    for pid in range(1, 151):
        req = Request("GET", f"/products/{pid}", "203.0.113.7", (("user-agent", CHROME),))
        statuses.append(await_send(driver, req))
        clock.advance(2)
    assert statuses[:59] == [200] * 59
    assert 403 in statuses and statuses.index(403) <= 62


def test_new_accounts_may_browse_the_public_catalogue_signed_in() -> None:
    """FP hunt finding 1: new accounts reading more than `young_floor` products signed in
    were challenged, and the first one flagged raised the young-account alarm for every
    later sign-up. On a route that answers anonymous readers, the young floor is four
    times as high (a new account owns nothing, but a catalogue is nobody's)."""
    clock, driver = example_shop()
    rng = random.Random(3)
    # the catalogue is read anonymously too (visitors not signed in, crawlers)
    for pid in rng.sample(range(1, 150), 5):
        await_send(driver, Request("GET", f"/products/{pid}", public_ip(rng), ()))
    refused = []
    for k in range(20):
        clock.advance(60)
        ip = public_ip(rng)
        body = json.dumps({"username": f"newbie{k}", "password": "s3cret-pw!"}).encode()
        headers = (("user-agent", CHROME), ("content-type", "application/json"))
        resp = run(driver.send(Request("POST", "/signup", ip, headers, body)))
        assert resp.status == 201, resp.status
        auth = (("user-agent", CHROME), ("authorization", f"Bearer {resp.json()['access_token']}"))
        for pid in rng.sample(range(1, 150), 15):
            clock.advance(rng.uniform(5, 30))
            status = await_send(driver, Request("GET", f"/products/{pid}", ip, auth))
            if status != 200:
                refused.append((k, pid, status))
    assert refused == []


def await_send(driver: AsgiDriver, req: Request) -> int:
    return run(driver.send(req)).status


def test_a_challenge_nobody_has_passed_is_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Django trial F6: an app without a challenge flow refuses the people a detector
    would challenge, silently. The first challenge asked while nobody has passed one in
    the process is logged once, saying what to set instead."""
    import logging

    clock = FakeClock(START)
    guard = Guard(clock=clock)
    driver = AsgiDriver(build_app(guard))

    async def walk(user: int, first: int, solve: bool) -> None:
        c = Client(driver, BROWSERS[0], public_ip(random.Random(user)))
        await c.login(user)
        for order in range(first, first + 120):
            clock.advance(1.0)
            resp = await c.send("GET", f"/orders/{order}")
            if is_challenge(resp) and solve:
                assert (await c.send("POST", "/challenge")).status == 200

    with caplog.at_level(logging.WARNING, logger="apiguard"):
        run(walk(101, 1000, solve=False))
        run(walk(102, 2000, solve=False))
    warned = [r for r in caplog.records if "nobody has passed one" in r.getMessage()]
    assert len(warned) == 1 and "challenge_passed()" in warned[0].getMessage()


@pytest.mark.parametrize("floor", [None, 5000])
def test_a_route_floor_lets_an_integration_read_its_objects_in_id_order(
    floor: int | None,
) -> None:
    """An ERP client reading its invoices in id order (consecutive ids: a bulk import) on a
    route given its own floor (`detection.bola.routes`, as the README advises for such a
    client) is judged at that floor for its walk too (a held-out trial: challenged at its
    16th read, by the sequential run, with the floor set); without the floor it is a walk.
    An anonymous address walking the same route is still caught at the usual run."""
    rng = random.Random(4)
    clock = FakeClock(START)
    config = {"detection": {"bola": {"routes": {"/orders/{order_id}": floor}}}} if floor else {}
    guard = Guard(config, clock=clock)
    driver = AsgiDriver(build_app(guard))

    async def scenario() -> tuple[list[int], list[int]]:
        erp = Client(driver, "python-requests/2.31", "52.14.1.9")
        await erp.login(5)
        statuses = []
        for order in range(1, 601):
            clock.advance(rng.uniform(1.0, 3.0))
            statuses.append((await erp.send("GET", f"/orders/{order}")).status)
        bot = Client(driver, BROWSERS[1], "192.0.2.77", jar=None)
        walked = []
        for order in range(2000, 2060):
            clock.advance(rng.uniform(2.0, 6.0))
            walked.append((await bot.send("GET", f"/orders/{order}")).status)
        return statuses, walked

    statuses, walked = run_quietly(scenario())
    if floor:
        assert set(statuses) == {200}, statuses
    else:
        assert statuses.count(200) < 60, statuses
    assert walked.count(200) < 30, walked


def test_a_slow_walk_under_every_window_is_caught_over_hours_and_readers_are_not() -> None:
    """A signed-in user reading about 20 foreign orders every 10 minutes at random (under
    the bar of every `window`), a third of its reads its own, for three hours: caught by
    the sustained count (a held-out trial: 600 of 600 foreign objects leaked in 7.5
    hours), while honest users reading their own orders all along are not refused."""
    rng = random.Random(21)
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    driver = AsgiDriver(build_app(guard))

    async def scenario() -> tuple[list[int], int, bool]:
        readers = []
        for user in range(0, 40):
            c = Client(driver, rng.choice(BROWSERS), public_ip(rng))
            await c.login(user)
            readers.append((user, c))
        attacker_id = 90
        bot = Client(driver, BROWSERS[2], "192.0.2.140")
        await bot.login(attacker_id)
        mine = orders_of(attacker_id)
        refused: list[int] = []
        leaked = 0
        caught = False
        end = clock() + 3 * 3600
        while clock() < end:
            clock.advance(rng.uniform(10, 30))
            user, c = rng.choice(readers)
            resp = await c.send("GET", f"/orders/{rng.choice(orders_of(user))}")
            if resp.status != 200:
                refused.append(resp.status)
            if caught or rng.random() < 0.5:
                continue
            own = rng.random() < 0.33
            order = rng.choice(mine) if own else rng.randrange(1, USERS * ORDERS_PER_USER)
            resp = await bot.send("GET", f"/orders/{order}")
            if resp.status == 200 and not own and owner_of(order) != attacker_id:
                leaked += 1
            elif resp.status in (403, 429):
                caught = True
        return refused, leaked, caught

    refused, leaked, caught = run_quietly(scenario())
    assert refused == []
    assert caught and leaked < 50, leaked


def test_a_slow_harvest_over_fresh_accounts_is_held_and_newcomers_pass() -> None:
    """A held-out evaluation (a ride-hailing API): a walker reading one foreign object
    every 60-140 s, from a new residential address each request, 30% of its reads its
    own, and a new account after five refusals, leaked 144 foreign rides: under the
    young floor (10) in every 10-minute window, each account was banned by rotation
    after 12-13 reads, and no young account was ever flagged, so the young-account alarm
    never armed. A young account's sustained finding, and a rotation ban on an account
    known young, now arm it (85 -> 14 foreign orders here). Both sides: newcomers
    signing up meanwhile, reading a few orders slowly, pass (once asked)."""
    clock = FakeClock(START)
    guard = Guard({"secret": "slow-harvest-fresh-accounts"}, clock=clock)
    driver = AsgiDriver(build_app(guard))
    rng = random.Random(20)

    async def scenario() -> tuple[int, int, list[str]]:
        leaked: set[int] = set()
        accounts = 0
        newcomers: list[str] = []
        events: list[tuple[float, int, str]] = []
        t = 0.0
        while t < 4 * 3600:
            t += rng.uniform(60, 140)
            events.append((t, len(events), "bot"))
        for k in range(10):
            events.append((900 + k * 1300.0, len(events), "person"))
        events.sort()
        bot: Client | None = None
        strikes = 0
        mine: list[int] = []
        for at, _, who in events:
            clock.advance(max(0.0, START + at - clock()))
            if who == "person":
                person = Client(driver, rng.choice(BROWSERS), public_ip(rng))
                assert (await person.signup(f"person{at:.0f}")).status == 201
                met = []
                for order in rng.sample(range(1, USERS * 12), 3):
                    clock.advance(rng.uniform(20, 90))
                    resp = await person.send("GET", f"/orders/{order}")
                    if is_challenge(resp):
                        met.append("challenge")
                        await person.send("POST", "/challenge")
                        resp = await person.send("GET", f"/orders/{order}")
                    met.append(str(resp.status))
                newcomers.append(",".join(met))
                continue
            if bot is None or strikes >= 5:
                bot = Client(driver, rng.choice(BROWSERS), public_ip(rng), jar=None)
                if (await bot.signup(f"walker{accounts}")).status != 201:
                    bot = None
                    continue
                accounts += 1
                strikes = 0
                mine = [rng.randrange(1, USERS * 12) for _ in range(2)]  # "its own"
            own = rng.random() < 0.3
            order = rng.choice(mine) if own else rng.randrange(1, USERS * 12)
            resp = await bot.send("GET", f"/orders/{order}", ip=public_ip(rng))
            if resp.status == 200 and not own:
                leaked.add(order)
            elif resp.status != 200:
                strikes += 1
        return len(leaked), accounts, newcomers

    leaked, accounts, newcomers = run(scenario())
    assert leaked <= 25, (leaked, accounts)
    # every newcomer got its orders (after one challenge at most)
    assert all(n.replace("challenge,", "").split(",") == ["200"] * 3 for n in newcomers), newcomers
