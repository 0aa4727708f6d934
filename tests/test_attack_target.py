"""`apiguard attack` against an app shaped like a real one (the RealWorld "Conduit"
backend): a lifespan that opens the app's resources, a nested login body and answer, the
`Token` scheme, owned objects; a session-cookie login; the declaration's errors; the
report of a campaign that could not be tried."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apiguard.cli import main
from apiguard.simulate import campaigns as cp
from apiguard.simulate import selftest as st
from apiguard.simulate.driver import AsgiDriver, LifespanError, Request, lifespan
from apiguard.simulate.population import Client, constant
from apiguard.simulate.target import DeclarationError, Target

ROOT = Path(__file__).resolve().parents[1]
SHOP_SPEC = f"{ROOT / 'examples' / 'shop.py'}:app"

# The pool the app opens at start-up and closes at shut-down: a module of its own, imported
# once (the app's module is imported afresh for every run), so the test can count them.
POOL = """
opened = 0
closed = 0
"""

CONDUIT_LIKE = """
import contextlib
from typing import Annotated, Any
from fastapi import Body, Depends, FastAPI, Header, HTTPException, Request
from pydantic import BaseModel
from apiguard import Guard, identify
from apiguard.asgi import GuardMiddleware
import conduit_like_pool as pool

guard = Guard({"detection": {"challenge_path": "/api/challenge"}})
USERS = {f"user{n}@conduit-mail.org": (f"user{n}", f"pw-user{n}") for n in range(1, 301)}
TOKENS = {f"jwt-{name}": name for name, _ in USERS.values()}
# each author has 4 articles (slugs); the article route has a BOLA bug: any signed-in
# user reads any article, drafts included
ARTICLES = {f"draft-{n}-{k}": f"user{n}" for n in range(1, 301) for k in range(4)}


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    app.state.db = {"open": True}  # the database pool: every route needs it
    pool.opened += 1
    yield
    app.state.db["open"] = False
    pool.closed += 1


app = FastAPI(lifespan=lifespan)
app.add_middleware(GuardMiddleware, guard=guard)


def db(request: Request) -> dict[str, Any]:
    state = getattr(request.app.state, "db", None)
    if not state or not state["open"]:
        raise RuntimeError("the database pool is not open (no start-up?)")
    return state


def author(
    authorization: Annotated[str | None, Header()] = None,
    _: dict[str, Any] = Depends(db),
) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme != "Token" or token not in TOKENS:
        raise HTTPException(401)
    identify(TOKENS[token])
    return TOKENS[token]


class Login(BaseModel):
    email: str
    password: str


class NewUser(BaseModel):
    username: str
    email: str
    password: str


@app.post("/api/users/login")
@guard.login(username="user.email")
async def login(
    user: Annotated[Login, Body(embed=True)], _: dict[str, Any] = Depends(db)
) -> dict[str, Any]:
    found = USERS.get(user.email)
    if found is None or found[1] != user.password:
        raise HTTPException(400, "incorrect login")
    return {"user": {"email": user.email, "username": found[0], "token": f"jwt-{found[0]}"}}


@app.post("/api/users", status_code=201)
async def register(
    user: Annotated[NewUser, Body(embed=True)], _: dict[str, Any] = Depends(db)
) -> dict[str, Any]:
    if user.email in USERS:
        raise HTTPException(400, "taken")
    USERS[user.email] = (user.username, user.password)
    TOKENS[f"jwt-{user.username}"] = user.username
    identify(user.username)
    return {"user": {"username": user.username, "token": f"jwt-{user.username}"}}


@app.get("/api/articles")
async def articles(offset: int = 0, _: dict[str, Any] = Depends(db)) -> dict[str, Any]:
    return {"articles": [], "offset": offset}


@app.get("/api/articles/{slug}")
async def article(slug: str, who: Annotated[str, Depends(author)]) -> dict[str, Any]:
    if slug not in ARTICLES:
        raise HTTPException(404)
    return {"slug": slug, "author": ARTICLES[slug]}


@app.post("/api/challenge")
async def challenge(captcha: Annotated[str, Body(embed=True)]) -> dict[str, bool]:
    guard.challenge_passed()
    return {"ok": True}
"""

CONDUIT_TOML = """
[login]
path = "/api/users/login"
username_field = "user.email"
password_field = "user.password"
token_field = "user.token"
auth_scheme = "Token"

[accounts]
username = "user{n}@conduit-mail.org"
password = "pw-user{n}"
count = 300

[objects]
path = "/api/articles/{id}"
file = "articles.csv"

[flow]
signup = "/api/users"

[flow.signup_fields]
"user.username" = "{name}"
"user.email" = "{name}@example.org"
"user.password" = "{password}"

[challenge]
path = "/api/challenge"
body = '{"captcha": "human"}'

[browse]
paths = ["/api/articles?offset={page}"]
products = 50
"""


@pytest.fixture
def conduit(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(the app's spec, the declaration's path)."""
    (tmp_path / "conduit_like_pool.py").write_text(POOL)
    (tmp_path / "conduit_like_app.py").write_text(CONDUIT_LIKE)
    rows = [f"{n},draft-{n}-{k}" for n in range(1, 301) for k in range(4)]
    (tmp_path / "articles.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "attack.toml").write_text(CONDUIT_TOML)
    sys.path.insert(0, str(tmp_path))
    try:
        yield f"{tmp_path / 'conduit_like_app.py'}:app", tmp_path / "attack.toml"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("conduit_like_pool", None)


def test_a_conduit_like_app_is_attacked_end_to_end(
    conduit: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """No shim: the lifespan opens the pool (else every route answers 500 and the preflight
    stops), the login body and answer are nested, the token goes in `Token <jwt>`. The
    BOLA walk and credential stuffing are caught, no honest principal is refused, and
    every pool opened is closed at shut-down."""
    spec, config = conduit
    argv = ["attack", spec, "--config", str(config), "--scale", "0.25", "--json"]
    status = main([*argv, "--campaign", "BOLA walk", "--campaign", "credential stuffing"])
    captured = capsys.readouterr()
    assert status != 2, captured.err  # the preflight passed
    rows = {c["campaign"]: c for c in json.loads(captured.out)["campaigns"]}
    for name in ("BOLA walk", "credential stuffing"):
        row = rows[name]
        assert row["skipped"] is None, row
        assert row["reference_gain"] > 0, row  # signed in, the attack gains unprotected
        assert row["caught"] is True, row
        assert row["benign_principals_refused"] == 0, row
    assert status == 0
    pool = sys.modules["conduit_like_pool"]
    assert pool.opened >= 5 and pool.closed == pool.opened


def test_nested_sign_up_gives_the_fresh_accounts_their_token(conduit: tuple[str, Path]) -> None:
    """`signup_fields` nests the sign-up body; its answer's token (user.token) signs the
    fresh accounts of "BOLA, many accounts" in: unprotected, they read foreign drafts."""
    spec, config = conduit
    target = st.target_for(spec, str(config), {})
    body, ctype = target.signup_body("ann42", "s3cret")
    assert ctype == "application/json"
    assert json.loads(body) == {
        "user": {"username": "ann42", "email": "ann42@example.org", "password": "s3cret"}
    }
    reference = st.in_process_factory(spec, monitor=True)
    gain = cp.reference_gain(cp.campaign("many accounts"), target, reference, scale=0.1)
    assert gain > 0


def test_without_a_lifespan_the_preflight_would_have_failed(conduit: tuple[str, Path]) -> None:
    """The app really needs its start-up: a request without it is a 500."""
    spec, _ = conduit
    app = st.in_process_factory(spec, monitor=True)(cp.FakeClock(cp.START))
    driver = AsgiDriver(app, server_errors=True)
    body = b'{"user": {"email": "user1@conduit-mail.org", "password": "pw-user1"}}'
    request = Request(
        "POST", "/api/users/login", "198.51.100.9", (("content-type", "application/json"),), body
    )
    assert asyncio.run(driver.send(request)).status == 500

    async def with_lifespan() -> int:
        async with lifespan(app) as state:
            return (await AsgiDriver(app, state=state).send(request)).status

    assert asyncio.run(with_lifespan()) == 200


def test_a_wrong_token_field_is_a_preflight_error(
    conduit: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    spec, config = conduit
    config.write_text(config.read_text().replace('token_field = "user.token"', ""))
    assert main(["attack", spec, "--config", str(config), "--campaign", "BOLA walk"]) == 2
    err = capsys.readouterr().err
    assert "no token at 'access_token'" in err and "token_field" in err


def test_an_app_without_lifespan_support_still_runs() -> None:
    """A bare ASGI app that raises on the lifespan scope (as the ASGI spec allows): the
    self-test goes on without one."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError("only HTTP")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def returns(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            return
        await app(scope, receive, send)

    async def go(asgi: Any) -> int:
        async with lifespan(asgi) as state:
            assert state == {}
            return (await AsgiDriver(asgi).send(Request("GET", "/", "192.0.2.1"))).status

    assert asyncio.run(go(app)) == 204
    assert asyncio.run(go(returns)) == 204


def test_a_preflight_500_says_what_the_app_raised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An app whose lifespan raises (run without one, as the spec says) and whose login
    then raises: the preflight's error says both, not only "answered 500"."""
    (tmp_path / "raising_app.py").write_text(
        "from starlette.applications import Starlette\n"
        "from starlette.routing import Route\n"
        "from apiguard import Guard\n"
        "from apiguard.asgi import GuardMiddleware\n"
        "async def login(request):\n"
        "    raise RuntimeError('pool is None')\n"
        "inner = Starlette(routes=[Route('/login', login, methods=['POST'])])\n"
        "async def bare(scope, receive, send):\n"
        "    if scope['type'] == 'lifespan':\n"
        "        raise ValueError('no lifespan here')\n"
        "    await inner(scope, receive, send)\n"
        "app = GuardMiddleware(bare, guard=Guard())\n"
    )
    assert main(["attack", f"{tmp_path / 'raising_app.py'}:app", "--campaign", "brute"]) == 2
    err = capsys.readouterr().err
    assert "answered 500" in err and "RuntimeError: pool is None" in err
    assert "its lifespan raised ValueError: no lifespan here (run without one)" in err


def test_a_failed_start_up_is_a_clear_error() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database at :5432"})

    async def go() -> None:
        async with lifespan(app):
            pass

    with pytest.raises(LifespanError, match="start-up failed: no database at :5432"):
        asyncio.run(go())


def test_the_lifespan_state_reaches_every_request() -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    scope["state"]["pool"] = "the pool"
                    await send({"type": "lifespan.startup.complete"})
                else:
                    seen.append("shutdown")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        seen.append(scope["state"].get("pool"))
        scope["state"]["scratch"] = 1  # a request's own copy
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def go() -> None:
        async with lifespan(app) as state:
            driver = AsgiDriver(app, state=state)
            for _ in range(2):
                await driver.send(Request("GET", "/", "192.0.2.1"))
            assert "scratch" not in state

    asyncio.run(go())
    assert seen == ["the pool", "the pool", "shutdown"]


# -- a session-cookie login --------------------------------------------------------------

COOKIE_APP = """
import secrets
from typing import Any
from fastapi import Cookie, FastAPI, Form, HTTPException, Response
from apiguard import Guard, identify
from apiguard.asgi import GuardMiddleware

guard = Guard({"detection": {"challenge_path": "/challenge"}})
app = FastAPI()
app.add_middleware(GuardMiddleware, guard=guard)
USERS = {f"member{n}": f"secret-{n}" for n in range(1, 301)}
SESSIONS: dict[str, str] = {}
ORDERS = {n * 10 + k: f"member{n}" for n in range(1, 301) for k in range(4)}


@app.post("/session")
@guard.login(username="login")
async def log_in(response: Response, login: str = Form(), pw: str = Form()) -> dict[str, Any]:
    if USERS.get(login) != pw:
        raise HTTPException(401)
    sid = secrets.token_hex(8)
    SESSIONS[sid] = login
    response.set_cookie("sid", sid, httponly=True)
    return {"ok": True}


@app.get("/orders/{order_id}")
async def order(order_id: int, sid: str | None = Cookie(default=None)) -> dict[str, Any]:
    who = SESSIONS.get(sid or "")
    if who is None:
        raise HTTPException(401)
    identify(who)
    if order_id not in ORDERS:
        raise HTTPException(404)
    return {"id": order_id, "owner": ORDERS[order_id]}


@app.get("/products")
async def products(page: int = 1) -> dict[str, Any]:
    return {"page": page}


@app.post("/challenge")
async def challenge() -> dict[str, bool]:
    guard.challenge_passed()
    return {"ok": True}
"""


def test_a_session_cookie_login(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`token_cookie`: the login (a form) sets a session cookie, which the client keeps and
    sends back; no Authorization header. Unprotected, the BOLA campaign reads foreign
    orders through that session; protected, it is caught."""
    (tmp_path / "cookie_app.py").write_text(COOKIE_APP)
    rows = [f"{n},{n * 10 + k}" for n in range(1, 301) for k in range(4)]
    (tmp_path / "orders.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "attack.toml").write_text(
        '[login]\npath = "/session"\nformat = "form"\nusername_field = "login"\n'
        'password_field = "pw"\ntoken_cookie = "sid"\n'
        '[accounts]\nusername = "member{n}"\npassword = "secret-{n}"\ncount = 300\n'
        '[objects]\npath = "/orders/{id}"\nfile = "orders.csv"\n'
        '[flow]\nsignup = ""\n'
        '[browse]\npaths = ["/products?page={page}"]\n'
    )
    status = main(
        [
            "attack",
            f"{tmp_path / 'cookie_app.py'}:app",
            "--config",
            str(tmp_path / "attack.toml"),
            "--campaign",
            "BOLA random",
            "--scale",
            "0.5",
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert status != 2, captured.err
    row = json.loads(captured.out)["campaigns"][0]
    assert row["reference_gain"] >= 100, row  # signed in by the cookie alone
    assert row["caught"] is True and row["benign_principals_refused"] == 0, row


def test_how_the_token_is_sent() -> None:
    import random

    def sent(target: Target) -> dict[str, str]:
        client = Client(target, random.Random(1), lambda: "192.0.2.1", constant(()))
        client.token = "t0k"
        return dict(client._request("GET", "/x", b"", None, True).headers)

    base = Target(accounts=())
    assert sent(base) == {"authorization": "Bearer t0k"}
    conduit = Target.from_mapping({"login": {"auth_scheme": "Token"}}, base)
    assert sent(conduit) == {"authorization": "Token t0k"}
    custom = Target.from_mapping({"login": {"auth_header": "X-Access-Token"}}, base)
    assert sent(custom) == {"x-access-token": "t0k"}
    both = Target.from_mapping({"login": {"auth_header": "x-auth", "auth_scheme": "JWT"}}, base)
    assert sent(both) == {"x-auth": "JWT t0k"}
    cookie = Target.from_mapping({"login": {"token_cookie": "sid"}}, base)
    assert sent(cookie) == {}  # the cookie jar carries the session
    assert cookie.token_in(200, ["sid=abc; Path=/; HttpOnly", "x=1"], None) == "abc"
    assert cookie.token_in(200, ["other=abc"], None) is None
    nested = Target.from_mapping({"login": {"token_field": "user.token"}}, base)
    assert nested.token_in(200, [], {"user": {"token": "j"}}) == "j"
    assert nested.token_in(200, [], {"token": "j"}) is None
    assert nested.token_in(401, [], {"user": {"token": "j"}}) is None


def test_sign_up_fields_may_be_written_as_dotted_keys(tmp_path: Path) -> None:
    path = tmp_path / "attack.toml"
    path.write_text('[flow.signup_fields]\nuser.name = "{name}"\n"user.pw" = "{password}"\n')
    target = Target.from_toml(path)
    assert json.loads(target.signup_body("a", "b")[0]) == {"user": {"name": "a", "pw": "b"}}
    path.write_text("[flow.signup_fields]\nuser.age = 3\n")
    with pytest.raises(DeclarationError, match="signup_fields: expected a table of strings"):
        Target.from_toml(path)


def test_the_default_login_body_is_unchanged() -> None:
    target = Target(accounts=())
    body, ctype = target.login_body("ann", "pw")
    assert json.loads(body) == {"username": "ann", "password": "pw"}
    assert ctype == "application/json"
    assert target.signup_body("ann", "pw") == (body, ctype)


# -- the declaration's errors --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[login]\npath = "/in"\ntoken_feild = "t"\n', r"line 3: \[login\] token_feild: unknown"),
        ("[accounts]\ncount = 5\n\n[logins]\n", r"line 4: \[logins\]: unknown section"),
        ('[accounts]\ncount = "many"\n', r"line 2: \[accounts\] count: expected an integer"),
        ('[flow]\ncodes = "A"\n', r"line 2: \[flow\] codes: expected a list of strings"),
        (
            '[login]\nformat = "xml"\n',
            r'line 2: \[login\] format: must be "json", "form" or "basic"',
        ),
        ('[login]\nusername_field = "user..email"\n', r"line 2: \[login\] username_field"),
        ('[accounts]\nusername = "u{m}"\n', r"line 2: \[accounts\] username: .* template"),
        ("[login]\npath = /in\n", r"not valid TOML: .*line 2"),
    ],
)
def test_declaration_errors_name_the_line_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "attack.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        Target.from_toml(path)


def test_a_bad_declaration_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "attack.toml"
    path.write_text('[objects]\npath = "/orders/{id}"\nper_acount = 3\n')
    assert main(["attack", SHOP_SPEC, "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "line 3: [objects] per_acount: unknown key" in err and "per_account" in err
    with pytest.raises(DeclarationError):
        Target.from_mapping({"login": {"nope": 1}})


# -- a campaign that cannot be tried ---------------------------------------------------------


def test_a_campaign_that_cannot_be_tried_is_skipped_not_missed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No API key declared: "stolen API key" sends nothing, and the report says it was
    skipped and why, instead of MISSED; a flow route the app does not have (404 to every
    attempt, unprotected) is skipped too. Skipped campaigns do not fail the run."""
    path = tmp_path / "attack.toml"
    path.write_text('[api]\nkeys = []\n[flow]\npath = "/no-such-route/{code}"\n')
    argv = ["attack", SHOP_SPEC, "--config", str(path), "--scale", "0.1"]
    status = main([*argv, "--campaign", "stolen", "--campaign", "flow abuse, rotating"])
    out, err = capsys.readouterr()
    lines = {line.split("|")[0].strip(): line for line in out.splitlines() if "|" in line}
    assert "SKIPPED" in lines["stolen API key"] and "MISSED" not in lines["stolen API key"]
    # each campaign's end is said on stderr as it comes (an in-process run takes minutes)
    progress = [line for line in err.splitlines() if line.startswith("apiguard attack: [")]
    assert [line.rpartition(" (")[0] for line in progress] == [
        "apiguard attack: [1/2] stolen API key: skipped",
        "apiguard attack: [2/2] flow abuse, rotating IPs: skipped",
    ], err
    assert all(line.endswith(" s)") for line in progress), err
    assert "SKIPPED" in lines["flow abuse, rotating IPs"]
    assert "skipped stolen API key: no API key declared ([api] keys)" in out
    assert "skipped flow abuse, rotating IPs: the unprotected app answered all" in out
    assert "404" in out and "no campaign could be tried" in out
    assert status == 1  # nothing was measured


def test_skip_reasons_from_the_records() -> None:
    from apiguard.simulate.driver import Record

    target = Target(accounts=(), login_path="/api/users/login", signup_path="/api/users")
    camp = cp.campaign("BOLA walk")

    def rec(kind: str, status: int, goal: str | None = None) -> Record:
        return Record(0.0, "attack", True, kind, "POST", "/x", "192.0.2.1", status, target=goal)

    failed = [rec("own-login", 500)] * 5
    reason = cp.skip_reason(camp, target, failed)
    assert reason == (
        "the attacker's own account could not log in: POST /api/users/login answered 500 x5"
    )
    signups = [rec("signup", 422), rec("signup", 422), rec("signup", 409)]
    reason = cp.skip_reason(cp.campaign("many accounts"), target, signups)
    assert reason is not None and "POST /api/users answered 422 x2, 409" in reason
    assert cp.skip_reason(camp, target, [rec("walk", 200, "7")]) is None
    # what the app said (a trial: fastapi-users answers an unverified account's login 400
    # with LOGIN_USER_NOT_VERIFIED; "400 x12" alone said nothing)
    said = dataclasses.replace(failed[0], status=400, answer='{"detail":"LOGIN_USER_NOT_VERIFIED"}')
    reason = cp.skip_reason(camp, target, [said] * 12)
    assert reason == (
        "the attacker's own account could not log in: POST /api/users/login answered 400 x12 "
        '({"detail":"LOGIN_USER_NOT_VERIFIED"})'
    )


def test_a_flask_app_is_attacked_through_the_wsgi_bridge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A WSGI app (Flask with `init_app`): its guard is found behind `app.wsgi_app`, it is
    served through the WSGI bridge (no lifespan: WSGI has none). Its order route has no
    BOLA bug (404 for a foreign order): the BOLA walk is skipped, and says why."""
    pytest.importorskip("flask")
    path = tmp_path / "attack.toml"
    path.write_text(
        '[accounts]\ncount = 60\n[objects]\npath = "/api/v1/orders/{id}"\nper_account = 10\n'
        '[flow]\npath = "/coupons/{code}/redeem"\n'
    )
    spec = f"{ROOT / 'examples' / 'flask_shop.py'}:app"
    argv = ["attack", spec, "--config", str(path), "--scale", "0.1", "--json"]
    status = main([*argv, "--campaign", "flow abuse, rotating", "--campaign", "BOLA walk"])
    captured = capsys.readouterr()
    assert status != 2, captured.err
    rows = {c["campaign"]: c for c in json.loads(captured.out)["campaigns"]}
    flow = rows["flow abuse, rotating IPs"]
    assert flow["skipped"] is None and flow["reference_gain"] > 0 and flow["caught"] is True
    # the Flask shop answers 404 for another user's order (no BOLA bug): nothing to catch
    bola = rows["BOLA walk"]
    assert bola["reference_gain"] == 0 and bola["attack_requests"] > 0
    assert "the app itself refuses what the attack is after" in bola["skipped"]


def test_a_django_app_in_process_is_told_to_use_url(tmp_path, capsys) -> None:
    """`apiguard attack conduit.wsgi:application` (a Django handler, whose guard comes
    from settings) said "app.add_middleware(GuardMiddleware, ...)", a Starlette call:
    it says to run the server and use --url."""
    from harness import configure_django

    configure_django()
    (tmp_path / "django_wsgi.py").write_text(
        "from django.core.handlers.wsgi import WSGIHandler\napplication = WSGIHandler()\n"
    )
    spec = f"{tmp_path / 'django_wsgi.py'}:application"
    assert main(["attack", spec, "--campaign", "brute"]) == 2
    err = capsys.readouterr().err
    assert "Django app is not attacked in process" in err and "--url" in err
    assert "add_middleware" not in err


def test_url_that_does_not_answer_is_one_clear_error(capsys) -> None:
    """`--url` at a server that is not up was a 60-line httpx traceback."""
    import socket

    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = ["attack", "--url", f"http://127.0.0.1:{port}", "--login", "/login"]
    assert main([*argv, "--campaign", "brute", "--max-seconds", "1"]) == 2
    err = capsys.readouterr().err
    assert f"http://127.0.0.1:{port} does not answer (ConnectError" in err
    assert "is the server running?" in err and "Traceback" not in err


def _edit_app(spec: str, old: str, new: str) -> None:
    """Replace `old` (which must be there) in the app module named by `spec`."""
    app_file = Path(spec.rsplit(":", 1)[0])
    source = app_file.read_text()
    assert old in source
    app_file.write_text(source.replace(old, new))


def test_the_apps_own_403s_are_not_apiguards_refusals(
    conduit: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """An app that answers 403 to a missing token (FastAPI's `HTTPBearer` does) on a page
    its anonymous visitors open: before, the self-test took every such 403 for a refusal
    of apiguard's and reported honest visitors refused (87 on the Conduit trial, exit
    status 1). Only the refusals the guard sent count; the app's own are reported apart."""
    spec, config = conduit
    app_file = Path(spec.rsplit(":", 1)[0])
    source = app_file.read_text()
    source = source.replace(
        "raise HTTPException(401)", 'raise HTTPException(403, "Not authenticated")'
    )
    source += """

@app.get("/api/feed")
async def feed(offset: int = 0, who: Annotated[str, Depends(author)] = "") -> dict[str, Any]:
    return {"articles": [], "offset": offset, "for": who}
"""
    app_file.write_text(source)
    config.write_text(
        config.read_text().replace(
            'paths = ["/api/articles?offset={page}"]',
            'paths = ["/api/articles?offset={page}", "/api/feed?offset={page}"]',
        )
    )
    argv = ["attack", spec, "--config", str(config), "--scale", "0.25", "--json"]
    status = main([*argv, "--campaign", "BOLA walk", "--campaign", "credential stuffing"])
    captured = capsys.readouterr()
    assert status != 2, captured.err
    rows = {c["campaign"]: c for c in json.loads(captured.out)["campaigns"]}
    for row in rows.values():
        assert row["caught"] is True, row
        assert row["benign_principals_refused"] == 0, row
    own = sum(row["app_refusals"] for row in rows.values())
    assert own > 0, rows  # the anonymous visitors of /api/feed met the app's 403
    assert status == 0
    # the text report says what was not counted
    main([*argv[:-1], "--campaign", "BOLA walk"])
    assert "were the app's own, not apiguard's" in capsys.readouterr().out


def test_over_http_apiguards_default_refusals_are_recognised() -> None:
    """Over HTTP the guard cannot be asked: its default problem types are recognised, a
    ban by its detail; the app's own 403 problem (`about:blank`, another detail), a bare
    403 and a 429 of another limiter are the app's."""
    from apiguard.decision import Action, Decision
    from apiguard.responses import block_response
    from apiguard.simulate.driver import Response

    def as_response(status: int, headers: list[tuple[str, str]], body: bytes) -> Response:
        raw = tuple((k.encode(), v.encode()) for k, v in headers)
        return Response(status, raw, body)

    for action, detector in (
        (Action.CHALLENGE, "bola"),
        (Action.BLOCK, None),
        (Action.BLOCK, "account_takeover"),
        (Action.THROTTLE, "scraping"),
        (Action.THROTTLE, None),
    ):
        decision = Decision(action=action, retry_after=30.0, detector=detector)
        block = block_response(decision)
        assert st.is_guard_refusal(as_response(block.status, block.headers, block.body)), action
    problem = [("content-type", "application/problem+json")]
    own = json.dumps({"type": "about:blank", "title": "Forbidden", "detail": "no token"})
    assert not st.is_guard_refusal(as_response(403, problem, own.encode()))
    assert not st.is_guard_refusal(as_response(403, [], b'{"detail":"Not authenticated"}'))
    assert not st.is_guard_refusal(as_response(429, [("content-type", "text/plain")], b"slow"))
    assert not st.is_guard_refusal(as_response(200, problem, b"{}"))


def _with_tag_pages(spec: str, config: Path, browse: str) -> None:
    """Give the Conduit-like app public tag pages addressed by slug, and its honest
    visitors the [browse] section `browse`."""
    app_file = Path(spec.rsplit(":", 1)[0])
    app_file.write_text(
        app_file.read_text()
        + """

TAGS = {"python", "rust", "go"}


@app.get("/api/tags/{slug}")
async def tag(slug: str) -> dict[str, str]:
    if slug not in TAGS:
        raise HTTPException(404)
    return {"tag": slug}
"""
    )
    text = config.read_text()
    start = text.index("[browse]")
    config.write_text(text[:start] + browse)


def test_honest_page_views_answered_404_are_reported(
    conduit: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The Conduit trial declared `[browse] "/api/articles/{product}"` for an app whose
    articles are addressed by slug: a third of the honest page views were 404, the shared
    office address was taken for a prober (bola.errors) and the report said "86 benign
    principals refused" with nothing to say why. The report now says how many honest page
    views were answered 404; `ids` gives `{product}` the app's own slugs."""
    spec, config = conduit
    _with_tag_pages(
        spec, config, '[browse]\npaths = ["/api/articles?offset={page}", "/api/tags/{product}"]\n'
    )
    argv = ["attack", spec, "--config", str(config), "--scale", "0.25", "--campaign", "brute"]
    main(argv)
    out = capsys.readouterr().out
    assert "page views ([browse] paths) were answered 404 (e.g. GET /api/tags/" in out


def test_browse_ids_are_the_pages_the_visitors_open(
    conduit: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    spec, config = conduit
    _with_tag_pages(
        spec,
        config,
        '[browse]\npaths = ["/api/tags/{product}"]\nids = ["python", "rust", "go"]\n',
    )
    argv = ["attack", spec, "--config", str(config), "--scale", "0.25", "--json"]
    assert main([*argv, "--campaign", "brute"]) == 0
    rows = json.loads(capsys.readouterr().out)["campaigns"]
    assert rows[0]["benign_pages"] > 0 and rows[0]["benign_pages_missing"] == 0


def test_browse_ids_must_not_be_empty(tmp_path: Path) -> None:
    path = tmp_path / "attack.toml"
    path.write_text("[browse]\nids = []\n")
    with pytest.raises(DeclarationError, match=r"\[browse\] ids"):
        Target.from_toml(path)


def test_a_campaign_the_app_answered_with_server_errors_is_skipped_not_missed() -> None:
    """The full-stack FastAPI template's trial: its database went down during password
    spraying, the app answered 500 to every login, and the report said MISSED (375
    attempts, none refused) with nothing to tell why. Half or more of the attack requests
    answered 5xx skip the campaign, saying so."""
    from apiguard.simulate.driver import Record

    target = Target(accounts=(), login_path="/api/v1/login/access-token")
    camp = cp.campaign("password spraying")

    def rec(status: int) -> Record:
        return Record(
            0.0,
            "attack",
            True,
            "spray",
            "POST",
            "/api/v1/login/access-token",
            "192.0.2.1",
            status,
            target="u1",
        )

    reason = cp.skip_reason(camp, target, [rec(500)] * 6 + [rec(401)] * 4)
    assert reason is not None and "6 of the 10 attack requests with a server error" in reason
    assert "POST /api/v1/login/access-token: 500" in reason
    assert cp.skip_reason(camp, target, [rec(500)] * 2 + [rec(401)] * 8) is None


def test_a_campaign_whose_route_the_declaration_leaves_out_is_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The full-stack FastAPI template's trial declared its login, accounts and objects but
    no flow and no pages: the flow and scraping campaigns attacked the example shop's
    `/coupons/...` and `/products/...` in its place (the app answered 500 or its front-end's
    200), and reported the scraping MISSED. A declaration describes the user's app: a
    campaign whose section it leaves out is skipped, naming the section."""
    pytest.importorskip("flask")
    path = tmp_path / "attack.toml"
    path.write_text('[accounts]\ncount = 60\n[objects]\npath = "/api/v1/orders/{id}"\n')
    spec = f"{ROOT / 'examples' / 'flask_shop.py'}:app"
    argv = ["attack", spec, "--config", str(path), "--scale", "0.1", "--json"]
    campaigns = ["flow abuse, rotating", "scraping", "BOLA, many"]
    main([*argv, *(a for c in campaigns for a in ("--campaign", c))])
    rows = {c["campaign"]: c for c in json.loads(capsys.readouterr().out)["campaigns"]}
    assert rows["flow abuse, rotating IPs"]["skipped"].startswith("not declared: [flow] path")
    assert rows["BOLA, many accounts"]["skipped"].startswith("not declared: [flow] signup")
    assert rows["scraping"]["skipped"].startswith("not declared: [browse] paths")
    assert rows["scraping"]["attack_requests"] == 0  # (not run at all)


def test_a_form_login_beside_a_json_sign_up_is_declared(tmp_path: Path) -> None:
    """The full-stack FastAPI template logs in with an OAuth2 password form and signs up
    with JSON: the sign-up body always took the login's format (every sign-up 422, two
    campaigns skipped). `[flow] signup_format` says the sign-up's own."""
    path = tmp_path / "attack.toml"
    path.write_text(
        '[login]\npath = "/api/v1/login/access-token"\nformat = "form"\n'
        'username_field = "username"\ntoken_field = "access_token"\n'
        '[flow]\nsignup = "/api/v1/users/signup"\nsignup_format = "json"\n'
        '[flow.signup_fields]\nemail = "{name}@example.org"\npassword = "{password}"\n'
    )
    target = Target.from_toml(path)
    body, ctype = target.login_body("a@example.org", "pw")
    assert (
        ctype == "application/x-www-form-urlencoded"
        and body == b"username=a%40example.org&password=pw"
    )
    body, ctype = target.signup_body("bob", "s3cret")
    assert ctype == "application/json"
    assert json.loads(body) == {"email": "bob@example.org", "password": "s3cret"}
    path.write_text('[flow]\nsignup_format = "xml"\n')
    with pytest.raises(DeclarationError, match="signup_format"):
        Target.from_toml(path)


def test_a_sign_up_that_signs_nobody_in_is_followed_by_a_login(conduit: tuple[str, Path]) -> None:
    """The FastAPI template's sign-up answers the new user, no token (the README's
    `account_created()` case): the fresh accounts of "BOLA, many accounts" had no token and
    the campaign was skipped. `[flow] signup_login` names the username they then log in
    with; unprotected, they read foreign drafts."""
    spec, config = conduit
    answer = 'return {"user": {"username": user.username, "token": f"jwt-{user.username}"}}'
    _edit_app(spec, answer, 'return {"user": {"username": user.username}}')
    target = st.target_for(spec, str(config), {})
    reference = st.in_process_factory(spec, monitor=True)
    camp = cp.campaign("many accounts")
    assert cp.reference_gain(camp, target, reference, scale=0.1) == 0  # (no token)
    target = st.target_for(spec, str(config), {"flow": {"signup_login": "{name}@example.org"}})
    assert cp.reference_gain(camp, target, reference, scale=0.1) > 0


def test_a_bola_campaign_against_an_app_without_the_bug_is_skipped() -> None:
    """The FastAPI template answers 403 to another user's item: the BOLA walks were
    reported CAUGHT with "0 foreign objects (0)". An app that refuses every foreign
    object itself (unprotected) has no bug there to exploit: SKIPPED, saying so."""
    from apiguard.simulate.driver import Record

    target = Target(accounts=())
    camp = cp.campaign("BOLA walk")

    def rec(status: int) -> Record:
        return Record(
            0.0, "attack", True, "walk", "GET", "/api/v1/items/7", "192.0.2.1", status, target="7"
        )

    reason = cp.skip_reason(camp, target, [rec(403)] * 5, [rec(403)] * 4 + [rec(404)])
    assert reason is not None and "no object-level authorization bug" in reason
    assert cp.skip_reason(camp, target, [rec(403)] * 5, [rec(403)] * 4 + [rec(200)]) is None
    stuffing = cp.campaign("credential stuffing")
    assert cp.skip_reason(stuffing, target, [rec(401)] * 5, [rec(401)] * 5) is None


def test_a_surge_reported_only_for_want_of_a_challenge_route_is_said(
    conduit: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The Conduit trial's scraping campaign, once its pages were declared right, was
    MISSED (500 of 500 pages) with no word why: the app's guard had no
    `detection.challenge_path`, so the surge it found was reported only. The report says
    so, naming the setting."""
    spec, config = conduit
    declared = 'guard = Guard({"detection": {"challenge_path": "/api/challenge"}})'
    _edit_app(spec, declared, "guard = Guard()")
    ids = ", ".join(f'"t{n}"' for n in range(400))
    _with_tag_pages(spec, config, f'[browse]\npaths = ["/api/tags/{{product}}"]\nids = [{ids}]\n')
    _edit_app(spec, 'TAGS = {"python", "rust", "go"}', "TAGS = {f't{n}' for n in range(400)}")
    argv = ["attack", spec, "--config", str(config), "--scale", "0.25", "--json"]
    main([*argv, "--campaign", "scraping"])
    (row,) = json.loads(capsys.readouterr().out)["campaigns"]
    assert row["skipped"] is None
    assert row["note"] is not None and "set detection.challenge_path" in row["note"]


BASIC_APP = """
import secrets
from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from apiguard import Guard, identify
from apiguard.asgi import GuardMiddleware

guard = Guard({"detection": {"challenge_path": "/challenge"}})
app = FastAPI()
app.add_middleware(GuardMiddleware, guard=guard)
basic = HTTPBasic(auto_error=False)
USERS = {f"user{n}": f"password{n}" for n in range(1, 1001)}


@app.post("/api/tokens")
def tokens(creds: HTTPBasicCredentials | None = Depends(basic)):
    name = creds.username if creds else ""
    ok = creds is not None and secrets.compare_digest(USERS.get(name, "-"), creds.password)
    guard.login_result(name, ok, exists=name in USERS)  # where the password is checked
    if not ok:
        raise HTTPException(401, "bad credentials")
    identify(name)
    return {"access_token": "tok-" + name}


@app.post("/challenge")
def challenge(body: dict):
    if body.get("answer") != "human-ok":
        raise HTTPException(400)
    guard.challenge_passed()
    return {"passed": True}
"""


def test_an_http_basic_login_is_attacked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trial app's token route took HTTP Basic credentials (APIFairy): the self-test
    could not log in, and stopped. `[login] format = "basic"` (or `--login-format basic`)
    sends them in the Authorization header: brute force is caught, nobody refused."""
    (tmp_path / "basic_app.py").write_text(BASIC_APP)
    argv = ["attack", f"{tmp_path / 'basic_app.py'}:app", "--login", "/api/tokens"]
    argv += ["--login-format", "basic", "--campaign", "brute", "--scale", "0.1", "--json"]
    status = main(argv)
    captured = capsys.readouterr()
    assert status == 0, captured.err + captured.out
    (row,) = json.loads(captured.out)["campaigns"]
    assert row["caught"] is True and row["benign_principals_refused"] == 0
    assert row["reference_gain"] > 0  # (the unprotected app's password was found)


def test_a_flow_section_with_only_a_sign_up_declares_no_flow_to_abuse() -> None:
    """A Django trial's declaration had `[flow] signup` and no `[flow] path`: the flow
    campaigns attacked the example shop's coupon route and reported MISSED. They are
    SKIPPED, naming `[flow] path`."""
    target = Target.from_mapping({"flow": {"signup": "/api/users"}})
    for name in ("flow abuse, rotating", "flow abuse, fresh accounts", "flow abuse, fresh shapes"):
        reason = cp.undeclared(cp.campaign(name), target)
        assert reason is not None and "[flow] path" in reason
    declared = Target.from_mapping({"flow": {"path": "/api/coupons/{code}", "codes": ["A"]}})
    assert cp.undeclared(cp.campaign("flow abuse, rotating"), declared) is None


def test_a_run_without_an_unprotected_reference_says_how_caught_is_judged(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A Django trial: over --url a scraping run that got 414 of 500 pages was reported
    CAUGHT (no unprotected run: caught is judged on the refusals after the first one),
    and the report did not say so."""
    spec = f"{ROOT / 'examples' / 'shop.py'}:app"
    main(["attack", spec, "--campaign", "brute", "--scale", "0.1", "--no-reference"])
    assert "no unprotected run to compare with" in capsys.readouterr().out
    main(["attack", spec, "--campaign", "brute", "--scale", "0.1"])
    assert "no unprotected run to compare with" not in capsys.readouterr().out


def test_a_url_scraping_run_too_short_to_judge_says_so(capsys) -> None:
    """`--url --max-seconds 60` ran the scraping campaign and reported MISSED: the
    detector judges a reader only after its settle time (120 s by default), so no run
    that short could show a catch (a trial of a Django + DRF app)."""
    import socket

    with socket.socket() as sock:  # nothing is sent: the run is skipped before it starts
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = ["attack", "--url", f"http://127.0.0.1:{port}", "--campaign", "scraping"]
    main([*argv, "--max-seconds", "60"])
    out = capsys.readouterr().out
    assert "MISSED" not in out and "--max-seconds 60 is under" in out, out


def test_over_http_a_walk_the_app_answers_404_itself_until_the_first_refusal_is_skipped() -> None:
    """A trial (a DRF to-do API over `--url`): both BOLA campaigns were CAUGHT on 16
    requests with one refusal, though the app answered every foreign id 404 itself; in
    process the same run is SKIPPED. Over HTTP the requests apiguard let through stand
    for the unprotected run."""
    from apiguard.simulate.driver import Record

    target = Target(accounts=(), login_path="/login")
    camp = cp.campaign("BOLA walk")

    def rec(status: int, blocked: bool = False) -> Record:
        at = (0.0, "attack", True, "walk", "GET", "/todo/7/", "192.0.2.1", status)
        return Record(*at, target="7", guard_refused=blocked)

    records = [rec(404)] * 15 + [rec(403, blocked=True)]
    reference = st.url_reference(records)
    assert reference is not None and len(reference) == 15
    reason = cp.skip_reason(camp, target, records, reference, let_through=True)
    assert reason is not None and reason.startswith(
        "the app (on what apiguard let through) answered all 15 attack requests 404 x15"
    )
    # a vulnerable app: what it let through was answered 200, a catch
    leaky = [rec(200)] * 15 + [rec(403, blocked=True)]
    assert cp.skip_reason(camp, target, leaky, st.url_reference(leaky), let_through=True) is None
    # too few let through to tell: judged as before
    assert st.url_reference([rec(404)] * 3 + [rec(403, blocked=True)]) is None
    # nothing refused: the run stands for the unprotected one, as before
    assert st.url_reference(leaky[:15]) == leaky[:15]
