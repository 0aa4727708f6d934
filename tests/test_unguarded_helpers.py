"""Rules on functions the app does not route: a library's manager methods (fastapi-users'
`UserManager.create`, `authenticate`, `on_after_forgot_password`) decorated by the app.

- called outside any request (fastapi-users' documented create-user script, a task, a
  test), a decorated helper raises a `RuntimeError` saying so, and which of "no
  middleware" or "not in a request" it is; `with guard.unguarded():` runs it without its
  rules, on purpose; inside a request the rules run even in such a block;
- the start-up line lists rules on such functions, and says login_result() reports are
  not listed;
- `@guard.login` on the library's `authenticate` refuses a held-back client before the
  password hash (`login_result` alone cannot: the hash is spent);
- a flow on a hook that runs only for existing accounts answers existing and unknown
  e-mails differently (an enumeration oracle); the same flow on a dependency of the route
  answers both alike.

The app below stands in for fastapi-users 13 (same call shapes: `create(user_create,
safe, request)`, `authenticate(credentials)` with an OAuth2 form, forgot-password
answering 202 whether the account exists or not, the hook called only when it does).
"""

import asyncio
import logging
from collections.abc import Iterator
from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Request
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel
from starlette.testclient import TestClient

from apiguard import Guard
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock

HASHES: list[str] = []  # every password hash computed (an argon2 call in the real app)


def password_hash(password: str) -> str:
    HASHES.append(password)
    return "h:" + password


class UserCreate(BaseModel):
    email: str
    password: str


class UserManager:
    """The library's manager, subclassed by the app as fastapi-users' docs show."""

    users: dict[str, str] = {}

    async def create(
        self, user_create: UserCreate, safe: bool = False, request: Request | None = None
    ) -> str:
        if user_create.email in self.users:
            raise HTTPException(400, "REGISTER_USER_ALREADY_EXISTS")
        self.users[user_create.email] = password_hash(user_create.password)
        return user_create.email

    async def authenticate(self, credentials: OAuth2PasswordRequestForm) -> str | None:
        stored = self.users.get(credentials.username)
        given = password_hash(credentials.password)  # hashed even for unknown accounts
        return credentials.username if stored == given else None

    async def forgot_password(self, email: str) -> None:
        if email in self.users:  # the hook runs only for an existing account
            await self.on_after_forgot_password(email, "token")

    async def on_after_forgot_password(self, email: str, token: str) -> None:
        pass


def library_routers(get_manager: Any) -> tuple[APIRouter, APIRouter]:
    """The routers the library builds (the app owns none of these handlers)."""
    auth = APIRouter()

    @auth.post("/login")
    async def login(
        form: Annotated[OAuth2PasswordRequestForm, Depends()],
        manager: Annotated[UserManager, Depends(get_manager)],
    ) -> dict[str, str]:
        user = await manager.authenticate(form)
        if user is None:
            raise HTTPException(400, "LOGIN_BAD_CREDENTIALS")
        return {"access_token": user}

    @auth.post("/register", status_code=201)
    async def register(
        request: Request,
        user_create: UserCreate,
        manager: Annotated[UserManager, Depends(get_manager)],
    ) -> dict[str, str]:
        return {"email": await manager.create(user_create, safe=True, request=request)}

    reset = APIRouter()

    @reset.post("/forgot-password", status_code=202)
    async def forgot(
        manager: Annotated[UserManager, Depends(get_manager)],
        email: Annotated[str, Body(embed=True)],
    ) -> None:
        await manager.forgot_password(email)

    @reset.post("/reset-password")
    async def reset_password(
        token: Annotated[str, Body(embed=True)], password: Annotated[str, Body(embed=True)]
    ) -> None:
        if token != "token":
            raise HTTPException(400, "RESET_PASSWORD_BAD_TOKEN")

    return auth, reset


def make_app(
    guard: Guard, *, reset_on: str = "hook", precheck: bool = False
) -> tuple[FastAPI, UserManager]:
    """The app's integration: flows on the manager's methods, the login reported from
    `authenticate` (with `@guard.login` on it when `precheck`), the reset flow on the
    hook or on a dependency of the library's reset router."""

    class AppUserManager(UserManager):
        users: dict[str, str] = {}

        @guard.flow("signup", "5/hour", per="ip", count="success")
        async def create(
            self, user_create: UserCreate, safe: bool = False, request: Request | None = None
        ) -> str:
            user = await super().create(user_create, safe, request)
            guard.account_created(user, username=user_create.email)  # (as the README)
            return user

        async def authenticate(self, credentials: OAuth2PasswordRequestForm) -> str | None:
            user = await super().authenticate(credentials)
            guard.login_result(
                credentials.username, user is not None, exists=credentials.username in self.users
            )
            return user

        if precheck:
            authenticate = guard.login(username="credentials.username")(authenticate)

        if reset_on == "hook":
            on_after_forgot_password = guard.flow("password-reset", "3/hour", key="email")(
                UserManager.on_after_forgot_password
            )

    manager = AppUserManager()
    auth, reset = library_routers(lambda: manager)

    app = FastAPI()
    app.include_router(auth, prefix="/auth")
    if reset_on == "dependency":

        # (as the README has it: the router also serves /reset-password, whose body
        # has no e-mail; a required `email` refused every reset with 422 in a trial)
        @guard.flow("password-reset", "3/hour", key="email")
        async def forgot_flow(email: str) -> None:
            """Every forgot-password request passes here, existing account or not."""

        async def reset_flow(email: Annotated[str | None, Body(embed=True)] = None) -> None:
            if email is not None:
                await forgot_flow(email)

        app.include_router(reset, prefix="/auth", dependencies=[Depends(reset_flow)])
    else:
        app.include_router(reset, prefix="/auth")
    app.add_middleware(GuardMiddleware, guard=guard)
    return app, manager


@pytest.fixture
def guard() -> Iterator[Guard]:
    HASHES.clear()
    yield Guard({"bans": {"enabled": False}}, clock=FakeClock(1_000.0))


def create_user_script(manager: UserManager, email: str) -> str:
    """fastapi-users' documented "create a user programmatically": no request at all."""
    return asyncio.run(manager.create(UserCreate(email=email, password="pw")))


def test_a_decorated_helper_outside_requests_says_so_and_runs_only_when_asked(
    guard: Guard,
) -> None:
    app, manager = make_app(guard)

    # no middleware has run yet: both causes are named
    with pytest.raises(RuntimeError) as before:
        create_user_script(manager, "admin@example.org")
    text = str(before.value)
    assert "AppUserManager.create was called outside a request apiguard is handling" in text
    assert "flow signup 5/hour per ip" in text
    assert "app.add_middleware(GuardMiddleware, guard=guard)" in text
    assert "with guard.unguarded():" in text

    with TestClient(app, client=("203.0.113.7", 50_000)) as client:  # the app is served
        assert (
            client.post("/auth/register", json={"email": "a@x.org", "password": "p"}).status_code
            == 201
        )

        with pytest.raises(RuntimeError) as after:
            create_user_script(manager, "admin@example.org")
        text = str(after.value)
        assert "a script, a background task or worker" in text
        assert "middleware is installed" in text and "add_middleware" not in text
        assert "admin@example.org" not in manager.users  # raised before the body ran

        # on purpose: the script says so, and the user is created
        with guard.unguarded():
            assert create_user_script(manager, "admin@example.org") == "admin@example.org"

        async def script() -> None:  # the async form: one block around the awaits
            with guard.unguarded():
                await manager.create(UserCreate(email="ops@example.org", password="pw"))

        asyncio.run(script())
        assert {"admin@example.org", "ops@example.org"} <= set(manager.users)

        # the block ends with the block
        with pytest.raises(RuntimeError, match="outside a request"):
            create_user_script(manager, "late@example.org")

        # another guard's block lifts nothing of this one
        with Guard().unguarded(), pytest.raises(RuntimeError):
            create_user_script(manager, "other@example.org")

        # the script's sign-ups spent nothing: the address still has 4 of its 5
        for n in range(4):
            resp = client.post("/auth/register", json={"email": f"u{n}@x.org", "password": "p"})
            assert resp.status_code == 201
        assert (
            client.post("/auth/register", json={"email": "u9@x.org", "password": "p"}).status_code
            == 429
        )


def test_unguarded_never_lifts_rules_inside_a_request(guard: Guard) -> None:
    """A handler that wraps its call in `unguarded()` is still counted: the block only
    covers code running outside any request."""
    app, manager = make_app(guard)

    @app.post("/admin/bulk")
    async def bulk(n: int) -> dict[str, int]:
        with guard.unguarded():
            for i in range(n):
                await manager.create(UserCreate(email=f"bulk{i}@x.org", password="p"))
        return {"created": n}

    client = TestClient(app, client=("203.0.113.8", 50_000))
    assert client.post("/admin/bulk?n=5").status_code == 200
    assert client.post("/admin/bulk?n=1").status_code == 429


def test_request_only_calls_outside_requests(guard: Guard) -> None:
    """login_result() and the other request-only calls: the same error outside a request,
    nothing inside `unguarded()` (a CLI that checks a password through the manager)."""
    with pytest.raises(RuntimeError, match=r"guard.login_result\(\) was called outside a request"):
        guard.login_result("ann", True)
    with guard.unguarded():
        guard.login_result("ann", True)
        guard.account_created(7)
        guard.objects_touched(1, 2)
        guard.challenge_passed()
    for call in (
        lambda: guard.account_created(7),
        lambda: guard.objects_touched(1),
        guard.challenge_passed,
    ):
        with pytest.raises(RuntimeError, match="unguarded"):
            call()


def test_the_start_up_line_lists_rules_on_functions_no_route_serves(
    guard: Guard, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="apiguard")
    app, _ = make_app(guard)
    with TestClient(app):
        pass
    (line,) = [r.getMessage() for r in caplog.records if "global rules" in r.getMessage()]
    assert "routes with rules (0): none" in line
    assert (
        "functions with rules not seen on a route (2; helpers, dependencies, library "
        "methods: counted when a request calls them): "
        "make_app.<locals>.AppUserManager.create [flow signup 5/hour per ip]; "
        "UserManager.on_after_forgot_password [flow password-reset 3/hour per key=email];"
    ) in line
    assert "logins: no @guard.login (guard.login_result() reports are counted when made" in line

    caplog.clear()
    other = Guard()
    app, _ = make_app(other, reset_on="dependency", precheck=True)
    with TestClient(app):
        pass
    (line,) = [r.getMessage() for r in caplog.records if "global rules" in r.getMessage()]
    assert "functions with rules not seen on a route (3; " in line
    assert "AppUserManager.authenticate [login]" in line
    assert "forgot_flow [flow password-reset 3/hour per key=email]" in line
    assert "logins: no @guard.login" not in line


def brute_force(app: FastAPI, attempts: int) -> list[int]:
    """One account's password guessed from a new address each time."""
    statuses = []
    for i in range(attempts):
        client = TestClient(app, client=(f"198.{18 + i // 250}.{i % 250}.9", 40_000 + i))
        resp = client.post(
            "/auth/login", data={"username": "victim@x.org", "password": f"guess{i}"}
        )
        statuses.append(resp.status_code)
    return statuses


@pytest.mark.parametrize("precheck", [False, True])
def test_only_guard_login_refuses_before_the_password_hash(guard: Guard, precheck: bool) -> None:
    """`login_result` runs after the library hashed the guess: every refused guess was
    hashed all the same. `@guard.login` on the library's `authenticate` (a method) refuses
    a held-back client before the hash; login_result beside it still reports `exists`."""
    app, manager = make_app(guard, precheck=precheck)
    manager.users["victim@x.org"] = password_hash("right")
    HASHES.clear()
    statuses = brute_force(app, 30)
    assert statuses[:8] == [400] * 8  # then the account is protected: unknown clients challenged
    assert set(statuses[8:]) == {403}  # 22 guesses refused...
    assert len(HASHES) == (8 if precheck else 30)  # ...and hashed all the same without it


def reset_requests(app: FastAPI, email: str, n: int) -> list[int]:
    return [
        TestClient(app, client=(f"192.0.2.{10 + i}", 50_000))
        .post("/auth/forgot-password", json={"email": email})
        .status_code
        for i in range(n)
    ]


def test_a_flow_on_a_hook_for_existing_accounts_is_an_oracle_and_a_dependency_is_not(
    guard: Guard,
) -> None:
    app, manager = make_app(guard, reset_on="hook")
    manager.users["known@x.org"] = "h"
    assert reset_requests(app, "known@x.org", 5) == [202, 202, 202, 429, 429]
    assert reset_requests(app, "nobody@x.org", 5) == [202] * 5  # told apart: an oracle

    other = Guard({"bans": {"enabled": False}}, clock=FakeClock(1_000.0))
    app, manager = make_app(other, reset_on="dependency")
    manager.users["known@x.org"] = "h"
    assert reset_requests(app, "known@x.org", 5) == [202, 202, 202, 429, 429]
    assert reset_requests(app, "nobody@x.org", 5) == [202, 202, 202, 429, 429]
    # the router's other route has no e-mail: it passes, and spends no unit
    client = TestClient(app, client=("192.0.2.99", 50_000))
    for _ in range(4):
        answer = client.post("/auth/reset-password", json={"token": "token", "password": "x"})
        assert answer.status_code == 200, answer.text
    bad = client.post("/auth/reset-password", json={"token": "forged", "password": "x"})
    assert bad.status_code == 400
    assert reset_requests(app, "third@x.org", 4) == [202, 202, 202, 429]
