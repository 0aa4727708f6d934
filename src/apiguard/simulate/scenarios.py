"""The demo's traffic: awkward but benign customers, and two automated attacks.

All three run at once against one shop during one simulated hour:

- benign users: 30 customers browsing at human pace (Poisson arrivals, a few requests a
  minute, page loads that fetch two or three things at once), logging in, reading their
  orders, redeeming one or two coupons, making typos (404s); 8 of them share an office
  NAT address, 6 are on mobile networks and change address on every request; a load
  balancer probes /health every 15 seconds;
- coupon abuse: one account tries coupon codes at machine speed, from a new random IP
  address and User-Agent on every request, between bouts of ordinary browsing;
- per-principal burst: one account scrapes the catalogue at ~400 requests a minute from
  a handful of addresses.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from apiguard.simulate.driver import Actor, Agent, Request, Response, Step

BENIGN = "benign users"
COUPON_ABUSE = "coupon abuse"
BURST = "per-principal burst"

HOUR = 3600.0
COUPON_START, COUPON_DURATION = 600.0, 900.0
BURST_START, BURST_DURATION, BURST_PER_MINUTE = 1800.0, 360.0, 400.0
BENIGN_USERS, OFFICE_USERS, MOBILE_USERS = 30, 8, 6
OFFICE_IP = "198.51.100.23"
PROBE_IP = "10.0.0.5"
SCRAPER_IPS = ("185.220.101.4", "185.220.101.9", "45.134.26.17", "45.134.26.40")

BROWSERS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Version/17.5 Safari",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/126.0 Mobile",
    "ShopApp/4.2.1 (Android 13; SM-S911B)",
    "ShopApp/4.2.0 (iOS 17.4; iPhone15,2)",
)
GUESS_WORDS = ("WELCOME", "SPRING", "SUMMER", "SAVE", "FREESHIP", "LOYAL", "BUNDLE", "VIP", "NEW")


@dataclass(frozen=True, slots=True)
class Account:
    """A customer account of the shop under test."""

    user_id: int
    username: str
    password: str
    orders: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class World:
    """What the simulated clients know about the shop."""

    accounts: tuple[Account, ...]
    products: tuple[int, ...]
    coupons: tuple[str, ...]  # valid codes


def _public_ipv4(rng: random.Random) -> str:
    while True:
        address = ipaddress.IPv4Address(rng.randrange(1 << 24, 224 << 24))
        if address.is_global:
            return str(address)


def _fixed_ip(ip: str) -> Callable[[], str]:
    return lambda: ip


def _mobile_ip(rng: random.Random, ipv6: bool) -> Callable[[], str]:
    """A carrier address that changes on every request (CGNAT pool or a new IPv6 /64)."""
    if ipv6:
        return lambda: f"2001:db8:{rng.randrange(1 << 16):x}:{rng.randrange(1 << 16):x}::1"
    return lambda: str(ipaddress.IPv4Address((100 << 24) | (64 << 16) | rng.randrange(1 << 22)))


def _headers(ua: str, token: str | None = None) -> tuple[tuple[str, str], ...]:
    if token is None:
        return (("user-agent", ua), ("accept", "application/json"))
    return (
        ("user-agent", ua),
        ("accept", "application/json"),
        ("authorization", f"Bearer {token}"),
    )


def _login(at: float, account: Account, ip: str, ua: str) -> Step:
    body = f'{{"username": "{account.username}", "password": "{account.password}"}}'.encode()
    headers = (*_headers(ua), ("content-type", "application/json"))
    return Step(at, Request("POST", "/login", ip, headers, body), "login")


def _token(response: Response) -> str | None:
    data = response.json()
    token = data.get("access_token") if isinstance(data, dict) else None
    return token if isinstance(token, str) else None


def _sessions(rng: random.Random) -> list[tuple[float, float]]:
    """1-3 visits of 4-15 minutes, inside separate slices of the hour."""
    count = rng.choice((1, 1, 2, 2, 3))
    slot = HOUR / count
    visits = []
    for i in range(count):
        length = min(rng.uniform(240.0, 900.0), slot - 60.0)
        begin = i * slot + rng.uniform(0.0, slot - length - 30.0)
        visits.append((begin, begin + length))
    return visits


def benign_user(
    rng: random.Random,
    world: World,
    account: Account,
    address: Callable[[], str],
    coupons: Sequence[str],
) -> Agent:
    """A customer: visits, anonymous glances, log-in, browsing, orders, coupons, typos."""
    ua = rng.choice(BROWSERS)
    rate = rng.uniform(2.0, 4.0) / 60.0  # requests per second while on the site
    to_redeem = list(coupons)
    for begin, end in _sessions(rng):
        t = begin
        for _ in range(rng.randint(0, 2)):  # a glance at the catalogue before logging in
            page = rng.randint(1, 10)
            yield Step(t, Request("GET", f"/products?page={page}", address(), _headers(ua)))
            t += rng.expovariate(rate)
        token = _token((yield _login(t, account, address(), ua)))
        if token is None:
            continue
        auth = _headers(ua, token)
        redeem_at = rng.uniform(t, end) if to_redeem and rng.random() < 0.8 else end
        while True:
            t += rng.expovariate(rate)
            if t >= end:
                break
            if t >= redeem_at:
                code = to_redeem.pop()
                if rng.random() < 0.3:  # mistyped first: 404, which costs no coupon budget
                    typo = code[:-1] + ("O" if code[-1] == "0" else "0")
                    yield Step(
                        t, Request("POST", f"/coupons/{typo}/redeem", address(), auth), "typo"
                    )
                    t += rng.uniform(4.0, 20.0)
                yield Step(t, Request("POST", f"/coupons/{code}/redeem", address(), auth), "redeem")
                redeem_at = rng.uniform(t, end) if to_redeem and rng.random() < 0.5 else end
                continue
            roll = rng.random()
            if roll < 0.05:  # typos and stale links: unknown product, misspelled path
                path = rng.choice(
                    ("/products/9999", "/prodcuts", f"/products/{rng.randint(201, 999)}")
                )
                yield Step(t, Request("GET", path, address(), auth), "typo")
            elif roll < 0.30:
                page = rng.randint(1, 10)
                yield Step(t, Request("GET", f"/products?page={page}", address(), auth))
            elif roll < 0.80:  # a product page: the page load fetches a few things at once
                for _ in range(1 if rng.random() < 0.6 else rng.randint(2, 4)):
                    pid = rng.choice(world.products)
                    yield Step(t, Request("GET", f"/products/{pid}", address(), auth))
                    t += rng.uniform(0.05, 0.8)
            else:
                oid = rng.choice(account.orders)
                yield Step(t, Request("GET", f"/api/v1/orders/{oid}", address(), auth))


def health_probe(every: float = 15.0) -> Agent:
    """The load balancer's health check, anonymous, from one internal address."""
    headers = (("user-agent", "ELB-HealthChecker/2.0"),)
    t = 0.0
    while t < HOUR:
        yield Step(t, Request("GET", "/health", PROBE_IP, headers), "health")
        t += every


def _candidate_codes(rng: random.Random, valid: Sequence[str]) -> Iterator[str]:
    """A guessing list with the real codes somewhere inside, then endless guesses."""
    guesses = [f"{w}{n}" for w in GUESS_WORDS for n in (5, 10, 15, 20, 25, 30, 50)]
    words = [*dict.fromkeys([*valid, *rng.sample(guesses, 40)])]
    rng.shuffle(words)
    yield from words
    while True:
        yield f"{rng.choice(GUESS_WORDS)}{rng.randint(1, 99)}"


def coupon_abuser(rng: random.Random, world: World, account: Account) -> Agent:
    """One account, every request from a fresh IP and User-Agent, guessing coupon codes."""
    response = yield _login(COUPON_START - 30.0, account, _public_ipv4(rng), rng.choice(BROWSERS))
    token = _token(response)
    if token is None:
        return
    codes = _candidate_codes(rng, world.coupons)
    t = COUPON_START
    while t < COUPON_START + COUPON_DURATION:
        auth = _headers(rng.choice(BROWSERS), token)  # randomised User-Agent
        ip = _public_ipv4(rng)  # a new address every time
        if rng.random() < 0.2:  # blend in: ordinary browsing between attempts
            pid = rng.choice(world.products)
            yield Step(t, Request("GET", f"/products/{pid}", ip, auth))
        else:
            code = next(codes)
            yield Step(t, Request("POST", f"/coupons/{code}/redeem", ip, auth), "redeem")
        t += rng.uniform(0.3, 2.0)  # machine speed, jittered


def scraper(rng: random.Random, world: World, account: Account) -> Agent:
    """One account walking the whole catalogue, hundreds of pages a minute."""
    ua = "python-httpx/0.27.0"
    token = _token((yield _login(BURST_START - 20.0, account, SCRAPER_IPS[0], ua)))
    if token is None:
        return
    auth = _headers(ua, token)
    t = BURST_START
    n = 0
    while t < BURST_START + BURST_DURATION:
        pid = world.products[n % len(world.products)]
        ip = SCRAPER_IPS[n % len(SCRAPER_IPS)]
        yield Step(t, Request("GET", f"/products/{pid}", ip, auth), "scrape")
        n += 1
        t += rng.expovariate(BURST_PER_MINUTE / 60.0)


def roles(world: World) -> dict[int, str]:
    """The scenario each account plays, by user id."""
    found = {a.user_id: BENIGN for a in world.accounts[:BENIGN_USERS]}
    found[world.accounts[-2].user_id] = COUPON_ABUSE
    found[world.accounts[-1].user_id] = BURST
    return found


def build_actors(world: World, seed: int) -> list[Actor]:
    """Every agent of the demo hour, seeded."""
    needed = BENIGN_USERS + 2
    if len(world.accounts) < needed or not world.products or len(world.coupons) < 2:
        raise ValueError(f"the demo needs {needed} accounts, products and 2+ coupon codes")
    rng = random.Random(seed)
    actors: list[Actor] = []
    for i, account in enumerate(world.accounts[:BENIGN_USERS]):
        own = random.Random(rng.getrandbits(64))
        if i < OFFICE_USERS:
            address = _fixed_ip(OFFICE_IP)
        elif i < OFFICE_USERS + MOBILE_USERS:
            address = _mobile_ip(own, ipv6=i % 2 == 1)
        else:
            address = _fixed_ip(_public_ipv4(own))  # at home
        coupons = own.sample(world.coupons, own.choice((0, 0, 1, 1, 2)))
        actors.append(Actor(BENIGN, False, benign_user(own, world, account, address, coupons)))
    actors.append(Actor(BENIGN, False, health_probe()))
    abuser = coupon_abuser(random.Random(rng.getrandbits(64)), world, world.accounts[-2])
    actors.append(Actor(COUPON_ABUSE, True, abuser))
    burst = scraper(random.Random(rng.getrandbits(64)), world, world.accounts[-1])
    actors.append(Actor(BURST, True, burst))
    return actors
