"""Adversarial review (session 5) of three commits: the self-test counting apiguard's
refusals only (`steps.REFUSALS`, `Response.guard_refused`, `is_guard_refusal`), and
the account-takeover `shared_ip` challenge, its `_flagged` hysteresis and the narrowed
`Engine.challenge_passed`. A strict xfail is a confirmed finding (its reason gives the
figures, measured against 14bf735, the commit before); a plain test is a control proving
the scenario realistic, or an attack that held."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from apiguard import Guard
from apiguard.asgi import GuardMiddleware
from apiguard.decision import Action, Decision
from apiguard.detectors import account_takeover as ato_mod
from apiguard.responses import block_response
from apiguard.simulate import selftest as st
from apiguard.simulate.clock import FakeClock
from apiguard.simulate.driver import AsgiDriver, Request, Response, find_guard
from detection_support import BROWSERS, Client, build_app, is_challenge, public_ip, run, username

# -- account takeover: a stuffer making each proxy address look shared ------------------


def rotating_stuffer(own: int, solver: bool, ips: int = 3, hours: float = 1.0, seed: int = 3):
    """A credential stuffer on rotating residential proxies: on each address it first logs
    in to `own` accounts of its own (free sign-ups; the shop's users 0..own-1), drops that
    session, then guesses one victim every 15-45 s (jittered), a new browser build each
    time. Refused: with `solver` (a CAPTCHA-solving service) it solves the app's challenge
    on a fresh session and goes on if the next guess passes; else it moves to the next
    address. (guesses admitted to the password check, challenges solved, addresses used)"""
    clock = FakeClock(6_000_000.0)
    guard = Guard({"detection": {"challenge_path": "/challenge"}}, clock=clock)
    driver = AsgiDriver(build_app(guard))
    rng = random.Random(seed)

    async def go() -> tuple[int, int, int]:
        t, victim, admitted, solves, used = 0.0, 1000, 0, 0, 0
        end = hours * 3600
        for _ in range(ips):
            if t >= end:
                break
            used += 1
            c = Client(
                driver, f"{BROWSERS[rng.randrange(4)]} b/{rng.randrange(99999)}", public_ip(rng)
            )
            for k in range(own):
                t += rng.uniform(2, 10)
                clock.advance_to(6_000_000.0 + t)
                c.jar = {}
                assert (await c.login(k)).status == 200
            c.jar, c.token = {}, None
            while t < end:
                t += rng.uniform(15, 45)
                clock.advance_to(6_000_000.0 + t)
                c.ua = f"{BROWSERS[rng.randrange(4)]} b/{rng.randrange(99999)}"
                body = {"username": username(victim), "password": "x"}
                r = await c.send("POST", "/login", body)
                if r.status == 401:
                    admitted, victim = admitted + 1, victim + 1
                    continue
                if solver:
                    c.jar = {}
                    await c.send("POST", "/challenge")
                    solves += 1
                    t += rng.uniform(15, 45)
                    clock.advance_to(6_000_000.0 + t)
                    r = await c.send(
                        "POST", "/login", {"username": username(victim), "password": "x"}
                    )
                    if r.status == 401:
                        admitted, victim = admitted + 1, victim + 1
                        continue
                break  # next address
        return admitted, solves, used

    logging.disable(logging.WARNING)
    try:
        result: tuple[int, int, int] = run(go())
    finally:
        logging.disable(logging.NOTSET)
    return result


def test_control_a_stuffer_without_a_solver_gains_nothing_from_own_accounts() -> None:
    """Attack held: without a solver, the shared_ip challenge holds a bot exactly as the
    ban did (8 guesses per address either way; 14bf735: 81 and 81 over 10 addresses)."""
    plain, _, _ = rotating_stuffer(0, False)
    shared, _, _ = rotating_stuffer(2, False)
    assert 20 <= plain <= 27 and abs(plain - shared) <= 3  # 8 per address (a sketch
    # collision: 9), 3 addresses


def test_control_a_solver_no_longer_lifts_an_address_ban() -> None:
    """Attack held (the commit's fix): a solved CAPTCHA no longer lifts the ban on the
    solver's address (14bf735: 122 guesses on one address in 2 h for 114 solves)."""
    admitted, solves, used = rotating_stuffer(0, True)
    assert admitted <= 9 * used and solves == used


def test_a_solver_gets_at_most_two_guesses_a_solve_at_an_address_made_to_look_shared() -> None:
    """Finding S5-1 (was: by logging in to 2 accounts of its own on each proxy address, a
    stuffer with a CAPTCHA solver turned the address ban into the shared_ip challenge,
    which each solved pass then skipped until the pass itself was banned 8 failures later:
    103 guesses for 12 solves in 1 h on one address). A pass that gets its holder past a
    standing challenge carries at most 2 failed usernames never logged in to with it, then
    must be earned again: 79 guesses for 36 solves (at 14bf735, whose solved CAPTCHA lifted
    the address ban: about 1 a solve; without the own logins the ban holds, 24)."""
    shared, solves, used = rotating_stuffer(2, True)
    assert shared <= 2.5 * solves + 9 * used


# -- a person's own address taken for a shared one; a client that drops cookies ----------


def household(keeps_cookies: bool) -> list[object]:
    """A person at home (an address only they use) logged in to their two accounts
    (personal, work) this morning; later they cannot remember which e-mail their third
    account used and try 10; asked for a challenge they pass it. With a client that keeps
    no cookies (a mobile app's HTTP client), the README says the pass lifts the
    challenge on the passer's own address. Their statuses."""
    clock = FakeClock(6_000_000.0)
    guard = Guard({"detection": {"challenge_path": "/challenge"}}, clock=clock)
    driver = AsgiDriver(build_app(guard))

    async def go() -> list[object]:
        c = Client(driver, BROWSERS[0], "81.2.69.160", jar={} if keeps_cookies else None)
        assert (await c.login(5)).status == 200
        assert (await c.login(6)).status == 200
        c.token = None
        clock.advance(600.0)
        out: list[object] = []
        for k in range(10):  # (until asked to stop: 8, or 9 on a sketch collision)
            clock.advance(20.0)
            r = await c.send("POST", "/login", {"username": f"me{k}@x.org", "password": "pw"})
            if r.status != 401:
                break
            out.append(r.status)
        clock.advance(20.0)
        r = await c.login(7)
        out.append("challenge" if is_challenge(r) else r.status)
        await c.send("POST", "/challenge")
        clock.advance(10.0)
        out.append((await c.login(7)).status)
        return out

    logging.disable(logging.WARNING)
    try:
        result: list[object] = run(go())
    finally:
        logging.disable(logging.NOTSET)
    return result


def test_control_a_household_client_with_cookies_gets_in_after_its_challenge() -> None:
    met = household(True)
    assert 8 <= met.count(401) <= 9 and met[-2:] == ["challenge", 200]


@pytest.mark.xfail(
    strict=True,
    reason="finding S5-2 (honest refused, low; README, known limits): two accounts logged "
    "in from a home address "
    "make it 'shared' (_SHARED_LOGINS = 2: any couple, anyone with a work and a personal "
    "account), so its gate is account_takeover.shared_ip and a pass never lifts it; a "
    "client that drops cookies is challenged again after passing (403 for the gate's "
    "15 min, escalating). 14bf735 let it in (200). The README's 'a client that drops the "
    "pass cookie gets in' has no case left: an unshared address's own gate is a block or a "
    "throttle (account_takeover.action), never a challenge, so that lift never runs",
)
def test_a_cookieless_person_who_passed_the_challenge_gets_in() -> None:
    assert household(False)[-1] == 200


# -- _flagged: bounded ------------------------------------------------------------------


def test_flagged_addresses_are_bounded() -> None:
    """Attack held: the per-process memory of flagged addresses is bounded (cleared at
    65,536; an attacker flushing it needs 65,536 addresses each past 8 failed usernames)."""
    clock = FakeClock(6_000_000.0)
    guard = Guard(clock=clock)
    det = guard.engine.ato
    assert isinstance(det, ato_mod.AccountTakeover)
    det._flagged.update({f"ip:{n}": 0.0 for n in range(ato_mod._FLAGGED_MAX)})
    driver = AsgiDriver(build_app(guard))

    async def go() -> None:
        c = Client(driver, BROWSERS[0], "81.2.69.9", jar=None)
        for k in range(9):
            clock.advance(5.0)
            await c.send("POST", "/login", {"username": f"n{k}@x.org", "password": "x"})

    logging.disable(logging.WARNING)
    try:
        run(go())
    finally:
        logging.disable(logging.NOTSET)
    assert len(det._flagged) <= ato_mod._FLAGGED_MAX


# -- the self-test: whose refusal is it --------------------------------------------------


def _shop_with_slow_route(guard: Guard):
    app = build_app(guard)

    @app.get("/slow")
    async def slow() -> dict[str, bool]:
        for _ in range(5):
            await asyncio.sleep(0)
        return {"ok": True}

    return app


async def _signups(driver: AsgiDriver, ip: str, n: int) -> list[Response]:
    out = []
    for k in range(n):
        body = f'{{"username": "s{k}@x.org", "password": "pw"}}'.encode()
        out.append(
            await driver.send(
                Request("POST", "/signup", ip, (("content-type", "application/json"),), body)
            )
        )
    return out


def test_control_a_refusal_is_the_guards_and_an_answer_is_not() -> None:
    guard = Guard(clock=FakeClock(6_000_000.0))
    app = _shop_with_slow_route(guard)
    driver = AsgiDriver(app, guard=find_guard(app))

    async def go() -> tuple[list[Response], Response]:
        answers = await _signups(driver, "81.2.69.1", 11)
        slow = await driver.send(Request("GET", "/slow", "81.2.69.2", ()))
        return answers, slow

    answers, slow = run(go())
    assert [a.status for a in answers] == [201] * 10 + [429]
    assert answers[-1].refused and not any(a.refused for a in answers[:-1])
    assert slow.status == 200 and slow.guard_refused is False


def test_a_concurrent_admitted_answer_is_not_taken_for_a_refusal() -> None:
    """Finding S5-3 (was: the driver took any move of the guard's refusal count during a
    request for its refusal, so a 200 answered while another request in flight was
    refused counted as refused). Each request collects its own refusals
    (`steps.REFUSALS`, a context variable of its task)."""
    guard = Guard(clock=FakeClock(6_000_000.0))
    app = _shop_with_slow_route(guard)
    driver = AsgiDriver(app, guard=find_guard(app))

    async def go() -> tuple[Response, list[Response]]:
        await _signups(driver, "81.2.69.1", 10)
        slow, refused = await asyncio.gather(
            driver.send(Request("GET", "/slow", "81.2.69.2", ())),
            _signups(driver, "81.2.69.1", 1),
        )
        return slow, refused

    slow, refused = run(go())
    assert refused[0].status == 429 and refused[0].refused
    assert slow.status == 200 and not slow.refused


def test_a_second_guards_refusal_is_a_refusal() -> None:
    """Finding S5-4 (was: with two guards, only the outer one's refusals counted; the
    inner one's 429 was taken for the app's own). Any guard's refusal counts."""
    clock = FakeClock(6_000_000.0)
    inner = Guard(clock=clock)
    outer = Guard(clock=clock)
    app = GuardMiddleware(build_app(inner), guard=outer)
    assert find_guard(app) is outer
    driver = AsgiDriver(app, guard=find_guard(app))
    answers = run(_signups(driver, "81.2.69.1", 11))
    assert answers[-1].status == 429 and answers[-1].refused


@pytest.mark.parametrize("status", [401, 403, 428, 429])
def test_over_http_a_challenge_at_any_configured_status_is_recognised(status: int) -> None:
    """Attack held: apiguard's challenge at any `challenge_status` (401 and 429 included),
    its ban and its detector throttle are recognised over HTTP; the app's own 401 is not."""
    for action in (Action.CHALLENGE, Action.BLOCK, Action.THROTTLE):
        d = Decision(
            action, "account_takeover.shared_ip", 30.0, detector="account_takeover.shared_ip"
        )
        block = block_response(d, True, status)
        raw = tuple((k.encode(), v.encode()) for k, v in block.headers)
        assert st.is_guard_refusal(Response(block.status, raw, block.body)), action
    own = Response(401, ((b"content-type", b"application/json"),), b'{"detail":"bad credentials"}')
    assert not st.is_guard_refusal(own)
