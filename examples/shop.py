"""An example shop protected by apiguard: the app `apiguard demo` attacks.

    app = create_app(demo_guard(time.monotonic))   # on the real clock, e.g. under uvicorn

Authentication is a bearer token looked up in an in-memory user table; the auth
dependencies call `apiguard.identify(user.id)`, so every limit follows the account,
whatever IP address it comes from. Coupons can be redeemed once per customer, and no
customer may redeem more than 3 per hour (failed attempts do not count).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException
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


# A fake user table: user N logs in as userN/passwordN and gets the token tok-N-<suffix>.
BY_USERNAME: dict[str, User] = {
    f"user{n}": User(n, f"user{n}", f"password{n}", f"tok-{n:03d}-{n * 7919 % 99_991:05d}")
    for n in range(1, 61)
}
USERS: dict[str, User] = {u.token: u for u in BY_USERNAME.values()}  # keyed by token
PRODUCTS: dict[int, dict[str, Any]] = {
    pid: {"id": pid, "name": f"Product {pid}", "price_cents": 500 + (pid * 137) % 9_500}
    for pid in range(1, 201)
}
# Order N belongs to user ((N - 1) % 60) + 1: orders 1, 61, 121... are user 1's.
ORDERS: dict[int, dict[str, Any]] = {
    oid: {"id": oid, "user_id": (oid - 1) % 60 + 1, "product_id": oid % 200 + 1}
    for oid in range(1, 601)
}
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
        {"limits": {"principal": "120/minute"}, "secret": "apiguard-demo-secret-0123"},
        clock=clock,
    )


class Credentials(BaseModel):
    username: str
    password: str


bearer = HTTPBearer(auto_error=False)
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def optional_user(creds: Bearer) -> User | None:
    """The caller's account, None when anonymous; a bad token is a 401."""
    if creds is None:
        return None
    user = USERS.get(creds.credentials)
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


def create_app(guard: Guard) -> FastAPI:
    """A fresh shop (its own redemption records) guarded by `guard`."""
    app = FastAPI(title="apiguard example shop")
    app.add_middleware(GuardMiddleware, guard=guard)
    redeemed: set[tuple[int, str]] = set()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/login")
    @guard.limit("20/minute", per="ip", name="login")
    async def login(body: Credentials) -> dict[str, str]:
        user = BY_USERNAME.get(body.username)
        if user is None or user.password != body.password:
            raise HTTPException(401, "wrong username or password")
        identify(user.id)
        return {"access_token": user.token, "token_type": "bearer"}

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
