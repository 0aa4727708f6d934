"""Review s24 (adversarial, default configuration): honest populations refused or
challenged, and attacks not held, on the shop of `detection_support` (a JSON login, a
sign-up flow, `/orders/{order_id}` with the BOLA bug, a `/challenge` route) driven in
process on a fake clock. Each finding asserts the right behaviour and is a strict xfail
while it fails; controls that pass guard the figures."""

from __future__ import annotations

import asyncio
import heapq
import random
from typing import Any

import pytest
from fastapi import Cookie, FastAPI, Header, HTTPException

from apiguard import Guard, identify
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock
from apiguard.simulate.driver import AsgiDriver
from detection_support import (
    BROWSERS,
    Client,
    Credentials,
    build_app,
    is_challenge,
    orders_of,
    public_ip,
)
from detection_support import run_quietly as run

START = 3_000_000.0
SECRET = "review-s24-secret-0123456789"
NAT = "198.51.100.7"


def _shop(config: dict[str, Any] | None = None) -> tuple[Guard, FakeClock, AsgiDriver]:
    clock = FakeClock(START)
    guard = Guard({"secret": SECRET, **(config or {})}, clock=clock)
    return guard, clock, AsgiDriver(build_app(guard))


# --- 1. A campus NAT at a deadline minute: the per-address limit ------------------------


def _deadline(people: int, reads: int, span: float) -> tuple[int, int]:
    """`people` students behind one NAT address, each logging in (one in ten mistyping
    first) within `span` s and opening `reads` of their orders 0.5-3 s apart (a person
    asked to pass a challenge passes it). Returns (requests answered 200, people
    refused at least once)."""
    _, clock, driver = _shop()
    rng = random.Random(1)
    clients = [Client(driver, rng.choice(BROWSERS), NAT, jar={}) for _ in range(people)]
    queue = [(rng.uniform(0, span), i, 0) for i in range(people)]
    heapq.heapify(queue)
    served, refused = 0, set()

    async def main() -> None:
        nonlocal served
        while queue:
            t, i, step = heapq.heappop(queue)
            if START + t > clock():
                clock.advance(START + t - clock())
            c = clients[i]
            if step == 0:
                if rng.random() < 0.1:
                    await c.login(i, "wrong")
                resp, _ = await c.human_login(i)
            else:
                path = f"/orders/{orders_of(i)[(step - 1) % 12]}"
                resp = await c.send("GET", path)
                if is_challenge(resp):
                    await c.send("POST", "/challenge")
                    resp = await c.send("GET", path)
            if resp.status != 200:
                refused.add(i)
                continue
            served += 1
            if step < reads:
                heapq.heappush(queue, (t + rng.uniform(0.5, 3), i, step + 1))

    run(main())
    return served, len(refused)


@pytest.mark.xfail(
    strict=True,
    reason="300 signed-in students behind one NAT, 11 requests each in a minute: 78 "
    "refused 429 by per-ip (3000/minute), which counts vouched users' requests too",
)
def test_a_campus_nat_at_a_deadline_minute_is_served() -> None:
    served, refused = _deadline(300, 10, 60)
    assert refused == 0, (served, refused)


def test_control_half_the_campus_in_that_minute_is_served() -> None:
    served, refused = _deadline(150, 10, 60)
    assert refused == 0, (served, refused)


# --- 2. Throwaway accounts whose sign-up carries a junk cookie are never young ----------


def _harvest_with_cookie(
    cookie: dict[str, str] | None, accounts: int, reads: int, cookie_login: bool = False
) -> int:
    """An app that identifies the new user in its sign-up flow (as `build_app`, without
    `account_created()`, as the README's young-account rules allow), with one web route
    `/web/me` that knows the user by a `sid` cookie alone; 20 old users reading their
    orders; if `cookie_login`, the attacker's own account read once by its token and
    once by `sid` alone; then `accounts` throwaway accounts (one every 20-40 s, each its
    own residential address and browser) signing up with `cookie` and reading `reads`
    random foreign orders 2-6 s apart, stopping when refused. Returns orders read."""
    from test_bola_young_crowd import _random_browser

    clock = FakeClock(START)
    guard = Guard({"secret": SECRET, "detection": {"challenge_path": "/challenge"}}, clock=clock)
    app = build_app(guard)

    @app.get("/web/me")
    async def web_me(sid: str | None = Cookie(None)) -> dict[str, str]:
        if not sid:
            raise HTTPException(401)
        identify(int(sid))
        return {"user": sid}

    driver = AsgiDriver(app)
    rng = random.Random(3)
    leaked = 0

    async def main() -> None:
        nonlocal leaked
        for u in range(20):
            c = Client(driver, BROWSERS[u % 4], public_ip(rng), jar={})
            await c.login(u)
            for o in orders_of(u)[: rng.randint(2, 8)]:
                clock.advance(1)
                await c.send("GET", f"/orders/{o}")
        if cookie_login:
            attacker = Client(driver, BROWSERS[0], public_ip(rng), jar={})
            assert (await attacker.login(25)).status == 200
            clock.advance(2)
            assert (await attacker.send("GET", "/me")).status == 200
            attacker.token = None
            attacker.jar = {"sid": "25"}
            clock.advance(5)
            assert (await attacker.send("GET", "/web/me")).status == 200
        for a in range(accounts):
            clock.advance(rng.uniform(20, 40))
            c = Client(driver, _random_browser(rng), public_ip(rng), jar=dict(cookie or {}))
            resp = await c.send("POST", "/signup", {"username": f"h{a}", "password": "pw"})
            if resp.status != 201:
                continue
            c.token = resp.json()["token"]
            for _ in range(reads):
                clock.advance(rng.uniform(2, 6))
                if (await c.send("GET", f"/orders/{rng.randrange(1, 3600)}")).status != 200:
                    break
                leaked += 1

    run(main())
    return leaked


def test_control_fresh_accounts_without_a_cookie_are_held_at_the_young_floor() -> None:
    assert _harvest_with_cookie(None, 18, 29) <= 20


def test_fresh_accounts_whose_sign_up_sends_a_junk_cookie_are_young() -> None:
    """Was 522 of 522 foreign orders read (a sign-up with any cookie was no birth); a
    cookie now changes nothing of a birth: 10."""
    assert _harvest_with_cookie({"consent": "yes"}, 18, 29) <= 60


# --- 3. A lecture hall logging in at once behind one NAT: the parallel-login cap --------


def _hall(colleagues_before: int, at_once: int) -> list[tuple[int, Any]]:
    """A login whose password check takes 50 ms (argon2 in an executor); behind one NAT,
    `colleagues_before` people log in one by one (the address is known to be shared),
    then `at_once` students press "log in" at the same moment (an exam's start). Returns
    the burst's (status, detector)."""
    clock = FakeClock(START)
    guard = Guard({"secret": SECRET, "detection": {"challenge_path": "/challenge"}}, clock=clock)
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.post("/login")
    @guard.login(username="body.username")
    async def login(body: Credentials) -> dict[str, str]:
        await asyncio.sleep(0.05)  # (the password hash)
        if body.password != "pw-" + body.username:
            raise HTTPException(401)
        return {"token": "tok"}

    driver = AsgiDriver(app)

    async def one(i: int) -> Any:
        c = Client(driver, BROWSERS[i % 4], NAT, jar={})
        name = f"s{i}@uni.example"
        return await c.send("POST", "/login", {"username": name, "password": "pw-" + name})

    async def main() -> list[tuple[int, Any]]:
        for i in range(colleagues_before):
            clock.advance(5)
            assert (await one(1000 + i)).status == 200
        clock.advance(60)
        found = await asyncio.gather(*(one(i) for i in range(at_once)))
        return [(r.status, r.json().get("detector")) for r in found]

    return list(run(main()))


def test_control_ten_students_at_once_are_served() -> None:
    assert all(status == 200 for status, _ in _hall(0, 10))


def test_a_lecture_hall_logging_in_at_once_behind_a_known_nat_is_served() -> None:
    """Was 30 of 40 refused 429 account_takeover.parallel (10 unanswered logins per
    address, whatever signed in there before); now two more for each account that
    logged in at the address (at most 100)."""
    answers = _hall(20, 40)
    assert [a for a in answers if a[0] != 200] == []


# --- 4. A signed-in user's token sent to a catalogue route that does not identify -------


def _catalogue_app(guard: Guard, clock: FakeClock) -> FastAPI:
    """A shop whose SPA sends the user's bearer token on every call (an axios
    interceptor): `/me` and `/refresh` identify the user (`jwt-<user>-<n>`), the public
    catalogue `/products/{product_id}` needs no sign-in and identifies nobody."""
    from apiguard import identify

    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    def user_of(authorization: str | None) -> int:
        if not authorization or not authorization.startswith("Bearer jwt-"):
            raise HTTPException(401)
        user = int(authorization.split("-")[1])
        identify(user)
        return user

    @app.post("/refresh")
    async def refresh(authorization: str | None = Header(None)) -> dict[str, str]:
        return {"token": f"jwt-{user_of(authorization)}-{clock()}"}

    @app.get("/me")
    async def me(authorization: str | None = Header(None)) -> dict[str, int]:
        return {"user": user_of(authorization)}

    @app.get("/products/{product_id}")
    async def product(product_id: int) -> dict[str, int]:
        return {"id": product_id}

    return app


def _browse_signed_in(send_token: bool) -> tuple[int, int]:
    """A signed-in person (its token vouched at `/me`) browsing the public catalogue,
    one product every 1-2.5 min for 2.5 hours, their SPA sending the token or not.
    Returns (products read, refused)."""
    clock = FakeClock(START)
    guard = Guard({"secret": SECRET, "detection": {"challenge_path": "/challenge"}}, clock=clock)
    driver = AsgiDriver(_catalogue_app(guard, clock))
    rng = random.Random(5)

    async def main() -> tuple[int, int]:
        for k in range(3):  # (outside anonymous readers: the catalogue is public)
            await Client(driver, BROWSERS[0], f"81.2.{k}.9", jar=None).send(
                "GET", f"/products/{k + 1}"
            )
        person = Client(driver, BROWSERS[1], "81.9.9.9", jar={}, token="jwt-7-0")
        assert (await person.send("GET", "/me")).status == 200
        if not send_token:
            person.token = None
        read = refused = 0
        for _ in range(90):
            clock.advance(rng.uniform(60, 150))
            resp = await person.send("GET", f"/products/{rng.randrange(1, 500)}")
            if resp.status == 200:
                read += 1
            else:
                refused += 1
        return read, refused

    found: tuple[int, int] = run(main())
    return found


def test_control_a_person_browsing_the_catalogue_without_the_token_is_served() -> None:
    assert _browse_signed_in(False)[1] == 0


def test_a_signed_in_person_browsing_the_catalogue_with_the_token_is_served() -> None:
    """Was 21 of 90 reads refused 403 bola.sustained (first at the 54th, 96 min; the
    token then refused on /me too): the token was taken for an API key. A token the
    app vouched for, sent to a public catalogue, is judged as an anonymous reader."""
    read, refused = _browse_signed_in(True)
    assert refused == 0, (read, refused)


def test_a_signed_in_token_walking_the_public_catalogue_is_still_held() -> None:
    """The same token walking the catalogue's ids in order (a scraper with an account):
    held as an anonymous walker is there."""
    clock = FakeClock(START)
    guard = Guard({"secret": SECRET, "detection": {"challenge_path": "/challenge"}}, clock=clock)
    driver = AsgiDriver(_catalogue_app(guard, clock))

    async def main() -> int:
        for k in range(3):
            await Client(driver, BROWSERS[0], f"81.2.{k}.9", jar=None).send(
                "GET", f"/products/{k + 1}"
            )
        walker = Client(driver, BROWSERS[1], "81.9.9.9", jar={}, token="jwt-7-0")
        assert (await walker.send("GET", "/me")).status == 200
        read = 0
        for product in range(100, 400):
            clock.advance(2)
            if (await walker.send("GET", f"/products/{product}")).status != 200:
                break
            read += 1
        return read

    assert run(main()) <= 80



def _office_refreshing(people: int, minutes: int, ttl: float) -> tuple[int, int, int]:
    """`people` colleagues behind one NAT, each with an access token of `ttl` s (refreshed
    at `/refresh`, which identifies them), reading the catalogue (which does not
    identify) with it, one read every 1-5 s among them. Returns (reads served, refused,
    people refused)."""
    clock = FakeClock(START)
    # (BOLA off on the catalogue: this is about the credential count, not finding 4)
    detection = {"challenge_path": "/challenge", "bola": {"routes": {"/products/{product_id}": 0}}}
    guard = Guard({"secret": SECRET, "detection": detection}, clock=clock)
    driver = AsgiDriver(_catalogue_app(guard, clock))
    rng = random.Random(5)
    clients = [Client(driver, BROWSERS[i % 4], NAT, jar={}) for i in range(people)]
    due = [rng.uniform(0, ttl) for _ in range(people)]
    for i, c in enumerate(clients):
        c.token = f"jwt-{i}-0"

    async def main() -> tuple[int, int, int]:
        served = refused = 0
        who: set[int] = set()
        for c in clients:  # (each signed in: its first token vouched)
            assert (await c.send("GET", "/me")).status == 200
        t = 0.0
        while t < minutes * 60:
            t += rng.uniform(1, 5)
            clock.advance(START + t - clock())
            i = rng.randrange(people)
            c = clients[i]
            if t >= due[i]:
                c.token = (await c.send("POST", "/refresh")).json()["token"]
                due[i] = t + ttl
            resp = await c.send("GET", f"/products/{rng.randrange(1, 500)}")
            if resp.status == 200:
                served += 1
            else:
                refused += 1
                who.add(i)
        return served, refused, len(who)

    found: tuple[int, int, int] = run(main())
    return found


def test_control_an_office_with_hour_long_tokens_is_served() -> None:
    assert _office_refreshing(20, 60, 3600)[1] == 0


@pytest.mark.xfail(
    strict=True,
    reason="20 colleagues behind one NAT with 5-minute access tokens sent to a catalogue "
    "route that does not identify: 544 of 1,193 reads refused 429 new-credentials-per-ip, "
    "all 20 people: each fresh token is unvouched where it is first sent (raising "
    "engine._TOKENS_VOUCHED from 4 to 16 changed nothing)",
)
def test_an_office_with_five_minute_access_tokens_is_served() -> None:
    served, refused, people = _office_refreshing(20, 60, 300)
    assert refused == 0, (served, refused, people)


# --- 5. A cookie-session app: a junk cookie per request makes every read a new session --


def _session_walk(junk: bool, sequential: bool, session: bool = True) -> list[int]:
    """A cookie-session app that does not call `identify()` (the README's cookie-session
    case) with the BOLA bug; one address with one real session cookie walks 300 orders
    (ids in order, or random), 1-3 s apart, adding a random analytics cookie to each
    request (`junk`) or not; without `session`, an anonymous walker of a route that
    asks for no session at all (an unauthenticated IDOR). Returns the statuses."""
    from apiguard.simulate.driver import Request

    clock = FakeClock(START)
    guard = Guard({"secret": SECRET, "detection": {"challenge_path": "/challenge"}}, clock=clock)
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.get("/orders/{order_id}")
    async def order(order_id: int, session_id: str | None = Cookie(None)) -> dict[str, int]:
        if session and not session_id:
            raise HTTPException(401)
        return {"id": order_id}  # BOLA: any session reads any order

    driver = AsgiDriver(app)
    rng = random.Random(7)

    async def main() -> list[int]:
        found = []
        ids = list(range(1000, 1300)) if sequential else rng.sample(range(1, 5000), 300)
        for order_id in ids:
            clock.advance(rng.uniform(1, 3))
            cookies = ["session_id=abc123"] if session else []
            if junk:
                cookies.append(f"_ga=GA1.1.{rng.getrandbits(40)}")
            headers: tuple[tuple[str, str], ...] = (("user-agent", BROWSERS[0]),)
            if cookies:
                headers += (("cookie", "; ".join(cookies)),)
            request = Request("GET", f"/orders/{order_id}", "192.0.2.88", headers, b"")
            found.append((await driver.send(request)).status)
        return found

    return list(run(main()))


@pytest.mark.parametrize("sequential", [False, True])
def test_control_a_session_walk_is_held(sequential: bool) -> None:
    assert _session_walk(False, sequential).count(200) <= 45


@pytest.mark.parametrize(
    "sequential",
    [
        pytest.param(
            False,
            marks=pytest.mark.xfail(
                strict=True,
                reason="a session walker adding a random _ga cookie per request, in random "
                "order: 300 of 300 orders read (43 without it): bola._subject hashes the "
                "whole cookie header, so each request is a new session, and its address "
                "is judged on walks and errors only",
            ),
        ),
        True,  # (was 300 of 300: its address is now judged on its walk too, 18)
    ],
)
def test_a_session_walk_with_a_junk_cookie_per_request_is_held(sequential: bool) -> None:
    assert _session_walk(True, sequential).count(200) <= 45


# --- 6. An anonymous shopper with a consent cookie browsing a public catalogue ---------


def _consent_browsing(cookie: dict[str, str] | None) -> tuple[int, int]:
    """A public catalogue (`/products/{product_id}`, three outside anonymous readers
    made it public), an office NAT where one visitor (no account) browses a product
    every 10-30 s for half an hour with `cookie` (a cookie-consent banner's) and a
    colleague without cookies browses beside them. Returns (the visitor's refusals,
    the colleague's refusals) over 90 reads each."""
    clock = FakeClock(START)
    guard = Guard({"secret": SECRET, "detection": {"challenge_path": "/challenge"}}, clock=clock)
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.get("/products/{product_id}")
    async def product(product_id: int) -> dict[str, int]:
        return {"id": product_id}

    driver = AsgiDriver(app)
    rng = random.Random(1)

    async def main() -> tuple[int, int]:
        for k in range(3):
            await Client(driver, BROWSERS[0], f"81.2.{k}.9", jar=None).send(
                "GET", f"/products/{k + 1}"
            )
        visitor = Client(driver, BROWSERS[1], NAT, jar=dict(cookie) if cookie else None)
        colleague = Client(driver, BROWSERS[2], NAT, jar=None)
        mine = theirs = 0
        for _ in range(90):
            clock.advance(rng.uniform(10, 30))
            path = f"/products/{rng.randrange(1, 500)}"
            mine += (await visitor.send("GET", path)).status != 200
            path = f"/products/{rng.randrange(1, 500)}"
            theirs += (await colleague.send("GET", path)).status != 200
        return mine, theirs

    found: tuple[int, int] = run(main())
    return found


def test_control_an_anonymous_visitor_without_cookies_browses_the_catalogue() -> None:
    assert _consent_browsing(None) == (0, 0)


def test_an_anonymous_visitor_with_a_consent_cookie_browses_the_catalogue() -> None:
    """Was banned 403 bola.sustained at the 55th product, 32 of 90 refused, and a
    cookieless colleague at the NAT 35 of 90: on a public catalogue a cookie without a
    credential is now judged as an anonymous address."""
    assert _consent_browsing({"cookieconsent_status": "dismiss"}) == (0, 0)


# --- 7. A family sharing one account from five devices on two carriers -----------------


def _family(per_carrier: int, seed: int) -> dict[str, int]:
    """One account (user 5) shared by a family for two hours: two phones on two big
    carriers whose NAT pools hop over `per_carrier` /16s of two /8s each (a big
    carrier's pool: README, *IP rotation*), a laptop and a TV app at home, a tablet at
    school; each device logged in once (its own token) and opens one of the account's
    orders every 1-4 minutes. Returns each device's refusals."""
    _, clock, driver = _shop({"detection": {"challenge_path": "/challenge"}})
    rng = random.Random(seed)
    half = per_carrier // 2
    verizon = [(174, 192 + k) for k in range(half)] + [(97, 128 + k) for k in range(half)]
    att = [(107, 64 + k) for k in range(half)] + [(166, 128 + k) for k in range(half)]

    def pool(blocks: list[tuple[int, int]]) -> Any:
        def ip() -> str:
            a, b = rng.choice(blocks)
            return f"{a}.{b}.{rng.randrange(256)}.{rng.randrange(1, 255)}"

        return ip

    devices = [
        ("mom's phone", "FamilyApp/3.1 (iPhone; iOS 17.5)", pool(verizon)),
        ("dad's phone", "FamilyApp/3.1 (Android 14; Pixel 8)", pool(att)),
        ("laptop", BROWSERS[0], lambda: "73.12.40.7"),
        ("tablet at school", BROWSERS[1], lambda: "128.95.20.33"),
        ("tv", "FamilyApp/3.1 (tvOS 17)", lambda: "73.12.40.7"),
    ]
    events = []
    for i in range(len(devices)):
        t = 0.0
        while t < 7200:
            t += rng.uniform(60, 240)
            events.append((t, i))
    events.sort()

    async def main() -> dict[str, int]:
        clients = []
        for _, ua, ip in devices:
            c = Client(driver, ua, ip(), jar={})
            assert (await c.login(5)).status == 200
            clients.append(c)
        refused = {name: 0 for name, _, _ in devices}
        for t, i in events:
            clock.advance(START + t - clock())
            name, _, ip = devices[i]
            path = f"/orders/{orders_of(5)[rng.randrange(12)]}"
            if (await clients[i].send("GET", path, ip=ip())).status != 200:
                refused[name] += 1
        return refused

    found: dict[str, int] = run(main())
    return found


def test_control_a_family_on_carriers_of_four_16s_is_served() -> None:
    assert sum(_family(4, 1).values()) == 0


@pytest.mark.xfail(
    strict=True,
    reason="one account shared by 5 devices (two phones on carriers hopping 6 /16s of "
    "two /8s each, home, school): banned by rotation, 126 requests refused in 2 h (the "
    "laptop at home 46): the family's places together pass the /8 spread gate",
)
def test_a_family_sharing_one_account_on_two_carriers_is_served() -> None:
    refused = _family(6, 1)
    assert sum(refused.values()) == 0, refused


# --- 8. A route where a few objects are shared by link is "public": harvests go free --


def _link_shared_harvest(public_first: bool, accounts: int, reads: int) -> int:
    """A notes route whose link-shared notes (every 50th) anyone may read and whose
    others any signed-in user reads (the BOLA bug); sign-up calls `account_created`.
    The harvester first reads three shared notes anonymously from three addresses
    (`public_first`), then makes `accounts` fresh accounts (one every 20-40 s, own
    address and browser) each reading `reads` random notes. Returns notes read."""
    from apiguard import identify
    from test_bola_young_crowd import _random_browser

    clock = FakeClock(START)
    guard = Guard({"secret": SECRET, "detection": {"challenge_path": "/challenge"}}, clock=clock)
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)
    users: list[int] = []

    @app.post("/signup", status_code=201)
    async def signup(body: Credentials) -> dict[str, str]:
        user = 10_000 + len(users)
        users.append(user)
        guard.account_created(user)
        return {"token": f"tok-{user}"}

    @app.get("/notes/{note_id}")
    async def note(note_id: int, authorization: str | None = Header(None)) -> dict[str, int]:
        if note_id % 50 == 0:
            return {"id": note_id}  # shared by link: anyone may read it
        if not authorization:
            raise HTTPException(401)
        identify(int(authorization.removeprefix("Bearer tok-")))
        return {"id": note_id}  # BOLA: any signed-in user reads any note

    driver = AsgiDriver(app)
    rng = random.Random(8)

    async def main() -> int:
        if public_first:
            for k in range(3):
                anonymous = Client(driver, BROWSERS[0], f"81.2.{k}.9", jar=None)
                await anonymous.send("GET", f"/notes/{50 * (k + 1)}")
        leaked = 0
        for a in range(accounts):
            clock.advance(rng.uniform(20, 40))
            c = Client(driver, _random_browser(rng), public_ip(rng), jar=None)
            if (await c.signup(f"h{a}")).status != 201:
                continue
            for _ in range(reads):
                clock.advance(rng.uniform(4, 15))
                if (await c.send("GET", f"/notes/{rng.randrange(1, 3000)}")).status != 200:
                    break
                leaked += 1
        return leaked

    found: int = run(main())
    return found


def test_control_a_harvest_on_a_private_route_is_held() -> None:
    assert _link_shared_harvest(False, 30, 39) <= 60


@pytest.mark.xfail(
    strict=True,
    reason="3 anonymous reads of link-shared notes from 3 addresses make the route public: "
    "30 fresh accounts then read 1,170 of 1,170 foreign notes (13 without): 4x young "
    "floor (PUBLIC_YOUNG) and the young crowd leaves public routes out",
)
def test_a_harvest_after_making_a_route_public_is_held() -> None:
    assert _link_shared_harvest(True, 30, 39) <= 60


def test_control_an_anonymous_walk_of_an_unauthenticated_route_is_held() -> None:
    assert _session_walk(False, True, session=False).count(200) <= 20


def test_an_anonymous_walk_with_a_junk_cookie_per_request_is_held() -> None:
    """Was 300 of 300 read (a cookie made the address a session, never judged on its
    walk); now 18."""
    assert _session_walk(True, True, session=False).count(200) <= 20
