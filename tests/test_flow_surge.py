"""A surge of new accounts completing a flow (`detection.flow_groups.surge_floor`): a farm
signing up from rotating addresses with a fresh, realistic client shape per account, each
account redeeming a coupon once, shares no fingerprint and no network, and stays under
every per-address and per-account budget. What it cannot hide is the number of new
accounts completing the flow. Both sides: the farm is held, and people signing up beside
it (before, during, after) get through, passing the challenge when asked."""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest
import redis
from fastapi import APIRouter, Depends, FastAPI, Request
from starlette.testclient import TestClient

from apiguard import Guard, identify
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock
from apiguard.store.redis import RedisStore
from detection_support import public_ip

START = 14_000_000.0
AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Version/17.5 Safari/605",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/126.0 Mobile Safari/537.36",
]


def shop(guard: Guard, *, challenge: bool = True) -> FastAPI:
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    def user(request: Request) -> None:
        identify(request.headers.get("x-user"))

    @app.post("/signup/{name}")
    @guard.flow("signup", "5/hour", per="ip", count="success")
    def signup(name: str) -> dict[str, str]:
        identify(name)  # the sign-up signs the new user in
        return {"user": name}

    @app.post("/coupons/{code}", dependencies=[Depends(user)])
    @guard.flow("coupon", "2/day", count="success")
    def coupon(code: str) -> dict[str, str]:
        return {"coupon": code}

    @app.get("/products/{pid}", dependencies=[Depends(user)])
    def product(pid: int) -> dict[str, int]:
        return {"product": pid}

    if challenge:

        @app.post("/challenge")
        def solved() -> dict[str, bool]:
            guard.challenge_passed()
            return {"passed": True}

    return app


def nested_shop(guard: Guard, *, challenge: bool = True) -> FastAPI:
    """The same shop with async handlers on routers nested two deep (same paths)."""
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    async def user(request: Request) -> None:
        identify(request.headers.get("x-user"))

    accounts = APIRouter(prefix="/signup")
    shop_api = APIRouter()

    @accounts.post("/{name}")
    @guard.flow("signup", "5/hour", per="ip", count="success")
    async def signup(name: str) -> dict[str, str]:
        identify(name)
        return {"user": name}

    @shop_api.post("/coupons/{code}", dependencies=[Depends(user)])
    @guard.flow("coupon", "2/day", count="success")
    async def coupon(code: str) -> dict[str, str]:
        return {"coupon": code}

    @shop_api.get("/products/{pid}", dependencies=[Depends(user)])
    async def product(pid: int) -> dict[str, int]:
        return {"product": pid}

    if challenge:

        @shop_api.post("/challenge")
        async def solved() -> dict[str, bool]:
            guard.challenge_passed()
            return {"passed": True}

    outer = APIRouter()
    outer.include_router(accounts)
    outer.include_router(shop_api)
    app.include_router(outer)
    return app


def headers(rng: random.Random) -> dict[str, str]:
    return {
        "user-agent": rng.choice(AGENTS),
        "accept-language": rng.choice(["en-US,en;q=0.9", "de-DE,de;q=0.8", "fr-FR"]),
        "accept": rng.choice(["*/*", "application/json", "text/html,application/json"]),
    }


class Newcomer:
    """Someone who signs up from their own address and redeems the welcome coupon; a
    person passes the challenge when asked (a farm account does not)."""

    def __init__(
        self,
        app: FastAPI,
        rng: random.Random,
        name: str,
        person: bool,
        cookieless: bool = False,
    ) -> None:
        self.client = TestClient(app, client=(public_ip(rng), 40_000))
        self.client.headers.update(headers(rng))
        self.name, self.person = name, person
        self.challenged = 0
        self.cookieless = cookieless  # (a phone app that keeps no cookie)

    def _send(self, path: str, **kw: Any) -> Any:
        response = self.client.post(path, **kw)
        if self.cookieless:
            self.client.cookies.clear()
        return response

    def _post(self, path: str, **kw: Any) -> int:
        response = self._send(path, **kw)
        status = response.status_code
        if status == 403 and self.person and "challenge" in response.json().get("type", ""):
            self.challenged += 1
            assert self._send("/challenge").status_code == 200
            status = self._send(path, **kw).status_code
        return status

    def arrive(self, clock: FakeClock, rng: random.Random) -> bool:
        """Sign up and redeem; whether the coupon was granted."""
        if self._post(f"/signup/{self.name}") != 200:
            return False
        clock.advance(rng.uniform(3, 20))
        if self.person:  # people look around first
            for _ in range(3):
                self.client.get(f"/products/{rng.randrange(50)}", headers={"x-user": self.name})
                clock.advance(rng.uniform(5, 30))
        return self._post("/coupons/WELCOME", headers={"x-user": self.name}) == 200


def day(
    config: dict[str, Any],
    *,
    farm: int,
    challenge: bool = True,
    make: Any = shop,
    cookieless: bool = False,
) -> dict[str, int]:
    """Six hours: people sign up at about 6 an hour throughout; from the third hour a
    farm of `farm` accounts signs up and redeems over an hour."""
    clock = FakeClock(START)
    guard = Guard(
        {"detection": {"challenge_path": "/challenge"}} | config if challenge else config,
        clock=clock,
    )
    app = make(guard, challenge=challenge)
    rng = random.Random(8)
    people = coupons = challenged = people_refused = 0
    events: list[tuple[float, bool, int]] = []
    for n in range(36):
        events.append((rng.uniform(0, 6 * 3600), True, n))
    for n in range(farm):
        events.append((2 * 3600 + rng.uniform(0, 3600), False, n))
    events.sort()
    for at, person, n in events:
        if at > clock() - START:
            clock.advance(at - (clock() - START))
        who = Newcomer(
            app, rng, f"{'person' if person else 'bot'}{n}", person, person and cookieless
        )
        granted = who.arrive(clock, rng)
        if person:
            people += 1
            people_refused += not granted
            challenged += who.challenged > 0
        else:
            coupons += granted
    return {
        "coupons": coupons,
        "people": people,
        "refused": people_refused,
        "challenged": challenged,
    }


def test_a_farm_from_rotating_addresses_and_client_shapes_is_held_and_people_get_through() -> None:
    before = day({"detection": {"flow_groups": {"surge_floor": 0}}}, farm=60)
    assert before["coupons"] == 60  # nothing else holds it (one per address, per shape)
    after = day({}, farm=60)
    assert after["coupons"] <= 30, after  # half of what the farm gets unprotected
    assert after["refused"] == 0, after  # every person got the coupon
    assert after["challenged"] <= 12, after  # those who came during the surge, once


def test_people_on_an_app_that_keeps_no_cookies_get_through_the_surge() -> None:
    """A held-out evaluation: a newcomer whose phone app keeps no cookies was refused
    its sign-up during the surge (the pass cookie it was given was dropped). A solved
    challenge is one pass for its client shape in its region (`CookielessPasses`)."""
    after = day({}, farm=60, cookieless=True)
    assert after["coupons"] <= 30, after
    assert after["refused"] == 0, after
    assert after["challenged"] >= 1, after  # (some came during the surge)


def test_the_surge_holds_on_async_handlers_in_nested_routers() -> None:
    after = day({}, farm=60, make=nested_shop)
    assert after["coupons"] <= 30, after
    assert after["refused"] == 0, after


def test_people_signing_up_at_their_usual_pace_are_never_challenged() -> None:
    calm = day({}, farm=0)
    assert calm == {"coupons": 0, "people": 36, "refused": 0, "challenged": 0}


def test_without_a_challenge_route_the_surge_is_reported_not_enforced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nobody could pass the challenge: holding every sign-up would refuse every person
    while it lasts, so the surge is only reported (the per-address flow still applies)."""
    with caplog.at_level(logging.WARNING, logger="apiguard"):
        result = day({}, farm=60, challenge=False)
    assert result["refused"] == 0 and result["coupons"] == 60
    lines = [r.getMessage() for r in caplog.records if "flow_groups.surge" in r.getMessage()]
    assert lines
    # the guard enforces: the log says why this is reported only, and what to set
    assert not any("monitor mode" in line for line in lines), lines
    assert all("no challenge route" in line and "surge_action" in line for line in lines)


@pytest.mark.parametrize("action", ["throttle", "block"])
def test_without_a_challenge_route_surge_action_refuses_the_farm(action: str) -> None:
    """An app with no challenge flow that chose to refuse new accounts during a surge
    (`surge_action`): the farm is stopped; the people who sign up while it lasts are
    refused with it (the trade-off the setting names), the others are not."""
    config = {"detection": {"flow_groups": {"surge_action": action}}}
    result = day(config, farm=60, challenge=False)
    # about half of the farm's 60 (29 to 31 over 40 hash seeds, 33 in one clean-clone
    # run: the surge's count is a sketch seeded per process; a surge the refused no
    # longer renew ends sooner)
    assert result["coupons"] <= 34, result
    assert result["refused"] <= 12, result  # only people arriving during the surge
    calm = day(config, farm=0, challenge=False)
    assert calm["refused"] == 0 and calm["people"] == 36, calm


@pytest.mark.parametrize(
    "store",
    [
        "memory",
        pytest.param(
            "redis",
            marks=pytest.mark.xfail(
                strict=True,
                reason="known hole, medium-low: on Redis a sign-up retried with a pass after "
                "the surge's challenge is not seen as a birth (its principal is still the "
                "address when the detectors look), so the people who passed teach the flow "
                "nothing: a launch of 40 sign-ups an hour is challenged every hour "
                "([20, 40, 40]; on the memory store [10, 0, 0])",
            ),
        ),
    ],
)
def test_a_launch_crowd_passes_the_challenge_and_teaches_the_flow_its_level(
    store: str, request: pytest.FixtureRequest
) -> None:
    """A launch: 40 people an hour sign up for three hours. The first hour's crowd starts
    a surge (people are challenged and pass); the people who passed teach the flow their
    level, and by the third hour nobody is challenged. The same on Redis (the counts in
    the shared store)."""
    clock = FakeClock(START)
    config: dict[str, Any] = {"detection": {"challenge_path": "/challenge"}}
    if store == "redis":
        url = request.getfixturevalue("redis_url")
        client = redis.asyncio.Redis.from_url(url)
        guard = Guard(
            {**config, "secret": "s" * 32},
            clock=clock,
            store=RedisStore(client, server_time=False, timeout=5.0),
        )
    else:
        guard = Guard(config, clock=clock)
    app = shop(guard)
    rng = random.Random(9)
    per_hour: list[int] = []
    for hour in range(3):
        challenged = 0
        for n in range(40):
            clock.advance(rng.uniform(60, 120))
            who = Newcomer(app, rng, f"h{hour}p{n}", True)
            assert who.arrive(clock, rng)
            challenged += who.challenged > 0
        per_hour.append(challenged)
    assert per_hour[0] > 0 and per_hour[2] == 0, per_hour
