"""Reconnaissance (OWASP API9), both ways: a client probing paths no route serves is
refused at `recon.floor` (30) distinct ones, and honest traffic is not: people mistyping
paths, a single-page app calling a stale path again and again, an office whose people
log in (held only at four times the floor, and challenged, never banned)."""

from __future__ import annotations

import random

import redis
from fastapi import FastAPI, Request
from starlette.testclient import TestClient

from apiguard import Guard, identify
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock
from apiguard.simulate.driver import AsgiDriver
from apiguard.store.redis import RedisStore
from detection_support import get_like_testclient

START = 11_000_000.0
WORDS = ["admin", "api", "v1", "v2", "internal", "debug", "users", "config", "keys", "export"]


def app_for(guard: Guard) -> FastAPI:
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.get("/products/{product_id}")
    def product(product_id: int, request: Request) -> dict[str, int]:
        identify(request.headers.get("x-user"))
        return {"product": product_id}

    @app.post("/login")
    def login(request: Request) -> dict[str, str]:
        identify(request.headers.get("x-user"))
        return {"ok": "yes"}

    return app


def probes(rng: random.Random, n: int) -> list[str]:
    seen: list[str] = []
    while len(seen) < n:
        path = "/" + "/".join(rng.choice(WORDS) for _ in range(rng.randrange(1, 4)))
        if path not in seen and path != "/api":
            seen.append(path)
    return seen


def scan(
    guard: Guard, clock: FakeClock, ip: str, headers: dict[str, str] | None = None
) -> list[int]:
    client = TestClient(app_for(guard), client=(ip, 40_000))
    rng = random.Random(9)
    statuses = []
    for path in probes(rng, 60):
        clock.advance(rng.uniform(0.5, 6.0))
        statuses.append(client.get(path, headers=headers).status_code)
    return statuses


def test_a_wordlist_scan_from_one_address_is_banned_and_people_are_not() -> None:
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    honest = TestClient(app_for(guard), client=("198.51.100.50", 40_000))
    for path in ("/prodcts/3", "/product/3", "/products", "/login/"):  # typos
        honest.get(path)
    statuses = scan(guard, clock, "192.0.2.88")
    first = statuses.index(403)
    assert 28 <= first <= 34 and set(statuses[first:]) == {403}, statuses
    assert honest.get("/products/4").status_code == 200


def test_a_client_calling_one_stale_path_again_and_again_is_not_refused() -> None:
    """A single-page app after a deploy calling a path that moved, 200 times: one
    distinct path."""
    clock = FakeClock(START)
    client = TestClient(app_for(Guard(clock=clock)), client=("198.51.100.60", 40_000))
    for _ in range(200):
        clock.advance(2)
        assert client.get("/api/v1/old-notifications").status_code == 404


def test_a_signed_in_user_probing_is_challenged_not_banned() -> None:
    """A user the app vouched for (here by a principal resolver, which also names the
    user of a request no route serves; an `identify()` in a handler does not run there)
    is asked to pass the challenge (a person answers it; refusing it again and again
    ends in a ban, as anywhere)."""
    clock = FakeClock(START)
    guard = Guard(clock=clock, principal_resolver=lambda ctx: ctx.header("x-user"))
    client = TestClient(app_for(guard), client=("203.0.113.14", 40_000))
    mallory = {"x-user": "mallory"}
    answers = []
    for path in probes(random.Random(9), 40):
        clock.advance(5)
        answers.append(client.get(path, headers=mallory))
    first = next(i for i, r in enumerate(answers) if r.status_code == 403)
    assert 28 <= first <= 34
    assert "challenge" in answers[first].json()["type"]
    assert client.get("/products/2", headers={"x-user": "ann"}).status_code == 200


def test_an_office_whose_people_log_in_is_held_only_at_four_times_the_floor() -> None:
    """Colleagues behind one address (eight of them logged in) following 40 distinct
    stale links: not refused; a scanner there is challenged past 120, never banned."""
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    office = TestClient(app_for(guard), client=("198.51.100.70", 40_000))
    for user in ("ann", "bob", "cy", "dee", "eve", "fay", "gus", "hal"):
        assert office.post("/login", headers={"x-user": user}).status_code == 200
    rng = random.Random(3)
    stale = probes(rng, 40)
    for path in stale:
        clock.advance(5)
        assert office.get(path).status_code == 404
    assert office.get("/products/1").status_code == 200


def test_a_scan_is_banned_on_redis_too(redis_url: str) -> None:
    clock = FakeClock(START)
    store = RedisStore(redis.asyncio.Redis.from_url(redis_url), server_time=False, timeout=5.0)
    guard = Guard({"secret": "s" * 32}, clock=clock, store=store)
    statuses = scan(guard, clock, "192.0.2.99")
    first = statuses.index(403)
    assert 28 <= first <= 34 and set(statuses[first:]) == {403}, statuses


def test_an_old_client_calling_a_removed_route_for_many_ids_is_one_path() -> None:
    """A legacy integration still calling a removed `/v1/orders/{id}` (and
    `/v1/invoices/{uuid}`) for 300 objects: two paths, not 300; it is not refused."""
    import uuid

    clock = FakeClock(START)
    client = TestClient(app_for(Guard(clock=clock)), client=("198.51.100.61", 40_000))
    for n in range(150):
        clock.advance(3)
        assert client.get(f"/v1/orders/{1000 + n}").status_code == 404
        assert client.get(f"/v1/invoices/{uuid.uuid4()}").status_code == 404


def test_a_scan_dealt_over_one_ipv4_24_is_challenged_and_its_neighbours_are_not() -> None:
    """Five addresses of one /24 probing 25 distinct paths each, in turn and in random
    order: once the /24 asked for twice the floor, each of them that probed 5 paths
    itself is challenged (a scanner cannot pass). Neighbours in the /24 reading products
    with a typo or two are not refused, before or after."""
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    rng = random.Random(21)
    paths = probes(rng, 125)
    scanners = [
        TestClient(app_for(guard), client=(f"203.0.113.{10 + i}", 40_000)) for i in range(5)
    ]
    neighbours = [
        TestClient(app_for(guard), client=(f"203.0.113.{100 + i}", 40_000)) for i in range(30)
    ]
    answered = 0
    refused_neighbours = 0
    for n, path in enumerate(paths):
        clock.advance(rng.uniform(2, 20))
        status = rng.choice(scanners).get(path).status_code
        answered += status == 404
        if n % 4 == 0:
            person = rng.choice(neighbours)
            for typo in rng.sample(["/prodcts/3", "/product/3", "/login/", "/products"], 1):
                person.get(typo)
            refused_neighbours += person.get(f"/products/{n}").status_code != 200
    assert answered <= 75, answered  # twice the floor, and a few per address
    assert refused_neighbours == 0
    last = scanners[0].get("/admin/keys")
    assert last.status_code == 403 and "challenge" in last.json()["type"]
    clumsy = neighbours[0]  # four stale links of its own while the /24 is held
    for typo in ("/prodcts/3", "/product/3", "/login/", "/products"):
        assert clumsy.get(typo).status_code in (404, 405)
    assert clumsy.get("/products/9").status_code == 200


def test_a_busy_ipv4_24_of_people_each_with_a_stale_link_or_two_is_not_refused() -> None:
    """A university or carrier /24: 120 people, each following one or two stale links
    (150 distinct unmatched paths in the /24 within the hour), then reading a product:
    nobody probed 5 paths, nobody is refused."""
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    rng = random.Random(22)
    stale = probes(rng, 150)
    refused = 0
    k = 0
    for i in range(120):
        person = TestClient(app_for(guard), client=(f"198.51.100.{i + 1}", 40_000))
        for _ in range(1 + (i % 4 == 0)):
            clock.advance(rng.uniform(1, 20))
            refused += person.get(stale[k % len(stale)]).status_code != 404
            k += 1
        refused += person.get(f"/products/{i}").status_code != 200
    assert k >= 150
    assert refused == 0


def test_an_address_two_people_log_in_from_is_challenged_at_the_floor_not_banned() -> None:
    """Two logins (a small office, or a scanner's two throwaway accounts) make an address
    shared: challenged (a person passes), never banned, but at the floor, not 4x."""
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    office = TestClient(app_for(guard), client=("198.51.100.71", 40_000))
    for user in ("ann", "bob"):
        assert office.post("/login", headers={"x-user": user}).status_code == 200
    answers = []
    for path in probes(random.Random(4), 50):
        clock.advance(5)
        answers.append(office.get(path))
    first = next(i for i, r in enumerate(answers) if r.status_code == 403)
    assert 28 <= first <= 34
    assert all("challenge" in r.json()["type"] for r in answers[first:])


def test_a_signed_in_users_token_probing_unknown_paths_is_challenged_not_banned() -> None:
    """`identify()` in a route's dependency never runs on a path no route serves: the
    bearer token the app vouched for on earlier requests names its user there, who is
    challenged (a person answers it), not blocked as a made-up credential would be."""
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    client = TestClient(app_for(guard), client=("203.0.113.15", 40_000))
    ann = {"authorization": "Bearer tok-ann-1234567890"}
    assert client.get("/products/1", headers={**ann, "x-user": "ann"}).status_code == 200
    answers = []
    for path in probes(random.Random(11), 40):
        clock.advance(5)
        answers.append(client.get(path, headers=ann))
    first = next(i for i, r in enumerate(answers) if r.status_code == 403)
    assert 28 <= first <= 34
    assert "challenge" in answers[first].json()["type"]
    assert client.get("/products/2", headers={**ann, "x-user": "ann"}).status_code == 403
    # a made-up token from another address is blocked as before
    other = TestClient(app_for(guard), client=("203.0.113.16", 40_000))
    made_up = {"authorization": "Bearer tok-nobody-0000000"}
    statuses = []
    for path in probes(random.Random(12), 40):
        clock.advance(5)
        statuses.append(other.get(path, headers=made_up))
    first = next(i for i, r in enumerate(statuses) if r.status_code == 403)
    assert "challenge" not in statuses[first].json()["type"]


def _spread_scan(
    scan_too: bool, seed: int = 31, hours: int = 2, scan_hours: tuple[int, ...] = (1,)
) -> tuple[list[int], int, int, Guard]:
    """`hours` of people across the internet, each following a stale link or two now
    and then (about 80 distinct unmatched paths an hour site-wide); with `scan_too`, in
    each of `scan_hours` a wordlist of 300 paths dealt over 15 new addresses of 15
    different /8s with a random browser shape on every request (20 paths each, under the
    floor, no /24 shared). The scanner's statuses, people's refusals, and its 404s."""
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    rng = random.Random(seed)
    app = app_for(guard)
    stale = probes(rng, 400)
    statuses: list[int] = []
    refused = 0
    events: list[tuple[float, str, int]] = []
    for n in range(120 * hours):  # a person every 30 s
        events.append((n * 30.0 + rng.uniform(0, 30), "person", n))
    if scan_too:
        for hour in scan_hours:
            for n in range(300):
                events.append((3600.0 * hour + n * 10.0 + rng.uniform(0, 10), "scan", n))
    driver = AsgiDriver(app, host="testserver")
    scanners: list[str] = []
    wordlist: list[str] = []
    for at, kind, n in sorted(events):
        clock.advance_to(START + at)
        if kind == "person":
            ip = f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.9"
            for _ in range(rng.choice((0, 0, 1, 1, 2, 4))):
                get_like_testclient(driver, ip, stale[300 + rng.randrange(100)])
            refused += get_like_testclient(driver, ip, f"/products/{n}") != 200
            continue
        if n == 0:  # (a new scan: new addresses, new words)
            base = len(statuses)
            wordlist = [f"/internal/{w}/{base + i}" for i, w in enumerate(stale[:300])]
            scanners = [f"{20 + 11 * i}.{rng.randrange(256)}.7.{i + 1}" for i in range(15)]
        ua = f"Mozilla/5.0 (X11; Linux x86_64) Chrome/{rng.randrange(90, 130)}.0"
        status = get_like_testclient(driver, scanners[n % 15], wordlist[n], (("user-agent", ua),))
        statuses.append(status)
    return statuses, refused, statuses.count(404), guard


def test_a_scan_spread_over_many_networks_is_challenged_and_people_are_not() -> None:
    """A held-out evaluation: 300 paths from 15 addresses in 15 /8s, 20 each, were never
    refused. The site's distinct unmatched paths, four times the floor and three times
    their usual level, challenge each address that probed 5 itself."""
    statuses, refused, answered, _ = _spread_scan(scan_too=True)
    assert refused == 0
    assert 403 in statuses, statuses
    assert answered <= 160, answered
    first = statuses.index(403)
    assert statuses[first:].count(404) <= 0.1 * len(statuses[first:]) + 15, statuses


def test_control_people_with_stale_links_alone_raise_nothing_site_wide() -> None:
    statuses, refused, _, guard = _spread_scan(scan_too=False)
    assert statuses == [] and refused == 0
    recon = next(d for d in guard.engine.detectors if d.name == "recon")
    assert recon.site_level is not None  # (it learned the usual level)


def test_a_scan_in_the_first_hours_teaches_the_site_nothing() -> None:
    """The usual level is the median of the recent windows' highest counts (before
    three windows, the lowest under the bar): scans in hours 1 and 3 of five do not raise
    it, so the second is held as soon as the first, and people are never refused."""
    statuses, refused, _, guard = _spread_scan(True, hours=5, scan_hours=(1, 3))
    first, second = statuses[:300], statuses[300:]
    assert refused == 0
    assert first.count(404) <= 160 and second.count(404) <= 160, (
        first.count(404),
        second.count(404),
    )
    recon = next(d for d in guard.engine.detectors if d.name == "recon")
    assert recon.site_level is not None and recon.site_level < 120, recon.site_level
