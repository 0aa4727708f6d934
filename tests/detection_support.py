"""A small vulnerable FastAPI app and simulated clients for the detector tests.

The app has a JSON login (`@guard.login`), a sign-up flow, an order route with a real BOLA
bug (any signed-in user reads any order), a `/challenge` route that calls
`guard.challenge_passed()`, and a `/me` route. Clients keep cookies like a browser (or
not, like a script) and send each request from whatever address the test says.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException
from pydantic import BaseModel

from apiguard import Guard, identify
from apiguard.asgi import GuardMiddleware
from apiguard.responses import CHALLENGE_REQUIRED
from apiguard.simulate.driver import AsgiDriver, Request, Response

USERS = 300
ORDERS_PER_USER = 12
BROWSERS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Version/17.5 Safari",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile",
)


def username(i: int) -> str:
    return f"user{i}@example.com"


def password(i: int) -> str:
    return f"correct horse {i}"


def owner_of(order_id: int) -> int:
    """Orders are numbered 1.. and dealt round-robin: user i owns i+1, i+1+USERS, ..."""
    return (order_id - 1) % USERS


def orders_of(user: int) -> list[int]:
    return [user + 1 + k * USERS for k in range(ORDERS_PER_USER)]


class Credentials(BaseModel):
    username: str
    password: str


def current_user(authorization: Annotated[str | None, Header()] = None) -> int:
    """The signed-in user (a bearer token `tok-<id>`), declared to apiguard."""
    if not authorization or not authorization.startswith("Bearer tok-"):
        raise HTTPException(401)
    user = int(authorization.removeprefix("Bearer tok-"))
    identify(user)
    return user


def build_app(guard: Guard, *, sync_login: bool = False, **fastapi: Any) -> FastAPI:
    """The vulnerable shop, with apiguard added as its README says."""
    app = FastAPI(**fastapi)
    app.add_middleware(GuardMiddleware, guard=guard)
    accounts = {username(i): (i, password(i)) for i in range(USERS)}

    if sync_login:

        @app.post("/login")
        @guard.login(username="body.username")
        def login_sync(body: Credentials) -> dict[str, str]:
            found = accounts.get(body.username)
            if found is None or found[1] != body.password:
                raise HTTPException(401, "bad credentials")
            return {"token": f"tok-{found[0]}"}

    else:

        @app.post("/login")
        @guard.login(username=lambda body: body.username)
        async def login(body: Credentials) -> dict[str, str]:
            found = accounts.get(body.username)
            if found is None or found[1] != body.password:
                raise HTTPException(401, "bad credentials")
            return {"token": f"tok-{found[0]}"}

    @app.get("/orders/{order_id}")
    async def order(order_id: int, user: Annotated[int, Depends(current_user)]) -> dict[str, Any]:
        if not 1 <= order_id <= USERS * ORDERS_PER_USER:
            raise HTTPException(404)
        return {"id": order_id, "owner": owner_of(order_id)}  # BOLA: no ownership check

    signups: list[int] = []

    @app.post("/signup", status_code=201)
    @guard.flow("signup", "10/hour", per="ip")
    async def signup(body: Credentials) -> dict[str, str]:
        user = 100_000 + len(signups)  # a new account owns no order yet
        signups.append(user)
        identify(user)
        return {"token": f"tok-{user}"}

    @app.get("/me")
    async def me(user: Annotated[int, Depends(current_user)]) -> dict[str, int]:
        return {"user": user}

    @app.post("/challenge")
    async def challenge() -> dict[str, bool]:
        guard.challenge_passed()  # the (simulated) person solved the app's CAPTCHA
        return {"passed": True}

    return app


def is_challenge(resp: Response) -> bool:
    body = resp.json()
    return resp.status in (401, 403, 428, 429) and (
        isinstance(body, dict) and body.get("type") == CHALLENGE_REQUIRED
    )


@dataclass
class Client:
    """One simulated client: its user agent, cookie jar (None: a script without one) and
    the address each request comes from."""

    driver: AsgiDriver
    ua: str
    ip: str
    jar: dict[str, str] | None = field(default_factory=dict)
    token: str | None = None

    def headers(self, extra: Iterable[tuple[str, str]] = ()) -> tuple[tuple[str, str], ...]:
        found = [("user-agent", self.ua), ("accept", "application/json"), *extra]
        if self.jar:
            found.append(("cookie", "; ".join(f"{k}={v}" for k, v in self.jar.items())))
        if self.token:
            found.append(("authorization", f"Bearer {self.token}"))
        return tuple(found)

    async def send(
        self, method: str, path: str, body: Any = None, ip: str | None = None
    ) -> Response:
        raw = json.dumps(body).encode() if body is not None else b""
        extra = [("content-type", "application/json")] if body is not None else []
        resp = await self.driver.send(
            Request(method, path, ip or self.ip, self.headers(extra), raw)
        )
        if self.jar is not None:
            for name, value in resp.headers:
                if name == b"set-cookie":
                    k, _, rest = value.decode("latin-1").partition("=")
                    self.jar[k] = rest.split(";", 1)[0]
        return resp

    async def login(self, user: int, pw: str | None = None, ip: str | None = None) -> Response:
        resp = await self.send(
            "POST", "/login", {"username": username(user), "password": pw or password(user)}, ip
        )
        if resp.status == 200:
            self.token = resp.json()["token"]
        return resp

    async def signup(self, name: str) -> Response:
        """Create an account (a fresh one: no cookie, no token) and sign in with it."""
        self.token = None
        if self.jar is not None:
            self.jar.clear()
        resp = await self.send("POST", "/signup", {"username": name, "password": "pw " + name})
        if resp.status == 201:
            self.token = resp.json()["token"]
        return resp

    async def human_login(
        self, user: int, pw: str | None = None, ip: str | None = None
    ) -> tuple[Response, bool]:
        """A person: on a challenge, solve it (call /challenge) and retry once. Returns
        the final response and whether a challenge was met."""
        resp = await self.login(user, pw, ip)
        if is_challenge(resp):
            await self.send("POST", "/challenge", ip=ip)
            return await self.login(user, pw, ip), True
        return resp, False


def public_ip(rng: random.Random) -> str:
    """A random public-looking IPv4 address (a residential proxy pool)."""
    while True:
        a = rng.randrange(1, 224)
        if a not in (10, 100, 127, 169, 172, 192, 198, 203):
            return f"{a}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def run_quietly(coro: Any) -> Any:
    """`run`, with apiguard's warnings (detections, bans) kept out of the test's output."""
    logging.disable(logging.WARNING)
    try:
        return run(coro)
    finally:
        logging.disable(logging.NOTSET)


def keys_sent(guard: Guard, prefix: str) -> list[str]:
    """The keys starting with `prefix` of the detectors' operations as they reach
    `guard`'s store, from now on (a spy on `store.observe`)."""
    sent: list[str] = []
    store = guard.engine.store
    original = store.observe

    def observe(ops: Any, now: float) -> Any:
        sent.extend(op.key for op in ops if op.key.startswith(prefix))
        return original(ops, now)

    store.observe = observe  # type: ignore[method-assign]
    return sent


# what Starlette's TestClient sends (tests that drove one client per request now use the
# in-process driver: the same ASGI app, without a thread and an event loop per request)
TESTCLIENT_HEADERS = (
    ("accept", "*/*"),
    ("accept-encoding", "gzip, deflate"),
    ("connection", "keep-alive"),
    ("user-agent", "testclient"),
)


def get_like_testclient(
    driver: AsgiDriver, ip: str, path: str, headers: tuple[tuple[str, str], ...] = ()
) -> int:
    """One GET from `ip` with TestClient's headers (`headers` replace theirs); the status.
    Give the driver `host="testserver"`, as TestClient's."""
    sent = {**dict(TESTCLIENT_HEADERS), **dict(headers)}
    return int(run(driver.send(Request("GET", path, ip, tuple(sent.items())))).status)
