"""A detector's challenge on a person whose client keeps no cookie (a phone app) and whose
challenge request names nobody (the app's challenge screen sends no token): a held-out
evaluation's honest newcomers on such a phone were asked again at every retry during a
BOLA harvest over fresh accounts (7-12 requests of 4-5 newcomers per run), because
only the pass cookie they drop could answer the challenge.

Now the challenge their client shape solved in their region since the challenge began
answers it, once, when it retries from the address it solved from
(`CookielessPasses.take_here`: a script of the app's shape polling from the carrier's
range took the people's solves otherwise, `tests/test_review_s21.py`). Both sides: the
harvest is held as before, a script in another shape gets nothing from the person's
solve, and a pass solved before the challenge began answers nothing."""

from __future__ import annotations

import random

from apiguard import Guard
from apiguard.simulate.clock import FakeClock
from apiguard.simulate.driver import AsgiDriver
from detection_support import BROWSERS, USERS, Client, build_app, is_challenge, public_ip
from detection_support import run_quietly as run

START = 2_000_000.0
APP_UA = "RideShare/5.2.0 (Android 14; Pixel 7) okhttp/4.12.0"


def carrier_ip(rng: random.Random) -> str:
    """An address of a carrier's CGNAT pool (one /16)."""
    return f"37.140.{rng.randrange(0, 40)}.{rng.randrange(10, 250)}"


async def anonymous_solve(client: Client) -> int:
    """The app's challenge screen: no token sent (it names nobody); the answer's pass
    cookie is dropped by a client without a jar."""
    token, client.token = client.token, None
    try:
        return (await client.send("POST", "/challenge")).status
    finally:
        client.token = token


def test_a_cookieless_newcomer_answers_a_harvest_challenge_a_script_does_not() -> None:
    clock = FakeClock(START)
    guard = Guard({"secret": "cookieless-challenges"}, clock=clock)
    driver = AsgiDriver(build_app(guard))
    rng = random.Random(5)

    async def scenario() -> tuple[list[int], list[str], list[str]]:
        leaked: list[int] = []
        for n in range(8):  # a harvest over fresh accounts: the young-account alarm
            bot = Client(driver, rng.choice(BROWSERS), public_ip(rng), jar=None)
            clock.advance(rng.uniform(30, 90))
            assert (await bot.signup(f"bot{n}")).status == 201
            got = 0
            for _ in range(12):
                clock.advance(rng.uniform(2, 8))
                resp = await bot.send("GET", f"/orders/{rng.randrange(1, USERS * 12)}")
                if resp.status != 200:
                    break
                got += 1
            leaked.append(got)
        # a person on the phone app: no jar, a new carrier address each request
        phone = Client(driver, APP_UA, carrier_ip(rng), jar=None)
        assert (await phone.signup("newcomer")).status == 201
        met: list[str] = []
        resp = await phone.send("GET", "/orders/5", ip=carrier_ip(rng))
        met.append("challenge" if is_challenge(resp) else str(resp.status))
        clock.advance(8.0)
        phone.ip = carrier_ip(rng)  # (the address it solves from, and retries from)
        assert await anonymous_solve(phone) == 200
        clock.advance(2.0)
        for _ in range(3):
            resp = await phone.send("GET", "/orders/5")
            met.append("challenge" if is_challenge(resp) else str(resp.status))
            clock.advance(5.0)
        # a script in the phones' region but another shape, right after a solve: nothing
        other = Client(driver, APP_UA, carrier_ip(rng), jar=None)
        assert (await other.signup("other-phone")).status == 201
        script = Client(driver, BROWSERS[0], carrier_ip(rng), jar=None)
        assert (await script.signup("script")).status == 201
        first = await script.send("GET", "/orders/7")
        resp = await other.send("GET", "/orders/6")
        assert is_challenge(resp)
        assert await anonymous_solve(other) == 200
        script_met = ["challenge" if is_challenge(first) else str(first.status)]
        resp = await script.send("GET", "/orders/7")
        script_met.append("challenge" if is_challenge(resp) else str(resp.status))
        return leaked, met, script_met

    leaked, met, script_met = run(scenario())
    assert 10 <= leaked[0] <= 12 and sum(leaked[1:]) == 0, leaked  # the harvest is held
    assert met == ["challenge", "200", "200", "200"], met
    assert script_met == ["challenge", "challenge"], script_met


def test_a_pass_answers_a_challenge_only_if_solved_since_and_from_the_same_address() -> None:
    """`CookielessPasses.take_here`: a pass solved before the challenge began, or from
    another address of the region, is left waiting (for a login, which any pass of the
    place may get past the alarm); one solved since, from the address, is taken once."""
    from types import SimpleNamespace
    from typing import Any

    from apiguard.detectors.known_clients import PASS_SECONDS, CookielessPasses

    guard = Guard({"secret": "cookieless-take-0123456789"})
    # (what a pass's place is made of: the region of the address, the client shape)
    here: Any = SimpleNamespace(
        engine=guard.engine, client_ip="37.140.3.4", ip_key="ip:a", fingerprint="f"
    )
    there: Any = SimpleNamespace(
        engine=guard.engine, client_ip="37.140.9.9", ip_key="ip:b", fingerprint="f"
    )
    passes = CookielessPasses()
    passes.passed(here, 1_000.0, "early")
    assert passes.take_here(here, 1_010.0, since=1_005.0) is None  # solved before
    passes.passed(there, 1_020.0, "elsewhere")
    assert passes.take_here(here, 1_025.0, since=1_005.0) is None  # another address
    passes.passed(here, 1_030.0, "mine")
    assert passes.take_here(here, 1_035.0, since=1_005.0) == "mine"
    assert passes.take_here(here, 1_036.0, since=1_005.0) is None  # one pass, one use
    assert passes.take(here, 1_037.0) == 1_000.0 + PASS_SECONDS  # still there for a login
    assert passes.take(there, 1_038.0) == 1_020.0 + PASS_SECONDS
    assert passes.take(here, 1_039.0) is None
