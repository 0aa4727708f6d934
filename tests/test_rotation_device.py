"""A stolen session used with the owner's copied headers (an infostealer took the bearer
token and the app's headers, not the cookie jar): the rotation ban falls on the token as
that client shape uses it, which is the owner's shape too. A held-out evaluation refused
the owner 63 times (its phone on the carrier's pool, a new /24 on every request). The
owner's device cookie, set by its login and seen at its first places, now tells it from
the thief anywhere; a thief with a forged entry, or with its own account's cookie, is
held as before."""

from __future__ import annotations

import random
import secrets

import pytest
import redis.asyncio

from apiguard import Guard
from apiguard.simulate.clock import FakeClock
from apiguard.simulate.driver import AsgiDriver
from apiguard.store.redis import RedisStore
from detection_support import BROWSERS, Client, build_app, public_ip, run

START = 4_000_000.0
HOME = "81.2.69.142"


@pytest.fixture(params=["memory", "redis"])
def guard_on(request: pytest.FixtureRequest) -> tuple[Guard, FakeClock]:
    clock = FakeClock(START)
    if request.param == "memory":
        return Guard({"secret": "d" * 32}, clock=clock), clock
    url = request.getfixturevalue("redis_url")
    store = RedisStore(redis.asyncio.Redis.from_url(url), server_time=False, timeout=5.0)
    return Guard({"secret": "d" * 32}, clock=clock, store=store), clock


def _carrier(rng: random.Random) -> str:
    """A carrier's NAT pool over four /16s of one /8: a new /24 on every connection."""
    return f"100.{rng.randrange(64, 68)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def _scenario(
    guard: Guard, clock: FakeClock, thief_jar: dict[str, str], seed: int
) -> tuple[list[int], list[int]]:
    """The owner's phone logs in at home and reads /me every 3 minutes from its
    carrier's pool (home every half hour); from minute 30 a thief with its token and its
    exact headers (a cookie header too: `thief_jar`) reads /me three times a minute from
    residential proxies."""
    driver = AsgiDriver(build_app(guard))
    rng = random.Random(seed)
    ua = BROWSERS[3]

    async def go() -> tuple[list[int], list[int]]:
        phone = Client(driver, ua, HOME)
        assert (await phone.login(5)).status == 200
        assert phone.jar and "apiguard_device" in phone.jar
        thief = Client(driver, ua, HOME, jar=thief_jar, token=phone.token)
        owner: list[int] = []
        stolen: list[int] = []
        for minute in range(150):
            clock.advance(60)
            if minute % 3 == 0:
                ip = HOME if minute % 30 == 0 else _carrier(rng)
                owner.append((await phone.send("GET", "/me", ip=ip)).status)
            if minute >= 30:
                for _ in range(3):
                    clock.advance(rng.uniform(1, 15))
                    ip = public_ip(rng)
                    stolen.append((await thief.send("GET", "/me", ip=ip)).status)
        return owner, stolen

    result: tuple[list[int], list[int]] = run(go())
    return result


def _held(stolen: list[int]) -> None:
    assert 403 in stolen and stolen.index(403) <= 40, stolen
    first = stolen.index(403)
    assert stolen[first:].count(200) <= 0.1 * len(stolen[first:]), stolen


def test_the_owner_with_its_device_cookie_goes_on_and_the_thief_is_held(
    guard_on: tuple[Guard, FakeClock],
) -> None:
    guard, clock = guard_on
    owner, stolen = _scenario(guard, clock, {"theme": "dark"}, seed=31)
    _held(stolen)
    assert set(owner) == {200}, owner


def test_a_thief_with_a_forged_device_entry_is_held() -> None:
    clock = FakeClock(START)
    guard = Guard({"secret": "d" * 32}, clock=clock)
    owner, stolen = _scenario(guard, clock, {"apiguard_device": secrets.token_hex(10)}, seed=32)
    _held(stolen)
    assert set(owner) == {200}, owner


def test_a_thief_with_its_own_accounts_device_cookie_is_held() -> None:
    """The thief logged in to its own account on the same client first: a genuine device
    cookie, of another account."""
    clock = FakeClock(START)
    guard = Guard({"secret": "d" * 32}, clock=clock)
    own = Client(AsgiDriver(build_app(guard)), BROWSERS[3], "203.0.113.9")
    assert run(own.login(77)).status == 200
    assert own.jar is not None
    owner, stolen = _scenario(guard, clock, dict(own.jar), seed=33)
    _held(stolen)
    assert set(owner) == {200}, owner
