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


def test_a_key_used_from_everywhere_while_its_owner_is_idle_is_banned_for_the_thief_only() -> None:
    """The thief is the only client on the key for its first half hour (one client shape,
    a new network on every call): banned at `lone` times the bar. The owner, who had not
    called at all before the theft, comes back with its own software from its own server
    and is never refused; the thief stays refused, also from a network the owner used."""
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    driver = AsgiDriver(key_app(guard))
    rng = random.Random(4)

    async def call(key: str, ip: str, ua: str) -> int:
        req = Request("GET", "/v1/reports", ip, (("user-agent", ua), ("x-api-key", key)))
        return (await driver.send(req)).status

    async def scenario() -> tuple[list[int], list[int], list[int]]:
        owner: list[int] = []
        thief: list[int] = []
        for minute in range(90):
            clock.advance(60)
            for n in range(35):  # the population: integrations on their own servers
                assert await call(f"key-{n}", f"203.0.{n}.10", "acme-sync/2.1") == 200
            for _ in range(3):
                clock.advance(rng.uniform(1, 15))
                thief.append(await call("leaked", public_ip(rng), "python-requests/2.32.3"))
            if minute >= 40 and minute % 5 == 0:  # the owner's batch job
                for _ in range(10):
                    owner.append(await call("leaked", "198.51.100.7", "globex-etl/1.0 Go/1.22"))
        at_owners = [await call("leaked", "198.51.100.8", "python-requests/2.32.3")]
        return owner, thief, at_owners

    owner, thief, at_owners = run(scenario())
    assert set(owner) == {200}, owner
    assert 403 in thief and thief.index(403) <= 30, thief
    first = thief.index(403)
    assert thief[first:].count(200) <= 0.1 * len(thief[first:]), thief
    assert at_owners == [403]


def test_a_key_with_headers_randomised_is_banned_everywhere_but_its_owners_home() -> None:
    """Headers randomised on every call leave nothing to scope the ban to: the key is
    banned, except at its home (the /24 and client shape its owner used a quarter window
    apart); the owner's server goes on, the same owner from a new network is refused."""
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    driver = AsgiDriver(key_app(guard))
    rng = random.Random(5)
    owner_ua = "globex-etl/1.0 Go/1.22"

    async def call(key: str, ip: str, ua: str) -> int:
        req = Request("GET", "/v1/reports", ip, (("user-agent", ua), ("x-api-key", key)))
        return (await driver.send(req)).status

    async def scenario() -> tuple[list[int], list[int], int]:
        owner: list[int] = []
        thief: list[int] = []
        for minute in range(120):
            clock.advance(60)
            for n in range(35):
                assert await call(f"key-{n}", f"203.0.{n}.10", "acme-sync/2.1") == 200
            if minute % 10 == 0:
                owner.append(await call("leaked", "198.51.100.7", owner_ua))
            if minute >= 40:
                for _ in range(3):
                    clock.advance(rng.uniform(1, 15))
                    ua = f"{rng.choice(BROWSERS)} r/{rng.randrange(10_000)}"
                    thief.append(await call("leaked", public_ip(rng), ua))
        elsewhere = await call("leaked", "192.0.2.99", owner_ua)
        return owner, thief, elsewhere

    owner, thief, elsewhere = run(scenario())
    assert set(owner) == {200}, owner
    assert 403 in thief and thief.index(403) <= 30, thief
    first = thief.index(403)
    assert thief[first:].count(200) <= 0.1 * len(thief[first:]), thief
    assert elsewhere == 403


def test_a_phone_on_a_carrier_pool_spanning_many_provider_networks_is_not_flagged() -> None:
    """A big carrier's NAT pool spans dozens of /16s (all 64 of a /10), plus the home
    Wi-Fi: one phone, one client shape, a new /16 on most connections for two hours. Its
    networks pass the one-shape bar, but they sit in two /8 regions: never flagged."""
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    driver = AsgiDriver(key_app(guard))
    rng = random.Random(6)

    def pool_ip() -> str:
        if rng.random() < 0.9:
            return f"100.{rng.randrange(64, 128)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        return "81.2.69.142"  # home

    async def scenario() -> set[int]:
        statuses = set()
        for _ in range(700):
            clock.advance(rng.uniform(2, 18))
            headers = (("user-agent", BROWSERS[3]), ("authorization", "Bearer bob"))
            statuses.add((await driver.send(Request("GET", "/v1/me", pool_ip(), headers))).status)
        return statuses

    assert run(scenario()) == {200}


def test_a_thief_with_the_owners_browser_headers_leaves_the_owner_at_home() -> None:
    """A token stolen with the owner's User-Agent (an infostealer): the ban on that client
    shape would hold the owner too, but not at its home (its first place, used for an
    hour); the ban does not grow while the thief tries on through it."""
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    driver = AsgiDriver(key_app(guard))
    rng = random.Random(8)
    ua = BROWSERS[0]

    async def call(ip: str) -> tuple[int, float]:
        req = Request("GET", "/v1/me", ip, (("user-agent", ua), ("authorization", "Bearer eve")))
        resp = await driver.send(req)
        retry = next((float(v) for k, v in resp.headers if k == b"retry-after"), 0.0)
        return resp.status, retry

    async def scenario() -> tuple[list[int], list[int], list[float]]:
        owner: list[int] = []
        thief: list[int] = []
        retries: list[float] = []
        for minute in range(120):
            clock.advance(60)
            owner.append((await call("198.51.100.20"))[0])
            if minute >= 60:
                for _ in range(3):
                    clock.advance(rng.uniform(1, 10))
                    status, retry = await call(public_ip(rng))
                    thief.append(status)
                    if status == 403:
                        retries.append(retry)
        return owner, thief, retries

    owner, thief, retries = run(scenario())
    assert set(owner) == {200}, owner
    first = thief.index(403)
    assert thief[first:].count(200) <= 2, thief
    # while the first ban runs, refused tries do not lengthen it (it doubles only when
    # the thief is caught again after it ended)
    during = thief[first:].index(200) if 200 in thief[first:] else len(thief) - first
    assert all(r <= 3600 for r in retries[:during]), retries[:during]
    assert retries[:during] == sorted(retries[:during], reverse=True)


def test_guard_reset_leaves_the_engine_on_its_new_rotation_detector() -> None:
    """Guard.reset() builds the detectors afresh: the homes the engine excuses bans with
    must be those of the detector that now records them."""
    guard = Guard(clock=FakeClock(START))
    guard.reset()
    engine = guard.engine
    assert any(d is engine._rotation for d in engine.detectors)  # type: ignore[attr-defined]
