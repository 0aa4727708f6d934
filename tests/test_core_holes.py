"""Regression tests for issue 6's bypasses: raising handlers, unanswered requests, shared
app keys and bans, extra credentials beside a banned one, flows spent by rejected
requests. Each reproduces a defect the core had, through real FastAPI/Starlette apps."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient
from starlette.types import Receive, Scope, Send

from apiguard import Guard, identify
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock


def _guard(**config: Any) -> Guard:
    config.setdefault("bans", {"enabled": False})
    config.setdefault("limits", {"principal": None, "ip": None})
    return Guard(config, clock=FakeClock(1_000.0))


def _client(app: Any, ip: str = "198.51.100.1") -> TestClient:
    return TestClient(app, client=(ip, 5000), raise_server_exceptions=False)


# -- 1. every request that reaches the middleware is counted ---------------------------


@pytest.mark.parametrize("style", ["raise", "app-handler", "starlette-handler"])
@pytest.mark.parametrize("sync", [False, True])
def test_a_handler_that_raises_is_counted(style: str, sync: bool) -> None:
    guard = _guard(limits={"principal": "5/minute", "ip": None})
    handlers: dict[Any, Any] = {}
    if style == "app-handler":

        async def on_error(request: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"error": "oops"}, status_code=500)

        handlers = {Exception: on_error}
    app = FastAPI(exception_handlers=handlers)
    app.add_middleware(GuardMiddleware, guard=guard)
    sent: list[int] = []

    if sync:

        @app.post("/sms")
        def sms_sync() -> None:
            sent.append(1)
            raise RuntimeError("gateway down after sending")
    else:

        @app.post("/sms")
        async def sms() -> None:
            sent.append(1)
            raise RuntimeError("gateway down after sending")

    if style == "starlette-handler":

        async def crash(request: Request) -> PlainTextResponse:
            sent.append(1)
            raise RuntimeError("boom")

        app = Starlette(
            routes=[Route("/sms", crash, methods=["POST"])],
            exception_handlers={500: handlers.get(Exception) or _plain_500},
        )
        app.add_middleware(GuardMiddleware, guard=guard)
    client = _client(app)
    statuses = [client.post("/sms").status_code for _ in range(40)]
    assert statuses[:5] == [500] * 5
    assert statuses[5:] == [429] * 35  # counted although no response went through apiguard
    assert len(sent) == 40  # undecorated: it runs, but its answer is the refusal
    other = _client(app, ip="203.0.113.50")
    assert other.post("/sms").status_code == 500  # another caller has its own budget


async def _plain_500(request: Request, exc: Exception) -> PlainTextResponse:
    return PlainTextResponse("error", status_code=500)


def test_a_raising_handler_earns_a_ban() -> None:
    guard = _guard(limits={"principal": "3/minute", "ip": None}, bans={"after": 3, "base": 600})
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.get("/crash")
    async def crash() -> None:
        raise ValueError("bad")

    client = _client(app)
    statuses = [client.get("/crash").status_code for _ in range(8)]
    assert statuses == [500, 500, 500, 429, 429, 403, 403, 403]


def test_a_mounted_raw_app_that_never_answers_is_counted() -> None:
    guard = _guard(limits={"principal": "3/minute", "ip": None})
    calls: list[int] = []

    async def silent(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(1)  # does its work, sends nothing

    inner = APIRouter()

    @inner.get("/ok")
    async def ok() -> dict[str, bool]:
        return {"ok": True}

    app = FastAPI()
    app.include_router(inner, prefix="/v1")
    app.mount("/hooks", silent)
    app.add_middleware(GuardMiddleware, guard=guard)
    client = _client(app)
    statuses = [client.get("/hooks/x").status_code for _ in range(3)]
    assert 429 not in statuses  # the server answers what the app did not
    assert client.get("/hooks/x").status_code == 429  # ...but each one was counted
    assert client.get("/v1/ok").status_code == 429  # one budget for the principal
    assert _client(app, ip="203.0.113.8").get("/v1/ok").status_code == 200
    assert len(calls) == 4


def test_a_success_flow_is_refunded_when_its_handler_raises() -> None:
    guard = _guard()
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)
    fail = [True]

    @app.post("/redeem")
    @guard.flow("redeem", "2/hour", count="success")
    async def redeem() -> dict[str, bool]:
        if fail[0]:
            raise RuntimeError("db down")
        return {"ok": True}

    client = _client(app)
    assert [client.post("/redeem").status_code for _ in range(5)] == [500] * 5
    fail[0] = False
    assert [client.post("/redeem").status_code for _ in range(3)] == [200, 200, 429]


# -- 3. a ban never spreads to a credential other users share ---------------------------

TOKENS = {f"tok-{n}": f"user-{n}" for n in range(6)}
SHARED_APP_KEY = {"x-api-key": "mobile-app-v3-shared-key"}


def _bearer_app(guard: Guard) -> FastAPI:
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    def user(authorization: str = Header()) -> str:
        name = TOKENS.get(authorization.removeprefix("Bearer "))
        if name is None:
            raise HTTPException(401)
        identify(name)
        return name

    @app.post("/coupons/redeem")
    @guard.flow("redeem", "3/hour", count="attempt")
    async def redeem(u: str = Depends(user)) -> dict[str, str]:
        return {"by": u}

    @app.get("/catalog")
    async def catalog() -> dict[str, bool]:  # public: no identify()
        return {"ok": True}

    return app


@pytest.mark.parametrize("abuser_first", [False, True])
def test_a_ban_never_spreads_to_a_shared_app_key(abuser_first: bool) -> None:
    guard = _guard(bans={"after": 3, "base": 600})
    app = _bearer_app(guard)
    users = [_client(app, ip=f"203.0.113.{10 + n}") for n in range(6)]

    def headers(n: int) -> dict[str, str]:
        return {"authorization": f"Bearer tok-{n}", **SHARED_APP_KEY}

    if not abuser_first:  # honest users used the app before the abuse
        for n in range(1, 6):
            assert users[n].post("/coupons/redeem", headers=headers(n)).status_code == 200
    abuser = users[0]
    statuses = [abuser.post("/coupons/redeem", headers=headers(0)).status_code for _ in range(8)]
    assert statuses[:3] == [200, 200, 200] and statuses[-1] == 403  # the abuser is banned
    # ...with their own token, before routing, on any route
    assert abuser.get("/catalog", headers={"authorization": "Bearer tok-0"}).status_code == 403
    for n in range(1, 6):  # every other user, same shared key, other IPs: served
        assert users[n].post("/coupons/redeem", headers=headers(n)).status_code == 200, n
        assert users[n].get("/catalog", headers=headers(n)).status_code == 200, n
    assert abuser.post("/coupons/redeem", headers=headers(0)).status_code == 403


# -- 4. every credential a request presents is checked against bans ---------------------


def test_a_banned_token_cannot_walk_past_its_ban_with_a_random_key() -> None:
    guard = _guard(limits={"principal": "3/minute", "ip": None}, bans={"after": 2, "base": 600})
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)
    runs: list[int] = []

    @app.post("/work")
    async def work() -> dict[str, bool]:  # no identify(): the token is the principal
        runs.append(1)
        return {"ok": True}

    client = _client(app)
    token = {"authorization": "Bearer stolen-token"}
    assert [client.post("/work", headers=token).status_code for _ in range(6)][-1] == 403
    runs.clear()
    for n in range(50):
        for extra in ({"x-api-key": f"random-{n}"}, {"cookie": f"s={n}"}):
            resp = client.post("/work", headers={**token, **extra})
            assert resp.status_code == 403, (n, extra)
    honest = _client(app, ip="192.0.2.99")  # a different token from another IP is served
    assert honest.post("/work", headers={"authorization": "Bearer mine"}).status_code == 200


def test_a_banned_key_cannot_hide_behind_a_second_key_header() -> None:
    guard = _guard(
        limits={"principal": "2/minute", "ip": None},
        bans={"after": 1, "base": 600},
        identity={"api_key_headers": ["x-api-key", "x-client-key"]},
    )
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.get("/data")
    async def data() -> dict[str, bool]:
        return {"ok": True}

    client = _client(app)
    key = {"x-client-key": "abused"}
    assert [client.get("/data", headers=key).status_code for _ in range(4)] == [200, 200, 403, 403]
    assert client.get("/data", headers={**key, "x-api-key": "fresh"}).status_code == 403
    both = {"x-client-key": "fresh-2", "x-api-key": "abused"}
    assert client.get("/data", headers=both).status_code == 403


# -- 5. a flow is spent by calls of its handler, never by rejected requests ---------------


def test_requests_the_router_rejects_spend_no_flow() -> None:
    guard = _guard()
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)
    calls: list[int] = []

    def user(authorization: str = Header()) -> str:
        if authorization != "Bearer ok":
            raise HTTPException(401)
        identify("alice")
        return "alice"

    @app.post("/orders/{order_id}/refund")
    @guard.flow("refund", "3/minute")
    async def refund(order_id: int, amount: int, u: str = Depends(user)) -> dict[str, int]:
        calls.append(order_id)
        return {"refunded": order_id}

    client = _client(app)
    auth = {"authorization": "Bearer ok"}
    for _ in range(3):
        assert client.get("/orders/1/refund", headers=auth).status_code == 405
        assert client.post("/orders/x/refund?amount=1", headers=auth).status_code == 422
        assert client.post("/orders/1/refund", headers=auth).status_code == 422  # no amount
        assert client.post("/orders/1/refund?amount=1").status_code == 422  # no header
        bad = {"authorization": "Bearer bad"}
        assert client.post("/orders/1/refund?amount=1", headers=bad).status_code == 401
    statuses = [
        client.post(f"/orders/{n}/refund?amount=1", headers=auth).status_code for n in range(4)
    ]
    assert statuses == [200, 200, 200, 429]
    assert calls == [0, 1, 2]


def test_a_405_on_a_starlette_route_and_a_mounted_router_spends_no_flow() -> None:
    guard = _guard()

    @guard.flow("signup", "2/minute", per="ip")
    async def signup(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    sub = Starlette(routes=[Route("/signup", signup, methods=["POST"])])
    app = Starlette(routes=[Mount("/v2", app=sub), Route("/signup", signup, methods=["POST"])])
    app.add_middleware(GuardMiddleware, guard=guard)
    client = _client(app)
    for path in ("/signup", "/v2/signup"):
        assert [client.get(path).status_code for _ in range(3)] == [405] * 3
        assert [client.put(path).status_code for _ in range(3)] == [405] * 3
    assert [client.post("/signup").status_code for _ in range(3)] == [200, 200, 429]


@pytest.mark.parametrize("kind", ["sync-gen", "async-gen"])
def test_a_streaming_generator_endpoint_spends_its_flow_but_not_on_405_or_422(
    kind: str,
) -> None:
    guard = _guard()
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)
    bodies: list[int] = []

    if kind == "sync-gen":

        @app.post("/export/{n}")
        @guard.flow("export", "2/minute", per="ip")
        def rows_sync(n: int) -> Iterator[dict[str, int]]:
            bodies.append(n)
            yield {"row": n}

    else:

        @app.post("/export/{n}")
        @guard.flow("export", "2/minute", per="ip")
        async def rows_async(n: int) -> AsyncIterator[dict[str, int]]:
            bodies.append(n)
            yield {"row": n}

    client = _client(app)
    for _ in range(3):
        assert client.get("/export/1").status_code == 405
        assert client.post("/export/x").status_code == 422
    statuses = [client.post(f"/export/{n}").status_code for n in range(3)]
    assert statuses == [200, 200, 429]
    assert bodies == [0, 1]


# -- what a new user met on a real app (full-stack-fastapi-template) ----------------------


def test_identify_none_checks_an_undecorated_write_before_it_runs() -> None:
    guard = _guard(limits={"principal": None, "ip": "3/minute"})
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)
    created: list[int] = []

    def maybe_user(authorization: str | None = Header(default=None)) -> str | None:
        user = TOKENS.get((authorization or "").removeprefix("Bearer "))
        identify(user)  # None: anonymous, checked now all the same
        return user

    @app.post("/private/users")
    async def create(u: str | None = Depends(maybe_user)) -> dict[str, int]:
        created.append(1)
        return {"n": len(created)}

    client = _client(app)
    assert [client.post("/private/users").status_code for _ in range(5)] == [200] * 3 + [429] * 2
    assert len(created) == 3  # refused before the handler ran, not after


def test_a_per_ip_login_flow_throttles_an_office_nat_but_never_bans_it() -> None:
    guard = _guard(bans={"after": 3, "base": 600})
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.post("/login")
    @guard.flow("login", "10/minute", per="ip")
    async def login() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    office = _client(app, ip="192.0.2.200")
    statuses = [office.post("/login").status_code for _ in range(40)]
    assert statuses[:10] == [200] * 10 and set(statuses[10:]) == {429}  # throttled...
    assert office.get("/health").status_code == 200  # ...never banned
    # a per-principal limit still escalates to a ban
    guard2 = _guard(bans={"after": 3, "base": 600})
    app2 = FastAPI()
    app2.add_middleware(GuardMiddleware, guard=guard2)

    @app2.post("/redeem")
    @guard2.flow("redeem", "2/minute")
    async def redeem() -> dict[str, bool]:
        return {"ok": True}

    assert [_client(app2).post("/redeem").status_code for _ in range(6)] == [
        200,
        200,
        429,
        429,
        403,
        403,
    ]


def test_monitor_mode_says_what_it_would_have_refused(caplog: pytest.LogCaptureFixture) -> None:
    guard = _guard(mode="monitor", limits={"principal": "2/minute", "ip": None})
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.get("/x")
    async def x() -> dict[str, bool]:
        return {"ok": True}

    client = _client(app)
    with caplog.at_level("WARNING", logger="apiguard"):
        assert [client.get("/x").status_code for _ in range(6)] == [200] * 6
    lines = [r.getMessage() for r in caplog.records if "would have refused" in r.getMessage()]
    assert len(lines) == 1 and "per-principal" in lines[0]  # once a minute per rule


def test_retry_after_detail_is_singular_for_one_second() -> None:
    from apiguard.decision import Action, Decision
    from apiguard.responses import block_response

    one = block_response(Decision(Action.THROTTLE, "r", 0.5))
    assert b"Retry after 1 second." in one.body
    assert b"Retry after 3 seconds." in block_response(Decision(Action.THROTTLE, "r", 2.5)).body


def test_a_signed_in_user_s_token_sent_to_a_route_without_identify_is_not_a_new_key() -> None:
    """FP hunt finding 13: an SPA sends its bearer token on every call, also to /health,
    which does not call identify(). Behind one office address, each colleague's token
    counted there as a made-up credential (`new_credentials_per_ip`), and past the budget
    colleagues were refused and the address banned. A token the app vouched for on an
    earlier request is no new credential; made-up ones still are."""
    guard = Guard({"identity": {"new_credentials_per_ip": "5/hour"}})
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    def user(authorization: str | None = Header(None)) -> str:
        token = (authorization or "").removeprefix("Bearer ")
        if not token.startswith("good-"):
            raise HTTPException(401)
        identify(token.removeprefix("good-"))
        return token

    @app.get("/me")
    async def me(token: str = Depends(user)) -> dict[str, str]:
        return {"me": token}

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    client = TestClient(app)
    statuses = []
    for k in range(12):  # colleagues behind one address (the test client's)
        auth = {"Authorization": f"Bearer good-{k}"}
        statuses.append(client.get("/me", headers=auth).status_code)
        statuses.append(client.get("/health", headers=auth).status_code)
    assert statuses == [200] * 24
    made_up = [
        client.get("/health", headers={"Authorization": f"Bearer junk-{k}"}).status_code
        for k in range(8)
    ]
    assert made_up[:5] == [200] * 5 and 429 in made_up[5:]


def test_made_up_tokens_sent_beside_a_session_cookie_are_not_laundered() -> None:
    """Review finding F5: a made-up bearer token sent once beside the attacker's session
    cookie to a route that identifies the user from the cookie was recorded as vouched,
    then escaped `new_credentials_per_ip` where the app checks tokens itself (50 guesses
    reached the app). Only a token that was the request's one credential counts, and at
    most 4 per principal."""
    from fastapi import Cookie

    guard = Guard({"identity": {"new_credentials_per_ip": "5/hour"}})
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.get("/me")
    async def me(sid: str | None = Cookie(None)) -> dict[str, str]:
        if not sid:
            raise HTTPException(401)
        identify(sid)
        return {"me": sid}

    @app.get("/v1/data")
    async def data(authorization: str | None = Header(None)) -> dict[str, int]:
        if authorization != "Bearer real-secret":
            raise HTTPException(401)
        return {"data": 1}

    client = TestClient(app)
    statuses = []
    for k in range(30):
        auth = {"Authorization": f"Bearer guess-{k}"}
        client.get("/me", headers=auth, cookies={"sid": "attacker"})
        statuses.append(client.get("/v1/data", headers=auth).status_code)
    assert statuses[:5] == [401] * 5 and set(statuses[5:]) <= {403, 429}


def test_an_empty_cookie_header_is_no_cookie() -> None:
    """Django trial F12: any Cookie header, even empty, counted as a cookie, so a banned
    address sending an empty one was refused only after the view ran (and a sign-up with
    it was no birth). An empty header carries no cookie: refused before the handler."""
    guard = Guard({"limits": {"principal": "3/minute", "ip": None}, "bans": {"after": 2}})
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)
    ran: list[int] = []

    @app.get("/thing")
    async def thing() -> dict[str, bool]:
        ran.append(1)
        return {"ok": True}

    client = TestClient(app)
    statuses = [client.get("/thing").status_code for _ in range(8)]
    assert statuses[-1] == 403  # the address is banned
    before = len(ran)
    assert client.get("/thing", headers={"Cookie": ""}).status_code == 403
    assert len(ran) == before  # refused before routing: the handler did not run


def test_a_user_vouches_for_at_most_four_tokens_an_hour() -> None:
    """A signed-in user's refreshed tokens are vouched for (4 an hour): a fifth within the
    hour counts as a new credential where the app does not identify; an hour later, a
    refreshed token is vouched for again."""
    from apiguard.simulate.clock import FakeClock

    clock = FakeClock(1_000_000.0)
    guard = Guard({"identity": {"new_credentials_per_ip": "1/day"}}, clock=clock)
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.get("/me")
    async def me(authorization: str | None = Header(None)) -> dict[str, bool]:
        identify("alice")  # each of alice's refreshed tokens
        return {"ok": True}

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    client = TestClient(app)

    def refresh(k: int) -> int:
        auth = {"Authorization": f"Bearer alice-{k}"}
        assert client.get("/me", headers=auth).status_code == 200
        return client.get("/health", headers=auth).status_code

    assert [refresh(k) for k in range(4)] == [200] * 4  # vouched: not new credentials
    assert refresh(4) == 200  # a fifth this hour: the IP's one new credential a day...
    assert refresh(5) == 429  # ...and the next is over it
    clock.advance(3601)
    assert refresh(6) == 200  # an hour later: vouched again
