"""The people and programs the self-test sends: browser profiles, clients, the benign population.

Agents are generators (see `apiguard.simulate.driver`); a `Client` carries one agent's
time, address, headers and token, and answers apiguard's `challenge-required` the way a
person does (solve it at `/challenge`, then retry) with probability `solves`: 1.0 for
people, 0.0 for bots unless a campaign gives them a CAPTCHA-solving service.

The benign population is as awkward as honest traffic gets, all of it at once:
- 200 employees behind one office NAT address, each logging in, some with a typo first;
- home users with one address and one browser, 1 in 8 mistyping their password once;
- forgetful users who fail 3 to 6 times with different passwords over a few minutes and
  then (mostly) remember it;
- mobile users whose address changes every 2 to 4 requests (their carrier's NAT
  gateways over two /16s, or a new IPv6 /64 in its /32), and their home Wi-Fi now and then;
- business buyers who read every one of their many orders in a row (a sequential walk of
  their OWN objects, 50+ ids, on the same route a BOLA walk uses);
- a heavy but honest API client (a partner's key from its two servers, bursts of pages);
- the owner of the key the attacker stole, still using it from its own server;
- returning users who log in again and again from their device (cookie jar kept) while
  their account is under attack.
"""

from __future__ import annotations

import ipaddress
import json
import random
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

from apiguard.simulate.driver import Actor, Agent, Request, Response, Step
from apiguard.simulate.target import Account, ObjectId, Target, id_order

Headers = tuple[tuple[str, str], ...]
Flow = Generator[Step, Response, Response]

BENIGN = "benign"
OFFICE_IP = "198.51.100.23"

_CHROME = (
    "Mozilla/5.0 ({os}) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.{b}.{p} Safari/537.36"
)
_OSES = (
    "Windows NT 10.0; Win64; x64",
    "Macintosh; Intel Mac OS X 10_15_7",
    "X11; Linux x86_64",
    "Linux; Android 14; Pixel 8",
)
_LANGS = ("en-US,en;q=0.9", "en-GB,en;q=0.8", "de-DE,de;q=0.9,en;q=0.6", "fr-FR,fr;q=0.9", "es-ES")


def _chrome(rng: random.Random) -> Headers:
    v = rng.choice((124, 125, 126, 127))
    ua = _CHROME.format(os=rng.choice(_OSES), v=v, b=rng.randint(6300, 6600), p=rng.randint(1, 200))
    return (
        ("sec-ch-ua", f'"Chromium";v="{v}", "Google Chrome";v="{v}", "Not-A.Brand";v="99"'),
        ("sec-ch-ua-mobile", "?0"),
        ("user-agent", ua),
        ("accept", "application/json, text/plain, */*"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("accept-language", rng.choice(_LANGS)),
    )


def _firefox(rng: random.Random) -> Headers:
    v = rng.choice((126, 127, 128))
    os = rng.choice(
        ("Windows NT 10.0; Win64; x64", "X11; Linux x86_64; ", "Macintosh; Intel Mac OS X 14.5")
    )
    return (
        ("user-agent", f"Mozilla/5.0 ({os}; rv:{v}.0) Gecko/20100101 Firefox/{v}.0"),
        ("accept", "application/json, text/plain, */*"),
        ("accept-language", rng.choice(_LANGS)),
        ("accept-encoding", "gzip, deflate, br, zstd"),
    )


def _safari(rng: random.Random) -> Headers:
    device = rng.choice(
        ("iPhone; CPU iPhone OS 17_5 like Mac OS X", "Macintosh; Intel Mac OS X 10_15_7")
    )
    return (
        ("accept", "application/json, text/plain, */*"),
        ("accept-language", rng.choice(_LANGS)),
        ("accept-encoding", "gzip, deflate, br"),
        (
            "user-agent",
            f"Mozilla/5.0 ({device}) AppleWebKit/605.1.15 (KHTML, like Gecko) "
            f"Version/17.{rng.randint(0, 5)} Safari/605.1.15",
        ),
    )


def _app(rng: random.Random) -> Headers:
    build = f"4.{rng.randint(0, 3)}.{rng.randint(0, 9)}"
    os = rng.choice(("Android 14; Pixel 8", "Android 13; SM-S911B", "iOS 17.5; iPhone15,2"))
    return (
        ("user-agent", f"ShopApp/{build} ({os})"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip"),
    )


PROFILES: tuple[Callable[[random.Random], Headers], ...] = (
    _chrome,
    _chrome,
    _firefox,
    _safari,
    _app,
)


def browser(rng: random.Random) -> Headers:
    """A real browser's (or the mobile app's) headers, in its own order: one person keeps it."""
    return rng.choice(PROFILES)(rng)


def rotating_browser(rng: random.Random) -> Callable[[], Headers]:
    """What an impersonating bot sends: a fresh realistic browser profile per request."""
    return lambda: browser(rng)


def tool_headers(ua: str) -> Callable[[], Headers]:
    """A script's one fingerprint (its HTTP library's header order and values)."""
    headers: Headers = (("accept-encoding", "gzip, deflate"), ("accept", "*/*"), ("user-agent", ua))
    return lambda: headers


def public_ipv4(rng: random.Random) -> str:
    """A random globally routable IPv4 address (a residential proxy exit, a botnet host)."""
    while True:
        address = ipaddress.IPv4Address(rng.randrange(1 << 24, 224 << 24))
        if address.is_global:
            return str(address)


def constant(headers: Headers) -> Callable[[], Headers]:
    """One set of headers for every request (one person's browser)."""
    return lambda: headers


def fixed(ip: str) -> Callable[[], str]:
    return lambda: ip


def rotating(rng: random.Random) -> Callable[[], str]:
    """A new residential address on every request."""
    return lambda: public_ipv4(rng)


# Mobile carriers: the public IPv4 networks their NAT gateways use, and their IPv6 /32.
CARRIERS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("172.56", "172.58"), "2607:fb90"),
    (("100.37", "174.205"), "2600:1000"),
    (("31.94", "37.120"), "2a01:598"),
    (("82.132", "92.40"), "2a02:c7f"),
)


def mobile(rng: random.Random, ipv6: bool) -> Callable[[], str]:
    """A phone: a new carrier NAT address (or a new IPv6 /64 in the carrier's /32) every
    2 to 4 requests, and now and then the home Wi-Fi instead."""
    networks, prefix = rng.choice(CARRIERS)
    home = public_ipv4(rng)
    left = 0
    ip = ""

    def next_ip() -> str:
        nonlocal left, ip
        if left <= 0:
            left = rng.randint(2, 4)
            if rng.random() < 0.25:
                ip = home
            elif ipv6:
                words = ":".join(f"{rng.randrange(1 << 16):x}" for _ in range(2))
                ip = f"{prefix}:{words}::{rng.randint(1, 9999):x}"
            else:
                ip = f"{rng.choice(networks)}.{rng.randrange(256)}.{rng.randint(1, 254)}"
        left -= 1
        return ip

    return next_ip


@dataclass
class Client:
    """One agent's requests: its time, address, headers, token; it passes challenges
    with probability `solves` (5 to 20 seconds later, then retries the request)."""

    target: Target
    rng: random.Random
    ip: Callable[[], str]
    headers: Callable[[], Headers]
    t: float = 0.0
    solves: float = 0.0
    token: str | None = None
    api_key: str | None = None
    challenges_passed: int = field(default=0)

    def wait(self, seconds: float) -> None:
        self.t += max(0.0, seconds)

    def _request(
        self,
        method: str,
        path: str,
        body: bytes,
        ctype: str | None,
        auth: bool,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> Request:
        headers = (*self.headers(), *extra)
        if ctype is not None:
            headers = (*headers, ("content-type", ctype))
        if auth and self.token is not None:
            header = self.target.auth_value(self.token)
            if header is not None:  # (None: a session cookie, sent from the cookie jar)
                headers = (*headers, header)
        if self.api_key is not None:
            headers = (*headers, (self.target.api_header, self.api_key))
        return Request(method, path, self.ip(), headers, body)

    def send(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        ctype: str | None = None,
        kind: str = "browse",
        target: str | None = None,
        auth: bool = True,
        extra: tuple[tuple[str, str], ...] = (),
        keep_answer: bool = False,
    ) -> Flow:
        """Send one request (`resp = yield from client.send(...)`), passing a challenge
        the way this client does (`keep_answer`: a 4xx/5xx answer's body is recorded)."""
        request = self._request(method, path, body, ctype, auth, extra)
        response = yield Step(self.t, request, kind, target, keep_answer)
        if response.challenged and self.target.challenge_path and self.rng.random() < self.solves:
            self.wait(self.rng.uniform(5.0, 20.0))
            solved = Request(
                "POST",
                self.target.challenge_path,
                self.ip(),
                (*self.headers(), ("content-type", "application/json")),
                self.target.challenge_body.encode(),
            )
            answer = yield Step(self.t, solved, "challenge")
            if 200 <= answer.status < 300:
                self.challenges_passed += 1
            self.wait(self.rng.uniform(0.5, 2.0))
            response = yield Step(
                self.t,
                self._request(method, path, body, ctype, auth, extra),
                kind,
                target,
                keep_answer,
            )
        return response

    def login(
        self, username: str, password: str, *, kind: str = "login", target: str | None = None
    ) -> Flow:
        """POST the login form; keeps the token of a successful login."""
        body, extra = self.target.login_request(username, password)
        response = yield from self.send(
            "POST",
            self.target.login_path,
            body=body,
            kind=kind,
            target=target,
            auth=False,
            extra=extra,
            keep_answer=kind == "own-login",  # (why the attacker's own login fails)
        )
        token = token_of(response, self.target)
        if token is not None:
            self.token = token
        return response

    def signup(self, name: str, password: str) -> Flow:
        """POST the sign-up form (`[flow] signup`); keeps the token of a successful one
        (`client.token` stays None when the answer carries none, unless `[flow]
        signup_login` names the new account's username: it then logs in, with the
        password the sign-up sent: `password` made by `[flow] signup_password`)."""
        password = self.target.account_password(password)
        body, ctype = self.target.signup_body(name, password)
        response = yield from self.send(
            "POST",
            self.target.signup_path,
            body=body,
            ctype=ctype,
            kind="signup",
            auth=False,
            keep_answer=True,
        )
        self.token = token_of(response, self.target)
        then = self.target.signup_login
        if self.token is None and then and 200 <= response.status < 300:
            username = then.replace("{name}", name)
            yield from self.login(username, password, kind="own-login")
        return response

    def browse(self, kind: str = "browse") -> Generator[Step, Response, Response | None]:
        """One catalogue page or product page (None, and nothing sent, when the app has no
        pages declared: see `Target.confined`)."""
        if not self.target.browse_paths:
            return None
        rng, ids = self.rng, self.target.browse_ids
        template = rng.choice(self.target.browse_paths)
        page = rng.randint(1, 10)
        product = rng.choice(ids) if ids else rng.randint(1, max(1, self.target.products))
        path = template.format(page=page, product=product)
        return (yield from self.send("GET", path, kind=kind))

    def read_object(
        self, object_id: ObjectId, kind: str = "own", target: str | None = None
    ) -> Flow:
        path = self.target.object_path.replace("{id}", str(object_id))
        return (yield from self.send("GET", path, kind=kind, target=target))


def token_of(response: Response, target: Target) -> str | None:
    """The token a login or sign-up answer carries, as the target declares it."""
    if not 200 <= response.status < 300:
        return None
    return target.token_in(
        response.status,
        response.header_values("set-cookie") if target.token_cookie else (),
        None if target.token_cookie else response.json(),
    )


def typo(rng: random.Random, password: str) -> str:
    """A mistyped password: a dropped, doubled or swapped character, or caps lock."""
    roll = rng.random()
    if roll < 0.3 and len(password) > 1:
        i = rng.randrange(len(password))
        return password[:i] + password[i + 1 :]
    if roll < 0.6:
        i = rng.randrange(len(password))
        return password[:i] + password[i] + password[i:]
    if roll < 0.8:
        return password.swapcase()
    return password + rng.choice("!1.")


def _sessions(
    rng: random.Random, duration: float, count: int, length: tuple[float, float]
) -> list[float]:
    """Start times of `count` visits spread over the run (each in its own slice)."""
    slot = duration / max(1, count)
    room = max(0.0, slot - min(length[1], slot * 0.5))
    return [i * slot + rng.uniform(0.0, room) for i in range(count)]


def shopper(
    client: Client,
    account: Account,
    duration: float,
    *,
    sessions: int = 1,
    typo_rate: float = 0.12,
    requests: tuple[int, int] = (4, 14),
    reads_own: float = 0.3,
) -> Agent:
    """A customer: a few visits, a glance at the catalogue, log in (a typo now and then),
    browse, read their own orders; the device keeps its cookies between visits."""
    rng = client.rng
    for start in _sessions(rng, duration, sessions, (120.0, 900.0)):
        client.t = max(client.t, start)
        client.token = None
        for _ in range(rng.randint(0, 2)):
            yield from client.browse()
            client.wait(rng.expovariate(1 / 12.0))
        if rng.random() < typo_rate:
            yield from client.login(account.username, typo(rng, account.password), kind="typo")
            client.wait(rng.uniform(3.0, 15.0))
        response = yield from client.login(account.username, account.password)
        if not 200 <= response.status < 300:
            client.wait(rng.uniform(5.0, 30.0))  # once more, slowly: a person would
            response = yield from client.login(account.username, account.password)
            if not 200 <= response.status < 300:
                continue
        for _ in range(rng.randint(*requests)):
            client.wait(rng.expovariate(1 / 15.0) + 0.5)
            if account.objects and rng.random() < reads_own:
                yield from client.read_object(rng.choice(account.objects))
            else:
                yield from client.browse()


def forgetful(client: Client, account: Account, duration: float) -> Agent:
    """Fails 3-6 times with different wrong passwords over a few minutes, then mostly
    remembers it (or gives up); later visits go better."""
    rng = client.rng
    client.t = rng.uniform(0.0, duration * 0.7)
    yield from client.browse()
    for _ in range(rng.randint(3, 6)):
        client.wait(rng.uniform(8.0, 60.0))
        guess = rng.choice(
            (
                typo(rng, account.password),
                f"{account.username}123",
                "Password1",
                account.password[::-1],
            )
        )
        if guess == account.password:
            guess += "?"
        yield from client.login(account.username, guess, kind="forgot")
    if rng.random() < 0.75:
        client.wait(rng.uniform(20.0, 120.0))
        response = yield from client.login(account.username, account.password)
        if 200 <= response.status < 300:
            for _ in range(rng.randint(2, 6)):
                client.wait(rng.uniform(3.0, 30.0))
                if account.objects:
                    yield from client.read_object(rng.choice(account.objects))


def business_buyer(client: Client, account: Account, duration: float) -> Agent:
    """Reads every one of their orders in a row (an accountant's month end): a sequential
    walk over their OWN objects, on the route a BOLA walk uses."""
    rng = client.rng
    client.t = rng.uniform(0.0, duration * 0.6)
    response = yield from client.login(account.username, account.password)
    if not 200 <= response.status < 300 or not account.objects:
        return
    for oid in sorted(account.objects, key=id_order):
        client.wait(rng.uniform(0.8, 4.0))
        yield from client.read_object(oid)
    for _ in range(rng.randint(3, 10)):  # and a few again
        client.wait(rng.uniform(2.0, 20.0))
        yield from client.read_object(rng.choice(account.objects))


def api_client(
    client: Client, duration: float, *, burst: tuple[int, int], every: float, rate: float
) -> Agent:
    """A partner's integration: bursts of pages every `every` seconds at `rate` per second."""
    rng = client.rng
    page = rng.randint(1, client.target.api_pages)
    client.t = rng.uniform(0.0, every)
    while client.t < duration:
        for _ in range(rng.randint(*burst)):
            path = client.target.api_path.format(page=page)
            yield from client.send("GET", path, kind="api")
            page = page % client.target.api_pages + 1
            client.wait(rng.expovariate(rate))
        client.wait(rng.uniform(0.5, 1.5) * every)


@dataclass(frozen=True, slots=True)
class PopulationPlan:
    """How many of each kind of honest user, at `size` 1.0 (the benchmark's)."""

    office: int = 200
    home: int = 60
    forgetful: int = 8
    mobile: int = 20
    business: int = 10

    def scaled(self, size: float) -> PopulationPlan:
        return PopulationPlan(
            *(
                max(1, round(getattr(self, f) * size))
                for f in ("office", "home", "forgetful", "mobile", "business")
            )
        )


@dataclass(frozen=True, slots=True)
class Population:
    """The benign actors and which accounts they use (campaigns pick victims among them)."""

    actors: tuple[Actor, ...]
    accounts: tuple[Account, ...]
    returning: tuple[Account, ...]  # accounts whose owner keeps logging in during the run


def population(
    target: Target,
    rng: random.Random,
    duration: float,
    *,
    size: float = 1.0,
    returning: int = 3,
    plan: PopulationPlan | None = None,
) -> Population:
    """The benign population for a run of `duration` seconds (see the module docstring)."""
    counts = (plan or PopulationPlan()).scaled(size)
    # the last 5 accounts are the campaigns' own (`campaigns.py`): never a benign actor's
    # (else the attacker's account, refused, would count as an honest principal refused),
    # unless the app declared no more than those
    accounts = list(target.accounts[:-5] if len(target.accounts) > 5 else target.accounts)
    taken = 0

    def take(n: int) -> list[Account]:
        nonlocal taken
        chosen = accounts[taken : taken + n]
        taken += n
        return chosen

    def client(ip: Callable[[], str], seed: int) -> Client:
        own = random.Random(seed)
        return Client(target, own, ip, constant(browser(own)), solves=1.0)

    actors: list[Actor] = []
    used: list[Account] = []
    for account in take(counts.business):
        c = client(fixed(public_ipv4(rng)), rng.getrandbits(64))
        actors.append(Actor(BENIGN, False, business_buyer(c, account, duration)))
        used.append(account)
    for account in take(counts.office):
        c = client(fixed(OFFICE_IP), rng.getrandbits(64))
        actors.append(Actor(BENIGN, False, shopper(c, account, duration, requests=(2, 8))))
        used.append(account)
    home = take(counts.home)
    returning_names = {a.username for a in home[:returning]}
    for account in home:
        c = client(fixed(public_ipv4(rng)), rng.getrandbits(64))
        visits = 6 if account.username in returning_names else rng.choice((1, 1, 2, 3))
        actors.append(Actor(BENIGN, False, shopper(c, account, duration, sessions=visits)))
        used.append(account)
    for account in take(counts.forgetful):
        c = client(fixed(public_ipv4(rng)), rng.getrandbits(64))
        actors.append(Actor(BENIGN, False, forgetful(c, account, duration)))
        used.append(account)
    for i, account in enumerate(take(counts.mobile)):
        seed = rng.getrandbits(64)
        c = client(mobile(random.Random(seed ^ 1), ipv6=i % 2 == 1), seed)
        actors.append(
            Actor(BENIGN, False, shopper(c, account, duration, sessions=2, reads_own=0.5))
        )
        used.append(account)
    keys = target.api_keys
    if len(keys) >= 2:
        servers = ("203.0.113.10", "203.0.113.11")
        c = client(lambda: rng.choice(servers), rng.getrandbits(64))
        c.headers = tool_headers("acme-sync/2.3 python-requests/2.32")
        c.api_key = keys[1]
        actors.append(
            Actor(BENIGN, False, api_client(c, duration, burst=(40, 120), every=900.0, rate=3.0))
        )
        owner = client(fixed("192.0.2.200"), rng.getrandbits(64))
        owner.headers = tool_headers("globex-etl/1.0 Go-http-client/1.1")
        owner.api_key = keys[0]
        actors.append(
            Actor(
                BENIGN, False, api_client(owner, duration, burst=(10, 30), every=1800.0, rate=1.0)
            )
        )
    return Population(
        tuple(actors), tuple(used), tuple(a for a in home if a.username in returning_names)
    )


def json_body(**fields: object) -> bytes:
    return json.dumps(fields).encode()
