"""An example shop protected by apiguard: the app `apiguard demo` and `apiguard attack` attack.

    app = create_app(demo_guard(time.monotonic))   # on the real clock, e.g. under uvicorn
    apiguard attack examples/shop.py:app          # the self-test, in process, 24 h in seconds

Authentication is a bearer token looked up in an in-memory user table; the auth
dependencies call `apiguard.identify(user.id)`, so every limit follows the account,
whatever IP address it comes from. Coupons can be redeemed once per customer, and no
customer may redeem more than 3 per hour (failed attempts do not count).

The shop has the bugs and the surface the self-test needs (see `apiguard.simulate.campaigns`):
- `POST /login` (JSON) declares its outcome with `@guard.login` (401 on a bad password);
- `GET /orders/{order_id}`, the legacy route the mobile app still uses, has a REAL broken
  object-level authorization bug: it returns any order to any logged-in customer (the
  `/api/v1/orders/{order_id}` route checks the owner);
- `POST /signup` and `POST /coupons/{code}/redeem` are business flows (`@guard.flow`);
- `GET /api/v1/reports?page=N` is for partners with an `X-API-Key`;
- `POST /challenge` is where a person proves to be one (a CAPTCHA in a real app; here the
  answer `"human-ok"`) after apiguard answered `challenge-required`: it calls
  `guard.challenge_passed()`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from apiguard import Guard, identify
from apiguard.asgi import GuardMiddleware


@dataclass(frozen=True)
class User:
    id: int
    username: str
    password: str
    token: str


# Passwords people really choose: one account in 40 has one of these (what spraying finds).
COMMON_PASSWORDS = ("Summer2024!", "Password1", "Welcome123", "Qwerty123!", "Company2024")
USER_COUNT = 1000
ORDERS_PER_USER = 5
BUSINESS_USERS, BUSINESS_ORDERS = 10, 50  # users 1..10 buy for a company: 50 more orders each


def _password(n: int) -> str:
    return COMMON_PASSWORDS[n % len(COMMON_PASSWORDS)] if n % 40 == 13 else f"password{n}"


# A fake user table: user N logs in as userN/passwordN (or a common password, see above)
# and gets the token tok-N-<suffix>.
BY_USERNAME: dict[str, User] = {
    f"user{n}": User(n, f"user{n}", _password(n), f"tok-{n:03d}-{n * 7919 % 99_991:05d}")
    for n in range(1, USER_COUNT + 1)
}
USERS: dict[str, User] = {u.token: u for u in BY_USERNAME.values()}  # keyed by token
PRODUCTS: dict[int, dict[str, Any]] = {
    pid: {"id": pid, "name": f"Product {pid}", "price_cents": 500 + (pid * 137) % 9_500}
    for pid in range(1, 201)
}
# Order N belongs to user ((N - 1) % 1000) + 1: orders 1, 1001, 2001... are user 1's;
# orders 10001-10500 are the business users' (10001-10050 user 1's, and so on).
ORDERS: dict[int, dict[str, Any]] = {
    oid: {"id": oid, "user_id": (oid - 1) % USER_COUNT + 1, "product_id": oid % 200 + 1}
    for oid in range(1, USER_COUNT * ORDERS_PER_USER + 1)
}
ORDERS.update(
    {
        oid: {
            "id": oid,
            "user_id": (oid - 10_001) // BUSINESS_ORDERS + 1,
            "product_id": oid % 200 + 1,
        }
        for oid in range(10_001, 10_001 + BUSINESS_USERS * BUSINESS_ORDERS)
    }
)
# Partners' API keys (a real app stores their hashes): partner name by key.
PARTNER_KEYS: dict[str, str] = {
    f"pk_live_{name}_{n * 104_729 % 999_983:06d}": name
    for n, name in enumerate(("acme", "globex", "initech", "umbrella", "hooli"), start=1)
}
REPORT_PAGES = 400
CHALLENGE_ANSWER = "human-ok"  # what a person "types" into the simulated CAPTCHA
COUPONS: dict[str, int] = {
    "WELCOME10": 10,
    "SPRING25": 25,
    "FREESHIP": 5,
    "LOYAL15": 15,
    "BUNDLE20": 20,
    "VIP30": 30,
}


def demo_guard(clock: Callable[[], float]) -> Guard:
    """The demo's policy: 120 requests a minute per account, the rest left at defaults."""
    return Guard(
        {
            "limits": {"principal": "120/minute"},
            "secret": "apiguard-demo-secret-0123",
            "detection": {"challenge_path": "/challenge"},
        },
        clock=clock,
    )


class Credentials(BaseModel):
    username: str
    password: str


bearer = HTTPBearer(auto_error=False)
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def optional_user(request: Request, creds: Bearer) -> User | None:
    """The caller's account, None when anonymous; a bad token is a 401."""
    if creds is None:
        return None
    user = USERS.get(creds.credentials) or request.app.state.signups.get(creds.credentials)
    if user is None:
        raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"})
    identify(user.id)  # from here on, the principal is this account on every IP
    return user


async def current_user(user: Annotated[User | None, Depends(optional_user)]) -> User:
    """The caller's account; anonymous callers get a 401."""
    if user is None:
        raise HTTPException(401, "authentication required", headers={"WWW-Authenticate": "Bearer"})
    return user


CurrentUser = Annotated[User, Depends(current_user)]
OptionalUser = Annotated[User | None, Depends(optional_user)]


class SignUp(BaseModel):
    username: str
    password: str


class ChallengeAnswer(BaseModel):
    answer: str


def create_app(guard: Guard, *, limiter: Any = None) -> FastAPI:
    """A fresh shop (its own redemption records and sign-ups) guarded by `guard`.

    `limiter`: a slowapi `Limiter` whose documented set-up the benchmark compares with
    (its per-IP limit on the login route; its default limits come from its middleware).
    """
    app = FastAPI(title="apiguard example shop")
    app.add_middleware(GuardMiddleware, guard=guard)
    app.state.signups = {}  # token -> User, accounts created through POST /signup
    signups: dict[str, User] = app.state.signups
    signup_names: dict[str, User] = {}
    redeemed: set[tuple[int, str]] = set()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @guard.login(username="body.username")
    @guard.limit("20/minute", per="ip", name="login")
    async def login(request: Request, body: Credentials) -> dict[str, str]:
        user = BY_USERNAME.get(body.username) or signup_names.get(body.username)
        if user is None or not secrets.compare_digest(user.password, body.password):
            raise HTTPException(401, "wrong username or password")
        identify(user.id)
        return {"access_token": user.token, "token_type": "bearer"}

    if limiter is not None:  # slowapi as its docs set it up: a per-IP limit on the login
        login = limiter.limit("5/minute")(login)
    app.post("/login")(login)

    @app.post("/signup", status_code=201)
    @guard.flow("signup", "10/hour", per="ip")
    async def signup(body: SignUp) -> dict[str, str]:
        if body.username in BY_USERNAME or body.username in signup_names:
            raise HTTPException(409, "username taken")
        n = 100_000 + len(signups)
        user = User(n, body.username, body.password, f"tok-new-{n}-{secrets.token_hex(4)}")
        signups[user.token] = signup_names[body.username] = user
        identify(user.id)
        return {"access_token": user.token, "token_type": "bearer"}

    @app.post("/challenge")
    async def challenge(body: ChallengeAnswer) -> dict[str, bool]:
        """The person solved the challenge the app showed (a CAPTCHA in a real app)."""
        if body.answer != CHALLENGE_ANSWER:
            raise HTTPException(400, "challenge failed")
        guard.challenge_passed()
        return {"passed": True}

    @app.get("/orders/{order_id}")
    async def get_order_legacy(order_id: int, user: CurrentUser) -> dict[str, Any]:
        """The mobile app's old route. BUG (on purpose): no owner check, so any customer
        reads any order: broken object-level authorization, what a BOLA walk finds."""
        order = ORDERS.get(order_id)
        if order is None:
            raise HTTPException(404, "no such order")
        return order

    @app.get("/api/v1/reports")
    async def reports(
        x_api_key: Annotated[str | None, Header()] = None, page: int = 1
    ) -> dict[str, Any]:
        partner = PARTNER_KEYS.get(x_api_key or "")
        if partner is None:
            raise HTTPException(401, "a valid X-API-Key is required")
        identify(f"partner:{partner}")
        if not 1 <= page <= REPORT_PAGES:
            raise HTTPException(404, "no such page")
        return {"partner": partner, "page": page, "rows": [page * 100 + i for i in range(5)]}

    @app.get("/products")
    async def list_products(user: OptionalUser, page: int = 1) -> list[dict[str, Any]]:
        start = (max(page, 1) - 1) * 20 + 1
        return [PRODUCTS[i] for i in range(start, start + 20) if i in PRODUCTS]

    @app.get("/products/{product_id}")
    def get_product(product_id: int, user: OptionalUser) -> dict[str, Any]:
        product = PRODUCTS.get(product_id)  # a sync handler: FastAPI runs it in a thread
        if product is None:
            raise HTTPException(404, "no such product")
        return product

    @app.post("/coupons/{code}/redeem")
    @guard.flow("redeem-coupon", "3/hour", per="principal", count="success")
    async def redeem_coupon(code: str, user: CurrentUser) -> dict[str, Any]:
        percent = COUPONS.get(code.upper())
        if percent is None:
            raise HTTPException(404, "unknown coupon")  # not a success: refunded
        if (user.id, code.upper()) in redeemed:
            raise HTTPException(409, "coupon already used")
        redeemed.add((user.id, code.upper()))
        return {"code": code.upper(), "discount_percent": percent}

    orders = APIRouter(prefix="/api/v1", tags=["orders"])

    @orders.get("/orders/{order_id}")
    async def get_order(order_id: int, user: CurrentUser) -> dict[str, Any]:
        order = ORDERS.get(order_id)
        if order is None or order["user_id"] != user.id:
            raise HTTPException(404, "no such order")  # never reveal others' orders
        return order

    app.include_router(orders)
    return app


# `apiguard attack examples/shop.py:app` and `uvicorn examples.shop:app`: apiguard's
# defaults (plus the decorators above) on the real clock; the self-test retimes it.
app = create_app(Guard({"detection": {"challenge_path": "/challenge"}}))
