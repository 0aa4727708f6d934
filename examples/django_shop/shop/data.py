"""The same tables as examples/shop.py: user N logs in as userN/passwordN."""

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class User:
    id: int
    username: str
    password: str
    token: str


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
COUPONS: dict[str, int] = {
    "WELCOME10": 10,
    "SPRING25": 25,
    "FREESHIP": 5,
    "LOYAL15": 15,
    "BUNDLE20": 20,
    "VIP30": 30,
}
