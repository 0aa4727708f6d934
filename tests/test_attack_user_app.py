"""`apiguard attack` against an app shaped like the FastAPI + fastapi-users template
(a trial, fa3): an OAuth2 form login, a JSON sign-up that answers no token and enforces a
password policy, a database in a module of its own (not imported afresh between runs),
owned items on a route with a BOLA bug. What the trial found wrong, each fixed here:
the example shop's routes requested on the user's app, sign-ups colliding with the
previous run's, the sign-up's password shaped by a template but the log-in after it not,
and `--config` read after the app's module changed the working directory."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from apiguard.cli import main
from apiguard.simulate import campaigns as cp
from apiguard.simulate import selftest as st
from apiguard.simulate.target import DeclarationError, Target

# the app's database: a module of its own, imported once (the self-test imports only the
# app's module afresh), so what one run writes the next run sees
DB = """
USERS = {f"user{n}@example.org": f"Pw!user{n}x" for n in range(1, 61)}
ITEMS = {i: f"user{(i - 1) % 60 + 1}@example.org" for i in range(1, 301)}
SEEN = []  # every path requested
"""

APP = """
import os
import string
from typing import Annotated
from fastapi import Depends, FastAPI, Form, Header, HTTPException, Request
from pydantic import BaseModel
from apiguard import Guard, identify
from apiguard.asgi import GuardMiddleware
import fa_like_db as db

if os.environ.get("FA_LIKE_CHDIR"):
    os.chdir(os.environ["FA_LIKE_CHDIR"])  # (the trial's module did, to find its .env)

guard = Guard({"detection": {"challenge_path": "/auth/challenge"}})
app = FastAPI()
app.add_middleware(GuardMiddleware, guard=guard)


@app.middleware("http")
async def seen(request: Request, call_next):
    db.SEEN.append(request.url.path)
    return await call_next(request)


def user(authorization: Annotated[str | None, Header()] = None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme != "Bearer" or not token.startswith("tok:") or token[4:] not in db.USERS:
        raise HTTPException(401)
    identify(token[4:])
    return token[4:]


@app.post("/auth/jwt/login")
async def login(username: Annotated[str, Form()], password: Annotated[str, Form()]):
    ok = db.USERS.get(username) == password
    guard.login_result(username, ok, exists=username in db.USERS)
    if not ok:
        raise HTTPException(400, "LOGIN_BAD_CREDENTIALS")
    return {"access_token": "tok:" + username, "token_type": "bearer"}


class NewUser(BaseModel):
    email: str
    password: str


@app.post("/auth/register", status_code=201)
async def register(new: NewUser):
    if new.email in db.USERS:
        raise HTTPException(400, "REGISTER_USER_ALREADY_EXISTS")
    p = new.password
    if len(p) < 12 or not (
        any(c.isupper() for c in p)
        and any(c.islower() for c in p)
        and any(c.isdigit() for c in p)
        and any(c in string.punctuation for c in p)
    ):
        raise HTTPException(
            400, {"code": "REGISTER_INVALID_PASSWORD", "reason": "too weak"}
        )
    db.USERS[new.email] = p
    return {"email": new.email}  # (no token: the new user logs in)


@app.get("/items/{item_id}")
async def item(item_id: int, who: Annotated[str, Depends(user)]):
    if item_id not in db.ITEMS:
        raise HTTPException(404)
    return {"id": item_id, "owner": db.ITEMS[item_id]}  # (any signed-in user: BOLA)


@app.post("/auth/challenge")
async def challenge(body: dict):
    guard.challenge_passed()
    return {"ok": True}
"""

LOGIN = """
[login]
path = "/auth/jwt/login"
format = "form"
username_field = "username"
password_field = "password"
token_field = "access_token"

[accounts]
username = "user{n}@example.org"
password = "Pw!user{n}x"
count = 60
"""

SIGNUP = """
[objects]
path = "/items/{id}"

[flow]
signup = "/auth/register"
signup_format = "json"
signup_login = "{name}@example.org"

[flow.signup_fields]
"email" = "{name}@example.org"
"""


@pytest.fixture
def fa_app(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(the app's spec, the declaration's path: the login and the accounts only)."""
    (tmp_path / "fa_like_db.py").write_text(DB)
    (tmp_path / "fa_like_app.py").write_text(APP)
    (tmp_path / "attack.toml").write_text(LOGIN)
    sys.path.insert(0, str(tmp_path))
    try:
        yield f"{tmp_path / 'fa_like_app.py'}:app", tmp_path / "attack.toml"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("fa_like_db", None)


def _db() -> object:
    return sys.modules["fa_like_db"]


def test_no_example_shop_route_is_requested_on_an_app_that_does_not_declare_it(
    fa_app: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The trial declared no `[objects]` and no `[browse]`: the BOLA walks still attacked
    the example shop's `GET /orders/{id}` and the honest visitors browsed `/products/N`
    (5128 of 5128 page views 404). The campaigns that need a section left out are
    SKIPPED naming it, and neither they nor the honest population request any of the
    example shop's routes: only the app's declared ones (and the recon's wordlist)."""
    spec, config = fa_app
    argv = ["attack", spec, "--config", str(config), "--scale", "0.1", "--json"]
    campaigns = ["BOLA walk", "BOLA random", "BOLA, many", "brute force", "stuffing, CAPTCHA"]
    status = main([*argv, *(a for c in campaigns for a in ("--campaign", c))])
    captured = capsys.readouterr()
    assert status != 2, captured.err
    rows = {c["campaign"]: c for c in json.loads(captured.out)["campaigns"]}
    for name in ("BOLA walk", "BOLA random"):
        assert rows[name]["skipped"].startswith("not declared: [objects] path"), rows[name]
        assert rows[name]["attack_requests"] == 0
    assert "[objects] path" in rows["BOLA, many accounts"]["skipped"]
    assert "[flow] signup" in rows["BOLA, many accounts"]["skipped"]
    for name in ("brute force", "stuffing, CAPTCHA solver"):
        assert rows[name]["skipped"] is None and rows[name]["benign_pages"] == 0, rows[name]
    paths = set(_db().SEEN)  # type: ignore[attr-defined]
    assert paths, "the app was requested"
    allowed = {"/auth/jwt/login", "/auth/challenge"}
    assert paths <= allowed, sorted(paths - allowed)[:10]


def test_fresh_accounts_sign_up_anew_in_every_run_past_a_password_policy(
    fa_app: tuple[str, Path],
) -> None:
    """The trial's sign-ups: the unprotected run's accounts stayed in the app's database
    (a module not imported afresh), so every sign-up of the protected run answered 400
    "already exists" and the campaign was SKIPPED blaming the declaration; and a
    password of 12 letters never met the app's policy. Each run signs up names of its
    own, with a password that has upper and lower case, digits and a symbol."""
    spec, config = fa_app
    config.write_text(LOGIN + SIGNUP + '"password" = "{password}"\n')
    target = st.target_for(spec, str(config), {})
    (outcome,) = st.run_in_process(
        spec, target, [cp.campaign("BOLA, many accounts")], seed=7, scale=0.1
    )
    assert outcome.skipped is None, outcome.skipped
    assert outcome.reference_gain, outcome  # (the unprotected run's accounts read items)
    assert outcome.attack_requests > 0  # (caught or not: detection is not this test's)
    new = [u for u in _db().USERS if not u.startswith("user")]  # type: ignore[attr-defined]
    assert len(new) >= 2 * 5  # both runs' accounts, none refused as already there


def test_a_password_template_is_the_password_the_login_sends_too(
    fa_app: tuple[str, Path],
) -> None:
    """The trial's `"password" = "Pw!{password}X"` got the sign-ups through, but the log-in
    after each sent the bare password (400, SKIPPED "the attacker's own account could not
    log in"). A template around {password} makes the account's password once: the
    sign-up and the log-in send the same (so does `[flow] signup_password`)."""
    spec, config = fa_app
    config.write_text(LOGIN + SIGNUP + '"password" = "Pw!{password}X"\n')
    target = st.target_for(spec, str(config), {})
    assert target.account_password("abc") == "Pw!abcX"
    body, _ = target.signup_body("ann", target.account_password("abc"))
    assert json.loads(body) == {"email": "ann@example.org", "password": "Pw!abcX"}
    reference = st.in_process_factory(st.absolute_spec(spec), monitor=True)
    assert cp.reference_gain(cp.campaign("many accounts"), target, reference, scale=0.1) > 0
    new = {u: p for u, p in _db().USERS.items() if not u.startswith("user")}  # type: ignore[attr-defined]
    assert new and all(p.startswith("Pw!") and p.endswith("X") for p in new.values())

    explicit = Target.from_mapping({"flow": {"signup_password": "{password}#1"}})
    assert explicit.account_password("x") == "x#1"
    with pytest.raises(DeclarationError, match="signup_password"):
        Target.from_mapping({"flow": {"signup_password": "fixed"}})
    with pytest.raises(DeclarationError, match="different templates"):
        Target.from_mapping(
            {"flow": {"signup_fields": {"a": "A{password}", "b": "B{password}"}}}
        )


def test_failed_sign_ups_say_what_the_app_answered(
    fa_app: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Every sign-up refused (here: one e-mail for every account, which exists): the
    reason says what the app answered, and that the account may already exist, rather
    than only "declare [flow] signup"."""
    spec, config = fa_app
    fixed = SIGNUP.replace('"email" = "{name}@example.org"', '"email" = "user1@example.org"')
    config.write_text(LOGIN + fixed + '"password" = "{password}"\n')
    argv = ["attack", spec, "--config", str(config), "--scale", "0.1", "--json"]
    main([*argv, "--campaign", "BOLA, many accounts"])
    (row,) = json.loads(capsys.readouterr().out)["campaigns"]
    reason = row["skipped"]
    assert reason.startswith("no sign-up succeeded: POST /auth/register answered 400"), reason
    assert "REGISTER_USER_ALREADY_EXISTS" in reason and "may already exist" in reason


def test_the_config_is_read_before_the_app_changes_the_working_directory(
    fa_app: tuple[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The trial's module changed the working directory when imported (to find its .env):
    `--config attack.toml` was then "No such file". The file (and the app's path) are
    resolved before the module is imported."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setenv("FA_LIKE_CHDIR", str(elsewhere))
    monkeypatch.chdir(tmp_path)
    argv = ["attack", "fa_like_app.py:app", "--config", "attack.toml", "--scale", "0.1"]
    status = main([*argv, "--campaign", "brute", "--json"])
    captured = capsys.readouterr()
    assert status != 2, captured.err
    (row,) = json.loads(captured.out)["campaigns"]
    assert row["skipped"] is None and row["caught"], row
    assert os.getcwd() == str(elsewhere)  # (the module did change it)


def test_a_declaration_without_a_challenge_takes_the_guards_route(
    fa_app: tuple[str, Path],
) -> None:
    """No `[challenge]`: a person asked for one answers it at the app's guard's
    `detection.challenge_path`, not at the example shop's `/challenge`; flags that
    declare the object route keep the accounts the file declared (they were replaced by
    the default `user{n}`/`password{n}`)."""
    spec, config = fa_app
    target = st.target_for(spec, str(config), {"objects": {"path": "/items/{id}"}})
    assert target.challenge_path == "/auth/challenge"
    assert target.confined().challenge_path == "/auth/challenge"
    assert target.accounts[0].username == "user1@example.org"
    assert target.accounts[0].password == "Pw!user1x"
    assert target.accounts[0].objects and target.object_path == "/items/{id}"
    bare = Target.from_mapping({"login": {"path": "/auth/jwt/login"}})
    assert bare.confined().challenge_path == ""
    assert bare.confined().browse_paths == () and bare.confined().object_ids == ()
    assert not any(a.objects for a in bare.confined().accounts)
