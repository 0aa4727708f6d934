"""Review s21: adversarial tests of today's changes (cookieless challenge answers, flow
groups' person_action and own shares, BOLA young accounts over the sustained window,
audit's by-name rules)."""

from __future__ import annotations

import json
import random
import textwrap
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import Depends, HTTPException

from apiguard import Guard
from apiguard.cli import main
from apiguard.simulate.clock import FakeClock
from apiguard.simulate.driver import AsgiDriver
from detection_support import (
    BROWSERS,
    USERS,
    Client,
    build_app,
    current_user,
    is_challenge,
    public_ip,
)
from detection_support import run_quietly as run
from test_detect_flow_groups import APP_UA as SHOP_UA
from test_detect_flow_groups import shop, shop_with_challenge

START = 2_000_000.0
APP_UA = "RideShare/5.2.0 (Android 14; Pixel 7) okhttp/4.12.0"


def carrier_ip(rng: random.Random) -> str:
    return f"37.140.{rng.randrange(0, 40)}.{rng.randrange(10, 250)}"


async def anonymous_solve(client: Client) -> int:
    token, client.token = client.token, None
    try:
        return (await client.send("POST", "/challenge")).status
    finally:
        client.token = token


async def arm_young_alarm(driver: AsgiDriver, clock: FakeClock, rng: random.Random) -> None:
    """A harvest over fresh accounts: the young-account alarm (as the cookieless test)."""
    for n in range(8):
        bot = Client(driver, rng.choice(BROWSERS), public_ip(rng), jar=None)
        clock.advance(rng.uniform(30, 90))
        assert (await bot.signup(f"bot{n}")).status == 201
        for _ in range(12):
            clock.advance(rng.uniform(2, 8))
            resp = await bot.send("GET", f"/orders/{rng.randrange(1, USERS * 12)}")
            if resp.status != 200:
                break


def state(resp: object) -> str:
    return "challenge" if is_challenge(resp) else str(resp.status)  # type: ignore[attr-defined]


def test_a_script_polling_in_the_apps_shape_does_not_ride_peoples_cookieless_solves() -> None:
    clock = FakeClock(START)
    guard = Guard({"secret": "review-s21-steal-secret"}, clock=clock)
    driver = AsgiDriver(build_app(guard))
    rng = random.Random(7)

    async def scenario() -> tuple[int, int, list[list[str]]]:
        await arm_young_alarm(driver, clock, rng)
        # the script: the phone app's shape, the carrier's region, fresh accounts
        script = []
        for n in range(20):
            bot = Client(driver, APP_UA, carrier_ip(rng), jar=None)
            clock.advance(60)
            assert (await bot.signup(f"s{n}")).status == 201
            resp = await bot.send("GET", f"/orders/{rng.randrange(1, USERS * 12)}")
            assert is_challenge(resp), resp.status  # (the young-account alarm)
            script.append(bot)
        leaked, lifted, turn = 0, set(), 0
        people: list[list[str]] = []
        for p in range(10):  # people on the phone app: no jar, a new address each request
            phone = Client(driver, APP_UA, carrier_ip(rng), jar=None)
            clock.advance(20)
            resp = await phone.signup(f"person{p}")
            if is_challenge(resp):  # (the sign-up surge the script made)
                clock.advance(8)
                await anonymous_solve(phone)
                clock.advance(1)
                resp = await phone.signup(f"person{p}")
            assert resp.status == 201, resp.status
            met = [state(await phone.send("GET", "/orders/5", ip=carrier_ip(rng)))]
            for _ in range(3):
                clock.advance(8)
                phone.ip = carrier_ip(rng)  # (it solves, and retries, from one address)
                assert await anonymous_solve(phone) == 200
                for _ in range(4):  # the script retries one account every half second
                    clock.advance(0.5)
                    bot = script[turn % len(script)]
                    turn += 1
                    for _ in range(10):
                        order = rng.randrange(1, USERS * 12)
                        resp = await bot.send("GET", f"/orders/{order}", ip=carrier_ip(rng))
                        if resp.status != 200:
                            break
                        lifted.add(id(bot))
                        leaked += 1
                        clock.advance(0.2)
                clock.advance(0.5)
                met.append(state(await phone.send("GET", "/orders/5")))
                if met[-1] == "200":
                    break
            people.append(met)
        return leaked, len(lifted), people

    leaked, lifted, people = run(scenario())
    assert lifted == 0 and leaked == 0, (leaked, lifted)
    assert all(met == ["challenge", "200"] for met in people), people


AUDIT_BY_NAME_APP = """
import logging

from fastapi import Body, FastAPI

from apiguard import Guard
from apiguard.asgi import GuardMiddleware

guard = Guard({"secret": "audit-review-21-secret"})
app = FastAPI()
app.add_middleware(GuardMiddleware, guard=guard)
log = logging.getLogger("app")


@guard.flow("password-reset", "3/hour", key="email")
async def reset_password(email: str) -> None:
    pass


class Mailer:
    async def reset_password(self, email: str) -> None:  # (no rule)
        pass


mailer = Mailer()


@app.post("/forgot-password")
async def forgot(email: str = Body(..., embed=True)) -> None:
    await mailer.reset_password(email)  # an attribute of the same name: not the flow


@app.post("/password/reset")
async def reset(email: str = Body(..., embed=True)) -> None:
    log.info("%s is retired", reset_password.__name__)  # named, never called


@app.post("/account/reset-password")
async def reset_plain(email: str = Body(..., embed=True)) -> None:
    pass
"""


def _audit(tmp_path: Path, capsys: pytest.CaptureFixture[str], source: str) -> dict:
    path = tmp_path / "by_name_app.py"
    path.write_text(textwrap.dedent(source))
    assert main(["audit", f"{path}:app", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    return {row["template"]: row for row in report["routes"]}


def test_audit_control_a_reset_route_that_calls_nothing_is_noted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    routes = _audit(tmp_path, capsys, AUDIT_BY_NAME_APP)
    row = routes["/account/reset-password"]
    assert row["rules"] == [] and "looks like a sensitive flow" in row["notes"][0]


def test_audit_does_not_claim_a_flow_for_an_attribute_of_the_same_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    row = _audit(tmp_path, capsys, AUDIT_BY_NAME_APP)["/forgot-password"]
    assert row["rules"] == [], row
    assert any("looks like a sensitive flow" in n for n in row["notes"]), row


def test_audit_does_not_claim_a_flow_for_a_name_never_called(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    row = _audit(tmp_path, capsys, AUDIT_BY_NAME_APP)["/password/reset"]
    assert row["rules"] == [], row
    assert any("looks like a sensitive flow" in n for n in row["notes"]), row


def test_one_solve_answers_one_account_not_its_cookie_and_its_twin() -> None:
    clock = FakeClock(START)
    guard = Guard({"secret": "review-s21-double-secret"}, clock=clock)
    driver = AsgiDriver(build_app(guard))
    rng = random.Random(3)

    async def scenario() -> list[str]:
        await arm_young_alarm(driver, clock, rng)
        bots = []
        for n in range(3):  # a farm's fresh accounts, one shape, one /24
            bot = Client(driver, BROWSERS[1], f"81.20.3.{10 + n}", jar=None)
            clock.advance(30)
            assert (await bot.signup(f"f{n}")).status == 201
            assert is_challenge(await bot.send("GET", "/orders/9"))
            bots.append(bot)
        solver = Client(driver, BROWSERS[1], "81.20.3.50", jar={})
        clock.advance(5)
        assert await anonymous_solve(solver) == 200  # one CAPTCHA solved, cookie kept
        met = []
        clock.advance(1)
        met.append(state(await bots[0].send("GET", "/orders/9")))  # no cookie: the twin
        for bot in bots[1:]:  # the cookie
            bot.jar = dict(solver.jar or {})
            clock.advance(1)
            met.append(state(await bot.send("GET", "/orders/9")))
        return met

    met = run(scenario())
    assert met.count("200") == 1, met


SCRIPT_UA = "okhttp/4.9.2"


def farm_at_a_share(share: float, pad: bool = False) -> tuple[list[int], list[int]]:
    """The coupon shop of test_detect_flow_groups (no challenge route: nobody can pass),
    400 honest users, and a farm of two fresh accounts a minute on one scripted shape,
    `share` of them redeeming (the rest only look at /me); `pad`: each account first
    asks for a path that does not exist, with its token (a 404 that names no one)."""
    from apiguard.simulate.driver import Request
    from test_detect_flow_groups import APP_UA as SHOP_UA

    clock = FakeClock(START)
    guard = Guard({"secret": "review-s21-teach-secret"}, clock=clock)
    driver = AsgiDriver(shop(guard))
    rng = random.Random(1)

    async def call(method: str, path: str, user: int, ip: str, ua: str) -> int:
        headers = (("user-agent", ua), ("authorization", f"Bearer tok-{user}"))
        return (await driver.send(Request(method, path, ip, headers))).status

    async def scenario() -> tuple[list[int], list[int]]:
        honest: list[int] = []
        farm: list[int] = []
        homes = {u: public_ip(rng) for u in range(400)}
        redeemed: set[int] = set()
        bot = 10_000
        for minute in range(150):
            clock.advance(60)
            for u in rng.sample(range(400), 25):
                ua = SHOP_UA if u % 4 else BROWSERS[u % len(BROWSERS)]
                honest.append(await call("GET", "/me", u, homes[u], ua))
                if u % 3 == 0 and u not in redeemed and rng.random() < 0.3:
                    redeemed.add(u)
                    honest.append(await call("POST", "/coupons/SPRING/redeem", u, homes[u], ua))
            for _ in range(2):
                bot += 1
                ip = public_ip(rng)
                if pad:
                    await call("GET", "/nothing", bot, ip, SCRIPT_UA)
                await call("GET", "/me", bot, ip, SCRIPT_UA)
                if rng.random() < share:
                    status = await call("POST", "/coupons/SPRING/redeem", bot, ip, SCRIPT_UA)
                    if minute >= 30:
                        farm.append(status)
        return farm, honest

    return run(scenario())


def test_control_a_farm_redeeming_with_every_account_is_refused() -> None:
    farm, honest = farm_at_a_share(1.0)
    assert farm and farm.count(200) == 0, farm.count(200)
    assert [s for s in honest if s != 200] == []


def test_a_farm_does_not_teach_its_own_shape_the_share_it_farms_at() -> None:
    farm, honest = farm_at_a_share(0.8)
    assert farm.count(200) <= 15, (farm.count(200), len(farm))
    assert [s for s in honest if s != 200] == []


def notes_app(guard: Guard) -> object:
    """The shop of detection_support plus notes an account writes and reads back, with
    a correct ownership check (404 for another's note)."""
    app = build_app(guard)
    notes: dict[int, int] = {}

    @app.post("/notes", status_code=201)
    async def create(user: Annotated[int, Depends(current_user)]) -> dict[str, int]:
        note = 5000 + len(notes)
        notes[note] = user
        return {"id": note}

    @app.get("/notes/{note_id}")
    async def read(note_id: int, user: Annotated[int, Depends(current_user)]) -> dict[str, Any]:
        if notes.get(note_id) != user:
            raise HTTPException(404)
        return {"id": note_id}

    return app


def newcomer_writing_notes() -> tuple[list[str], list[str]]:
    """A new user writes 15 notes over two hours, reading each back once; then five
    other people sign up and open an order each."""
    clock = FakeClock(START)
    guard = Guard({"secret": "review-s21-newcomer-secret"}, clock=clock)
    driver = AsgiDriver(notes_app(guard))  # type: ignore[arg-type]
    rng = random.Random(11)

    async def scenario() -> tuple[list[str], list[str]]:
        writer = Client(driver, BROWSERS[0], public_ip(rng))
        clock.advance(60)
        assert (await writer.signup("writer")).status == 201
        met = []
        for _ in range(15):
            clock.advance(480)
            resp = await writer.send("POST", "/notes")
            assert resp.status == 201, resp.status
            clock.advance(20)
            met.append(state(await writer.send("GET", f"/notes/{resp.json()['id']}")))
        later = []
        for n in range(5):
            person = Client(driver, BROWSERS[n % 4], public_ip(rng))
            clock.advance(120)
            assert (await person.signup(f"new{n}")).status == 201
            later.append(state(await person.send("GET", f"/orders/{rng.randrange(1, 300)}")))
        return met, later

    return run(scenario())


def test_a_newcomer_reading_back_its_own_notes_over_two_hours_is_not_challenged() -> None:
    met, _ = newcomer_writing_notes()
    assert met == ["200"] * 15, met


def test_one_newcomer_reading_its_own_notes_does_not_arm_the_alarm_for_everyone() -> None:
    _, later = newcomer_writing_notes()
    assert later == ["200"] * 5, later


def harvest_under_the_young_floor(per_account: int) -> tuple[int, int]:
    """Fresh accounts, one every 30 s from a residential pool in browser shapes, each
    reading `per_account` foreign orders (the BOLA bug), then dropped."""
    clock = FakeClock(START)
    guard = Guard({"secret": "review-s21-slow-secret"}, clock=clock)
    driver = AsgiDriver(build_app(guard))
    rng = random.Random(13)

    async def scenario() -> tuple[int, int]:
        leaked = held = 0
        for n in range(150):
            bot = Client(driver, rng.choice(BROWSERS), public_ip(rng), jar=None)
            clock.advance(30)
            if (await bot.signup(f"h{n}")).status != 201:
                held += 1
                continue
            for _ in range(per_account):
                clock.advance(rng.uniform(5, 12))
                resp = await bot.send("GET", f"/orders/{rng.randrange(1, USERS * 12)}")
                if resp.status != 200:
                    held += 1
                    break
                leaked += 1
        return leaked, held

    return run(scenario())


def test_control_a_harvest_at_the_young_floor_is_held() -> None:
    leaked, held = harvest_under_the_young_floor(10)
    assert leaked <= 60 and held >= 140, (leaked, held)


def test_a_harvest_one_under_the_young_floor_per_account_is_held() -> None:
    """(Was a strict xfail: 1,350 orders over 150 accounts in 75 minutes, none held; the
    crowd of young accounts holds it: 100.)"""
    leaked, _ = harvest_under_the_young_floor(9)
    assert leaked <= 200, leaked


def carrier_wide(rng: random.Random) -> str:
    """An address of a big carrier's /8 (phones and mobile proxies alike)."""
    return f"37.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def farm_in_the_apps_shape(farm_rides: bool) -> tuple[int, int, list[str]]:
    """test_a_farm_hiding_in_the_official_apps_shape_is_held_and_its_people_pass on one
    carrier's /8; `farm_rides`: right after each app user solves the group's challenge
    (keeping its pass cookie), a fresh farm account with no cookie redeems. Returns the
    farm's rides that passed, how many it tried, and the honest outcomes."""
    from apiguard.simulate.driver import Request
    from test_detect_flow_groups import APP_UA as SHOP_UA

    clock = FakeClock(START)
    guard = Guard(
        {"secret": "flow-groups-person-action", "detection": {"challenge_path": "/challenge"}},
        clock=clock,
    )
    driver = AsgiDriver(shop_with_challenge(guard))
    rng = random.Random(21)
    jars: dict[int, str] = {}
    rides: list[int] = []

    async def call(method: str, path: str, user: int, ip: str, ua: str) -> tuple[int, bool]:
        headers = [("user-agent", ua), ("authorization", f"Bearer tok-{user}")]
        if user in jars:
            headers.append(("cookie", jars[user]))
        resp = await driver.send(Request(method, path, ip, tuple(headers)))
        for name, value in resp.headers:
            if name == b"set-cookie" and user < 10_000:  # (the farm keeps no cookie)
                jars[user] = value.decode("latin-1").split(";", 1)[0]
        return resp.status, is_challenge(resp)

    async def scenario() -> list[str]:
        honest: list[str] = []
        homes = {u: carrier_wide(rng) for u in range(600)}
        last: dict[int, int] = {}
        for minute in range(240):
            clock.advance(60)
            for u in rng.sample(range(600), 6):
                app_user = u % 3 == 0
                ua = SHOP_UA if app_user else BROWSERS[u % len(BROWSERS)]
                await call("GET", "/me", u, homes[u], ua)
                if minute - last.get(u, -99) < 25 or rng.random() >= (0.15 if app_user else 0.08):
                    continue
                last[u] = minute
                path = f"/coupons/RIDE{rng.randrange(10**6)}/redeem"
                status, asked = await call("POST", path, u, homes[u], ua)
                if asked:
                    await call("POST", "/challenge", u, homes[u], ua)
                    if farm_rides and ua == SHOP_UA:
                        bot, ip = 90_000 + len(rides), carrier_wide(rng)
                        await call("GET", "/me", bot, ip, SHOP_UA)
                        ride, _ = await call("POST", "/coupons/SPRING/redeem", bot, ip, SHOP_UA)
                        rides.append(ride)
                    status, asked = await call("POST", path, u, homes[u], ua)
                    honest.append(f"challenge,{status}")
                else:
                    honest.append(str(status))
            if minute >= 60:
                for k in range(3):
                    bot = 10_000 + minute * 3 + k
                    ip = carrier_wide(rng)
                    await call("GET", "/me", bot, ip, SHOP_UA)
                    await call("POST", "/coupons/SPRING/redeem", bot, ip, SHOP_UA)
        return honest

    honest = run(scenario())
    return rides.count(200), len(rides), honest


def test_a_farm_does_not_ride_the_twins_of_people_who_keep_their_pass_cookie() -> None:
    passed, tried, honest = farm_in_the_apps_shape(farm_rides=True)
    assert tried >= 20
    assert passed <= 2, (passed, tried)
    assert honest and all(h in ("200", "challenge,200") for h in honest)


def test_control_a_newcomer_browsing_a_public_catalogue_for_two_hours_is_not_challenged() -> None:
    clock = FakeClock(START)
    guard = Guard({"secret": "review-s21-catalogue-secret"}, clock=clock)
    app = build_app(guard)

    @app.get("/products/{pid}")
    async def product(pid: int) -> dict[str, int]:
        return {"id": pid}

    driver = AsgiDriver(app)
    rng = random.Random(17)

    async def scenario() -> tuple[list[str], list[str]]:
        for k in range(6):  # anonymous visitors: the catalogue is public
            visitor = Client(driver, BROWSERS[k % 4], public_ip(rng))
            clock.advance(30)
            for _ in range(3):
                await visitor.send("GET", f"/products/{rng.randrange(1, 5000)}")
        shopper = Client(driver, BROWSERS[2], public_ip(rng))
        clock.advance(60)
        assert (await shopper.signup("shopper")).status == 201
        met = []
        for _ in range(60):
            clock.advance(rng.uniform(90, 150))
            met.append(state(await shopper.send("GET", f"/products/{rng.randrange(1, 5000)}")))
        later = []
        for n in range(5):
            person = Client(driver, BROWSERS[n % 4], public_ip(rng))
            clock.advance(120)
            assert (await person.signup(f"new{n}")).status == 201
            later.append(state(await person.send("GET", f"/orders/{rng.randrange(1, 300)}")))
        return met, later

    met, later = run(scenario())
    assert met == ["200"] * 60 and later == ["200"] * 5, (met, later)


def test_control_a_throttle_group_ban_holds_farm_accounts_that_each_solved_a_challenge() -> None:
    """person_action "throttle": a farm in one scripted shape whose every account holds
    a pass (solved by a solving service in a browser, no token) is still refused."""
    from apiguard.simulate.driver import Request

    clock = FakeClock(START)
    guard = Guard(
        {
            "secret": "review-s21-throttle-group",
            "detection": {
                "challenge_path": "/challenge",
                "flow_groups": {"person_action": "throttle"},
            },
        },
        clock=clock,
    )
    driver = AsgiDriver(shop_with_challenge(guard))
    rng = random.Random(4)

    async def call(method: str, path: str, user: int, ip: str, ua: str, jar: dict[str, str]) -> int:
        headers = [("user-agent", ua), ("authorization", f"Bearer tok-{user}")]
        headers += [("cookie", f"{k}={v}") for k, v in jar.items()]
        resp = await driver.send(Request(method, path, ip, tuple(headers)))
        for name, value in resp.headers:
            if name == b"set-cookie":
                k, _, rest = value.decode("latin-1").partition("=")
                jar[k] = rest.split(";", 1)[0]
        return resp.status

    async def scenario() -> tuple[list[int], list[int]]:
        honest: list[int] = []
        farm: list[int] = []
        homes = {u: public_ip(rng) for u in range(400)}
        redeemed: set[int] = set()
        for minute in range(90):
            clock.advance(60)
            for u in rng.sample(range(400), 25):
                ua = SHOP_UA if u % 4 else BROWSERS[u % len(BROWSERS)]
                honest.append(await call("GET", "/me", u, homes[u], ua, {}))
                if u % 3 == 0 and u not in redeemed and rng.random() < 0.3:
                    redeemed.add(u)
                    path = "/coupons/SPRING/redeem"
                    honest.append(await call("POST", path, u, homes[u], ua, {}))
            if minute >= 20:
                bot, ip, jar = 10_000 + minute, public_ip(rng), {}
                solve = Request("POST", "/challenge", ip, (("user-agent", BROWSERS[0]),))
                for name, value in (await driver.send(solve)).headers:
                    if name == b"set-cookie":  # (solved in a browser, no token)
                        k, _, rest = value.decode("latin-1").partition("=")
                        jar[k] = rest.split(";", 1)[0]
                await call("GET", "/me", bot, ip, SCRIPT_UA, jar)
                farm.append(await call("POST", "/coupons/SPRING/redeem", bot, ip, SCRIPT_UA, jar))
        return farm, honest

    farm, honest = run(scenario())
    assert 429 in farm and farm.count(200) <= 15, farm
    assert [s for s in honest if s != 200] == []


def test_a_farm_padding_its_shape_with_one_404_per_account_is_refused() -> None:
    farm, honest = farm_at_a_share(1.0, pad=True)
    assert farm.count(200) <= 15, (farm.count(200), len(farm))
    assert [s for s in honest if s != 200] == []
