"""Review 9 (adversarial): today's recon changes (/24 scans, people at an address, a
vouched token judged as its user) and the flow-groups surge of new accounts. Each finding
is a test: a passing one for what holds, a strict xfail asserting the behaviour wanted
(its reason gives the figures measured)."""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest
import redis
from fastapi import FastAPI, Request
from starlette.testclient import TestClient

from apiguard import Guard, identify
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock
from apiguard.store.redis import RedisStore
from detection_support import public_ip
from test_detect_recon import app_for, probes
from test_flow_surge import START, Newcomer, day, headers, shop

CHALLENGE = {"detection": {"challenge_path": "/challenge"}}


@pytest.fixture(autouse=True)
def _quiet() -> Any:
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


def client(app: FastAPI, rng: random.Random, ip: str | None = None) -> TestClient:
    c = TestClient(app, client=(ip or public_ip(rng), 40_000))
    c.headers.update(headers(rng))
    return c


def surging(guard: Guard, flow: str, now: float) -> bool:
    return guard.engine.store.active_ban(f"fgs:{flow}", now) is not None


def trial_app(guard: Guard, per_ip: str = "100/hour") -> FastAPI:
    """A free trial: the sign-up is the flow a farm is after."""
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.post("/signup/{name}")
    @guard.flow("trial", per_ip, per="ip", count="success")
    def signup(name: str) -> dict[str, str]:
        identify(name)
        return {"user": name}

    @app.post("/challenge")
    def solved() -> dict[str, bool]:
        guard.challenge_passed()
        return {"passed": True}

    return app


def trial_surge(guard: Guard, app: FastAPI, clock: FakeClock, rng: random.Random) -> None:
    """25 sign-ups from fresh addresses and client shapes in 25 minutes: a surge."""
    for i in range(25):
        clock.advance(60)
        client(app, rng).post(f"/signup/s{i}")
    assert surging(guard, "trial", clock())


# -- recon: a bearer token judged as the user it was vouched for ---------------------------


# Fixed (was a strict xfail): finding 1 (DoS), high: a user's old bearer token (replaced 3
# days earlier), replayed by anyone from another address on 30 paths no route serves, gets
# the user challenged everywhere (token_owner keeps the token's owner forever, from any
# address): her next request with her new token is 403 challenge-required, still 403 12 h
# later (challenge_hold 24 h; this app has no challenge route, so she is locked out); the
# attacker's own address is never counted. Before 1b99e81: 200.",
def test_an_old_token_replayed_elsewhere_does_not_get_its_user_challenged() -> None:
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    app = app_for(guard)
    ann = TestClient(app, client=("198.51.100.20", 40_000))
    old = {"authorization": "Bearer tok-ann-old-1234567890"}
    assert ann.get("/products/1", headers={**old, "x-user": "ann"}).status_code == 200
    clock.advance(3 * 86_400)  # the token expired; ann signed in again
    new = {"authorization": "Bearer tok-ann-new-0987654321"}
    assert ann.get("/products/1", headers={**new, "x-user": "ann"}).status_code == 200
    attacker = TestClient(app, client=("192.0.2.66", 40_000))
    answered = 0
    for path in probes(random.Random(5), 40):
        clock.advance(3)
        answered += attacker.get(path, headers=old).status_code == 404
    assert 28 <= answered <= 34
    assert ann.get("/products/2", headers={**new, "x-user": "ann"}).status_code == 200


def scan_with_tokens(accounts: int) -> tuple[int, int]:
    """A scanner logs in to `accounts` throwaway accounts (bearer tokens), probes with
    each token until it is refused, then anonymously from its address: probes answered
    with tokens, and then from the address."""
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    scanner = TestClient(app_for(guard), client=("203.0.113.15", 40_000))
    tokens = []
    for i in range(accounts):
        token = {"authorization": f"Bearer tok-throwaway-{i:04d}-abcdefgh"}
        assert scanner.get("/products/1", headers={**token, "x-user": f"bot{i}"}).status_code == 200
        tokens.append(token)
    paths = iter(probes(random.Random(5), 600))
    with_tokens = 0
    for token in tokens:
        for path in paths:
            clock.advance(3)
            if scanner.get(path, headers=token).status_code != 404:
                break
            with_tokens += 1
    anonymous = 0
    for path in paths:
        clock.advance(3)
        if scanner.get(path).status_code != 404:
            break
        anonymous += 1
    return with_tokens, anonymous


# Fixed (was a strict xfail): finding 2 (bypass, regression of 1b99e81), high: a scanner's
# throwaway accounts' tokens are each judged as a person (30 probes each) and the address
# counts none of them; the same logins raise the address's own floor (people_at). Probes
# answered, with tokens + then anonymously: 1 account 30 + 30 (before 1b99e81: 31 in all);
# 2: 60 + 31 = 91 (before: 31); 5: 154 + 60 = 214 (before: 59); 8: 246 + 121 = 367 (before:
# 122). README: 'two throwaway accounts buy a scanner nothing more than a challenge at the
# floor'.",
def test_two_throwaway_accounts_buy_a_scanner_no_more_than_the_floor() -> None:
    with_tokens, anonymous = scan_with_tokens(2)
    assert with_tokens + anonymous <= 40, (with_tokens, anonymous)


# -- recon: a scan dealt over one IPv4 /24 -----------------------------------------------


@pytest.mark.xfail(
    strict=True,
    reason="finding 10 (DoS), medium-low: 66 probes from four addresses of a /24 (29, "
    "29, 4, 4; none refused) prime the /24 for the window: a neighbour's address (a carrier "
    "NAT, a household) that then follows 5 stale links is challenged (403 on its next "
    "product read, held until passed: challenge_hold 24 h); unprimed it is served",
)
def test_a_primed_24_does_not_get_a_neighbour_with_five_stale_links_challenged() -> None:
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    app = app_for(guard)
    paths = probes(random.Random(8), 66)
    statuses = []
    parts = (("10", paths[:29]), ("11", paths[29:58]), ("12", paths[58:62]), ("13", paths[62:]))
    for ip, part in parts:
        scanner = TestClient(app, client=(f"203.0.113.{ip}", 40_000))
        statuses += [scanner.get(p).status_code for p in part]
    assert set(statuses) == {404}  # the priming is never refused
    neighbour = TestClient(app, client=("203.0.113.99", 40_000))
    for stale in ("/prodcts/3", "/product/3", "/products", "/old/link", "/help"):
        clock.advance(30)
        assert neighbour.get(stale).status_code == 404
    assert neighbour.get("/products/9").status_code == 200


def test_an_unprimed_neighbour_with_five_stale_links_is_served() -> None:
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    neighbour = TestClient(app_for(guard), client=("203.0.113.99", 40_000))
    for stale in ("/prodcts/3", "/product/3", "/products", "/old/link", "/help"):
        clock.advance(30)
        assert neighbour.get(stale).status_code == 404
    assert neighbour.get("/products/9").status_code == 200


@pytest.mark.xfail(
    strict=True,
    reason="finding 11 (bypass), medium-low: a scan dealt over one /24 at 4 distinct "
    "paths per address (60 addresses, 240 paths in 40 min) is never refused: 240 of 240 "
    "answered (the /24 rule needs 5 paths from the address itself)",
)
def test_a_scan_dealt_over_a_24_four_paths_per_address_is_held() -> None:
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    app = app_for(guard)
    answered = 0
    for n, path in enumerate(probes(random.Random(7), 240)):
        clock.advance(10)
        scanner = TestClient(app, client=(f"203.0.113.{10 + n // 4}", 40_000))
        answered += scanner.get(path).status_code == 404
    assert answered <= 120, answered


# -- flow_groups: the surge of new accounts ------------------------------------------------


def farm_with(cookie: bool, n: int = 60) -> int:
    """`n` farm accounts over an hour, each from its own address and client shape,
    signing up and redeeming the coupon; `cookie`: each sign-up carries a junk cookie
    (an analytics id). The coupons granted."""
    clock = FakeClock(START)
    guard = Guard(CHALLENGE, clock=clock)
    app = shop(guard)
    rng = random.Random(8)
    granted = 0
    for i in range(n):
        clock.advance(3600 / n)
        bot = client(app, rng)
        if cookie:
            bot.cookies.set("_ga", f"GA1.2.{i}")
        if bot.post(f"/signup/bot{i}").status_code != 200:
            continue
        clock.advance(5)
        granted += bot.post("/coupons/WELCOME", headers={"x-user": f"bot{i}"}).status_code == 200
    return granted


def test_a_farm_without_cookies_is_held_at_the_bar() -> None:
    assert farm_with(cookie=False) <= 25


# Fixed (was a strict xfail): finding 3 (bypass), high: a sign-up carrying any cookie but
# the pass (an analytics id) is no birth (born_accounts), so its account is never young:
# not counted in the surge, never held: 60 of 60 coupons (20 of 60 without the cookie).
# The sign-up flow's anonymous completions now count its addresses among the flow's new
# clients, so the sign-ups themselves are held: 20 of 60, as without the cookie.
def test_a_farm_sending_a_junk_cookie_on_sign_up_is_still_counted() -> None:
    assert farm_with(cookie=True) <= 25


# Fixed (was a strict xfail): finding 3b (bypass), high: during a sign-up surge, a sign-up
# carrying a made-up 'Authorization: Bearer' header is not held (its principal is the
# credential, not the address, so young_held takes it for neither a new account nor an
# anonymous client) and is not counted: 40 of 40 sign-ups went through while the same
# sign-ups with a junk cookie were all held (0 of 40)",
def test_a_made_up_bearer_token_does_not_walk_through_a_signup_surge() -> None:
    clock = FakeClock(START)
    guard = Guard(CHALLENGE, clock=clock)
    app = trial_app(guard)
    rng = random.Random(3)
    trial_surge(guard, app, clock, rng)
    through = 0
    for i in range(40):
        clock.advance(60)
        bearer = {"authorization": f"Bearer junk{i:08d}"}
        through += client(app, rng).post(f"/signup/t{i}", headers=bearer).status_code == 200
    assert surging(guard, "trial", clock())
    assert through <= 5, through


# Fixed (was a strict xfail): finding 5 (bypass), high: one challenge solved at a sign-up
# surge, its pass replayed from the same address: 60 of 60 sign-ups went through (a pass
# answers for the address, the anonymous principal), each counted among 'the people who
# passed'; after 2 h the flow learned a level of 61 from them, its bar 20 -> 183 (a farm
# from fresh addresses then gets 182 an hour unchallenged). README: 'a pass answers for one
# client only, so a solved CAPTCHA replayed by a farm lets one account by'",
def test_one_pass_replayed_from_one_address_lets_one_sign_up_by() -> None:
    clock = FakeClock(START)
    guard = Guard(CHALLENGE, clock=clock)
    app = trial_app(guard)
    rng = random.Random(3)
    trial_surge(guard, app, clock, rng)
    farm = client(app, rng, "192.0.2.44")
    assert farm.post("/signup/f0").status_code == 403
    assert farm.post("/challenge").status_code == 200
    pass_only = dict(farm.cookies)
    through = 0
    for i in range(1, 61):
        clock.advance(30)
        farm.cookies.clear()
        farm.cookies.update(pass_only)
        through += farm.post(f"/signup/f{i}").status_code == 200
    assert through <= 2, through


# Fixed (was a strict xfail): finding 4 (bypass), high: the learned level is taught by a
# farm that stays under 0.8 of the bar: at 0.78 of the bar each hour (fresh addresses and
# shapes, no people) the bar climbs from 20 and the farm gets 628 coupons in 16 h, none
# refused (over 24 h: 2,372, 356 in the last hour, bar 457). README: 'a farm pacing itself
# under that ... gets up to 19 an hour' (304 in 16 h); docstring: 'a farm under the bar
# cannot teach it to accept more'",
def test_a_farm_under_the_bar_cannot_teach_the_flow_to_accept_more() -> None:
    clock = FakeClock(START)
    guard = Guard(CHALLENGE, clock=clock)
    app = shop(guard)
    groups = guard.engine._flow_groups
    assert groups is not None
    rng = random.Random(8)
    granted = refused = k = 0
    for _hour in range(16):
        level = groups._levels.get("coupon")
        bar = level.bar(20, 3.0) if level is not None else 20.0
        n = int(0.78 * bar)
        for _ in range(n):
            clock.advance(3600 / n - 5)
            bot, name = client(app, rng), f"bot{k}"
            k += 1
            if bot.post(f"/signup/{name}").status_code != 200:
                refused += 1
                continue
            clock.advance(5)
            ok = bot.post("/coupons/WELCOME", headers={"x-user": name}).status_code == 200
            granted += ok
            refused += not ok
    # (now: the calm level is learned only under 0.8 of the floor, so the bar stays at
    # most max(20 + 16, 3 * 16) = 48 an hour and a farm pacing under it gets under 48)
    level = groups._levels.get("coupon")
    assert level is not None and level.bar(20, 3.0) <= 48
    assert granted <= 47 * 16, (granted, refused)


def keep_surge_on(keepers: int, hours: int = 20) -> tuple[int, int]:
    """An attacker signs up 20 + `keepers` accounts over two hours (under the bar), 20
    redeem within 20 minutes (a surge), then `keepers` young accounts retry the coupon
    every 10 minutes; people sign up and redeem about every 10 minutes (passing the
    challenge when asked): (people, people challenged)."""
    clock = FakeClock(START)
    guard = Guard(CHALLENGE, clock=clock)
    app = shop(guard)
    rng = random.Random(8)
    accounts = []
    addresses = [f"198.51.{i}.7" for i in range(5)]
    for k in range(24 + keepers):  # (24: the sketch's estimate of 20 may fall short)
        clock.advance(300)
        bot, name = client(app, rng, addresses[k % 5]), f"t{k}"
        assert bot.post(f"/signup/{name}").status_code == 200
        accounts.append((bot, name))
    for bot, name in accounts[:24]:
        clock.advance(60)
        bot.post("/coupons/W", headers={"x-user": name})
    assert surging(guard, "coupon", clock())
    people = challenged = 0
    t0 = clock()
    next_person, next_retry = t0 + rng.uniform(0, 600), t0
    while clock() - t0 < hours * 3600:
        if next_retry <= next_person:
            clock.advance(max(0.0, next_retry - clock()))
            for bot, name in accounts[24:]:
                bot.post("/coupons/W", headers={"x-user": name})
            next_retry += 600
            continue
        clock.advance(max(0.0, next_person - clock()))
        who = Newcomer(app, rng, f"p{people}", True)
        people += 1
        assert who.arrive(clock, rng)
        challenged += who.challenged > 0
        next_person += rng.uniform(300, 900)
    return people, challenged


# Fixed (was a strict xfail): finding 6 (DoS), medium: 8 young throwaway accounts retrying
# the coupon every 10 minutes (48 refused requests an hour) renew the surge for as long as
# they are young (24 h; new ones are signed up under the bar): 116 of 116 newcomers
# challenged over 20 h (without the retries: 5 of 117). The same accounts refused again and
# again count as 'new accounts refused at the bar's pace'",
def test_a_handful_of_accounts_retrying_cannot_keep_a_surge_on() -> None:
    people, challenged = keep_surge_on(8)
    assert challenged <= people // 5, (people, challenged)


def test_without_retries_the_surge_ends() -> None:
    people, challenged = keep_surge_on(0)
    assert challenged <= 8, (people, challenged)


def calm(flow_groups: dict[str, Any], hours: int) -> list[tuple[int, int]]:
    """People signing up and redeeming about 6 an hour: (people, challenged) per hour."""
    clock = FakeClock(START)
    guard = Guard(
        {"detection": {"challenge_path": "/challenge", "flow_groups": flow_groups}}, clock=clock
    )
    app = shop(guard)
    rng = random.Random(4)
    per_hour = []
    for hour in range(hours):
        end = START + (hour + 1) * 3600
        people = challenged = 0
        while True:
            gap = rng.uniform(300, 900)
            if clock() + gap >= end:
                clock.advance(max(0.0, end - clock()))
                break
            clock.advance(gap)
            who = Newcomer(app, rng, f"p{hour}_{people}", True)
            people += 1
            assert who.arrive(clock, rng)
            challenged += who.challenged > 0
        per_hour.append((people, challenged))
    return per_hour


def test_people_at_their_usual_pace_with_the_default_window_are_not_challenged() -> None:
    assert sum(c for _, c in calm({}, 12)) == 0


# Fixed (was a strict xfail): finding 7 (false positive / trap), medium: surge_floor counts
# per flow_groups.window, and the level is learned once a window: with window = 1 day,
# people signing up at about 6 an hour are all challenged from the 5th hour to the 30th (130
# of 150 in 30 h; with the default window, 0). README: 'past surge_floor (20) new accounts
# an hour'",
def test_a_day_long_window_does_not_challenge_people_at_their_usual_pace() -> None:
    per_hour = calm({"window": 86_400}, 30)
    assert sum(c for _, c in per_hour) <= 5, per_hour


@pytest.mark.xfail(
    strict=True,
    reason="finding 13 (trap), low: surge_floor = 1 is accepted (ge=0) and challenges "
    "people at their usual pace until a level is learned: 14 of 38 newcomers at about 6 "
    "an hour challenged in the first 4 hours",
)
def test_surge_floor_one_does_not_challenge_people_at_their_usual_pace() -> None:
    per_hour = calm({"surge_floor": 1}, 8)
    assert sum(c for _, c in per_hour) <= 2, per_hour


def launch(store: str, request: pytest.FixtureRequest) -> list[int]:
    """40 people an hour for six hours; after the third hour the process restarts
    (memory) or a new worker joins on the shared store (redis): challenged per hour."""
    clock = FakeClock(START)

    def guard() -> Guard:
        if store == "redis":
            url = request.getfixturevalue("redis_url")
            redis_store = RedisStore(
                redis.asyncio.Redis.from_url(url), server_time=False, timeout=5.0
            )
            return Guard({**CHALLENGE, "secret": "s" * 32}, clock=clock, store=redis_store)
        return Guard(CHALLENGE, clock=clock)

    apps = [shop(guard())]
    rng = random.Random(9)
    per_hour = []
    for hour in range(6):
        if hour == 3:
            apps = [shop(guard())] if store == "memory" else [apps[0], shop(guard())]
        challenged = 0
        for n in range(40):
            clock.advance(rng.uniform(60, 120))
            who = Newcomer(apps[n % len(apps)], rng, f"h{hour}p{n}", True)
            assert who.arrive(clock, rng)
            challenged += who.challenged > 0
        per_hour.append(challenged)
    return per_hour


@pytest.mark.xfail(
    strict=False,  # (the counts are estimates: on Redis the hour after varies around 0)
    reason="finding 8 (false positive), medium-low: the learned level is in process: an "
    "app at a steady 40 sign-ups an hour (learned: none challenged in hours 2-3) "
    "challenges newcomers again after every restart (memory: 6-8 in the hour after) or "
    "when a new worker joins (Redis: the counts are shared, the level is not, the surge "
    "ban is: 12 challenged in hour 5)",
)
@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_restart_does_not_challenge_a_busy_apps_newcomers_again(
    store: str, request: pytest.FixtureRequest
) -> None:
    per_hour = launch(store, request)
    assert per_hour[1:3] == [0, 0], per_hour  # (learned before the restart)
    assert sum(per_hour[3:]) == 0, per_hour


# Fixed (was a strict xfail): finding 9 (false positive / docs), low-medium: during surges
# of both the sign-up and the coupon flow a person is challenged twice: the pass answered
# the sign-up for the address (the anonymous principal) and is then refused to the new
# account at the coupon (signup 403, pass, 200; coupon 403, pass, 200). README: 'a person
# passes once'",
def test_a_person_passes_once_when_sign_up_and_coupon_both_surge() -> None:
    clock = FakeClock(START)
    guard = Guard(CHALLENGE, clock=clock)
    app = shop(guard)
    rng = random.Random(8)
    farm = []
    for i in range(45):  # 15 an hour for three hours: no surge
        clock.advance(240)
        bot = client(app, rng)
        assert bot.post(f"/signup/bot{i}").status_code == 200
        farm.append((bot, f"bot{i}"))
    for bot, name in farm:  # they redeem together, and more sign up: both flows surge
        clock.advance(10)
        bot.post("/coupons/W", headers={"x-user": name})
    for i in range(25):
        clock.advance(10)
        client(app, rng).post(f"/signup/x{i}")
    assert surging(guard, "signup", clock()) and surging(guard, "coupon", clock())
    alice = Newcomer(app, rng, "alice", True)
    assert alice.arrive(clock, rng)
    assert alice.challenged == 1, alice.challenged


@pytest.mark.xfail(
    strict=True,
    reason="finding 12 (false positive / misuse), low: where identify() runs in the "
    "handler body (after the flow's checkpoint), a 3-day-old account completing the "
    "coupon during its surge is held as an anonymous client: 403 challenge-required. "
    "README: 'Accounts older than young_for ... are untouched'",
)
def test_an_old_account_identified_in_the_handler_is_not_held_in_a_surge() -> None:
    clock = FakeClock(START)
    guard = Guard(CHALLENGE, clock=clock)
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.post("/signup/{name}")
    @guard.flow("signup", "5/hour", per="ip", count="success")
    def signup(name: str) -> dict[str, str]:
        identify(name)
        return {"user": name}

    @app.post("/coupons/{code}")
    @guard.flow("coupon", "2/day", count="success")
    def coupon(code: str, request: Request) -> dict[str, str]:
        identify(request.headers.get("x-user"))  # in the handler body
        return {"coupon": code}

    @app.post("/challenge")
    def solved() -> dict[str, bool]:
        guard.challenge_passed()
        return {"passed": True}

    rng = random.Random(5)
    veteran = client(app, rng, "198.51.100.77")
    assert veteran.post("/signup/veteran").status_code == 200
    clock.advance(3 * 86_400)
    for i in range(30):
        clock.advance(60)
        bot = client(app, rng)
        bot.post(f"/signup/b{i}")
        bot.post("/coupons/W", headers={"x-user": f"b{i}"})
    assert surging(guard, "coupon", clock())
    assert veteran.post("/coupons/W", headers={"x-user": "veteran"}).status_code == 200


def test_a_pass_replayed_from_rotating_addresses_lets_one_sign_up_by() -> None:
    """What holds: the same replayed pass from a fresh address per sign-up answers for
    the first address only."""
    clock = FakeClock(START)
    guard = Guard(CHALLENGE, clock=clock)
    app = trial_app(guard)
    rng = random.Random(3)
    trial_surge(guard, app, clock, rng)
    first = client(app, rng)
    assert first.post("/signup/f0").status_code == 403
    assert first.post("/challenge").status_code == 200
    pass_only = dict(first.cookies)
    through = 0
    for i in range(1, 21):
        clock.advance(30)
        bot = client(app, rng)
        bot.cookies.update(pass_only)
        through += bot.post(f"/signup/f{i}").status_code == 200
    assert through == 1  # (the first that presents it: one account by)


def test_readme_figures_for_the_surge_are_not_what_the_tests_measure() -> None:
    """Docs, low: the README says a launch of 40 sign-ups an hour had '20 challenged in
    the first hour' and that '3' people beside the 60-account farm passed a challenge;
    the same runs (tests/test_flow_surge.py, seeds 9 and 8) measure 11 and 5 (the
    distinct counts are keyed sketches: a coupon or so varies between runs)."""

    class NoRedis:
        def getfixturevalue(self, name: str) -> str:
            raise AssertionError(name)

    per_hour = launch("memory", NoRedis())  # type: ignore[arg-type]
    assert 8 <= per_hour[0] <= 14 and per_hour[1:3] == [0, 0], per_hour  # README: 10
    result = day({}, farm=60)
    assert 4 <= result["challenged"] <= 7 and result["refused"] == 0, result  # README: 4
    assert 20 <= result["coupons"] <= 30, result
