"""Adversarial review of the scraping detector (`apiguard.detectors.scraping`).

Two ways: as an AI-driven scraper harvesting a catalogue from rotating addresses while the
detector is on, and as (or against) honest people, who must never be refused. Every test
here is a finding: it fails on the code as reviewed and passes once the finding is fixed.
The app, clients and clock are those of `test_detect_scraping` (the real FastAPI app
through `AsgiDriver`, on a `FakeClock`).
"""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi import Request as FastAPIRequest
from starlette.responses import Response as StarletteResponse

from apiguard import Guard, identify
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock
from apiguard.simulate.driver import AsgiDriver
from detection_support import is_challenge, public_ip, run
from test_detect_scraping import (
    PRODUCTS,
    SHAPES,
    START,
    Shop,
    Visitor,
    browser_headers,
    product_path,
    scraper_requests,
)

ROUTE = "/products/{product_id}"


def status_of(resp: Any) -> int:
    """403 for the scraping challenge, else the status."""
    return 403 if is_challenge(resp) else int(resp.status)


async def bot_read(shop: Shop, path: str, ip: str | None = None, **kw: Any) -> Any:
    """One read by a scraper's client: a fresh address and browser headers, no jar."""
    rng = shop.rng
    bot = Visitor(shop.driver, browser_headers(rng), ip or public_ip(rng), jar=None, solves=False)
    for name, value in kw.items():
        setattr(bot, name, value)
    return await bot.get(path)


async def start_surge_from_one_48(shop: Shop, prefix: str = "2001:db8:77") -> list[int]:
    """An attacker with one IPv6 /48 (65,536 /64s, each its own address to apiguard) sends
    one read from each of 70 /64s, 5 s apart: six minutes, 70 requests."""
    out = []
    for i in range(70):
        shop.clock.advance(5.0)
        resp = await bot_read(shop, f"/products/{i % PRODUCTS + 1}", ip=f"{prefix}:{i:x}::1")
        out.append(status_of(resp))
    return out


# -- 1. the scraper ------------------------------------------------------------------------


@pytest.mark.xfail(
    strict=True,
    reason=(
        "known limit (README, scraping): addresses are judged one-shot only `settle` (120 "
        "s) after their read, so a crawl that ends sooner is over before a surge can "
        "start"
    ),
)
def test_a_catalogue_read_within_settle_seconds_is_held() -> None:
    """Critical. A crawler reads the whole catalogue in parallel through a rotating proxy
    pool: 300 products from 300 addresses in 100 s. A surge needs `floor / 3` JUDGED new
    addresses, and an address is judged only `settle` (120 s) after its read, so nothing
    that finishes within `settle` can ever be held: here every page is admitted (the same
    holds for 2,000 pages in 110 s). The faster the scraper, the safer it is."""
    shop = Shop(seed=21)

    async def scenario() -> list[int]:
        out = []
        for pid in range(1, PRODUCTS + 1):
            shop.clock.advance(100.0 / PRODUCTS)
            out.append(status_of(await bot_read(shop, f"/products/{pid}")))
        return out

    statuses = run(scenario())
    assert statuses.count(200) <= PRODUCTS // 2, (
        f"{statuses.count(200)} of {PRODUCTS} pages read in 100 s from rotating addresses"
    )


@pytest.mark.xfail(
    strict=True,
    reason=(
        "known limit (README, scraping): the one-shot share is a fixed bar (0.8), not "
        "learned per route: a scraper that sends a second read from one address in four "
        "stays under it"
    ),
)
def test_a_scraper_whose_every_fourth_address_reads_a_second_page_is_held() -> None:
    """High. The README concedes a scraper sending two or more requests from EACH address
    (saying per-address limits and BOLA see it: they do not, at two requests). But a
    quarter of the addresses reading a second product is enough: the one-shot share drops
    to ~0.75, under `one_shot_share` (0.8), and no surge ever starts. The second read is
    itself a harvested page, so this costs the scraper nothing. Measured: 294 of 300
    products in about an hour, 0 challenges."""
    shop = Shop(seed=22)
    rng = random.Random(23)

    async def scenario() -> tuple[list[int], set[int]]:
        out: list[int] = []
        got: set[int] = set()
        for n, (wait, ip, headers) in enumerate(scraper_requests(rng, 4.0, 900)):
            shop.clock.advance(wait)
            bot = Visitor(shop.driver, headers, ip, jar=None, solves=False)
            for _ in range(2 if n % 4 == 0 else 1):
                pid = rng.randint(1, PRODUCTS)
                resp = await bot.get(f"/products/{pid}")
                out.append(status_of(resp))
                if resp.status == 200:
                    got.add(pid)
                shop.clock.advance(rng.uniform(1.0, 5.0))
        return out, got

    statuses, got = run(scenario())
    assert 403 in statuses, "no surge: every fourth address reading a second page hides it"
    assert len(got) <= PRODUCTS // 2, f"{len(got)} of {PRODUCTS} products harvested"


@pytest.mark.xfail(
    strict=True,
    reason=(
        "known limit (README, scraping): an anonymous address reading a public catalogue "
        "in depth is counted by no detector (BOLA never flags an address for the number "
        "of objects); only the per-address limit applies"
    ),
)
def test_three_sticky_addresses_reading_the_whole_catalogue_are_held() -> None:
    """High. The README excuses the detector from scrapers that send two or more requests
    per address: "per-address limits and BOLA see the first". They do not: BOLA never
    counts the objects of an anonymous address (only a sequential walk or a 403/404
    share: "an office browsing a public catalogue reads many"), and the per-address limit
    is 3000/minute. The scraping detector counts an address once per route. So no
    rotation is needed at all: three residential addresses reading the 300 products in
    random order, one request every 2-4 s each, get every page in ten minutes. (Measured
    with one address and 300 reads: all admitted.)"""
    shop = Shop(seed=41)
    rng = random.Random(42)
    ids = rng.sample(range(1, PRODUCTS + 1), PRODUCTS)

    async def scenario() -> set[int]:
        bots = [
            Visitor(shop.driver, browser_headers(rng), public_ip(rng), jar=None, solves=False)
            for _ in range(3)
        ]
        got: set[int] = set()
        for n, pid in enumerate(ids):
            shop.clock.advance(rng.uniform(0.7, 1.3))
            resp = await bots[n % 3].get(f"/products/{pid}")
            if resp.status == 200:
                got.add(pid)
        return got

    got = run(scenario())
    assert len(got) <= PRODUCTS // 2, f"{len(got)} of {PRODUCTS} products from 3 addresses"


def test_a_scraper_at_one_and_a_half_times_the_floor_per_window_is_held() -> None:
    """Medium. The documented rule: a surge when the new readers within `window` (30 min)
    reach `floor` (60). But `reads = cur + old * weight` over two HALF-window generations
    is the count over the last half window (15 min), so the effective floor is 60 per 15
    min = 120 per window (and the learned baseline, doubled "per window", is compared with
    a half-window count: the effective factor is 6, not 3). A scraper at 90 new addresses
    per 30 min (1.5 x the floor, no baseline yet) runs for four hours unheld."""
    shop = Shop(seed=24)
    rng = random.Random(25)

    async def scenario() -> list[int]:
        out = []
        for wait, ip, headers in scraper_requests(rng, 20.0, 720):  # 90 / 30 min, 4 h
            shop.clock.advance(wait)
            bot = Visitor(shop.driver, headers, ip, jar=None, solves=False)
            out.append(status_of(await bot.get(f"/products/{rng.randint(1, PRODUCTS)}")))
        return out

    statuses = run(scenario())
    assert 403 in statuses, f"{statuses.count(200)} one-shot reads at 1.5 x floor, none held"


def test_a_malformed_pass_cookie_does_not_make_the_scraper_invisible() -> None:
    """High. `pass_valid` checks `until.isdigit()` and then calls `int(until)`; a
    superscript digit (byte 0xB9, '¹', latin-1, allowed as obs-text by HTTP servers) is a
    digit to `str.isdigit` but not to `int`: ValueError. In `Scraping.plan` the engine
    catches it and drops the detector for that request, AFTER the address was recorded and
    BEFORE the read was counted: a scraper that sends `Cookie: apiguard_pass=¹` on every
    request is never counted, and no surge ever starts."""
    shop = Shop(seed=26)
    rng = random.Random(27)

    async def scenario() -> list[int]:
        out = []
        for wait, ip, headers in scraper_requests(rng, 4.0, 400):
            shop.clock.advance(wait)
            bot = Visitor(shop.driver, headers, ip, jar={"apiguard_pass": "\u00b9"}, solves=False)
            out.append(status_of(await bot.get(f"/products/{rng.randint(1, PRODUCTS)}")))
        return out

    statuses = run(scenario())
    assert 403 in statuses and statuses.index(403) < 150
    assert statuses[-100:].count(200) == 0


def test_a_malformed_pass_cookie_during_a_surge_is_challenged_not_a_server_error() -> None:
    """High (same root). During a surge `holds` calls `_person` -> `pass_valid` from the
    checkpoint, outside any try: the ValueError escapes the middleware (a 500 from the
    server) for every new reader that sends the cookie, and the login gate's `pass_valid`
    call (engine `_login_gate`) raises the same way."""
    shop = Shop(seed=28)
    rng = random.Random(29)

    async def scenario() -> list[int]:
        for wait, ip, headers in scraper_requests(rng, 4.0, 200):
            shop.clock.advance(wait)
            await Visitor(shop.driver, headers, ip, jar=None, solves=False).get("/products/3")
        out = []
        for _ in range(5):
            shop.clock.advance(3.0)
            bot = Visitor(
                shop.driver, browser_headers(rng), public_ip(rng), jar={"apiguard_pass": "\u00b9"}
            )
            bot.solves = False
            out.append(status_of(await bot.get("/products/4")))
        return out

    assert run(scenario()) == [403] * 5


def test_identify_in_a_middleware_before_routing_still_holds_the_scraper(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """High. An app whose auth middleware calls `identify(user or None)` on every request
    (the Django pattern the README names, or a FastAPI `@app.middleware("http")`) runs the
    checkpoint before routing: `_scraping_gate` sees `ctx.route is None`, holds nothing,
    and sets `global_done`, so no later checkpoint asks again. The surge is detected and
    logged as "challenge", and every one of the scraper's 600 reads is admitted."""
    clock = FakeClock(START)
    guard = Guard({"detection": {"challenge_path": "/challenge"}}, clock=clock)
    app = FastAPI()

    @app.middleware("http")
    async def authenticate(request: FastAPIRequest, call_next: Any) -> StarletteResponse:
        token = request.headers.get("authorization")
        identify(token.removeprefix("Bearer ") if token else None)
        response: StarletteResponse = await call_next(request)
        return response

    app.add_middleware(GuardMiddleware, guard=guard)  # outermost, as the README says

    @app.get("/products/{product_id}")
    async def product(product_id: int) -> dict[str, int]:
        return {"id": product_id}

    driver = AsgiDriver(app)
    rng = random.Random(30)

    async def scenario() -> list[int]:
        out = []
        for wait, ip, headers in scraper_requests(rng, 4.0, 600):
            clock.advance(wait)
            bot = Visitor(driver, headers, ip, jar=None, solves=False)
            out.append(status_of(await bot.get(f"/products/{rng.randint(1, PRODUCTS)}")))
        return out

    with caplog.at_level(logging.WARNING, logger="apiguard"):
        statuses = run(scenario())
    assert any("scraping.surge" in r.getMessage() for r in caplog.records)  # detected...
    assert statuses[-100:].count(200) == 0, "...and yet never held"


def test_solved_captchas_during_a_surge_do_not_raise_the_bar_for_one_shot_scraping() -> None:
    """Medium. During a surge the baseline learns from the people (new addresses with a
    valid pass), so that organic visitors end it. A CAPTCHA farm is people too: 33 solved
    challenges (cents at a solving service), each pass replayed from 8 new addresses,
    end the surge and leave a baseline of ~175 (threshold ~520 per window). That baseline
    never decays while the scraper stays one-shot (a mostly one-shot calm period teaches
    nothing), so a scraper at 300 one-shot addresses per 30 min (5 x the floor) then reads
    unheld."""
    shop = Shop(seed=31)
    rng = random.Random(32)

    async def scenario() -> list[int]:
        for wait, ip, headers in scraper_requests(rng, 4.0, 150):  # starts the surge
            shop.clock.advance(wait)
            await Visitor(shop.driver, headers, ip, jar=None, solves=False).get("/products/1")
        for _ in range(4 * 20):  # an hour: 20 solved challenges a quarter (while asked)
            solver = Visitor(shop.driver, browser_headers(rng), public_ip(rng), jar={})
            await solver.get(f"/products/{rng.randint(1, PRODUCTS)}")
            for _ in range(7):
                shop.clock.advance(900 / 20 / 8)
                replay = Visitor(
                    shop.driver, browser_headers(rng), public_ip(rng), jar=dict(solver.jar or {})
                )
                replay.solves = False
                await replay.get(f"/products/{rng.randint(1, PRODUCTS)}")
            shop.clock.advance(900 / 20 / 8)
        out = []
        for wait, ip, headers in scraper_requests(rng, 6.0, 1200):  # 300 / 30 min, 2 h
            shop.clock.advance(wait)
            bot = Visitor(shop.driver, headers, ip, jar=None, solves=False)
            out.append(status_of(await bot.get(f"/products/{rng.randint(1, PRODUCTS)}")))
        return out

    statuses = run(scenario())
    assert statuses[-600:].count(200) <= 60, (
        f"{statuses.count(200)} of 1200 one-shot reads admitted after the farm's passes"
    )


def test_the_same_catalogue_under_four_templates_does_not_quadruple_the_floor() -> None:
    """Low. Counts, floors and baselines are per route template. The catalogue of the test
    app is served under four templates (a route, a sync route, a nested router's, a
    mounted app's: like /v1 and /v2 of a real API): a scraper that deals its reads across
    them at 50 new addresses per template per 30 min (200 in all, 3.3 x the floor) was
    never held. Fixed: the site-wide count sees 200 one-shot new addresses."""
    shop = Shop(seed=33)
    rng = random.Random(34)

    async def scenario() -> list[int]:
        out = []
        for n, (wait, ip, headers) in enumerate(scraper_requests(rng, 9.0, 1600)):  # 4 h
            shop.clock.advance(wait)
            bot = Visitor(shop.driver, headers, ip, jar=None, solves=False)
            path = product_path(SHAPES[n % len(SHAPES)], rng.randint(1, PRODUCTS))
            out.append(status_of(await bot.get(path)))
        return out

    statuses = run(scenario())
    assert 403 in statuses, "200 one-shot new addresses per 30 min across 4 templates"


# -- 2. honest people, and attacks on them -------------------------------------------------


def test_one_address_cannot_keep_a_surge_on_for_hours() -> None:
    """High (denial of service on new visitors). Six minutes of reads from 70 /64s of one
    /48 start a surge (IPv6 /64s cost nothing). Then ONE address reading every 20 s keeps
    it on: each read `holds` refuses is counted again as a new reader (the address is
    never answered, so never known), and the surge ends only when the new readers fall
    under 0.7 x threshold. Two hours later every new visitor is still challenged; one
    that cannot solve (an API integration the app does not identify, a native app, a
    feed reader) is refused. Measured: still refused after six hours."""
    shop = Shop(seed=35)

    async def scenario() -> int:
        started = await start_surge_from_one_48(shop)
        assert 403 in started
        for _ in range(360):  # 2 h, one read every 20 s from one address
            shop.clock.advance(20.0)
            await bot_read(shop, "/products/1", ip="2001:db8:77:ffff::1")
        shop.clock.advance(5.0)
        integration = await bot_read(shop, "/products/9")  # no jar, cannot solve
        return status_of(integration)

    assert run(scenario()) == 200


def test_an_app_without_a_challenge_route_never_refuses_new_visitors_by_default() -> None:
    """High. The detector is on and enforcing by default, and `detection.challenge_path`
    is None by default: nothing tells apiguard whether the app HAS a challenge route. In an
    app that has none (most apps: the README says to run it in monitor mode then, which a
    careless user never reads), the same cheap /48 trigger makes every new visitor of the
    route receive a challenge nobody can pass: refused, for at least a window."""
    clock = FakeClock(START)
    guard = Guard(None, clock=clock)  # default settings
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.get("/products/{product_id}")
    async def product(product_id: int) -> dict[str, int]:
        return {"id": product_id}

    shop = Shop(seed=36)
    shop.clock = clock
    shop.guard = guard
    shop.driver = AsgiDriver(app)

    async def scenario() -> list[tuple[str, int]]:
        started = await start_surge_from_one_48(shop)
        assert set(started) == {200}  # found (below), reported, nobody held
        scraping = next(d for d in guard.engine.detectors if d.name == "scraping")
        assert scraping.surging  # type: ignore[attr-defined]
        for _ in range(20):  # honest new visitors over the next 20 minutes
            shop.clock.advance(60.0)
            v = shop.visitor()
            for _ in range(3):
                await v.get(f"/products/{shop.rng.randint(1, PRODUCTS)}")
                shop.clock.advance(8.0)
        return shop.refused_people()

    refused = run(scenario())
    assert refused == [], f"{len(refused)} reads of honest new visitors refused"


def test_an_attacker_cannot_put_the_challenge_page_itself_under_a_surge() -> None:
    """High. The usual challenge flow is a page (GET /challenge, the CAPTCHA) and its form
    (POST /challenge, which calls `challenge_passed()`). `detection.challenge_path` is
    None by default, so the GET page is a watched route like any other: 70 one-shot reads
    of it from one /48 put it under a surge of its own. Then, with the product route
    under a surge too (another 70 reads), a new visitor is challenged on the product and
    challenged again on the challenge page: nobody new can pass, everyone new is refused.
    (`_surge` excludes only a template equal to `challenge_path`; the engine's own
    `_not_challenged_here` is not consulted by the scraping gate.)"""
    clock = FakeClock(START)
    # (declared: without a challenge route a surge holds nobody, tested above)
    guard = Guard({"detection": {"challenge_path": "/challenge"}}, clock=clock)
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.get("/products/{product_id}")
    async def product(product_id: int) -> dict[str, int]:
        return {"id": product_id}

    @app.get("/challenge")
    async def challenge_page() -> dict[str, str]:
        return {"captcha": "..."}

    @app.post("/challenge")
    async def challenge_answer() -> dict[str, bool]:
        guard.challenge_passed()
        return {"passed": True}

    shop = Shop(seed=43)
    shop.clock, shop.guard, shop.driver = clock, guard, AsgiDriver(app)

    async def scenario() -> list[int]:
        for i in range(70):  # the challenge page, one read from each of 70 /64s
            shop.clock.advance(5.0)
            await bot_read(shop, "/challenge", ip=f"2001:db8:99:{i:x}::1")
        assert 403 in await start_surge_from_one_48(shop)
        out = []
        for _ in range(10):  # new visitors, each a person who solves the CAPTCHA
            shop.clock.advance(30.0)
            v = shop.visitor()
            first = await v.send("GET", "/products/7")
            if is_challenge(first):
                page = await v.send("GET", "/challenge")
                if page.status == 200:
                    await v.send("POST", "/challenge")
            out.append(status_of(await v.send("GET", "/products/7")))
        return out

    assert run(scenario()) == [200] * 10


def test_people_who_pass_in_the_same_second_each_get_their_own_pass() -> None:
    """Medium. `pass_value` is `until.mac(until)`: everyone who passes within one second
    gets the SAME cookie value, and `_person` allows one value `pass_addresses` (8)
    addresses. On a busy site under a surge, the 9th person to pass in that second is
    challenged again right after solving (refused on the retry); and a scraper that
    solves one challenge a second and replays each value from 8 addresses at once uses up
    the pass of every honest person who passed in the same second."""
    shop = Shop(seed=37)
    rng = random.Random(38)

    async def scenario() -> list[tuple[str, int]]:
        for wait, ip, headers in scraper_requests(rng, 4.0, 200):
            shop.clock.advance(wait)
            await Visitor(shop.driver, headers, ip, jar=None, solves=False).get("/products/5")
        people = [shop.visitor() for _ in range(12)]
        shop.clock.advance(1.0 - shop.clock() % 1.0 + 0.1)  # the start of a second
        for v in people:  # twelve people solve within it
            await v.get("/products/5")
            shop.clock.advance(0.05)
        shop.clock.advance(5.0)
        for v in people:
            await v.get("/products/6")
        return shop.refused_people()

    refused = run(scenario())
    assert refused == [], f"{len(refused)} reads refused to people who had just passed"


def test_a_scraping_route_floor_with_a_misspelt_template_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Medium (careless user). The README's advice for a route whose honest traffic is one
    request per address: `detection.scraping.routes = {"/badge/{id}": 0}`. Written as
    `/products/{id}` for the app's `/products/{product_id}`, the "off" silently never
    applies (`_check_route_settings` checks `bola.routes` only) and the route stays
    watched: its one-shot readers are challenged. Safe: a ConfigurationError at start-up,
    or at least a warning naming the template."""
    shop = Shop(seed=39, detection={"scraping": {"routes": {"/products/{id}": 0}}})
    rng = random.Random(40)

    async def scenario() -> list[int]:
        out = []
        for wait, ip, headers in scraper_requests(rng, 4.0, 300):
            shop.clock.advance(wait)
            bot = Visitor(shop.driver, headers, ip, jar=None, solves=False)
            out.append(status_of(await bot.get(f"/products/{rng.randint(1, PRODUCTS)}")))
        return out

    caplog.set_level(logging.INFO, logger="apiguard")
    try:
        statuses = run(scenario())
    except Exception as exc:  # a ConfigurationError at start-up is the safe outcome
        assert "/products/{id}" in str(exc)
        return
    warned = any(
        "/products/{id}" in r.getMessage() and "scraping" in r.getMessage() for r in caplog.records
    )
    assert warned or 403 not in statuses, "the typo was silent and the route stayed watched"


def test_a_lowercase_method_is_a_read_on_a_wsgi_app() -> None:
    """Medium (WSGI only; shown on Flask, as the ASGI app answers 405). Werkzeug and
    Django route a request by `REQUEST_METHOD.upper()`, so `get /products/5` is served as
    a GET; the WSGI adapter passes the method as sent, and the detector compares it with
    {"GET", "HEAD"}: a scraper that writes its method in lower case is never counted. A
    server that passes the method through (Werkzeug's own, uWSGI) makes it a complete
    bypass: measured, 400 of 400 one-shot reads admitted, where "GET" is held after 60."""
    import io
    import sys

    from flask import Flask

    from apiguard.flask import init_app

    clock = FakeClock(START)
    guard = Guard({"detection": {"challenge_path": "/challenge"}}, clock=clock)
    app = Flask(__name__)
    init_app(app, guard)

    @app.get("/products/<int:pid>")
    def product(pid: int) -> dict[str, int]:
        return {"id": pid}

    def call(method: str, path: str, ip: str) -> int:
        environ = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "QUERY_STRING": "",
            "SERVER_NAME": "shop.example",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": ip,
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(b""),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        started: list[str] = []
        b"".join(app.wsgi_app(environ, lambda status, headers, exc=None: started.append(status)))
        return int(started[0].split()[0])

    rng = random.Random(44)
    statuses = []
    for _ in range(400):
        clock.advance(rng.uniform(1.2, 6.8))
        statuses.append(call("get", f"/products/{rng.randint(1, PRODUCTS)}", public_ip(rng)))
    assert 403 in statuses and statuses[-100:].count(200) == 0
