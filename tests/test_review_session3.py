"""Adversarial review (session 3) of the account-takeover changes (unresolved usernames
per actor, networks over 24 h, undeclared proxies challenged) and the scraping changes
(returning only by another path or polling; surge bar floor + baseline; people keep no
surge on). A strict xfail is a confirmed finding; a plain test is a control proving the
scenario realistic (or an attack that held)."""

from __future__ import annotations

import json
import random

import pytest
from fastapi import FastAPI, HTTPException

from apiguard import Guard
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock
from apiguard.simulate.driver import AsgiDriver, Request
from detection_support import (
    BROWSERS,
    Client,
    Credentials,
    build_app,
    is_challenge,
    password,
    public_ip,
    run,
    username,
)
from test_detect_scraping import (
    CALM,
    PRODUCTS,
    Shop,
    Visitor,
    honest_visits,
    replay,
    scraper_requests,
)

# -- account takeover: IPv6 /64s of one /48, a few at a time ----------------------------


def staggered_v6(per_slot: int, slots: int, per_network: int, seed: int = 5) -> list[int]:
    """Stuffing from one /48 (a free tunnel-broker allocation, or a cloud one): every 15
    minutes (the population alarm's half window) `per_slot` fresh /64s, each trying
    `per_network` usernames (under `usernames_per_network`), each attempt from a fresh
    address in its /64 and a fresh browser build; never a success. The statuses."""
    clock = FakeClock(6_000_000.0)
    guard = Guard(clock=clock)
    driver = AsgiDriver(build_app(guard))
    rng = random.Random(seed)

    async def scenario() -> list[int]:
        out: list[int] = []
        user, net = 1000, 0
        for _ in range(slots):
            nets = list(range(net, net + per_slot))
            net += per_slot
            gap = 900.0 / (per_slot * per_network)
            for _ in range(per_network):
                for n in nets:
                    clock.advance(gap)
                    ua = f"{BROWSERS[rng.randrange(4)]} build/{rng.randrange(99999)}"
                    ip = f"2001:db8:77:{n:x}::{rng.randrange(1, 65535):x}"
                    bot = Client(driver, ua, ip, jar=None)
                    resp = await bot.send(
                        "POST", "/login", {"username": username(user), "password": "x"}
                    )
                    out.append(resp.status)
                    user += 1
        return out

    result: list[int] = run(scenario())
    return result


def test_control_a_single_64_over_its_floor_is_banned() -> None:
    """Control: an IPv6 client's address is its /64, so one /64 is banned at its 8th
    username (`usernames_per_actor`), however many addresses in it are used."""
    statuses = staggered_v6(1, 1, 20)
    assert 403 in statuses and statuses.index(403) <= 9


def test_control_ten_64s_at_once_raise_the_population_alarm() -> None:
    """Control: the same /48 using 10 fresh /64s at once is caught at about the 20th."""
    statuses = staggered_v6(10, 4, 7)
    assert 403 in statuses and statuses.index(403) <= 25
    assert statuses.count(401) <= 30


def test_stuffing_from_staggered_64s_of_one_48_is_caught() -> None:
    """Finding A1 (was: 4 fresh /64s every 15 minutes, 7 usernames each, never 10 failing
    networks in the population window, each /64 under the per-address 8: 448 guesses in
    4 h from one /48, none challenged). An IPv6 client's /48 is an actor too, counted as
    a network (`usernames_per_network` over `network_window`): challenged from about its
    27th guess (26 to 29 here)."""
    statuses = staggered_v6(4, 16, 7)  # 4 hours, 448 guesses
    assert statuses.count(401) <= 40
    assert 403 in statuses and statuses.index(403) <= 40


def mobile_48(seed: int = 13) -> list[tuple[bool, int]]:
    """A mobile carrier's IPv6 pool: for a day, 600 sessions of the app's 300 users, each
    from a fresh /64 of one /48 on a new device (no device cookie); one in seven first
    mistypes the password, one in twenty first tries an old e-mail address this site never
    had, one in thirty fails 3 to 5 times and gives up. (challenged, final status) of
    each session that did not give up."""
    clock = FakeClock(6_000_000.0)
    guard = Guard({"detection": {"challenge_path": "/challenge"}}, clock=clock)
    driver = AsgiDriver(build_app(guard))
    rng = random.Random(seed)

    async def scenario() -> list[tuple[bool, int]]:
        out: list[tuple[bool, int]] = []
        for k in range(600):
            clock.advance(rng.uniform(100, 188))
            ip = f"2a01:598:{rng.randrange(16, 24):x}:{rng.randrange(1, 65535):x}::{k + 1:x}"
            c = Client(driver, BROWSERS[rng.randrange(4)], ip)
            who = rng.randrange(300)
            draw = rng.random()
            met = False
            if draw < 1 / 30:
                for _ in range(rng.randint(3, 5)):
                    _, m = await c.human_login(who, "forgotten")
                    met = met or m
                continue
            if draw < 1 / 30 + 1 / 20:
                resp = await c.send(
                    "POST", "/login", {"username": f"old{who}@mail.example", "password": "x"}
                )
                met = is_challenge(resp)
                if met:
                    await c.send("POST", "/challenge")
            elif draw < 1 / 30 + 1 / 20 + 1 / 7:
                _, met = await c.human_login(who, "typo")
            resp, m = await c.human_login(who)
            out.append((met or m, resp.status))
        return out

    result: list[tuple[bool, int]] = run(scenario())
    return result


def test_a_mobile_carriers_48_is_not_taken_for_a_stuffer() -> None:
    """The other side of A1: a carrier pool's /48 (its people on ever new /64s, with
    typos, old e-mail addresses and forgotten passwords that are never resolved from
    there) is neither challenged nor refused."""
    sessions = mobile_48()
    assert {status for _, status in sessions} == {200}
    assert sum(met for met, _ in sessions) == 0


# -- scraping: a live page polling once a minute ----------------------------------------


def polling_crowd(interval: float, seed: int = 41) -> Shop:
    """After a calm window (2.5 new visitors a minute, 10% bouncing), a link to a live
    page: 10 new visitors a minute for an hour, each page polling one product's live
    stock every `interval` s (+-10%) for 3 to 6 minutes, a third then opening another
    page (the README's live-page crowd, at a dashboard's usual refresh). The shop."""
    shop = Shop(seed=seed)
    rng = random.Random(seed + 100)
    events: list = honest_visits(shop, rng, 2.5, 0.0, CALM, bounce=0.1)
    t = CALM
    while True:
        t += rng.expovariate(10.0 / 60)
        if t >= CALM + 3600.0:
            break
        v = shop.visitor()
        at, until = t, t + rng.uniform(180.0, 360.0)
        while at < until:
            events.append((at, "person", v, "/products/7"))
            at += interval * rng.uniform(0.9, 1.1)
        if rng.random() < 0.33:
            events.append((at, "person", v, f"/products/{rng.randint(1, PRODUCTS)}"))
    replay(shop, rng, events)
    return shop


def test_control_a_crowd_polling_every_20_s_is_not_challenged() -> None:
    shop = polling_crowd(20.0)
    assert shop.refused_people() == []
    assert sum(v.challenged for v in shop.people) == 0


def test_a_crowd_polling_every_60_s_is_not_challenged() -> None:
    """Finding S5, fixed: a page polling every 60 s was one-shot (3 more reads took 180 s,
    past `settle`); a read of the same path again 30 s or more after the first is polling."""
    shop = polling_crowd(60.0)
    assert sum(v.challenged for v in shop.people) == 0


# -- account takeover: the population share diluted by the stuffer's own accounts -------


def diluted_stuffing(
    own: int, per_half: int, halves: int, seed: int = 51, challenge: bool = False
) -> tuple[list[int], list[int]]:
    """Stuffing from a residential proxy pool (a fresh address and browser build on every
    attempt, so no actor is seen twice), `per_half` guesses every 15 min (the population
    alarm's half window), beside honest people (one login a minute, 10% failing once
    before they get it right). With `own` > 0 the stuffer also logs in to `own` accounts
    of its own (free sign-ups; here the shop's users 0..own-1) in the first minute of
    every 15 min, each from a fresh proxy address. The stuffer's guess statuses, the
    people's statuses."""
    clock = FakeClock(6_000_000.0)
    config = {"detection": {"challenge_path": "/challenge"}} if challenge else {}
    guard = Guard(config, clock=clock)
    driver = AsgiDriver(build_app(guard))
    rng = random.Random(seed)

    async def scenario() -> tuple[list[int], list[int]]:
        guesses: list[int] = []
        people: list[int] = []
        events: list[tuple[float, str, int]] = []
        for h in range(halves):
            base = h * 900.0
            events += [(base + rng.uniform(0, 60), "own", k) for k in range(own)]
            events += [(base + rng.uniform(60, 900), "guess", 0) for _ in range(per_half)]
            events += [(base + rng.uniform(0, 900), "person", 0) for _ in range(15)]
        victim = 1000
        for at, kind, k in sorted(events):
            clock.advance_to(6_000_000.0 + at)
            c = Client(
                driver,
                f"{BROWSERS[rng.randrange(4)]} b/{rng.randrange(99999)}",
                public_ip(rng),
                jar=None,
            )
            if kind == "own":
                await c.login(k)  # (a bot: refused if challenged)
            elif kind == "guess":
                resp = await c.send(
                    "POST", "/login", {"username": username(victim), "password": "x"}
                )
                victim += 1
                guesses.append(403 if is_challenge(resp) else resp.status)
            else:
                c.jar = {}
                who = rng.randrange(150, 300)
                if rng.random() < 0.1:
                    await c.login(who, "typo")
                resp, _ = await c.human_login(who)
                people.append(resp.status)
        return guesses, people

    result: tuple[list[int], list[int]] = run(scenario())
    return result


def test_control_undiluted_residential_stuffing_raises_the_alarm() -> None:
    guesses, people = diluted_stuffing(0, 60, 8)
    assert 403 in guesses and guesses.count(401) <= 60
    assert set(people) == {200}


@pytest.mark.xfail(
    strict=True,
    reason="finding A2 (bypass), in an app without a challenge flow: a stuffer logging in "
    "to 100 accounts of its own every 15 min from proxy addresses (a success counts once "
    "per account per half window) keeps the population failure share under 0.4: 480 "
    "guesses in 2 h (60 every 15 min, 5,760 a day) from rotating addresses, none "
    "challenged; without them caught at the 20th. (The unresolved-usernames alarm, which "
    "catches it, runs only where people can pass a challenge.)",
)
def test_stuffing_diluted_by_own_accounts_raises_the_alarm() -> None:
    guesses, _people = diluted_stuffing(100, 60, 8)
    assert guesses.count(401) <= 120


def test_stuffing_diluted_by_own_accounts_raises_the_unresolved_alarm() -> None:
    """Finding A2 where people can pass a challenge: the same stuffer (100 accounts of
    its own logged in every 15 min, 60 guesses every 15 min) is challenged from the
    second half window on (60 of 480 guesses through, then none; before: 480), since
    each own account adds one username tried and the guesses stay unresolved; the people
    all get in."""
    guesses, people = diluted_stuffing(100, 60, 8, challenge=True)
    assert guesses.count(401) <= 70 and set(people) == {200}


# -- account takeover: one subscriber behind a carrier's NAT address --------------------


def carrier_nat(
    poison_every: float | None,
    hours: float = 3.0,
    seed: int = 61,
    bot: list[int] | None = None,
    own_accounts: int = 0,
) -> list[int]:
    """A carrier's NAT address (one public IPv4 many subscribers share): a subscriber
    logs in from it every 3 minutes on a new device (no device cookie yet; a person
    solves a challenge if asked), one in ten first mistyping the password. With
    `poison_every`, one subscriber there (or a residential-proxy SDK on one phone) tries
    a made-up username every `poison_every` seconds (first logging in to `own_accounts`
    accounts of its own there, to look like the address's people); its statuses go to
    `bot`. The people's final statuses."""
    clock = FakeClock(6_000_000.0)
    guard = Guard({"detection": {"challenge_path": "/challenge"}}, clock=clock)
    driver = AsgiDriver(build_app(guard))
    rng = random.Random(seed)
    nat = "37.120.5.9"

    async def scenario() -> list[int]:
        events = [(t * 180.0 + rng.uniform(0, 170), "person") for t in range(int(hours * 20))]
        if poison_every:
            events += [
                (t * poison_every, "poison") for t in range(int(hours * 3600 / poison_every))
            ]
        people: list[int] = []
        fake = 0
        for at, kind in sorted(events):
            clock.advance_to(6_000_000.0 + at)
            c = Client(driver, BROWSERS[rng.randrange(4)], nat)
            if kind == "poison":
                c.jar = None
                if fake == 0:
                    for k in range(own_accounts):
                        await c.human_login(299 - k)
                resp = await c.send(
                    "POST", "/login", {"username": f"nobody{fake}@x.org", "password": "x"}
                )
                if bot is not None:
                    bot.append(resp.status)
                fake += 1
                continue
            who = rng.randrange(300)
            if rng.random() < 0.1:
                await c.human_login(who, "typo")
            resp, _ = await c.human_login(who)
            people.append(resp.status)
        return people

    result: list[int] = run(scenario())
    return result


def test_control_a_carrier_nat_address_logs_its_people_in() -> None:
    assert set(carrier_nat(None)) == {200}


def test_one_subscriber_cannot_get_a_carrier_nat_address_refused() -> None:
    """Finding H1 (was: the address banned at the login again and again, the other
    subscribers on a new device refused). An address that people log in from (two
    accounts or more in the window) is challenged at the login, never banned: the
    people pass; the one trying made-up usernames is held about as much as the ban
    held it (23 of its 90 guesses through in 3 h with the ban, 47 of 60 people
    refused; now 16 to 27 over three seeds, nobody refused). Its guesses go through
    between gates: each gate lets its evidence age, and people's logins dilute its
    failed share (an address flagged again within the window is judged at half the
    share; without that, 40)."""
    bot: list[int] = []
    people = carrier_nat(120.0, bot=bot)
    assert people.count(200) == len(people)
    assert len(bot) == 90 and bot.count(401) <= 30
    assert bot.index(403) <= 11  # challenged from its 9th guess (a sketch collision: 10th)


def test_a_stuffer_logging_in_to_its_own_accounts_is_challenged_not_let_through() -> None:
    """The other side of H1: a stuffer that first logs in to two accounts of its own from
    its address (so that the address looks shared) is challenged instead of banned,
    and gets no more guesses through than the ban let through: a bot does not pass the
    challenge."""
    bot: list[int] = []
    carrier_nat(120.0, bot=bot, own_accounts=2)
    assert bot.count(401) <= 30 and bot.count(200) == 0
    assert bot.index(403) <= 11


# -- account takeover: a campus /24 poisoned once, challenged all day --------------------


def campus_day(poison: bool, seed: int = 71) -> list[tuple[float, bool, int]]:
    """A campus NAT pool (8 addresses of one /24). At 09:00 one student (or a phone of
    theirs running a proxy SDK) tries 30 made-up usernames in 10 minutes, rotating the
    pool's addresses; then for 12 hours a person logs in every 4 minutes from the pool
    on a new device (solving a challenge if asked), one in six first mistyping the
    password. (hours after the poisoning, challenged, final status) per person."""
    clock = FakeClock(6_000_000.0)
    guard = Guard({"detection": {"challenge_path": "/challenge"}}, clock=clock)
    driver = AsgiDriver(build_app(guard))
    rng = random.Random(seed)
    pool = [f"131.107.3.{10 + k}" for k in range(8)]

    async def scenario() -> list[tuple[float, bool, int]]:
        if poison:
            for k in range(30):
                clock.advance(20.0)
                bot = Client(driver, BROWSERS[0], pool[k % 8], jar=None)
                await bot.send("POST", "/login", {"username": f"ghost{k}@x.org", "password": "x"})
        start = clock()
        out = []
        for _ in range(180):
            clock.advance(rng.uniform(200, 280))
            c = Client(driver, BROWSERS[rng.randrange(4)], rng.choice(pool))
            who = rng.randrange(300)
            met = False
            if rng.random() < 1 / 6:
                _, met = await c.human_login(who, "typo")
            resp, met2 = await c.human_login(who)
            out.append(((clock() - start) / 3600.0, met or met2, resp.status))
        return out

    result: list[tuple[float, bool, int]] = run(scenario())
    return result


def test_control_an_unpoisoned_campus_is_not_challenged() -> None:
    day = campus_day(False)
    assert not any(met for _, met, _ in day) and {s for *_, s in day} == {200}


def test_a_campus_poisoned_once_is_not_challenged_hours_later() -> None:
    """Finding H2 (was: 30 made-up usernames from a campus pool at 09:00 kept the /24
    flagged until the people's own logins outnumbered them over the 24 h network window:
    50 of 180 people challenged, the last 3.5 h later; in an app without a challenge flow,
    refused). A network is flagged on its day only while it still has unresolved
    usernames within the last hour: 20 challenged, the last within 1.5 h, all passed."""
    day = campus_day(True)
    assert not any(met for h, met, _ in day if h > 2.0)
    assert {status for *_, status in day} == {200}


# -- scraping: a crawl fast enough that nothing it does is ever judged ------------------


def fast_crawl(per_second: float, minutes: float, seed: int = 81) -> tuple[Shop, list[int]]:
    """A rotating-address scraper (one product page per fresh address and browser) at
    `per_second` pages a second for `minutes`, beside honest visitors (one every ~30 s,
    reading a page and the listing). The statuses of its reads in the last half."""
    shop = Shop(seed=seed)
    rng = random.Random(seed + 1)
    count = int(per_second * 60 * minutes)

    async def scenario() -> list[int]:
        out = []
        for n, (wait, ip, headers) in enumerate(scraper_requests(rng, 1.0 / per_second, count)):
            shop.clock.advance(wait)
            bot = Visitor(shop.driver, headers, ip, jar=None, solves=False)
            resp = await bot.get(f"/products/{rng.randint(1, PRODUCTS)}")
            out.append(403 if is_challenge(resp) else resp.status)
            if n % int(30 * per_second) == 0:  # (no clock of its own: the pace holds)
                v = shop.visitor()
                await v.get(f"/products/{rng.randint(1, PRODUCTS)}")
                await v.get(f"/products?page={rng.randint(1, 15)}")
        return out

    statuses = run(scenario())
    return shop, statuses[len(statuses) // 2 :]


def test_control_a_crawl_at_20_pages_a_second_is_held() -> None:
    shop, statuses = fast_crawl(20.0, 6)
    assert statuses.count(200) == 0
    assert shop.refused_people() == []


def test_a_crawl_at_40_pages_a_second_is_held() -> None:
    """Finding S6, fixed: a crawl faster than 4096 new readers per `settle` pushed its
    addresses out of the pending queue unjudged; a full queue now judges its oldest."""
    _shop, statuses = fast_crawl(40.0, 6)
    assert statuses.count(200) <= 0.05 * len(statuses)


# -- an undeclared proxy: one user behind it gets everyone challenged at login ----------


def behind_proxy(
    poison: int, seed: int = 91, challenge: bool = True, every: float = 0.0
) -> list[bool]:
    """A company's egress proxy (or a mobile app's backend) that adds X-Forwarded-For and
    that nobody declared in `client_ip.trusted_proxies`: its people log in through it, one
    every 3 minutes, each on a new device (a person solves a challenge if asked), so after
    the first 8 it is taken for an undeclared proxy. After an hour one user behind it tries
    `poison` made-up usernames in 5 minutes (and, with `every`, one more every `every`
    seconds). Whether each later person met a challenge. Without `challenge` the app has
    no challenge flow (no `challenge_path`; a person asked cannot pass one): whether each
    later person was refused."""
    clock = FakeClock(6_000_000.0)
    config = {"detection": {"challenge_path": "/challenge"}} if challenge else {}
    guard = Guard(config, clock=clock)
    driver = AsgiDriver(build_app(guard))
    proxy = "52.14.77.9"

    async def post(path: str, body: dict | None, inside: str, jar: dict[str, str] | None):
        headers = [("user-agent", BROWSERS[0]), ("x-forwarded-for", inside)]
        if body is not None:
            headers.append(("content-type", "application/json"))
        if jar:
            headers.append(("cookie", "; ".join(f"{k}={v}" for k, v in jar.items())))
        raw = json.dumps(body).encode() if body is not None else b""
        resp = await driver.send(Request("POST", path, proxy, tuple(headers), raw))
        if jar is not None:
            for name, value in resp.headers:
                if name == b"set-cookie":
                    k, _, rest = value.decode("latin-1").partition("=")
                    jar[k] = rest.split(";", 1)[0]
        return resp

    async def person(k: int) -> bool:
        jar: dict[str, str] = {}
        inside = f"10.0.{k // 200}.{k % 200 + 1}"
        body = {"username": username(k), "password": password(k)}
        resp = await post("/login", body, inside, jar)
        if not challenge:
            return resp.status != 200
        if is_challenge(resp):
            await post("/challenge", None, inside, jar)
            resp = await post("/login", body, inside, jar)
            assert resp.status == 200
            return True
        assert resp.status == 200
        return False

    async def scenario() -> list[bool]:
        for k in range(20):
            clock.advance(180.0)
            await person(k)
        for j in range(poison):
            clock.advance(300.0 / poison)
            ghost = {"username": f"ghost{j}@x.org", "password": "x"}
            await post("/login", ghost, "10.9.9.9", None)
        met = []
        j = poison
        for k in range(20, 60):
            clock.advance(180.0)
            if every and k % max(1, round(every / 180.0)) == 0:
                j += 1
                ghost = {"username": f"ghost{j}@x.org", "password": "x"}
                await post("/login", ghost, "10.9.9.9", None)
            met.append(await person(k))
        return met

    result: list[bool] = run(scenario())
    return result


def test_control_people_behind_an_undeclared_proxy_are_not_challenged() -> None:
    assert not any(behind_proxy(0))


def test_one_user_behind_an_undeclared_proxy_gets_people_challenged_for_a_while_only() -> None:
    """The proxy's login challenge stands while its gate lasts (a quarter of the window),
    whoever passes it: each person behind it passes once (none refused: `person` asserts
    the login after the pass), and one person's pass no longer lets the stuffer among
    them resume. Before, the first pass lifted it for everyone (1 person challenged, and
    the stuffer's next guess let through); now the 4 or 5 people of its 15 minutes."""
    met = behind_proxy(25)
    assert 1 <= sum(met) <= 6
    assert not any(met[10:])  # over once the gate ends


def test_control_an_undeclared_load_balancer_without_a_challenge_flow_logs_people_in() -> None:
    assert not any(behind_proxy(0, challenge=False))


@pytest.mark.xfail(
    strict=True,
    reason="finding H3 (honest refused): behind an undeclared proxy or load balancer (every "
    "client shares its address) in an app without a challenge flow (the default), anyone "
    "on the internet who tries 25 made-up usernames, then one every 15 min, gets 14 of 40 "
    "people's new-device logins refused over 2 h (the account-takeover challenge nobody "
    "can pass; before this release 34 of 40, through the network actor)",
)
def test_an_undeclared_load_balancer_s_people_are_not_refused_for_one_client() -> None:
    assert not any(behind_proxy(25, challenge=False, every=900.0))


# -- account takeover: a busy shared /24 saturates its sketches -------------------------


def open_login_app(guard: Guard) -> FastAPI:
    """A login whose accounts are every `member<n>` with the password 'ok' (a big site)."""
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.post("/login")
    @guard.login(username=lambda body: body.username)
    async def login(body: Credentials) -> dict[str, str]:
        if not body.username.startswith("member") or body.password != "ok":
            raise HTTPException(401)
        return {"token": "t"}

    return app


def busy_network(people: int, guesses: int, seed: int = 97) -> list[int]:
    """A /24 many people share (a big carrier's NAT pool, a privacy relay's egress): for
    two days `people` distinct members a day log in from its addresses, and on the second
    day a stuffer there (rotating the pool's 254 addresses, under 8 usernames per address
    an hour, a fresh browser build each time) tries `guesses` made-up usernames,
    evenly spread. The stuffer's statuses."""
    clock = FakeClock(6_000_000.0)
    guard = Guard(clock=clock)
    driver = AsgiDriver(open_login_app(guard))
    rng = random.Random(seed)
    day = 86_400.0
    events = [(rng.uniform(0, 2 * day), "person", n) for n in range(2 * people)]
    events += [(day + day * (g + 0.5) / guesses, "guess", g) for g in range(guesses)]

    async def scenario() -> list[int]:
        out: list[int] = []
        for at, kind, n in sorted(events):
            clock.advance_to(6_000_000.0 + at)
            ip = f"92.40.17.{rng.randrange(1, 255)}"
            ua = BROWSERS[rng.randrange(4)]
            c = Client(driver, ua if kind == "person" else f"{ua} b/{n}", ip, jar=None)
            if kind == "person":
                body = {"username": f"member{n}", "password": "ok"}
                await c.send("POST", "/login", body)  # (challenged once the /24 is)
            else:
                body = {"username": f"victim{n}@mail.example", "password": "x"}
                out.append((await c.send("POST", "/login", body)).status)
        return out

    result: list[int] = run(scenario())
    return result


def test_held_stuffing_in_a_busy_24_is_challenged_after_about_its_people_s_logins() -> None:
    """Held (as documented: people logging in dilute, one each): beside 2,500 people a day
    the stuffer is challenged at about its 2,000th guess of the day (beside 500: ~240;
    4,000: ~3,000); the distinct sketches' saturation (1,024 slots) does not free it.
    The guess at which it is challenged depends on the sketches' per-process salt: 1,442 to
    3,005 in 36 runs beside 2,500 people (8 of them past 2,500), hence the bound."""
    statuses = busy_network(2500, 6000)
    assert 403 in statuses and statuses.index(403) <= 3500
    assert statuses.count(401) <= 3500


# -- held: an office whose people type their username in another case, with spaces -----


def test_held_an_office_typing_usernames_in_another_case_is_not_held_back() -> None:
    """12 people in an hour behind one office NAT address, each first sending its username
    capitalised with spaces around (a phone's keyboard, a paste) and a wrong password,
    a password manager retrying it twice, then logging in: the failures are resolved by
    the same (stripped, case-folded) username, so nobody is held back."""
    clock = FakeClock(6_000_000.0)
    guard = Guard({"detection": {"challenge_path": "/challenge"}}, clock=clock)
    driver = AsgiDriver(build_app(guard))
    rng = random.Random(101)

    async def scenario() -> list[tuple[int, bool]]:
        out = []
        for k in range(12):
            clock.advance(300.0)
            c = Client(driver, BROWSERS[k % 4], "198.51.100.77")
            name = f"  {username(k).upper()} "
            for _ in range(3):
                clock.advance(rng.uniform(1, 4))
                r = await c.send("POST", "/login", {"username": name, "password": "old"})
                assert r.status == 401
            resp, met = await c.human_login(k)
            out.append((resp.status, met))
        return out

    assert run(scenario()) == [(200, False)] * 12
