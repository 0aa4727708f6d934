"""Phone apps that keep no cookies, during a stuffing alarm (two held-out evaluations and
a Django trial refused them: neither a device cookie nor a pass cookie survives, so they
were asked again at every login while the alarm lasted).

Both sides: the stuffing is held as before (from rotating addresses with random headers,
and with the app's own headers copied), and no phone is refused: a phone that logged in
from its carrier's pool before is not asked (`detectors.known_clients`), and one asked
for the first time passes the challenge once (the pass its address and shape earned)."""

from __future__ import annotations

import random

import pytest

from apiguard import Guard
from apiguard.simulate.clock import FakeClock
from apiguard.simulate.driver import AsgiDriver
from detection_support import Client, build_app, is_challenge, public_ip
from detection_support import run_quietly as run
from test_detect_account_takeover import (
    START,
    Event,
    Tally,
    benign_population,
    leaked_list,
    play,
    rotating_bot,
)

APP_UA = "ShopApp/4.2.1 (Android 14; Pixel 7) okhttp/4.12.0"


def carrier_ip(rng: random.Random) -> str:
    """An address of a carrier's CGNAT pool (48 addresses over two /24s of one /16)."""
    return f"37.140.{rng.choice((8, 9))}.{rng.randrange(10, 34)}"


def phones(
    driver: AsgiDriver, rng: random.Random, tally: Tally, events: list[Event], users: range
) -> list[tuple[int, bool]]:
    """People on the shop's phone app (one client shape, no cookie jar, a new carrier
    address each request), each logging in 2-4 times over 4 hours. A person asked for a
    challenge solves it and retries. Returns (user, challenged) per login."""
    met: list[tuple[int, bool]] = []
    for user in users:
        for _ in range(rng.randint(2, 4)):
            at = START + rng.uniform(0, 4 * 3600)
            seed = rng.random()

            async def visit(user: int = user, seed: float = seed) -> None:
                ip = carrier_ip(random.Random(seed))
                phone = Client(driver, APP_UA, ip, jar=None)
                resp, asked = await phone.human_login(user)
                met.append((user, asked))
                tally.benign_logins += 1
                if resp.status != 200:
                    tally.benign_refused.append(f"phone {user} -> {resp.status} {resp.body!r}")

            events.append((at, len(events), visit))
    return met


def stuffing(
    driver: AsgiDriver, rng: random.Random, tally: Tally, events: list[Event], copied: bool
) -> None:
    """1,200 attempts over 3 hours from the second hour, one per address; `copied`: with
    the phone app's own headers (no cookies), else a random browser shape each."""
    for i, (user, pw) in enumerate(leaked_list(rng, 1200)):
        at = START + 3600 + i * 9.0 + rng.uniform(0, 9.0)

        async def attempt(user: str = user, pw: str = pw) -> None:
            bot = (
                Client(driver, APP_UA, public_ip(rng), jar=None)
                if copied
                else rotating_bot(driver, rng)
            )
            resp = await bot.send("POST", "/login", {"username": user, "password": pw})
            tally.attack_result(resp)

        events.append((at, len(events), attempt))


@pytest.mark.parametrize("copied", [False, True], ids=["random-headers", "app-headers"])
def test_phones_without_cookies_log_in_during_a_stuffing_that_is_held(copied: bool) -> None:
    rng = random.Random(19)
    clock = FakeClock(START)
    guard = Guard({"detection": {"challenge_path": "/challenge"}}, clock=clock)
    driver = AsgiDriver(build_app(guard))
    tally = Tally()
    events: list[Event] = []
    benign_population(driver, rng, tally, events, 4.0, range(0, 150), range(0, 50))
    met = phones(driver, rng, tally, events, range(150, 210))
    stuffing(driver, rng, tally, events, copied)
    run(play(clock, events))
    assert guard.engine.ato is not None
    assert guard.engine.ato.climate.attack_since is not None or tally.refused
    # the attack side: held as before
    assert tally.refused > 0, "the campaign was not caught"
    assert tally.before_first_refusal < 50, tally
    assert tally.after_first_refusal <= 0.10 * tally.attack, tally
    # the honest side: no phone refused; a phone that logged in before from its pool is
    # not asked again (each is asked at most once, the first time it comes during the
    # alarm)
    assert tally.benign_refused == []
    asked: dict[int, int] = {}
    for user, was in met:
        asked[user] = asked.get(user, 0) + was
    assert sum(asked.values()) > 0, "no phone came during the alarm: the test shows nothing"
    assert max(asked.values()) <= 1, asked


def test_a_phone_that_passed_once_is_let_past_the_alarm_without_a_pass_cookie() -> None:
    """One login, step by step: asked during the alarm, it solves the challenge (the pass
    cookie it is given is dropped), and its retry from another address of its carrier's
    region is let through, once; from the /16 it logged in from it is known after that,
    elsewhere it is asked again."""
    clock = FakeClock(START)
    guard = Guard({"detection": {"challenge_path": "/challenge"}}, clock=clock)
    driver = AsgiDriver(build_app(guard))
    ato = guard.engine.ato
    assert ato is not None
    rng = random.Random(5)

    def phone(ip: str) -> Client:
        return Client(driver, APP_UA, ip, jar=None)

    async def go() -> list[object]:
        # a stuffing raises the alarm
        for user, pw in leaked_list(rng, 300):
            clock.advance(3.0)
            bot = rotating_bot(driver, rng)
            await bot.send("POST", "/login", {"username": user, "password": pw})
        assert ato.climate.under_attack(clock())
        first = await phone("37.140.8.20").login(7)
        await phone("37.142.0.9").send("POST", "/challenge")
        retry = await phone("37.141.3.3").login(7)
        clock.advance(600.0)
        known = await phone("37.141.77.3").login(7)
        elsewhere = await phone("37.142.77.3").login(7)
        return [is_challenge(first), retry.status, known.status, is_challenge(elsewhere)]

    assert run(go()) == [True, 200, 200, True]


def test_a_stuffer_sharing_the_phones_region_and_shape_gets_one_try_per_solved_challenge() -> None:
    """Attack held: a stuffer in the carrier's region with the app's headers and no cookie
    takes the passes people solved there before their own retry does, one login each:
    never more tries than people solved challenges, and the people it raced solve
    another and get in."""
    clock = FakeClock(START)
    guard = Guard({"detection": {"challenge_path": "/challenge"}}, clock=clock)
    driver = AsgiDriver(build_app(guard))
    ato = guard.engine.ato
    assert ato is not None
    rng = random.Random(6)

    async def go() -> tuple[list[int], list[int], int]:
        for user, pw in leaked_list(rng, 300):
            clock.advance(3.0)
            await rotating_bot(driver, rng).send(
                "POST", "/login", {"username": user, "password": pw}
            )
        assert ato.climate.under_attack(clock())
        through: list[int] = []
        people: list[int] = []
        solved = 0
        for k in range(30):
            clock.advance(20.0)
            bot = Client(driver, APP_UA, f"37.140.9.{k + 1}", jar=None)
            if k % 3 == 0:  # a person there solves a challenge, the stuffer races it
                person = Client(driver, APP_UA, f"37.141.{k}.7", jar=None)
                await person.send("POST", "/challenge")
                solved += 1
            resp = await bot.send(
                "POST", "/login", {"username": f"x{k}@mail.example", "password": "hunter2"}
            )
            through.append(resp.status)
            if k % 3 == 0:
                resp, asked = await person.human_login(200 + k)
                solved += asked
                people.append(resp.status)
        return through, people, solved

    through, people, solved = run(go())
    assert 0 < through.count(401) <= 10, through
    assert set(people) == {200}
    assert solved == 20  # each raced person solved a second one


def test_the_known_clients_table_is_bounded_and_entries_expire() -> None:
    from types import SimpleNamespace

    from apiguard.detectors.known_clients import KnownClients

    engine = Guard().engine
    known = KnownClients(ttl=3600.0, size=5)

    def ctx(ip: str, shape: str = "app") -> object:
        return SimpleNamespace(engine=engine, client_ip=ip, fingerprint=shape)

    for user in range(8):
        known.logged_in(f"u{user}", ctx(f"37.140.8.{user + 1}"), START)  # type: ignore[arg-type]
    assert len(known) == 5
    here = ctx("37.140.200.7")  # the same /16
    assert known.knows("u7", here, START + 10)  # type: ignore[arg-type]
    assert not known.knows("u0", here, START + 10)  # pushed out by the bound
    assert not known.knows("u7", ctx("37.141.8.8"), START + 10)  # another /16
    assert not known.knows("u7", ctx("37.140.8.8", "browser"), START + 10)  # another shape
    assert not known.knows("u7", here, START + 3601)  # expired
    assert len(known) == 4
