"""The example shop of examples/shop.py, on Flask: the same users, routes and policy.

    app = create_app(demo_guard(time.monotonic))   # e.g. flask --app flask_shop:app run
    app.run()

Authentication is a bearer token looked up in an in-memory user table; `current_user()`
calls `apiguard.identify(user.id)`, so every limit follows the account, whatever IP address
it comes from. Coupons can be redeemed once per customer, and no customer may redeem more
than 3 per hour (failed attempts do not count).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, abort, g, jsonify, request

from apiguard import Guard, identify
from apiguard.flask import init_app


@dataclass(frozen=True)
class User:
    id: int
    username: str
    password: str
    token: str


# The same tables as examples/shop.py: user N logs in as userN/passwordN.
BY_USERNAME: dict[str, User] = {
    f"user{n}": User(n, f"user{n}", f"password{n}", f"tok-{n:03d}-{n * 7919 % 99_991:05d}")
    for n in range(1, 61)
}
USERS: dict[str, User] = {u.token: u for u in BY_USERNAME.values()}
PRODUCTS: dict[int, dict[str, Any]] = {
    pid: {"id": pid, "name": f"Product {pid}", "price_cents": 500 + (pid * 137) % 9_500}
    for pid in range(1, 201)
}
ORDERS: dict[int, dict[str, Any]] = {
    oid: {"id": oid, "user_id": (oid - 1) % 60 + 1, "product_id": oid % 200 + 1}
    for oid in range(1, 601)
}
CHALLENGE_ANSWER = "human-ok"  # what a person answers at POST /challenge (a CAPTCHA)
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


def authenticate() -> None:
    """Before every view: the caller's account in `g.user` (None when anonymous; a bad
    token is a 401). identify() runs here, before a decorated view is entered, since a
    decorated view's checkpoint keys on the principal known at its entry."""
    g.user = None
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("bearer "):
        return
    user = USERS.get(header[7:].strip())
    if user is None:
        abort(401)
    identify(user.id)  # from here on, the principal is this account on every IP
    g.user = user


def current_user() -> User:
    """The caller's account; anonymous callers get a 401."""
    user: User | None = g.user
    if user is None:
        abort(401)
    return user


def create_app(guard: Guard) -> Flask:
    """A fresh shop (its own redemption records) guarded by `guard`."""
    app = Flask("apiguard_flask_shop")
    init_app(app, guard)
    app.before_request(authenticate)
    redeemed: set[tuple[int, str]] = set()

    @app.get("/health")
    def health() -> Any:
        return {"status": "ok"}

    @app.post("/login")
    @guard.limit("20/minute", per="ip", name="login")
    def login() -> Any:
        body = request.get_json(silent=True) or {}
        username = str(body.get("username") or "")
        user = BY_USERNAME.get(username)
        ok = user is not None and user.password == body.get("password")
        # the outcome, for account-takeover detection (it may refuse: a challenge first)
        guard.login_result(username, ok, exists=user is not None)
        if not ok or user is None:
            abort(401)
        identify(user.id)
        return {"access_token": user.token, "token_type": "bearer"}

    @app.post("/challenge")
    def challenge() -> Any:
        """A person solved the challenge the app showed (a CAPTCHA in a real app)."""
        body = request.get_json(silent=True) or {}
        if body.get("answer") != CHALLENGE_ANSWER:
            abort(400)
        guard.challenge_passed()
        return {"passed": True}

    @app.get("/products")
    def list_products() -> Any:
        page = max(request.args.get("page", 1, type=int) or 1, 1)
        start = (page - 1) * 20 + 1
        return jsonify([PRODUCTS[i] for i in range(start, start + 20) if i in PRODUCTS])

    @app.get("/products/<int:product_id>")
    def get_product(product_id: int) -> Any:
        product = PRODUCTS.get(product_id)
        if product is None:
            abort(404)
        return product

    @app.post("/coupons/<code>/redeem")
    @guard.flow("redeem-coupon", "3/hour", per="principal", count="success")
    def redeem_coupon(code: str) -> Any:
        user = current_user()
        percent = COUPONS.get(code.upper())
        if percent is None:
            abort(404)  # not a success: refunded
        if (user.id, code.upper()) in redeemed:
            abort(409)
        redeemed.add((user.id, code.upper()))
        return {"code": code.upper(), "discount_percent": percent}

    orders = Blueprint("orders", __name__, url_prefix="/api/v1")

    @orders.get("/orders/<int:order_id>")
    def get_order(order_id: int) -> Any:
        user = current_user()
        order = ORDERS.get(order_id)
        if order is None or order["user_id"] != user.id:
            abort(404)  # never reveal others' orders
        return order

    app.register_blueprint(orders)
    return app


app = create_app(demo_guard(time.monotonic))
