"""Attack campaigns for the self-test (`apiguard attack`) and `benchmarks/detection.py`.

Each campaign runs beside the benign population (`apiguard.simulate.population`) on a
fake clock, against a fresh app, and is judged from the records of that run alone.

The attackers are as clever as we could make them: each distributed campaign sends one
visit per residential address, with a realistic browser profile drawn per visit (the same
profiles honest people use), a page view before the login, jittered human-like timing,
and its own legitimate use mixed in; a bot that is refused moves to the next address and
tries the same guess again later; a logged-in bot that is throttled waits out Retry-After.
Bots never pass a challenge unless the campaign is given a CAPTCHA-solving rate (`solver`).

Definitions (every number in the report follows them):

- **attack requests**: the requests that pursue the campaign's objective (login attempts,
  foreign-object reads, redemptions, scraped pages, exports); the attacker's cover traffic
  (page views, its own orders, its own log-in, sign-ups) is sent and recorded but not
  counted, so that a detector is judged on what it lets through of the attack itself.
- **refused**: against an app apiguard protects, a request apiguard refused (its guard
  counted the refusal: the app's own 403 for a missing token or a foreign object is
  admitted, not refused); against a baseline, answered 429 or 403 (its lockout).
  apiguard's `challenge-required` answer to a request (whatever its status,
  `detection.challenge_status`) is a refusal of that request.
- **admitted**: any other answer (the app's own 2xx/4xx).
- **gain**: what the campaign is after, counted as distinct targets answered 2xx:
  accounts logged into (takeovers), foreign objects read (leaked), coupons redeemed,
  catalogue pages scraped, report pages exported with a stolen key, endpoints found by a
  reconnaissance scan.
- **caught**: at least one attack request was refused, AND the campaign's objective was
  curtailed: its gain is at most half of what the same campaign (same seed, same
  population) gains against the same app unprotected (apiguard in monitor mode, no
  baseline); when the unprotected run gains nothing, at most half of the attack requests
  after the first refusal were admitted.
- **admitted before the first block**: attack requests admitted before the first refused
  one (all of them when none was refused); for account takeover the issue's target
  counts up to the first block or the first takeover, whichever comes first.
- **admitted after**: the share of attack requests after the first refusal that were
  admitted.
- **skipped**: the campaign sent no attack request (nothing it needs is declared, e.g.
  no API key; or its own preparation failed: the attacker's account could not log in, no
  sign-up gave a token), or the unprotected app answered every attack request 404/405
  (the route it attacks is not there, or the app hides what the attack is after, e.g.
  answers 404 for another user's order): it is reported as skipped, with the reason, not
  as missed, and judged neither way.
- **benign principal refused**: an honest person or client with at least one refused
  request that was not a challenge, or who was asked for a challenge and never passed
  one (the app has no challenge route the self-test knows, or refused the answer). A
  person who is asked for a challenge, passes it at `/challenge` and goes on is
  **challenged**, not refused; each pass is counted.
"""

from __future__ import annotations

import asyncio
import math
import random
import string
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from starlette.types import ASGIApp

from apiguard.simulate.clock import FakeClock
from apiguard.simulate.driver import (
    Actor,
    Agent,
    AsgiDriver,
    Record,
    Response,
    Step,
    find_guard,
    lifespan,
    run_agents,
)
from apiguard.simulate.population import (
    Client,
    Population,
    browser,
    constant,
    fixed,
    population,
    public_ipv4,
    rotating,
    rotating_browser,
    tool_headers,
)
from apiguard.simulate.target import FLOW_PATH, Account, ObjectId, Target, id_order

START = 10_000.0  # the fake clock's reading when a run begins
ATTACK = "attack"

HOUR = 3600.0
FIRST = ("james", "mary", "robert", "linda", "wei", "fatima", "carlos", "anna", "olga", "raj")
LAST = ("smith", "garcia", "nguyen", "mueller", "kumar", "rossi", "kowalski", "silva", "tanaka")


def _backoff(client: Client, response: Response, cap: float = HOUR) -> None:
    """A logged-in bot waits out the refusal (Retry-After, at most `cap`), with jitter."""
    retry = response.header("retry-after")
    seconds = float(retry) if retry is not None and retry.isdigit() else 60.0
    client.wait(min(seconds, cap) + client.rng.uniform(1.0, 30.0))


def _leaked_name(rng: random.Random) -> str:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    return rng.choice(
        (
            f"{first}.{last}{rng.randint(1, 99)}",
            f"{first[0]}{last}{rng.randint(1960, 2005)}",
            f"{first}_{last}",
        )
    )


def _gap(rng: random.Random, mean: float) -> float:
    """Jittered human-like spacing: exponential around `mean`, never zero."""
    return rng.expovariate(1.0 / mean) + 0.2


# -- the campaigns ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """One run's sizes: the campaign's length and number of attempts."""

    duration: float
    attempts: int
    solver: float = 0.0  # the bots' CAPTCHA-solving rate
    # this run's own tag, in the names of the accounts it signs up: an app whose database
    # outlives a run (a module the self-test does not import afresh, a file) never sees
    # one run's sign-up again in the next (the unprotected run's, then the protected one's)
    run: str = ""


def run_tag() -> str:
    """A new run's tag: 4 lowercase letters and digits, not from the campaign's seed."""
    return "".join(_SYSTEM.choices(string.ascii_lowercase + string.digits, k=4))


_SYSTEM = random.SystemRandom()


def new_password(rng: random.Random) -> str:
    """A fresh account's password that common policies accept: 16 characters, upper and
    lower case letters, digits and a symbol."""
    letters = "".join(rng.choices(string.ascii_letters, k=12))
    return f"{letters[:6]}-{letters[6:]}7aA"


def stuffing(target: Target, rng: random.Random, plan: Plan, pop: Population) -> list[Agent]:
    """Distributed credential stuffing from a leaked list: one visit per address (a page
    view, then the login), thousands of addresses over hours. The list is mostly accounts
    that do not exist here and real accounts with another site's password (the returning
    users' among them), with a few hits (2%)."""
    own = {a.username for a in target.accounts[-5:]}
    candidates = [a for a in target.accounts if a.username not in own]
    n = plan.attempts
    # (an app with few declared accounts: as many as it has)
    hits = rng.sample(candidates, min(len(candidates), max(2, n // 50)))
    wrong = [
        (a.username, a.password + rng.choice(("1", "!", "2023")))
        for a in rng.sample(candidates, min(len(candidates), int(n * 0.3)))
    ]
    wrong += [(a.username, f"{a.username}!{rng.randint(1, 99)}") for a in pop.returning]
    creds = [(a.username, a.password) for a in hits] + wrong
    existing = {u for u, _ in creds}
    while len(creds) < n:
        name = _leaked_name(rng)
        if name not in existing and name not in target.usernames:
            creds.append((name, rng.choice(("123456", "qwerty", "iloveyou", name + "1"))))
    rng.shuffle(creds)
    return [_stuffer(target, random.Random(rng.getrandbits(64)), plan, creds[:n], "stuff")]


def _stuffer(
    target: Target, rng: random.Random, plan: Plan, creds: list[tuple[str, str]], kind: str
) -> Agent:
    client = Client(target, rng, fixed(""), lambda: (), solves=plan.solver)
    mean = plan.duration / max(1, len(creds))
    queue = list(creds)
    retried: set[tuple[str, str]] = set()
    while queue:
        username, password = queue.pop(0)
        client.wait(_gap(rng, mean))
        if client.t > plan.duration * 1.2:
            return
        client.ip = fixed(public_ipv4(rng))
        client.headers = constant(browser(rng))
        client.token = None
        yield from client.browse("visit")
        client.wait(rng.uniform(2.0, 9.0))
        response = yield from client.login(username, password, kind=kind, target=username)
        if response.refused and (username, password) not in retried:
            retried.add((username, password))
            queue.append((username, password))  # another address will try it later
        elif 200 <= response.status < 300:
            client.wait(rng.uniform(1.0, 5.0))
            yield from client.browse("loot")


def spraying(target: Target, rng: random.Random, plan: Plan, pop: Population) -> list[Agent]:
    """Password spraying: a handful of the commonest passwords, one at a time across many
    accounts (harvested usernames, a fifth of them not existing here), slowly, from a pool
    of 300 proxies, with a long pause between passwords to stay under any lockout."""
    passwords = list(target.common_passwords)
    per_round = max(10, plan.attempts // max(1, len(passwords)))
    real = rng.sample(
        list(target.accounts[:-5]), max(0, min(len(target.accounts) - 5, int(per_round * 0.8)))
    )
    names = [a.username for a in real]
    names += [_leaked_name(rng) for _ in range(per_round - len(names))]
    own_rng = random.Random(rng.getrandbits(64))
    proxies = [public_ipv4(own_rng) for _ in range(300)]
    return [_sprayer(target, own_rng, plan, names, passwords, proxies)]


def _sprayer(
    target: Target,
    rng: random.Random,
    plan: Plan,
    names: list[str],
    passwords: list[str],
    proxies: list[str],
) -> Agent:
    client = Client(target, rng, fixed(""), lambda: (), solves=plan.solver)
    rounds = len(passwords)
    pause = plan.duration * 0.1 / max(1, rounds - 1)
    mean = (plan.duration * 0.9) / max(1, rounds * len(names))
    cracked: set[str] = set()
    for password in passwords:
        order = list(names)
        rng.shuffle(order)
        for username in order:
            if username in cracked:
                continue
            client.wait(_gap(rng, mean))
            client.ip = fixed(rng.choice(proxies))
            client.headers = constant(browser(rng))
            response = yield from client.login(username, password, kind="spray", target=username)
            if 200 <= response.status < 300:
                cracked.add(username)
        client.wait(pause)


def brute_force(target: Target, rng: random.Random, plan: Plan, pop: Population) -> list[Agent]:
    """One account (a returning user's, who keeps logging in from their device meanwhile)
    guessed from a wordlist, one guess per residential address, every few seconds; the
    real password is a third of the way down the list. A refused guess is retried."""
    victim = pop.returning[0] if pop.returning else target.accounts[0]
    words = [
        f"{w}{n}"
        for w in ("password", "letmein", "qwerty", "monkey", "dragon", "secret")
        for n in range(400)
    ]
    words = [w for w in dict.fromkeys([*target.common_passwords, *words]) if w != victim.password]
    words = words[: max(10, plan.attempts - 1)]
    words.insert(len(words) // 3, victim.password)
    return [_brute(target, random.Random(rng.getrandbits(64)), plan, victim, words)]


def _brute(
    target: Target, rng: random.Random, plan: Plan, victim: Account, words: list[str]
) -> Agent:
    client = Client(target, rng, rotating(rng), rotating_browser(rng), solves=plan.solver)
    client.t = plan.duration * 0.05
    mean = plan.duration * 0.9 / max(1, len(words))
    i = 0
    while i < len(words) and client.t < plan.duration:
        client.wait(_gap(rng, mean))
        response = yield from client.login(
            victim.username, words[i], kind="brute", target=victim.username
        )
        if 200 <= response.status < 300:
            client.wait(rng.uniform(2.0, 10.0))
            for oid in victim.objects[:5]:
                yield from client.read_object(oid, kind="loot")
            return
        if not response.refused:
            i += 1  # a refused guess was not tried: the same word again, from elsewhere


def _logged_in(client: Client, account: Account) -> Generator[Step, Response, bool]:
    """Log the bot in to its own account (a real, paid-for account)."""
    for _ in range(5):
        response = yield from client.login(account.username, account.password, kind="own-login")
        if 200 <= response.status < 300:
            return True
        _backoff(client, response, 600.0)
    return False


def bola_sequential(target: Target, rng: random.Random, plan: Plan, pop: Population) -> list[Agent]:
    """A customer's account walks the object route id by id (stride 1) from where its own
    orders are, a request every few seconds, from a few residential addresses, reading its
    own orders and the catalogue now and then. The route has a real BOLA bug: every
    foreign order comes back 200."""
    account = target.accounts[-1]
    own = random.Random(rng.getrandbits(64))
    ids = sorted(target.object_ids, key=id_order)
    start = own.randrange(max(1, len(ids) - plan.attempts))
    walk = ids[start : start + plan.attempts]
    return [_walker(target, own, plan, account, walk, mix=0.05, mean=4.0)]


def bola_random(target: Target, rng: random.Random, plan: Plan, pop: Population) -> list[Agent]:
    """An account reads random foreign orders mixed with its own (a third of its reads),
    at a person's pace (a read every 5-30 s), browsing the catalogue between reads."""
    account = target.accounts[-2]
    own = random.Random(rng.getrandbits(64))
    mine = set(account.objects)
    foreign = [i for i in target.object_ids if i not in mine]
    walk = own.sample(foreign, min(len(foreign), plan.attempts))
    mean = plan.duration * 0.8 / max(1, plan.attempts * 1.6)
    return [_walker(target, own, plan, account, walk, mix=0.35, mean=mean)]


def bola_sybil(target: Target, rng: random.Random, plan: Plan, pop: Population) -> list[Agent]:
    """The same harvest spread over many accounts: the script signs up a fresh account
    from a new address (or uses the few it owns), reads 12 random foreign orders with it
    at a person's pace, and moves on: no account comes near any per-principal threshold."""
    own = random.Random(rng.getrandbits(64))
    return [_sybil(target, own, plan)]


def _sybil(target: Target, rng: random.Random, plan: Plan) -> Agent:
    client = Client(target, rng, fixed(""), constant(browser(rng)), solves=plan.solver)
    per_account = 12
    accounts = max(1, plan.attempts // per_account)
    mean = plan.duration * 0.9 / max(1, plan.attempts)
    ids = list(target.object_ids)
    owned = list(target.accounts[-5:])
    for n in range(accounts):
        client.wait(_gap(rng, mean))
        client.ip = fixed(public_ipv4(rng))
        client.headers = constant(browser(rng))
        client.token = None
        if target.signup_path:
            name = "".join(rng.choices(string.ascii_lowercase, k=7)) + str(rng.randint(10, 99))
            yield from client.signup(name + plan.run, new_password(rng))
            if client.token is None:
                continue
        else:
            account = owned[n % len(owned)]
            if not (yield from _logged_in(client, account)):
                continue
        for oid in rng.sample(ids, min(per_account, len(ids))):
            client.wait(_gap(rng, mean))
            response = yield from client.read_object(oid, kind="walk", target=str(oid))
            if response.refused:
                break  # this account is burnt: the next one


def _walker(
    target: Target,
    rng: random.Random,
    plan: Plan,
    account: Account,
    walk: list[ObjectId],
    *,
    mix: float,
    mean: float,
) -> Agent:
    pool = [public_ipv4(rng) for _ in range(6)]
    profile = browser(rng)
    client = Client(target, rng, lambda: rng.choice(pool), constant(profile), solves=plan.solver)
    client.t = rng.uniform(0.0, plan.duration * 0.05)
    if not (yield from _logged_in(client, account)):
        return
    mine = set(account.objects)
    for oid in list(account.objects[:3]):
        client.wait(_gap(rng, mean))
        yield from client.read_object(oid)
    i = 0
    while i < len(walk) and client.t < plan.duration:
        client.wait(_gap(rng, mean))
        if rng.random() < mix:
            if account.objects and rng.random() < 0.6:
                yield from client.read_object(rng.choice(account.objects))
            else:
                yield from client.browse()
            continue
        oid = walk[i]
        foreign = oid not in mine
        response = yield from client.read_object(
            oid, kind="walk" if foreign else "own", target=str(oid) if foreign else None
        )
        if response.refused:
            _backoff(client, response)
            continue
        i += 1


def flow_rotating(target: Target, rng: random.Random, plan: Plan, pop: Population) -> list[Agent]:
    """One account redeems guessed coupon codes (the valid ones are somewhere in its list)
    from a new address and browser on every request, between bouts of ordinary browsing."""
    account = target.accounts[-3]
    own = random.Random(rng.getrandbits(64))
    words = ("WELCOME", "SPRING", "SUMMER", "SAVE", "FREESHIP", "LOYAL", "BUNDLE", "VIP", "NEW")
    guesses = [f"{w}{n}" for w in words for n in (5, 10, 15, 20, 25, 30, 50)]
    codes = list(
        dict.fromkeys([*target.flow_codes, *own.sample(guesses, min(len(guesses), plan.attempts))])
    )
    own.shuffle(codes)
    while len(codes) < plan.attempts:
        codes.append(f"{own.choice(words)}{own.randint(1, 99)}")
    return [_redeemer(target, own, plan, account, codes[: plan.attempts])]


def _redeemer(
    target: Target, rng: random.Random, plan: Plan, account: Account, codes: list[str]
) -> Agent:
    client = Client(target, rng, rotating(rng), rotating_browser(rng), solves=plan.solver)
    client.t = rng.uniform(0.0, plan.duration * 0.05)
    if not (yield from _logged_in(client, account)):
        return
    mean = plan.duration * 0.8 / max(1, len(codes) * 1.3)
    queue = list(codes)
    while queue and client.t < plan.duration:
        client.wait(_gap(rng, mean))
        if rng.random() < 0.25:
            yield from client.browse()
            continue
        code = queue.pop(0)
        path = target.flow_path.replace("{code}", code)
        response = yield from client.send("POST", path, kind="redeem", target=code)
        if response.refused:
            queue.append(code)
            _backoff(client, response)


def flow_fresh_accounts(
    target: Target, rng: random.Random, plan: Plan, pop: Population
) -> list[Agent]:
    """Many fresh accounts from one script (one client fingerprint): sign up from a new
    address, redeem the new-customer coupon and one more, move on. Each account stays far
    under its own flow budget; only the script's fingerprint ties them together."""
    own = random.Random(rng.getrandbits(64))
    return [_farmer(target, own, plan)]


def flow_fresh_shapes(
    target: Target, rng: random.Random, plan: Plan, pop: Population
) -> list[Agent]:
    """The same farm, each account with its own realistic browser profile (header
    order, User-Agent, languages) from its own address: nothing but their number and
    their youth ties the accounts together."""
    own = random.Random(rng.getrandbits(64))
    return [_farmer(target, own, plan, shapes=True)]


def _farmer(target: Target, rng: random.Random, plan: Plan, shapes: bool = False) -> Agent:
    script = tool_headers(
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"
    )
    shape = [script()]
    client = Client(target, rng, fixed(""), lambda: shape[0], solves=plan.solver)
    codes = list(target.flow_codes[:2]) or ["WELCOME10"]
    accounts = max(1, plan.attempts // (1 + len(codes)))
    mean = plan.duration * 0.9 / accounts
    for _ in range(accounts):
        client.wait(_gap(rng, mean))
        client.ip = fixed(public_ipv4(rng))
        client.token = None
        if shapes:
            shape[0] = browser(rng)
        name = "".join(rng.choices(string.ascii_lowercase, k=8)) + str(rng.randint(10, 999))
        name += plan.run
        if target.signup_path:
            yield from client.signup(name, new_password(rng))
            if client.token is None:
                continue
        for code in codes:
            client.wait(rng.uniform(3.0, 15.0))
            path = target.flow_path.replace("{code}", code)
            yield from client.send("POST", path, kind="redeem", target=f"{name}:{code}")


def scraping(target: Target, rng: random.Random, plan: Plan, pop: Population) -> list[Agent]:
    """Anonymous catalogue scraping for price monitoring, one request per residential
    address (under every per-address limit), User-Agent rotated per request, the whole
    catalogue again and again."""
    own = random.Random(rng.getrandbits(64))
    return [_scraper(target, own, plan)]


def _scraper(target: Target, rng: random.Random, plan: Plan) -> Agent:
    uas = [dict(browser(rng)).get("user-agent", "Mozilla/5.0") for _ in range(40)]
    client = Client(
        target, rng, rotating(rng), lambda: tool_headers(rng.choice(uas))(), solves=plan.solver
    )
    mean = plan.duration / max(1, plan.attempts)
    ids = target.browse_ids  # (the declared pages' own ids, else 1..products)
    products = len(ids) if ids else max(1, target.products)
    for n in range(plan.attempts):
        client.wait(_gap(rng, mean))
        pid = n % products + 1
        path = (
            "/products/{product}"
            if "/products/{product}" in target.browse_paths
            else target.browse_paths[-1]
        )
        yield from client.send(
            "GET",
            path.format(product=ids[pid - 1] if ids else pid, page=pid),
            kind="scrape",
            target=f"{n // products}:{pid}",
        )


def stolen_key(target: Target, rng: random.Random, plan: Plan, pop: Population) -> list[Agent]:
    """A partner's API key, leaked from a CI log, used to export every report page from a
    new network on every request (residential proxies), while its owner keeps using it."""
    if not target.api_keys:
        return []
    own = random.Random(rng.getrandbits(64))
    return [_exporter(target, own, plan, target.api_keys[0])]


def _exporter(target: Target, rng: random.Random, plan: Plan, key: str) -> Agent:
    client = Client(
        target, rng, rotating(rng), tool_headers("python-requests/2.32.3"), solves=plan.solver
    )
    client.api_key = key
    mean = plan.duration * 0.9 / max(1, plan.attempts)
    page = 1
    for _ in range(plan.attempts):
        client.wait(_gap(rng, mean))
        response = yield from client.send(
            "GET", target.api_path.format(page=page), kind="export", target=str(page)
        )
        if not response.refused:
            page = page % target.api_pages + 1


RECON_GAIN = "endpoints found"
# what a reconnaissance scan asks for: shadow and undocumented endpoints, old versions,
# tooling left deployed; the app's documented routes and its schema among them
_RECON_WORDS = (
    "admin", "users", "orders", "products", "accounts", "internal", "debug", "config",
    "keys", "tokens", "export", "backup", "metrics", "status", "health", "graphql",
    "search", "reports", "payments", "invoices", "coupons", "settings", "logs", "jobs",
    "webhooks", "billing", "staff", "test", "beta", "private", "legacy", "swagger.json",
    "openapi.json", "docs", "redoc", ".env", "actuator", "server-status", "console",
)
_RECON_PREFIXES = ("", "api/", "api/v1/", "api/v2/", "v1/", "v2/", "internal/", "admin/")


def recon(target: Target, rng: random.Random, plan: Plan, pop: Population) -> list[Agent]:
    """Reconnaissance: learning the API by probing it from one cloud address, a wordlist
    of shadow and undocumented endpoints, old versions and tooling left deployed (the
    schema among them), with a browser's headers and human-like pauses."""
    own = random.Random(rng.getrandbits(64))
    return [_prober(target, own, plan)]


def _prober(target: Target, rng: random.Random, plan: Plan) -> Agent:
    headers = constant(browser(rng))
    client = Client(target, rng, fixed(public_ipv4(rng)), headers, solves=plan.solver)
    paths = [f"/{p}{w}" for p in _RECON_PREFIXES for w in _RECON_WORDS]
    rng.shuffle(paths)
    mean = plan.duration / max(1, plan.attempts)
    for path in paths[: plan.attempts]:
        client.wait(_gap(rng, mean))
        yield from client.send("GET", path, kind="probe", target=path, auth=False)


Builder = Callable[[Target, random.Random, Plan, Population], list[Agent]]


@dataclass(frozen=True, slots=True)
class Campaign:
    """A named attack: its builder, full-scale length and attempts, what it is after."""

    name: str
    build: Builder
    duration: float
    attempts: int
    gain: str  # what a 2xx on one of its targets means
    first_block_target: bool  # the "< 50 admitted before the first block" applies
    solver: float = 0.0  # the bots' CAPTCHA-solving rate (at least; --solver may raise it)
    note: str = ""  # said after the builder's description

    @property
    def description(self) -> str:
        text = " ".join((self.build.__doc__ or "").split())
        return f"{text} {self.note}" if self.note else text


CAMPAIGNS: tuple[Campaign, ...] = (
    Campaign("credential stuffing", stuffing, 6 * HOUR, 3000, "takeovers", True),
    Campaign(
        "stuffing, CAPTCHA solver",
        stuffing,
        3 * HOUR,
        1000,
        "takeovers",
        True,
        solver=0.05,
        note="This botnet pays a solving service that passes 1 challenge in 20, and replays "
        "the cookies it gets from every one of its addresses (one cookie jar for the botnet).",
    ),
    Campaign("password spraying", spraying, 4 * HOUR, 1500, "takeovers", True),
    Campaign("brute force", brute_force, 3 * HOUR, 900, "takeovers", False),
    Campaign("BOLA walk", bola_sequential, 1 * HOUR, 800, "foreign objects", True),
    Campaign("BOLA random", bola_random, 2 * HOUR, 400, "foreign objects", True),
    Campaign("BOLA, many accounts", bola_sybil, 2 * HOUR, 600, "foreign objects", True),
    Campaign("flow abuse, rotating IPs", flow_rotating, 1 * HOUR, 300, "coupons", False),
    Campaign("flow abuse, fresh accounts", flow_fresh_accounts, 2 * HOUR, 450, "coupons", False),
    Campaign("flow abuse, fresh shapes", flow_fresh_shapes, 2 * HOUR, 450, "coupons", False),
    Campaign("scraping", scraping, 3 * HOUR, 2000, "pages scraped", False),
    Campaign("stolen API key", stolen_key, 2 * HOUR, 600, "pages exported", False),
    Campaign("recon", recon, 1 * HOUR, 300, RECON_GAIN, False),
)


def campaign(name: str) -> Campaign:
    """The campaign called `name` (or a unique prefix / slug of it)."""

    def norm(text: str) -> str:
        return " ".join(text.lower().replace(",", " ").replace("-", " ").replace("_", " ").split())

    slug = norm(name)
    exact = [c for c in CAMPAIGNS if norm(c.name) == slug]
    matches = (
        exact
        or [c for c in CAMPAIGNS if norm(c.name).startswith(slug)]
        or [c for c in CAMPAIGNS if slug in norm(c.name)]
    )
    if len(matches) != 1:
        known = ", ".join(c.name for c in CAMPAIGNS)
        raise KeyError(f"unknown or ambiguous campaign {name!r} (known: {known})")
    return matches[0]


# -- running and judging ------------------------------------------------------------------


def actors_for(
    camp: Campaign,
    target: Target,
    *,
    seed: int,
    scale: float,
    size: float | None = None,
    solver: float = 0.0,
) -> list[Actor]:
    """The attack and the benign population of one run, deterministic for a seed."""
    plan = Plan(
        camp.duration * scale,
        max(10, round(camp.attempts * scale)),
        max(solver, camp.solver),
        run_tag(),
    )
    target = target.confined()  # (nothing of a section an app's declaration leaves out)
    rng = random.Random(f"{seed}:{camp.name}")
    pop = population(
        target,
        random.Random(rng.getrandbits(64)),
        plan.duration,
        size=size or min(1.0, scale),
    )
    attack = [
        Actor(ATTACK, True, agent)
        for agent in camp.build(target, random.Random(rng.getrandbits(64)), plan, pop)
    ]
    return [*attack, *pop.actors]


@dataclass(frozen=True, slots=True)
class Outcome:
    """One campaign run, judged (see the module docstring for every definition)."""

    campaign: str
    gain_kind: str
    attack_requests: int
    refused: int
    admitted: int
    admitted_before_first_block: int
    first_block_at: float | None  # simulated seconds into the run
    after_first_block: int
    admitted_after_first_block: int
    gain: int
    reference_gain: int | None
    first_gain_index: int | None  # attack requests sent before the first gain
    caught: bool
    benign_requests: int
    benign_refused: int
    benign_principals: int
    benign_principals_refused: int
    benign_principals_challenged: int
    challenges_passed: int
    bot_challenges: int
    simulated_seconds: float
    wall_seconds: float
    skipped: str | None = None  # why the campaign could not be tried (see the docstring)
    # 403 and 429 answers that were the app's own, not apiguard's (when that is known):
    # admitted, not refused (a missing token, a foreign object, the app's own limiter)
    app_refusals: int = 0
    # the honest population's page views ([browse]) and those answered 404: many say the
    # declared paths are not the app's pages (`missing_page`: one of them)
    benign_pages: int = 0
    benign_pages_missing: int = 0
    missing_page: str | None = None
    note: str | None = None  # what the run found about the guard's set-up

    @property
    def admitted_after_share(self) -> float:
        return (
            self.admitted_after_first_block / self.after_first_block
            if self.after_first_block
            else 0.0
        )

    @property
    def admitted_before_first_loss(self) -> int:
        """Admitted before the first block, or before the first takeover when that came
        first (the issue's measure for account takeover; for the other campaigns every
        admitted attack request gains, so only the first block counts)."""
        if self.first_gain_index is None or self.gain_kind != "takeovers":
            return self.admitted_before_first_block
        return min(self.admitted_before_first_block, self.first_gain_index)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["admitted_after_share"] = round(self.admitted_after_share, 4)
        data["admitted_before_first_loss"] = self.admitted_before_first_loss
        return data


def gain_of(records: Sequence[Record]) -> tuple[int, int | None]:
    """Distinct targets an attack obtained (2xx), and the attack index of the first."""
    got: set[str] = set()
    first: int | None = None
    n = 0
    for r in records:
        if not r.attack:
            continue
        if r.target is not None and 200 <= r.status < 300 and r.target not in got:
            got.add(r.target)
            if first is None:
                first = n
        n += 1
    return len(got), first


def _statuses(records: Sequence[Record]) -> str:
    """The answers' statuses and their counts, commonest first: "401 x5, 404"."""
    from collections import Counter

    counts = Counter(r.status for r in records).most_common()
    return ", ".join(f"{s} x{n}" if n > 1 else str(s) for s, n in counts)


# what a campaign attacks that only a declaration can say for an app of the user's own
_SECTION_OF_GAIN = {
    "coupons": (FLOW_PATH, "[flow] path, the flow to abuse (a coupon, a sign-up bonus)"),
    "pages scraped": ("browse", "[browse] paths, the pages a scraper would read"),
    "foreign objects": ("objects", "[objects] path, the route of objects its users own"),
}
_SIGNUP = ("flow", "[flow] signup, where the attacker creates its accounts")


# the campaigns whose attacker creates accounts (`[flow] signup`)
_SIGNS_UP = frozenset(
    {"BOLA, many accounts", "flow abuse, fresh accounts", "flow abuse, fresh shapes"}
)


def undeclared(camp: Campaign, target: Target) -> str | None:
    """Why `camp` is not run against an app described by a declaration that leaves out
    a section it needs (it would attack the example shop's default route), or None."""
    if not target.declared:
        return None
    needs = [_SECTION_OF_GAIN[camp.gain]] if camp.gain in _SECTION_OF_GAIN else []
    if camp.name in _SIGNS_UP:
        needs.append(_SIGNUP)
    missing = [what for section, what in needs if section not in target.declared]
    if not missing:
        return None
    return (
        f"not declared: {'; '.join(missing)} (the declaration describes your app, so the "
        "example shop's default route is not attacked in its place)"
    )


def skip_reason(
    camp: Campaign,
    target: Target,
    records: Sequence[Record],
    reference: Sequence[Record] | None = None,
    let_through: bool = False,
) -> str | None:
    """Why a run did not try the campaign at all (None when it did), from its records
    and the unprotected run's (see "skipped" in the module docstring; `let_through`: the
    reference is the requests apiguard let through, over HTTP)."""
    attack = [r for r in records if r.attack and r.target is not None]
    tried = [r for r in reference or () if r.attack and r.target is not None]
    app = "the app (on what apiguard let through)" if let_through else "the unprotected app"
    # (a reconnaissance scan is answered 404 by nature: the probing is the attack)
    if tried and camp.gain != RECON_GAIN and all(r.status in (404, 405) for r in tried):
        return (
            f"{app} answered all {len(tried)} attack requests {_statuses(tried)} "
            f"(e.g. {tried[0].method} {tried[0].path}): the route it attacks is not there "
            "(declare it, see the TOML format), or the app itself refuses what the attack "
            "is after: nothing for apiguard to catch"
        )
    if (
        tried
        and camp.gain == "foreign objects"
        and all(r.status in (401, 403, 404, 405) for r in tried)
    ):
        return (
            f"{app} refused every foreign object itself "
            f"({_statuses(tried)}, e.g. {tried[0].method} {tried[0].path}): it has no "
            "object-level authorization bug on this route, nothing for apiguard to catch"
        )
    failing = [r for r in attack if r.status >= 500]
    if failing and len(failing) >= 0.5 * len(attack):
        first = failing[0]
        return (
            f"the app answered {len(failing)} of the {len(attack)} attack requests with a "
            f"server error (e.g. {first.method} {first.path}: {first.status}): it was "
            "failing (its database? the declared route?), so nothing was measured"
        )
    if attack:
        return None
    cover = [r for r in records if r.attack]
    logins = [r for r in cover if r.kind == "own-login"]
    signups = [r for r in cover if r.kind == "signup"]
    if signups and not any(200 <= r.status < 300 for r in signups):
        said = next((r.answer for r in signups if r.answer), None)
        return (
            f"no sign-up succeeded: POST {target.signup_path} answered {_statuses(signups)}"
            + (f" ({said})" if said else "")
            + ": the account may already exist (each sign-up sends a new {name}: do the "
            "signup_fields use it?), or the password breaks the app's policy ([flow] "
            "signup_password shapes it), or the route or its body is not the app's ([flow] "
            "signup, signup_fields, signup_format)"
        )
    if signups and not (target.signup_login and logins):
        return (
            f"no sign-up gave a token: POST {target.signup_path} answered "
            f"{_statuses(signups)} without one where the declaration says ([login] "
            "token_field or token_cookie; or [flow] signup_login, the username a new "
            "account then logs in with)"
        )
    if logins:
        said = next((r.answer for r in logins if r.answer), None)
        return (
            f"the attacker's own account could not log in: POST {target.login_path} "
            f"answered {_statuses(logins)}" + (f" ({said})" if said else "")
        )
    if camp.build is stolen_key and not target.api_keys:
        return "no API key declared ([api] keys)"
    if camp.gain == "foreign objects" and not target.object_ids:
        return "no object declared ([objects])"
    return "it sent no attack request"


def judge(
    camp: Campaign,
    records: Sequence[Record],
    *,
    reference_gain: int | None,
    wall: float = 0.0,
    skipped: str | None = None,
) -> Outcome:
    """Count and judge one run's records (`skipped`: why the campaign was not tried,
    from `skip_reason`: then it is not caught, and not missed either)."""
    attack = [r for r in records if r.attack and r.target is not None]
    refused = [i for i, r in enumerate(attack) if r.blocked]
    first = refused[0] if refused else None
    before = first if first is not None else len(attack)
    after = attack[first + 1 :] if first is not None else []
    admitted_after = sum(not r.blocked for r in after)
    gain, first_gain = gain_of(records)
    if not refused or skipped is not None:
        caught = False
    elif reference_gain:
        caught = gain <= 0.5 * reference_gain
    else:
        caught = admitted_after <= 0.5 * len(after)
    benign = [r for r in records if not r.attack]
    principals = {r.actor for r in benign}
    challenged = {r.actor for r in benign if r.challenged}
    # a person asked for a challenge who never passed one could not (the app has no
    # challenge route the self-test knows, or it refused the answer): refused
    # (a challenge route answers its pass with a 2xx, or a form's redirect)
    passed = {r.actor for r in benign if r.kind == "challenge" and 200 <= r.status < 400}
    stuck = challenged - passed
    refused_principals = {r.actor for r in benign if r.blocked and not r.challenged} | stuck
    pages = [r for r in benign if r.kind == "browse"]
    missing = [r for r in pages if r.status == 404]
    return Outcome(
        campaign=camp.name,
        gain_kind=camp.gain,
        attack_requests=len(attack),
        refused=len(refused),
        admitted=len(attack) - len(refused),
        admitted_before_first_block=before,
        first_block_at=attack[first].at if first is not None else None,
        after_first_block=len(after),
        admitted_after_first_block=admitted_after,
        gain=gain,
        reference_gain=reference_gain,
        first_gain_index=first_gain,
        caught=caught,
        benign_requests=len(benign),
        benign_refused=sum(
            r.blocked and (not r.challenged or r.actor in stuck) for r in benign
        ),
        benign_principals=len(principals),
        benign_principals_refused=len(refused_principals),
        benign_principals_challenged=len(challenged),
        challenges_passed=sum(r.kind == "challenge" and 200 <= r.status < 400 for r in benign),
        bot_challenges=sum(r.challenged for r in attack),
        simulated_seconds=max((r.at for r in records), default=0.0),
        wall_seconds=wall,
        skipped=skipped,
        app_refusals=sum(r.guard_refused is False and r.status in (403, 429) for r in records),
        benign_pages=len(pages),
        benign_pages_missing=len(missing),
        missing_page=f"{missing[0].method} {missing[0].path}" if missing else None,
    )


AppFactory = Callable[[FakeClock], ASGIApp]
Send = Callable[[Sequence[Actor]], Awaitable[list[Record]]]


async def arun(
    camp: Campaign,
    target: Target,
    factory: AppFactory,
    *,
    seed: int = 7,
    scale: float = 1.0,
    size: float | None = None,
    solver: float = 0.0,
    by_status: bool = False,
    notes: list[str] | None = None,
) -> tuple[list[Record], float]:
    """One run of `camp` and its population against a fresh app on a fake clock, inside
    the app's lifespan (start-up before the first request, shut-down after the last).
    A refusal is one apiguard rendered when the app has a guard, else (and with
    `by_status`: another tool refuses, apiguard only watches) a 429 or a 403. What the
    run found about the guard's set-up goes to `notes`."""
    clock = FakeClock(START)
    app = factory(clock)
    actors = actors_for(camp, target, seed=seed, scale=scale, size=size, solver=solver)
    async with lifespan(app) as state:
        began = time.perf_counter()
        guard = None if by_status else find_guard(app)
        driver = AsgiDriver(app, server_errors=True, state=state, guard=guard)
        records = await run_agents(driver, clock, actors, origin=START)
        wall = time.perf_counter() - began
    if notes is not None and guard is not None and guard.engine.surge_reads_unheld:
        notes.append(
            f"a scraping surge was found but reported only ({guard.engine.surge_reads_unheld} "
            "new readers let through): the guard does not know the app's challenge route; "
            "set detection.challenge_path to it (it is also learned once somebody passes a "
            "challenge there)"
        )
    return records, wall


def run(
    camp: Campaign,
    target: Target,
    factory: AppFactory,
    *,
    reference: AppFactory | int | None = None,
    seed: int = 7,
    scale: float = 1.0,
    size: float | None = None,
    solver: float = 0.0,
    by_status: bool = False,
) -> Outcome:
    """Run and judge `camp` against `factory`'s app; `reference` is the unprotected app's
    factory (run first, for the gain the campaign would have) or its gain, already known.
    `by_status`: the app's refusals are another tool's (a baseline), told by status."""
    missing = undeclared(camp, target)
    if missing is not None:
        return judge(camp, [], reference_gain=None, skipped=missing)
    ref: int | None
    ref_records: list[Record] | None = None
    if reference is None or isinstance(reference, int):
        ref = reference
    else:
        ref_records, _ = asyncio.run(
            arun(camp, target, reference, seed=seed, scale=scale, size=size, solver=solver)
        )
        ref = gain_of(ref_records)[0]
    notes: list[str] = []
    records, wall = asyncio.run(
        arun(
            camp,
            target,
            factory,
            seed=seed,
            scale=scale,
            size=size,
            solver=solver,
            by_status=by_status,
            notes=notes,
        )
    )
    skipped = skip_reason(camp, target, records, ref_records)
    outcome = judge(camp, records, reference_gain=ref, wall=wall, skipped=skipped)
    return replace(outcome, note="; ".join(notes) or None)


def reference_gain(
    camp: Campaign,
    target: Target,
    factory: AppFactory,
    *,
    seed: int = 7,
    scale: float = 1.0,
    size: float | None = None,
) -> int:
    """What the campaign gains against the unprotected app (`factory` must not refuse)."""
    records, _ = asyncio.run(arun(camp, target, factory, seed=seed, scale=scale, size=size))
    return gain_of(records)[0]


def meets_targets(outcome: Outcome, camp: Campaign) -> bool:
    """The issue's targets: caught; < 50 admitted before the first block (or gain) where
    that applies; <= 10% admitted after it; no benign principal refused."""
    return (
        outcome.caught
        and (not camp.first_block_target or outcome.admitted_before_first_loss < 50)
        and outcome.admitted_after_share <= 0.10
        and outcome.benign_principals_refused == 0
    )


def fmt_share(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0%}"
