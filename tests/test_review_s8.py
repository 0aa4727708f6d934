"""Review s8: the reconnaissance detector (OWASP API9), attacked and misused.

Passing tests: what holds. Strict xfails: confirmed problems, asserting the behaviour
wanted (each names the finding, its kind and severity, and the measured figures)."""

from __future__ import annotations

import random
import tempfile
import uuid
from typing import Any

import pytest
import redis
from fastapi import FastAPI, HTTPException, Request
from fastapi.staticfiles import StaticFiles
from starlette.testclient import TestClient

from apiguard import Guard, identify
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock
from apiguard.store.redis import RedisStore

START = 12_000_000.0
PREFIXES = ["", "api/", "api/v1/", "api/v2/", "internal/", "v0/", "beta/", "old/"]
WORDS = [
    "admin", "debug", "config", "export", "keys", "users", "backup", "metrics", "graphql",
    "swagger.json", "env", "status", "console", "actuator", "tokens", "billing",
]  # fmt: skip
STATIC = tempfile.mkdtemp(prefix="rev8-static-")


def wordlist(n: int, seed: int = 5) -> list[str]:
    paths = [f"/{p}{w}" for p in PREFIXES for w in WORDS]
    random.Random(seed).shuffle(paths)
    assert len(paths) >= n
    return paths[:n]


def app_for(guard: Guard, *, catch_all: bool = False) -> FastAPI:
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

    @app.get("/users/{name}")
    def user(name: str) -> dict[str, str]:
        if name != "ann":
            raise HTTPException(404)
        return {"user": name}

    sub = FastAPI()

    @sub.get("/ping")
    def ping() -> dict[str, str]:
        return {"pong": "yes"}

    app.mount("/v2", sub)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if catch_all:

        @app.get("/{path:path}")
        def spa(path: str) -> None:
            raise HTTPException(404)

    return app


def client(guard: Guard, ip: str, **kw: Any) -> TestClient:
    return TestClient(app_for(guard, **kw), client=(ip, 40_000))


def walk(
    c: TestClient,
    clock: FakeClock,
    paths: list[str],
    headers: Any = None,
    method: str = "GET",
    gap: float = 3.0,
) -> list[int]:
    """Each path once; `headers` a dict, or a callable of the index."""
    out = []
    for i, path in enumerate(paths):
        clock.advance(gap)
        h = headers(i) if callable(headers) else headers
        out.append(c.request(method, path, headers=h).status_code)
    return out


def raw_get(app: Any, path: str, ip: str) -> int:
    """One GET of exactly `path` straight into the ASGI app (no client normalising it)."""
    import asyncio

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
        "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
        "query_string": b"", "root_path": "", "headers": [(b"host", b"testserver")],
        "client": (ip, 40_000), "server": ("testserver", 80),
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return int(next(m["status"] for m in sent if m["type"] == "http.response.start"))


def refused_at(statuses: list[int]) -> int | None:
    return next((i for i, s in enumerate(statuses) if s in (403, 429)), None)


def at_floor(statuses: list[int], floor: int = 30) -> bool:
    """Refused from the request after the `floor`th distinct path (the sketch's estimate
    may lag by a path or two)."""
    first = refused_at(statuses)
    return first is not None and floor <= first <= floor + 3


# -- what holds -----------------------------------------------------------------------


def test_baseline_wordlist_scan_from_one_address_is_banned_at_the_floor() -> None:
    clock = FakeClock(START)
    c = client(Guard(clock=clock), "192.0.2.10")
    statuses = walk(c, clock, wordlist(60))
    assert at_floor(statuses), statuses
    assert set(statuses[refused_at(statuses) :]) == {403}


def test_path_variants_count_apart_so_varying_them_buys_nothing() -> None:
    """Case, double slashes, encoded characters, `..` and dot segments reach the detector
    as distinct paths (only a trailing slash and id-like segments fold): an attacker
    cannot make many probes count as one with them."""
    clock = FakeClock(START)
    c = client(Guard(clock=clock), "192.0.2.11")
    paths = []
    for w in WORDS[:12]:
        paths += [f"/{w}", f"/{w.upper()}", f"http://testserver//{w}"]
    statuses = walk(c, clock, [*paths, "/products/1", "/products/2"])
    assert at_floor(statuses), statuses
    clock2 = FakeClock(START)
    app = app_for(Guard(clock=clock2))
    odd = []
    for w in WORDS[:10]:
        odd += [f"/{w}%2e", f"/x/../{w}", f"/./{w}/", f"/{w};x"]
    statuses = []
    for path in odd:  # sent as they are (a client that does not normalise: curl --path-as-is)
        clock2.advance(3)
        statuses.append(raw_get(app, path, "192.0.2.12"))
    statuses.append(raw_get(app, "/products/1", "192.0.2.12"))
    assert at_floor(statuses), statuses


def test_a_trailing_slash_is_one_path() -> None:
    clock = FakeClock(START)
    c = client(Guard(clock=clock), "192.0.2.13")
    paths = [p for w in WORDS for p in (f"/{w}", f"/{w}/", f"/{w}//")]
    statuses = walk(c, clock, paths)  # 16 words; "//" kept apart: at most 32 shapes
    assert refused_at(statuses) is None or refused_at(statuses) >= 40, statuses


def test_unusual_methods_on_unknown_paths_count_and_405s_of_real_routes_do_not() -> None:
    """Probing with PROPFIND/DELETE: an unknown path answers 404 (counted); a real path
    answers 405 with its route's template (not counted): nothing learned for free."""
    clock = FakeClock(START)
    c = client(Guard(clock=clock), "192.0.2.14")
    for method in ("DELETE", "PUT", "PATCH", "PROPFIND", "TRACE"):
        for _ in range(8):
            clock.advance(2)
            assert c.request(method, "/products/3").status_code == 405
    assert at_floor(walk(c, clock, wordlist(40), method="PROPFIND"))


def test_ipv6_rotation_inside_one_64_is_one_actor() -> None:
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    statuses = []
    for i, path in enumerate(wordlist(40)):
        c = client(guard, f"2001:db8:1:2::{i + 1:x}")
        clock.advance(3)
        statuses.append(c.get(path).status_code)
    assert at_floor(statuses), statuses


def test_a_made_up_api_key_is_banned_and_the_ban_is_not_escaped_by_dropping_it() -> None:
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    c = client(guard, "192.0.2.15")
    statuses = walk(c, clock, wordlist(35), headers={"x-api-key": "made-up-1"})
    assert at_floor(statuses), statuses
    assert c.get("/products/1", headers={"x-api-key": "made-up-1"}).status_code == 403


def test_browser_and_platform_asset_requests_stay_under_the_floor() -> None:
    """One browser, phone and a couple of crawlers at one address: favicon, touch icons,
    robots, sitemap, manifest, .well-known files: 24 distinct paths, under 30."""
    clock = FakeClock(START)
    c = client(Guard(clock=clock), "198.51.100.20")
    statuses = walk(c, clock, ASSETS * 5)
    assert refused_at(statuses) is None, statuses


def test_health_checkers_on_a_missing_path_are_never_refused() -> None:
    clock = FakeClock(START)
    c = client(Guard(clock=clock), "10.0.0.5")
    for _ in range(300):
        clock.advance(5)
        for path in ("/healthz", "/readyz", "/livez", "/health", "/_health"):
            assert c.get(path).status_code == 404


def test_a_missing_static_file_is_not_a_probe() -> None:
    """StaticFiles mounted at /static answering 404 for missing files (a SPA's source
    maps): the mount's template is the route, nothing is counted (careless-user case)."""
    clock = FakeClock(START)
    c = client(Guard(clock=clock), "198.51.100.21")
    paths = [f"/static/js/chunk-{i}.js.map" for i in range(60)]
    assert set(walk(c, clock, paths)) == {404}


def test_routed_requests_add_no_store_work() -> None:
    """Cost: on a routed request the detector returns before any operation (a status and
    route check); an unrouted 404 adds one Tally per actor, its /24's and the site's.
    Measured (direct ASGI calls, FastAPI, 3,000 requests, best of 3): matched 246 vs
    252 us (noise), unmatched 404 40.5 vs 45.6 us with recon on (+5 us)."""
    from apiguard.detectors.base import Outcome
    from apiguard.detectors.recon import Recon

    guard = Guard(clock=FakeClock(START))
    recon = next(d for d in guard.engine.detectors if d.name == "recon")
    assert isinstance(recon, Recon)

    class Ctx:
        scope = {"path": "/products/1"}
        ip_key = "ip"
        client_ip = "192.0.2.1"
        net_key = "net"
        token_key = None
        has_cookie = False
        vouched = False
        engine = guard.engine

    ops: list[Any] = []
    for status in (200, 404, 405, 500):
        assert recon.plan(Outcome(Ctx(), status, "ip", START, None, "/p/{id}"), ops) is None
    assert ops == []
    assert recon.plan(Outcome(Ctx(), 404, "ip", START, None, None), ops) is not None
    assert len(ops) == 4  # the address's count, its /24's, the site's and this window's


def test_a_scan_spread_over_two_workers_on_redis_is_banned(redis_url: str) -> None:
    clock = FakeClock(START)
    clients = []
    for _ in range(2):
        store = RedisStore(redis.asyncio.Redis.from_url(redis_url), server_time=False, timeout=5.0)
        guard = Guard({"secret": "s" * 32}, clock=clock, store=store)
        clients.append(client(guard, "192.0.2.16"))
    statuses = []
    for i, path in enumerate(wordlist(50)):
        clock.advance(3)
        statuses.append(clients[i % 2].get(path).status_code)
    assert at_floor(statuses), statuses


ASSETS = [
    "/favicon.ico", "/robots.txt", "/sitemap.xml", "/manifest.json", "/site.webmanifest",
    "/apple-touch-icon.png", "/apple-touch-icon-precomposed.png",
    "/apple-touch-icon-120x120.png", "/apple-touch-icon-120x120-precomposed.png",
    "/apple-touch-icon-152x152.png", "/apple-touch-icon-152x152-precomposed.png",
    "/apple-touch-icon-180x180.png", "/apple-touch-icon-180x180-precomposed.png",
    "/browserconfig.xml", "/ads.txt", "/humans.txt", "/.well-known/security.txt",
    "/.well-known/change-password", "/.well-known/apple-app-site-association",
    "/.well-known/assetlinks.json", "/.well-known/traffic-advice",
    "/.well-known/openid-configuration", "/.well-known/gpc.json", "/security.txt",
]  # fmt: skip


def test_probes_under_a_mounted_sub_app_are_counted() -> None:
    """`app.mount("/v2", FastAPI())`: the sub-app's router answering 404 is unmatched."""
    clock = FakeClock(START)
    c = client(Guard(clock=clock), "192.0.2.30")
    assert at_floor(walk(c, clock, ["/v2" + p for p in wordlist(40)]))


def test_a_catch_all_route_and_handler_404s_are_left_to_bola_which_catches_them() -> None:
    """Careless user: `/{path:path}` raising 404, and `/users/{name}` answering 404 for
    unknown names, are routed (not recon's); BOLA's error detector refuses at 15."""
    users = [f"/users/u{i}x" for i in range(40)]
    for kw, paths in (({"catch_all": True}, wordlist(40)), ({}, users)):
        clock = FakeClock(START)
        statuses = walk(client(Guard(clock=clock), "192.0.2.32", **kw), clock, paths)
        first = refused_at(statuses)
        # (15, and up to 18 with the per-process random secret: the distinct count is a
        # sketch's estimate, its collisions differ from process to process)
        assert first is not None and first <= 19, statuses


def test_flask_custom_404_handler_still_counts() -> None:
    from flask import Flask, jsonify

    from apiguard.flask import init_app

    clock = FakeClock(START)
    app = Flask("rev8")
    init_app(app, Guard(clock=clock))

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> Any:
        return {"item": item_id}

    @app.errorhandler(404)
    def not_found(_e: Any) -> Any:
        return jsonify(error="not here"), 404

    c = app.test_client()
    statuses = []
    for path in wordlist(40):
        clock.advance(3)
        statuses.append(c.get(path, environ_base={"REMOTE_ADDR": "192.0.2.40"}).status_code)
    assert at_floor(statuses), statuses


# -- findings -------------------------------------------------------------------------


# Fixed (was a strict xfail): finding 1 (bypass), high: an unvouched made-up credential is
# the principal, so a scan splits over junk keys. `Bearer <random>` per probe: 100 probes
# answered, then only new_credentials_per_ip's 429 (no ban); x-api-key rotated every 29
# probes: 120 probes, 0 refused (up to 100 keys x 29 = 2,900 probes/h/address vs floor 30).
@pytest.mark.parametrize("header", ["bearer-per-probe", "api-key-per-29"])
def test_made_up_credentials_do_not_split_a_scan(header: str) -> None:
    clock = FakeClock(START)
    c = client(Guard(clock=clock), "192.0.2.50")

    def creds(i: int) -> dict[str, str]:
        if header == "bearer-per-probe":
            return {"authorization": f"Bearer {uuid.uuid4().hex}"}
        return {"x-api-key": f"junk-{i // 29}"}

    statuses = walk(c, clock, wordlist(120), headers=creds)
    assert refused_at(statuses) is not None and refused_at(statuses) <= 33, statuses


# Fixed (was a strict xfail): finding 2 (bypass), medium: two throwaway accounts logged
# in once from the scanner's address made it 'shared': 115-120 anonymous probes answered
# per hour (4x) instead of 30, then only challenged. The factor is now half the people
# the address logged in (2 or 3: 1x; 8 or more: 4x).
def test_two_cheap_logins_do_not_buy_a_scanner_four_times_the_floor() -> None:
    clock = FakeClock(START)
    c = client(Guard(clock=clock), "192.0.2.51")
    for user in ("throwaway1", "throwaway2"):
        assert c.post("/login", headers={"x-user": user}).status_code == 200
    statuses = walk(c, clock, wordlist(120))
    first = refused_at(statuses)
    assert first is not None and first <= 60, statuses


# Fixed (was a strict xfail): finding 3 (bypass, documented), low-medium: five IPv4
# addresses in one /24 probing 25 paths each (125 distinct paths in 30 min) were never
# refused; IPv6 was grouped by /64, IPv4 not at all.
def test_a_scan_rotating_through_one_ipv4_24_is_caught() -> None:
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    statuses = []
    for i, path in enumerate(wordlist(125)):
        clock.advance(15)
        statuses.append(client(guard, f"203.0.113.{10 + i // 25}").get(path).status_code)
    assert refused_at(statuses) is not None, statuses


# Fixed (was a strict xfail): finding 4 (honest users banned + cheap DoS), high: a corporate
# proxy or CDN edge many people use without logging in (no trusted_proxies): 60 people, each
# one or two asset/stale paths (26 assets + a few typos, 34 distinct) ban the address for
# all at about the 30th distinct path; an attacker needs 30 GETs through it to lock everyone
# out for the ban's length.
def test_an_anonymous_shared_proxy_is_not_banned_by_its_people() -> None:
    clock = FakeClock(START)
    c = client(Guard(clock=clock), "198.51.100.80")
    rng = random.Random(4)
    typos = ["/prodcts/1", "/product/2", "/login/x", "/docs/old", "/v1/products/3x",
             "/api/products", "/products/abc/reviews", "/Login"]  # fmt: skip
    statuses = []
    for person in range(60):
        for path in rng.sample(ASSETS, 2) + ([typos[person % 8]] if person % 3 == 0 else []):
            clock.advance(rng.uniform(5, 40))
            statuses.append(c.get(path).status_code)
        clock.advance(5)
        # (each person's own product: a walk over ids 0..59 in order is BOLA's to refuse)
        statuses.append(c.get(f"/products/{rng.randrange(1, 5000)}").status_code)
    assert refused_at(statuses) is None, statuses


# Fixed (was a strict xfail): finding 5 (honest user banned), medium-high: an old mobile app
# calling a removed `/v1/articles/{slug}` while its user scrolls 40 articles in 20 min:
# slugs are not folded like ids, 40 distinct paths, the address (often a carrier NAT) banned
# at the 30th; same for a crawler revisiting 40 stale public-docs URLs.
@pytest.mark.parametrize("who", ["mobile-app", "docs-crawler"])
def test_removed_routes_called_with_slugs_are_one_path(who: str) -> None:
    clock = FakeClock(START)
    c = client(Guard(clock=clock), "100.64.3.7")
    rng = random.Random(2)
    words = ["how", "to", "fix", "python", "api", "rate", "limit", "guide", "best", "new"]
    slugs = ["-".join(rng.sample(words, 4)) + f"-{rng.randrange(10**6)}" for _ in range(40)]
    base = "/v1/articles/" if who == "mobile-app" else "/docs/guides/"
    statuses = walk(c, clock, [base + s for s in slugs], gap=30)
    statuses.append(c.get("/products/1").status_code)
    assert refused_at(statuses) is None, statuses


@pytest.mark.xfail(
    strict=True,
    reason="finding 6 (Redis/multi-worker difference), medium: 'shared' is per process: an "
    "office where ann logged in on worker A and bob on worker B is one person to each; "
    "40 stale links across both workers: the office is banned at ~30 on Redis (it is held "
    "to 120 and never banned in one process).",
)
def test_an_office_across_two_workers_on_redis_is_not_banned(redis_url: str) -> None:
    clock = FakeClock(START)
    workers = []
    for _ in range(2):
        store = RedisStore(redis.asyncio.Redis.from_url(redis_url), server_time=False, timeout=5.0)
        guard = Guard({"secret": "s" * 32}, clock=clock, store=store)
        workers.append(client(guard, "198.51.100.90"))
    for worker, user in zip(workers, ("ann", "bob"), strict=True):
        assert worker.post("/login", headers={"x-user": user}).status_code == 200
    statuses = []
    for i, path in enumerate(wordlist(40, seed=11)):
        clock.advance(30)
        statuses.append(workers[i % 2].get(path).status_code)
    statuses.append(workers[0].get("/products/1").status_code)
    assert refused_at(statuses) is None, statuses


# Fixed (was a strict xfail): finding 7 (careless user), medium: a SPA served by
# `app.mount('/', StaticFiles(html=True))` takes every unmatched path: the mount's 404
# carries a template, recon never counts; 60 wordlist probes, 0 refused (BOLA sees no
# object).
def test_a_root_static_mount_does_not_blind_the_detector() -> None:
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    app = app_for(guard)
    app.mount("/", StaticFiles(directory=STATIC, html=True), name="spa")
    c = TestClient(app, client=("192.0.2.60", 40_000))
    statuses = walk(c, clock, wordlist(60))
    assert refused_at(statuses) is not None, statuses
