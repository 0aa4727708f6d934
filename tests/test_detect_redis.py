"""The detectors on the Redis store: the same campaigns are caught, and the honest users
beside them are not refused, with every detector's state in Redis (one observation call
per request after its response) and every key given a TTL."""

from __future__ import annotations

import random

import redis

from apiguard import Guard
from apiguard.simulate.clock import FakeClock
from apiguard.simulate.driver import AsgiDriver
from apiguard.store.redis import RedisStore
from detection_support import BROWSERS, Client, build_app, orders_of, owner_of, public_ip, run
from detection_support import username as name_of

START = 6_000_000.0


def _guard(url: str, clock: FakeClock) -> Guard:
    store = RedisStore(redis.asyncio.Redis.from_url(url), server_time=False, timeout=5.0)
    return Guard({"secret": "s" * 32}, clock=clock, store=store)


def test_brute_force_and_a_bola_walk_are_caught_on_redis(redis_url: str) -> None:
    clock = FakeClock(START)
    guard = _guard(redis_url, clock)
    driver = AsgiDriver(build_app(guard))
    rng = random.Random(8)

    async def scenario() -> tuple[list[int], int, list[int]]:
        owner = Client(driver, BROWSERS[0], "203.0.113.50")
        assert (await owner.login(7)).status == 200
        brute = []
        for i in range(40):  # one account, rotating addresses
            clock.advance(rng.uniform(2, 10))
            bot = Client(driver, f"bot/{i}", public_ip(rng), jar=None)
            resp = await bot.send(
                "POST", "/login", {"username": name_of(7), "password": f"guess{i}"}
            )
            brute.append(resp.status)
        owner_again = (await owner.login(7)).status  # the known device is never held back
        honest = []
        readers = [Client(driver, BROWSERS[1], public_ip(rng)) for _ in range(20)]
        for u, c in enumerate(readers):
            await c.human_login(u)
        walker = Client(driver, BROWSERS[2], "192.0.2.66")
        await walker.human_login(250)
        leaked = 0
        for order in range(1, 200):
            clock.advance(rng.uniform(1, 4))
            resp = await walker.send("GET", f"/orders/{order}")
            if resp.status == 200 and owner_of(order) != 250:
                leaked += 1
            u = rng.randrange(20)
            honest.append((await readers[u].send("GET", f"/orders/{orders_of(u)[0]}")).status)
        return brute, owner_again, [leaked, *honest]

    brute, owner_again, rest = run(scenario())
    leaked, honest = rest[0], rest[1:]
    assert brute[:8] == [401] * 8 and 403 in brute[8:] and 401 not in brute[10:]
    assert owner_again == 200
    assert 0 < leaked < 40
    assert set(honest) == {200}
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(count=1000))
    assert keys and all(client.pttl(k) > 0 for k in keys), "a key without a TTL"


def test_a_walk_is_caught_on_redis_time_with_findings_after_the_flush(redis_url: str) -> None:
    """On Redis time the detectors' operations wait for a flush (a few ms, many requests
    at once) and are judged after it: the walk is still caught within a few requests."""
    store = RedisStore(redis.asyncio.Redis.from_url(redis_url), timeout=5.0)
    guard = Guard({"secret": "s" * 32}, store=store)
    driver = AsgiDriver(build_app(guard))

    async def scenario() -> tuple[list[int], int]:
        walker = Client(driver, BROWSERS[2], "192.0.2.66")
        await walker.human_login(250)
        statuses = []
        for order in range(1, 120):
            statuses.append((await walker.send("GET", f"/orders/{order}")).status)
        await store.drain()
        return statuses, store.dropped

    statuses, dropped = run(scenario())
    assert dropped == 0
    assert statuses[:5] == [200] * 5 and statuses[-1] != 200, statuses


def test_a_burst_farm_is_refused_by_every_worker_on_redis(redis_url: str) -> None:
    """Two workers share Redis. A farm signs up 30 accounts from one address (sign-ups
    dealt round-robin to the workers), waits two hours, then redeems with each from a fresh
    address through either worker, between 40 users of the same app (accounts made
    earlier). Where each account was born in the burst reaches the other worker through
    the shared ban table: the farm is refused wherever it lands; no user is refused."""

    from apiguard.simulate.driver import Request
    from test_detect_flow_groups import APP_UA, young_shop

    clock = FakeClock(START)
    made: list[int] = []
    workers = [AsgiDriver(young_shop(_guard(redis_url, clock), made)) for _ in range(2)]
    rng = random.Random(12)

    async def scenario() -> tuple[list[int], list[int]]:
        farm: list[str] = []
        for k in range(30):
            clock.advance(20)
            req = Request("POST", "/signup", "198.51.100.66", (("user-agent", APP_UA),))
            resp = await workers[k % 2].send(req)
            assert resp.status == 201
            farm.append(resp.json()["token"])
        clock.advance(2 * 3600.0)
        honest: list[int] = []
        farmed: list[int] = []
        for u in range(40):
            clock.advance(30)
            headers = (("user-agent", APP_UA), ("authorization", f"Bearer tok-{u}"))
            req = Request("POST", "/coupons/SPRING/redeem", public_ip(rng), headers)
            honest.append((await workers[rng.randrange(2)].send(req)).status)
            if farm:
                clock.advance(rng.uniform(5, 40))
                headers = (("user-agent", APP_UA), ("authorization", f"Bearer {farm.pop()}"))
                req = Request("POST", "/coupons/SPRING/redeem", public_ip(rng), headers)
                farmed.append((await workers[rng.randrange(2)].send(req)).status)
        return honest, farmed

    honest, farmed = run(scenario())
    assert honest == [200] * 40
    assert farmed.count(200) <= 10, farmed
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(count=1000))
    assert keys and all(client.pttl(k) > 0 for k in keys), "a key without a TTL"


def test_birth_marks_never_crowd_out_bans_and_the_newest_are_kept(redis_url: str) -> None:
    """Review F6: birth marks (and every "pass" entry) shared the bounded local ban
    cache; full of 24-hour marks, it recorded no newer mark nor ban, and another worker
    no longer knew the farm was born in a burst (30/30 through). Passes have their own
    table, the oldest out. Local tables of 40 entries here, 50 throw-away marks first."""
    from apiguard.simulate.driver import Request
    from test_detect_flow_groups import APP_UA, young_shop

    clock = FakeClock(START)
    made: list[int] = []

    def worker() -> tuple[AsgiDriver, RedisStore]:
        store = RedisStore(
            redis.asyncio.Redis.from_url(redis_url), server_time=False, timeout=5.0, max_bans=40
        )
        guard = Guard({"secret": "s" * 32}, clock=clock, store=store)
        return AsgiDriver(young_shop(guard, made)), store

    (first, _), (second, store) = worker(), worker()
    drivers = (first, second)
    rng = random.Random(12)

    async def scenario() -> list[int]:
        for k in range(50):  # a burst elsewhere: 50 marks fill the tables
            clock.advance(5)
            req = Request("POST", "/signup", "192.0.2.9", (("user-agent", "x"),))
            await drivers[k % 2].send(req)
        farm = []
        for _ in range(30):
            clock.advance(20)
            req = Request("POST", "/signup", "198.51.100.66", (("user-agent", APP_UA),))
            farm.append((await first.send(req)).json()["token"])
        clock.advance(2 * 3600.0)
        out = []
        for token in farm:  # through the worker that did not see the sign-ups
            clock.advance(30)
            headers = (("user-agent", APP_UA), ("authorization", f"Bearer {token}"))
            req = Request("POST", "/coupons/SPRING/redeem", public_ip(rng), headers)
            out.append((await second.send(req)).status)
        return out

    out = run(scenario())
    assert out.count(200) <= 10
    assert not any(key.startswith("fgm:") for key in store.local_bans)


def test_failed_usernames_never_logged_in_to_are_counted_alike_on_redis(redis_url: str) -> None:
    """The per-actor count (usernames tried minus those logged in to, two HyperLogLogs
    touched together) on Redis: an address that logs in to 8 accounts of its own, then
    stuffs, is banned by its 10th guess; colleagues behind an office NAT, a third of them
    mistyping and some forgetting their password first, are not refused."""
    clock = FakeClock(START)
    guard = _guard(redis_url, clock)
    driver = AsgiDriver(build_app(guard))
    rng = random.Random(9)

    async def scenario() -> tuple[list[int], list[str]]:
        refused: list[str] = []
        for u in range(60):
            clock.advance(rng.uniform(5, 40))
            c = Client(driver, rng.choice(BROWSERS), "198.51.100.23")
            for k in range(4 if u % 10 == 0 else 1 if u % 3 == 0 else 0):
                resp = await c.login(u, f"typo{k}")
                refused += [f"typo {u}: {resp.status}"] * (resp.status != 401)
            resp = await c.login(u)
            refused += [f"{u}: {resp.status}"] * (resp.status != 200)
        bot = Client(driver, "python-requests/2.31", "192.0.2.77", jar=None)
        for u in range(100, 108):
            clock.advance(20)
            assert (await bot.login(u)).status == 200
            bot.token = None  # (no bearer token: the address is the actor)
        stuffed = []
        for u in range(150, 180):
            clock.advance(rng.uniform(3, 10))
            resp = await bot.send("POST", "/login", {"username": name_of(u), "password": "x"})
            stuffed.append(resp.status)
        return stuffed, refused

    stuffed, refused = run(scenario())
    assert refused == []
    assert 403 in stuffed and stuffed.index(403) <= 9, stuffed
    assert 401 not in stuffed[10:]
