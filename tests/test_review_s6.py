"""Review session 6: an attacker's and a careless user's look at two fresh changes,
`@guard.objects(ids=...)` / `guard.objects_touched()` (BOLA over declared ids) and the
account-takeover alarm on unresolved usernames (`unresolved_share_floor`).

A passing test is something that held; a strict xfail is a confirmed problem, asserting
the behaviour wanted (its reason names the finding, its kind and its figures)."""

from __future__ import annotations

import logging
import random
import uuid
from typing import Any

import pytest
import redis
from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel
from starlette.testclient import TestClient

from apiguard import ConfigurationError, Guard, identify
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock
from apiguard.simulate.driver import AsgiDriver
from apiguard.store.redis import RedisStore
from detection_support import BROWSERS, Client, build_app, is_challenge, public_ip, run, username

START = 7_000_000.0


class Lookup(BaseModel):
    order_id: int


class Batch(BaseModel):
    ids: list[int]


def _shop(guard: Guard, *, identify_in_body: bool = False) -> tuple[FastAPI, list[int]]:
    """A lookup by a body id and a batch read, declared with `@guard.objects`; the user
    is identified in a dependency (as the README's FastAPI example), or, carelessly, in
    the handler's body. Returns the app and the order ids its handlers served."""
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)
    served: list[int] = []

    def user(request: Request) -> None:
        identify(request.headers.get("x-user"))

    if identify_in_body:

        @app.post("/orders/lookup")
        @guard.objects(ids="payload.order_id", name="order_id")
        def lookup_in_body(payload: Lookup, request: Request) -> dict[str, int]:
            identify(request.headers.get("x-user"))
            served.append(payload.order_id)
            return {"order": payload.order_id}

    else:

        @app.post("/orders/lookup", dependencies=[Depends(user)])
        @guard.objects(ids="payload.order_id", name="order_id")
        def lookup(payload: Lookup) -> dict[str, int]:
            served.append(payload.order_id)
            return {"order": payload.order_id}

    @app.post("/orders/batch", dependencies=[Depends(user)])
    @guard.objects(ids=lambda payload: payload.ids)
    def batch(payload: Batch) -> dict[str, int]:
        served.extend(payload.ids)
        return {"orders": len(payload.ids)}

    return app, served


def _clients(app: FastAPI) -> Any:
    made: dict[str, TestClient] = {}

    def client(ip: str) -> TestClient:
        if ip not in made:
            made[ip] = TestClient(app, client=(ip, 40_000))
        return made[ip]

    return client


@pytest.fixture(autouse=True)
def _quiet() -> Any:
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


# -- BOLA: declared ids --------------------------------------------------------------


def _anonymous_batches(guard: Guard, clock: FakeClock, batches: list[list[int]]) -> list[int]:
    app, _ = _shop(guard)
    client = _clients(app)
    statuses = []
    for ids in batches:
        clock.advance(random.Random(len(statuses)).uniform(3.0, 9.0))
        r = client("192.0.2.66").post("/orders/batch", json={"ids": ids})
        statuses.append(r.status_code)
    return statuses


def _outlier_batches() -> list[list[int]]:
    """20 batches of 30 consecutive ids (600 in all), each with one far id appended
    (sorted last: the request's judge is its last id's, whose run just broke)."""
    rng = random.Random(6)
    found = []
    for k in range(20):
        ids = [*range(4000 + 30 * k, 4030 + 30 * k), 900_000_000 + rng.randrange(10**6)]
        rng.shuffle(ids)
        found.append(ids)
    return found


# Fixed (was a strict xfail): finding A1 (bypass), high: an anonymous address appending one
# far id to each batch of 30 consecutive ids reads 600 ids in 20 requests, 0 refused
# (without the far id: refused from its 2nd request); only the last sorted id's run is
# judged
def test_anonymous_batch_walk_with_one_far_id_appended_is_refused() -> None:
    clock = FakeClock(START)
    statuses = _anonymous_batches(Guard(clock=clock), clock, _outlier_batches())
    assert statuses.count(403) >= 15, statuses


# Fixed (was a strict xfail): finding A1 (bypass) on the Redis store too: 600 ids in 20
# requests, 0 refused
def test_anonymous_batch_walk_with_one_far_id_appended_is_refused_on_redis(
    redis_url: str,
) -> None:
    clock = FakeClock(START)
    store = RedisStore(redis.asyncio.Redis.from_url(redis_url), server_time=False, timeout=5.0)
    guard = Guard({"secret": "s" * 32}, clock=clock, store=store)
    statuses = _anonymous_batches(guard, clock, _outlier_batches())
    assert statuses.count(403) >= 15, statuses


def test_anonymous_batch_walk_without_the_far_id_is_refused() -> None:
    """What holds: the same batches without the far id are refused from the 2nd."""
    clock = FakeClock(START)
    batches = [[i for i in ids if i < 10**8] for ids in _outlier_batches()]
    statuses = _anonymous_batches(Guard(clock=clock), clock, batches)
    assert statuses[0] == 200 and set(statuses[1:]) == {403}, statuses


# Fixed (was a strict xfail): finding A2 (bypass), medium: an anonymous address reading 15
# consecutive ids a batch and skipping one between batches read 600 of 640 ids in 40
# requests, 0 refused (the run breaks at each skip). The batch is a POST answered 2xx:
# the distinct objects an anonymous address changed or looked up that way are counted
# (`Bola._anonymous_write`), past the floor, 30
def test_anonymous_chunked_batches_skipping_one_id_are_refused() -> None:
    clock = FakeClock(START)
    batches = [list(range(5000 + 16 * k, 5015 + 16 * k)) for k in range(40)]
    statuses = _anonymous_batches(Guard(clock=clock), clock, batches)
    assert statuses.count(403) >= 30, statuses


def _walker(guard: Guard, clock: FakeClock, app: FastAPI, served: list[int]) -> list[int]:
    """A signed-in user reading 80 random foreign orders by body id from rotating
    residential addresses, 1-4 s apart."""
    rng = random.Random(1)
    statuses = []
    for _ in range(80):
        clock.advance(rng.uniform(1, 4))
        ip = public_ip(rng)
        body = {"order_id": rng.randrange(1000, 90_000)}
        r = TestClient(app, client=(ip, 4000)).post(
            "/orders/lookup", json=body, headers={"x-user": "eve"}
        )
        statuses.append(r.status_code)
    return statuses


def test_a_body_id_harvest_is_held_when_identify_runs_in_a_dependency() -> None:
    """What holds: identified in a dependency (before the declaration is read), the
    harvester is challenged from about its 25th read and every read after is refused."""
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    app, served = _shop(guard)
    statuses = _walker(guard, clock, app, served)
    first = statuses.index(403)
    assert first <= 30 and set(statuses[first:]) == {403} and len(served) == first


@pytest.mark.xfail(
    strict=True,
    reason="finding A3 (careless user -> bypass), high: identify() called in the handler "
    "body (after @guard.objects read the ids) leaves the standing challenge unchecked: "
    "80 of 80 foreign reads served (24 with identify() in a dependency); no warning",
)
def test_a_body_id_harvest_is_held_when_identify_runs_in_the_handler() -> None:
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    app, served = _shop(guard, identify_in_body=True)
    statuses = _walker(guard, clock, app, served)
    assert len(served) <= 30, (len(served), statuses)


@pytest.mark.xfail(
    strict=True,
    reason="finding A4 (honest challenged), medium: a mobile app fetching each user's own "
    "50 consecutive ids in one batch: the first 9 users after deployment are challenged "
    "at every later batch (warmup_floor 40 < 50; 27 of 60 batches challenged), as ids "
    "in one request are counted as 50 separate reads",
)
def test_the_first_users_of_a_batch_route_reading_their_own_50_ids_are_not_challenged() -> None:
    clock = FakeClock(START)
    app, _ = _shop(Guard(clock=clock))
    client = _clients(app)
    statuses = []
    for _ in range(4):
        for u in range(15):
            clock.advance(7)
            mine = list(range(1000 * u, 1000 * u + 50))
            r = client(f"198.51.100.{u}").post(
                "/orders/batch", json={"ids": mine}, headers={"x-user": f"u{u}"}
            )
            statuses.append(r.status_code)
    assert statuses.count(403) == 0, statuses


def test_the_same_batch_of_20_own_ids_again_and_again_is_not_challenged() -> None:
    """What holds: a user's own 20 consecutive ids, re-fetched with retries (a flaky
    network sends each batch twice), from an office NAT shared by 12 users: nobody is
    challenged (retries add no object, ids in one request make no walk)."""
    clock = FakeClock(START)
    app, _ = _shop(Guard(clock=clock))
    client = _clients(app)
    statuses = []
    for _ in range(5):
        for u in range(12):
            mine = list(range(300 * u + 1, 300 * u + 21))
            for _retry in range(2):
                clock.advance(3)
                r = client("203.0.113.40").post(
                    "/orders/batch", json={"ids": mine}, headers={"x-user": f"u{u}"}
                )
                statuses.append(r.status_code)
    assert set(statuses) == {200}


def test_a_dotted_spec_above_the_route_decorator_fails_at_the_first_request() -> None:
    """What holds: `@guard.objects` written above `@app.post` is a ConfigurationError
    (its message names @guard.limit/@guard.flow, not @guard.objects: a nit)."""
    guard = Guard()
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @guard.objects(ids="payload.order_id")
    @app.post("/above")
    def above(payload: Lookup) -> int:
        return 1

    with pytest.raises(ConfigurationError, match="above the route decorator"):
        TestClient(app).post("/above", json={"order_id": 3})


# Fixed (was a strict xfail): finding C1 (careless user), medium: a dotted spec with a typo
# (ids='payload.orderId' on a model whose field is order_id) counts nothing on every
# request, silently: no error at decoration, no log, the route unwatched
def test_a_dotted_spec_naming_no_field_of_the_model_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logging.disable(logging.NOTSET)
    guard = Guard(clock=FakeClock(START))
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)
    with caplog.at_level(logging.WARNING, logger="apiguard"):
        try:

            @app.post("/typo")
            @guard.objects(ids="payload.orderId")
            def typo(payload: Lookup) -> int:
                return 1

        except ConfigurationError:
            return  # refused at decoration: fine
        client = TestClient(app)
        for n in range(50):
            assert client.post("/typo", json={"order_id": n}).status_code == 200
    assert any("orderId" in r.getMessage() for r in caplog.records)


# -- account takeover: the unresolved-usernames alarm -----------------------------------

T0 = 8_000_000.0


def _crowd(
    stuffer_per_hour: int,
    *,
    hours: float = 3.0,
    people_per_hour: int = 135,
    own: int = 0,
    workers: int = 1,
    redis_url: str | None = None,
    seed: int = 41,
    made_up: bool = False,
    typo: float = 0.2,
    forgot: float = 0.03,
    wrong_name: float = 0.03,
    stuffer_networks: list[str] | None = None,
    floor: float | None = None,
    schedule: list[int] | None = None,
) -> Any:
    """As `test_detect_unresolved_alarm.population`, from the app's first minute, with a
    declared challenge route: people on new devices from their own addresses (`typo`
    mistype first, `forgot` give up after one wrong password, `wrong_name` first try an
    address they do not have here), a stuffer's guesses each from a fresh address and
    browser build (`made_up`: on usernames that exist nowhere), and `own` accounts of
    the stuffer's logged in to once every half window (solving a challenge if asked).
    `workers` guards behind a load balancer (on one Redis with `redis_url`);
    `schedule`: more guesses, so many in each hour.
    Returns (the guesses' statuses, 403 for a challenge; the people's; challenges met)."""
    clock = FakeClock(T0)
    config: dict[str, Any] = {"detection": {"challenge_path": "/challenge"}, "secret": "s" * 32}
    if floor is not None:
        config["detection"]["account_takeover"] = {"unresolved_share_floor": floor}
    drivers = []
    for _ in range(workers):
        if redis_url:
            store = RedisStore(
                redis.asyncio.Redis.from_url(redis_url), server_time=False, timeout=5.0
            )
            g = Guard(config, clock=clock, store=store)
        else:
            g = Guard(config, clock=clock)
        drivers.append(AsgiDriver(build_app(g)))
    rng = random.Random(seed)
    end = hours * 3600
    events = [(rng.uniform(0, end), "person") for _ in range(int(people_per_hour * hours))]
    events += [(rng.uniform(0, end), "guess") for _ in range(int(stuffer_per_hour * hours))]
    for hour, rate in enumerate(schedule or ()):  # guesses an hour, hour by hour
        events += [(3600 * hour + rng.uniform(0, 3600), "guess") for _ in range(rate)]
    if own:
        halves = int(hours * 4)
        for h in range(halves):
            for a in range(own):
                events.append((h * 900 + rng.uniform(0, 880), f"own{a}"))

    async def go():
        guesses, people, met = [], [], 0
        victim = 30_000
        for at, kind in sorted(events):
            clock.advance_to(T0 + at)
            driver = drivers[rng.randrange(workers)]
            ua = f"{BROWSERS[rng.randrange(4)]} b/{rng.randrange(99999)}"
            if kind == "guess" and stuffer_networks:
                net = stuffer_networks[rng.randrange(len(stuffer_networks))]
                ip = f"{net}.{rng.randrange(1, 255)}"
            else:
                ip = public_ip(rng)
            c = Client(driver, ua, ip, jar=None if kind != "person" else {})
            if kind == "guess":
                name = f"nobody{victim}@x.example" if made_up else username(victim)
                victim += 1
                r = await c.send("POST", "/login", {"username": name, "password": "x"})
                guesses.append(403 if is_challenge(r) else r.status)
                continue
            if kind.startswith("own"):
                who = 250 + int(kind[3:])
                r, ch = await c.human_login(who)  # the stuffer solves a CAPTCHA when asked
                continue
            who = rng.randrange(250)
            roll = rng.random()
            if roll < forgot:
                r, ch = await c.human_login(who, "forgotten")
                met += ch
                people.append(200 if r.status == 401 else r.status)
                continue
            if roll < forgot + wrong_name:
                r = await c.send(
                    "POST", "/login", {"username": f"p{who}@old.example", "password": "x"}
                )
                if is_challenge(r):
                    met += 1
                    await c.send("POST", "/challenge")
            elif rng.random() < typo:
                r, ch = await c.human_login(who, "typo")
                met += ch
            resp, ch = await c.human_login(who)
            met += ch
            people.append(resp.status)
        return guesses, people, met

    logging.disable(logging.WARNING)
    try:
        return run(go())
    finally:
        logging.disable(logging.NOTSET)


def _run_crowd(**kw: Any) -> tuple[int, int, int, int]:
    """(guesses, guesses challenged, people refused, people who met a challenge)."""
    guesses, people, met = _crowd(**kw)
    return len(guesses), guesses.count(403), sum(s != 200 for s in people), met


def test_one_worker_challenges_a_slow_stuffing_on_redis(redis_url: str) -> None:
    """What holds: 30 guesses an hour beside 135 honest logins, one worker on Redis:
    about half the guesses challenged (47 of 90), nobody refused."""
    n, held, refused, _ = _run_crowd(
        stuffer_per_hour=30, forgot=0, wrong_name=0, redis_url=redis_url
    )
    assert held >= 30 and refused == 0, (n, held)


@pytest.mark.xfail(
    strict=True,
    reason="finding B1 (bypass), high: the climate is per process, even on the Redis "
    "store: the same 30 guesses an hour behind a load balancer over 4 workers: 0 of 90 "
    "challenged in 3 h (47 of 90 with one worker); 60/h: 76 of 180",
)
def test_a_slow_stuffing_over_four_workers_on_redis_is_challenged(redis_url: str) -> None:
    n, held, refused, _ = _run_crowd(
        stuffer_per_hour=30, workers=4, forgot=0, wrong_name=0, redis_url=redis_url
    )
    assert held >= 30 and refused == 0, (n, held)


@pytest.mark.xfail(
    strict=True,
    reason="finding B2 (bypass), medium: a stuffer logging in to 50 accounts of its own "
    "once every half window (200 logins an hour, fresh addresses, solving a CAPTCHA if "
    "asked) keeps 60 guesses an hour under the 0.25 floor: 0 of 180 challenged in 3 h",
)
def test_a_stuffing_padded_with_its_own_accounts_is_challenged() -> None:
    n, held, refused, _ = _run_crowd(stuffer_per_hour=60, own=50, forgot=0, wrong_name=0)
    assert held >= 60 and refused == 0, (n, held)


@pytest.mark.xfail(
    strict=True,
    reason="finding B3 (attacker turns the alarm on; honest challenged), medium: in a "
    "quiet hour (20 honest logins an hour), 16 failed logins an hour on made-up "
    "usernames, each from a fresh address, keep the alarm on: 61 of 80 people challenged "
    "in 4 h, none refused (0 with unresolved_share_floor=1.0, 0 at 12 an hour). Accepted: "
    "16 made-up usernames an hour against 20 logins is a stuffing at a 0.44 share, and "
    "an attack that needed 6 unresolved usernames a half window to stay on let a 30-an-"
    "hour stuffing through between its alarms (34 of 77 held instead of 60)",
)
def test_a_trickle_of_made_up_usernames_at_night_does_not_challenge_most_people() -> None:
    _, _, refused, met = _run_crowd(
        stuffer_per_hour=16, people_per_hour=20, hours=4, made_up=True, seed=5
    )
    assert refused == 0 and met <= 20, met


def test_the_same_trickle_without_the_new_alarm_challenges_nobody() -> None:
    """What holds (and attributes B3): the alarm off (floor 1.0, no baseline yet),
    nobody is challenged, nor at 8 made-up usernames an hour with it on."""
    _, _, _, met = _run_crowd(
        stuffer_per_hour=16, people_per_hour=20, hours=4, made_up=True, seed=5, floor=1.0
    )
    assert met == 0
    _, _, _, met = _run_crowd(stuffer_per_hour=8, people_per_hour=20, hours=4, made_up=True, seed=5)
    assert met == 0


# -- BOLA: declared ids on Flask, whose body is raw JSON ---------------------------------


def _flask_shop(guard: Guard) -> Any:
    """A Flask lookup declared as the README says (`lambda: request.get_json()[...]`),
    the user identified in `before_request`; the view takes the id as `int()` does."""
    from flask import Flask, request

    from apiguard.flask import init_app

    app = Flask("review_s6")
    init_app(app, guard)

    @app.before_request
    def who() -> None:
        identify(request.headers.get("x-user"))

    @app.post("/orders/lookup")
    @guard.objects(ids=lambda: request.get_json()["order_id"], name="order_id")
    def lookup() -> dict[str, int]:
        return {"order": int(request.get_json()["order_id"])}

    return app


def _flask_harvest(shape: Any) -> tuple[int, int]:
    """An anonymous address walking 60 consecutive order ids, then a signed-in user
    reading 80 random foreign ones from rotating addresses, each id sent as
    `shape(id)`. Returns how many of each were served."""
    clock = FakeClock(START)
    client = _flask_shop(Guard(clock=clock)).test_client()
    anonymous = 0
    for i in range(60):
        clock.advance(2)
        r = client.post(
            "/orders/lookup",
            json={"order_id": shape(5000 + i)},
            environ_base={"REMOTE_ADDR": "192.0.2.66"},
        )
        anonymous += r.status_code == 200
    rng = random.Random(2)
    signed = 0
    for _ in range(80):
        clock.advance(2)
        r = client.post(
            "/orders/lookup",
            json={"order_id": shape(rng.randrange(1000, 90_000))},
            headers={"x-user": "eve"},
            environ_base={"REMOTE_ADDR": public_ip(rng)},
        )
        signed += r.status_code == 200
    return anonymous, signed


def test_flask_body_ids_sent_as_ints_are_held() -> None:
    """What holds: the anonymous walk is refused after 16 reads, the signed-in harvest
    after about 41 (of 80)."""
    anonymous, signed = _flask_harvest(int)
    assert anonymous <= 20 and signed <= 50, (anonymous, signed)


# Fixed (was a strict xfail): finding A5 (bypass), high: on Flask/Django (raw JSON bodies),
# ids sent as floats (5001.0) make the declaration raise TypeError, logged once and the
# request served uncounted: 60 of 60 anonymous walk reads and 80 of 80 signed-in random
# reads served (16 and 41 as ints)
def test_flask_body_ids_sent_as_floats_are_held() -> None:
    anonymous, signed = _flask_harvest(float)
    assert anonymous <= 20 and signed <= 50, (anonymous, signed)


# Fixed (was a strict xfail): finding A6 (bypass), medium: ids sent as ' 5001' (int()
# accepts them; the detector keeps them as text, with no number) make no walk: an anonymous
# walk of 60 consecutive ids served in full (16 as ints); signed-in still held by its count
def test_flask_body_ids_sent_as_padded_text_are_held() -> None:
    anonymous, signed = _flask_harvest(lambda n: f" {n}")
    assert anonymous <= 20 and signed <= 50, (anonymous, signed)


# -- BOLA: declared ids on a DRF view ---------------------------------------------------


@pytest.mark.parametrize("asgi", [False, True])
def test_a_drf_view_declaring_body_ids_holds_a_token_users_harvest(asgi: bool) -> None:
    """What holds: DRF's TokenAuthentication runs inside the view, before the decorated
    method: a token user's random reads of foreign orders through `request.data` are
    held after about 40 (the warm-up floor), a colleague's own reads are served."""
    from harness import close_django, configure_django, django_client

    configure_django()
    from django.contrib.auth.models import User
    from django.urls import path
    from rest_framework.authtoken.models import Token
    from rest_framework.response import Response
    from rest_framework.views import APIView

    clock = FakeClock(START)
    guard = Guard({"secret": "s" * 32}, clock=clock)

    class Lookup(APIView):
        @guard.objects(ids=lambda request: request.data["order_id"], name="order_id")
        def post(self, request: Any) -> Any:
            return Response({"order": request.data["order_id"]})

    def token() -> str:
        user = User.objects.create_user(f"s6-{uuid.uuid4().hex[:12]}", password="pw")
        return str(Token.objects.create(user=user).key)

    try:
        call = django_client(guard, asgi=asgi, patterns=[path("lookup", Lookup.as_view())])
        eve, bo = {"authorization": f"Token {token()}"}, {"authorization": f"Token {token()}"}
        rng = random.Random(9)
        served = 0
        for _ in range(70):
            clock.advance(rng.uniform(1, 4))
            body = {"order_id": rng.randrange(1000, 90_000)}
            served += (
                call("POST", "/lookup", ip=public_ip(rng), headers=eve, json=body).status == 200
            )
        assert served <= 45, served
        assert (
            call("POST", "/lookup", ip="198.51.100.3", headers=bo, json={"order_id": 5}).status
            == 200
        )
    finally:
        close_django()


# -- careless settings and shapes ------------------------------------------------------


# Fixed (was a strict xfail): finding C2 (careless user), low: unresolved_share_floor=1.0
# (its largest value; the only way to quiet this alarm alone) is the bar only until a calm
# half window teaches a baseline: then the bar is the 0.7 ceiling, below the floor set
def test_the_unresolved_floor_set_to_one_stays_the_bar_after_a_baseline() -> None:
    from apiguard.config import AccountTakeoverConfig
    from apiguard.detectors.account_takeover import LoginClimate

    climate = LoginClimate(AccountTakeoverConfig(unresolved_share_floor=1.0))
    assert climate.unresolved_threshold() == 1.0
    climate.unresolved_baseline = 0.05  # one calm half window later
    assert climate.unresolved_threshold() >= 1.0


def test_an_async_generator_declaring_ids_is_refused_at_decoration() -> None:
    """Finding C3 (careless user): `@guard.objects` on an async generator (a streaming
    body) had its ids read after the detectors saw the request, never judged (5 batches
    of 30 consecutive ids from one anonymous address all served), while the README said
    they were counted. It is now a ConfigurationError at decoration, naming the fix; a
    generator calling guard.objects_touched() is logged once and not counted."""
    guard = Guard(clock=FakeClock(START))
    with pytest.raises(ConfigurationError, match="a generator's body runs as its response"):

        @guard.objects(ids=lambda ids: ids)
        async def rows(ids: list[int]) -> Any:
            yield b""

    with pytest.raises(ConfigurationError, match="a generator's body runs as its response"):

        @guard.objects(ids=lambda ids: ids)
        def sync_rows(ids: list[int]) -> Any:
            yield b""


RAMP = [20, 32, 50, 80, 120, 180]  # guesses an hour, hour by hour


# Fixed (was a strict xfail): finding B4 (bypass: the alarms taught off), high: a stuffer
# ramping 20 -> 32 -> 50 -> 80 -> 120 -> 180 guesses an hour beside 135 honest logins
# teaches both baselines (calm halves under 0.8 of the bar, the bar up to the 0.7 ceiling):
# 0 of 482 challenged in 6 h; the same 180/h after five hours at 20/h: 144 of 180
def test_a_slowly_ramped_stuffing_is_challenged_in_its_last_hour() -> None:
    guesses, people, _ = _crowd(0, hours=6, schedule=RAMP, forgot=0, wrong_name=0)
    last = guesses[-RAMP[-1] :]
    assert last.count(403) >= RAMP[-1] // 2 and set(people) == {200}, last.count(403)


def test_the_same_last_hour_without_the_ramp_is_challenged() -> None:
    """What holds (and attributes B4): five hours at 20 an hour, then 180: 144 of the
    last 180 challenged; nobody refused."""
    schedule = [20] * 5 + [RAMP[-1]]
    guesses, people, _ = _crowd(0, hours=6, schedule=schedule, forgot=0, wrong_name=0)
    assert guesses[-RAMP[-1] :].count(403) >= RAMP[-1] // 2 and set(people) == {200}


def test_people_resetting_a_forgotten_password_across_a_half_window_are_not_challenged() -> None:
    """What holds: 15% of 135 people an hour fail with an old password, reset it and
    log in 5-15 minutes later (often in the next half window, leaving their username
    unresolved in the first): nobody is challenged in 3 h, nobody refused."""
    clock = FakeClock(T0)
    guard = Guard({"detection": {"challenge_path": "/challenge"}}, clock=clock)
    driver = AsgiDriver(build_app(guard))
    rng = random.Random(3)
    events: list[tuple[float, int, str, str, str | None]] = []
    for _ in range(135 * 3):
        at, who = rng.uniform(0, 3 * 3600), rng.randrange(300)
        ua, ip = f"{BROWSERS[rng.randrange(4)]} b/{rng.randrange(99999)}", public_ip(rng)
        if rng.random() < 0.15:
            events.append((at, who, ua, ip, "old password"))
            at += rng.uniform(300, 900)
        events.append((at, who, ua, ip, None))

    async def go() -> tuple[int, int]:
        met = refused = 0
        for at, who, ua, ip, pw in sorted(events):
            clock.advance_to(T0 + at)
            r, challenged = await Client(driver, ua, ip).human_login(who, pw)
            met += challenged
            refused += pw is None and r.status != 200
        return met, refused

    assert run(go()) == (0, 0)
