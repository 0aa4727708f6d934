"""What the self-test knows about the app it attacks: its routes, accounts and objects.

A `Target` is declared by flags or a TOML file (`apiguard attack --config attack.toml`),
or read from the example shop (`Target.from_shop`). Everything has the example shop's
value by default, so `apiguard attack examples/shop.py:app` needs no declaration.

    [login]
    path = "/login"             # POST; JSON body, or form with format = "form"
    format = "json"
    username_field = "username"
    password_field = "password"
    token_field = "access_token"  # where the bearer token is in the 2xx answer

    [accounts]                  # test accounts the benign population logs in with
    username = "user{n}"
    password = "password{n}"
    count = 1000

    [objects]                   # an object route (a path parameter {id}) and who owns what
    path = "/orders/{id}"
    per_account = 5             # account n owns ids n, n + count, n + 2*count, ...
    # or any ids (UUIDs, slugs): a CSV file of `account,id` rows (the account's number n
    # or its username), relative to this file; every id listed exists
    # file = "objects.csv"

    [flow]
    path = "/coupons/{code}/redeem"   # POST, authenticated
    codes = ["WELCOME10", "SPRING25"]  # valid codes (the abuser's list contains them)
    signup = "/signup"                 # POST username/password -> token; "" if none

    [api]
    path = "/api/v1/reports?page={page}"
    header = "x-api-key"
    keys = ["pk_live_..."]             # the first is stolen, the second is a heavy client
    pages = 400

    [challenge]
    path = "/challenge"                # POST, where a person passes a challenge
    body = '{"answer": "human-ok"}'

    [browse]
    paths = ["/products?page={page}", "/products/{product}"]
    products = 200
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

ObjectId = int | str  # integers (walked by stride) or any text (a UUID, a slug)


def id_order(object_id: ObjectId) -> tuple[bool, int | str]:
    """A sort key over object ids: integers by value, then text."""
    return isinstance(object_id, str), object_id


@dataclass(frozen=True, slots=True)
class Account:
    """A test account: what the benign population logs in with, and the objects it owns."""

    username: str
    password: str
    objects: tuple[ObjectId, ...]


@dataclass(frozen=True, slots=True)
class Target:
    """The app under test, as the campaigns and the benign population see it."""

    accounts: tuple[Account, ...]
    login_path: str = "/login"
    login_format: Literal["json", "form"] = "json"
    username_field: str = "username"
    password_field: str = "password"
    token_field: str = "access_token"
    object_path: str = "/orders/{id}"
    object_ids: tuple[ObjectId, ...] = ()  # every object id that exists (foreign included)
    flow_path: str = "/coupons/{code}/redeem"
    flow_codes: tuple[str, ...] = ()
    signup_path: str = "/signup"
    api_path: str = "/api/v1/reports?page={page}"
    api_header: str = "x-api-key"
    api_keys: tuple[str, ...] = ()
    api_pages: int = 400
    challenge_path: str = "/challenge"
    challenge_body: str = '{"answer": "human-ok"}'
    browse_paths: tuple[str, ...] = ("/products?page={page}", "/products/{product}")
    products: int = 200
    common_passwords: tuple[str, ...] = field(
        default=("Summer2024!", "Password1", "Welcome123", "Qwerty123!", "Company2024")
    )

    @property
    def usernames(self) -> frozenset[str]:
        """Every test account's username."""
        return frozenset(a.username for a in self.accounts)

    def login_body(self, username: str, password: str) -> tuple[bytes, str]:
        """The login request's body and content type."""
        if self.login_format == "form":
            from urllib.parse import urlencode

            body = urlencode({self.username_field: username, self.password_field: password})
            return body.encode(), "application/x-www-form-urlencoded"
        import json

        body = json.dumps({self.username_field: username, self.password_field: password})
        return body.encode(), "application/json"

    @classmethod
    def from_shop(cls, shop: ModuleType) -> Target:
        """The example shop's declaration, read from its tables."""
        owned: dict[int, list[int]] = {}
        for oid, order in shop.ORDERS.items():
            owned.setdefault(int(order["user_id"]), []).append(int(oid))
        users = sorted(shop.BY_USERNAME.values(), key=lambda u: int(u.id))
        return cls(
            accounts=tuple(
                Account(str(u.username), str(u.password), tuple(owned.get(int(u.id), ())))
                for u in users
            ),
            object_ids=tuple(sorted(int(o) for o in shop.ORDERS)),
            flow_codes=tuple(str(c) for c in shop.COUPONS),
            api_keys=tuple(str(k) for k in shop.PARTNER_KEYS),
            api_pages=int(shop.REPORT_PAGES),
            products=len(shop.PRODUCTS),
            common_passwords=tuple(shop.COMMON_PASSWORDS),
        )

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], base: Target | None = None, root: Path | None = None
    ) -> Target:
        """A declaration from a parsed TOML document (see the module docstring); `root`:
        the directory files it names are relative to (the current one by default)."""
        target = base if base is not None else cls(accounts=())
        known = {"login", "accounts", "objects", "flow", "api", "challenge", "browse"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown sections in the declaration: {', '.join(sorted(unknown))}")
        changes: dict[str, Any] = {}
        login = dict(data.get("login", {}))
        for key, attr in (
            ("path", "login_path"),
            ("format", "login_format"),
            ("username_field", "username_field"),
            ("password_field", "password_field"),
            ("token_field", "token_field"),
        ):
            if key in login:
                changes[attr] = str(login[key])
        if changes.get("login_format", "json") not in ("json", "form"):
            raise ValueError('[login] format must be "json" or "form"')
        accounts = dict(data.get("accounts", {}))
        objects = dict(data.get("objects", {}))
        if accounts or objects:
            count = int(accounts.get("count", len(target.accounts) or 1000))
            per = int(objects.get("per_account", 5))
            user = str(accounts.get("username", "user{n}"))
            password = str(accounts.get("password", "password{n}"))
            changes["accounts"] = tuple(
                Account(
                    user.format(n=n),
                    password.format(n=n),
                    tuple(n + k * count for k in range(per)),
                )
                for n in range(1, count + 1)
            )
            changes["object_ids"] = tuple(range(1, count * per + 1))
        if "file" in objects:
            accounts_now = changes.get("accounts", target.accounts)
            owned = _owned_ids(Path(str(objects["file"])), root, accounts_now)
            changes["accounts"] = tuple(
                replace(a, objects=tuple(owned.get(a.username, ()))) for a in accounts_now
            )
            changes["object_ids"] = tuple(i for ids in owned.values() for i in ids)
        if "path" in objects:
            changes["object_path"] = str(objects["path"])
        flow = dict(data.get("flow", {}))
        if "path" in flow:
            changes["flow_path"] = str(flow["path"])
        if "codes" in flow:
            changes["flow_codes"] = tuple(str(c) for c in flow["codes"])
        if "signup" in flow:
            changes["signup_path"] = str(flow["signup"])
        api = dict(data.get("api", {}))
        for key, attr in (("path", "api_path"), ("header", "api_header")):
            if key in api:
                changes[attr] = str(api[key])
        if "keys" in api:
            changes["api_keys"] = tuple(str(k) for k in api["keys"])
        if "pages" in api:
            changes["api_pages"] = int(api["pages"])
        challenge = dict(data.get("challenge", {}))
        if "path" in challenge:
            changes["challenge_path"] = str(challenge["path"])
        if "body" in challenge:
            changes["challenge_body"] = str(challenge["body"])
        browse = dict(data.get("browse", {}))
        if "paths" in browse:
            changes["browse_paths"] = tuple(str(p) for p in browse["paths"])
        if "products" in browse:
            changes["products"] = int(browse["products"])
        return replace(target, **changes)

    @classmethod
    def from_toml(cls, path: str | Path, base: Target | None = None) -> Target:
        """A declaration from a TOML file."""
        toml = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")
        with open(path, "rb") as handle:
            data: Any = toml.load(handle)
        return cls.from_mapping(data, base, Path(path).parent)


def _owned_ids(
    path: Path, root: Path | None, accounts: tuple[Account, ...]
) -> dict[str, list[ObjectId]]:
    """Username -> the object ids it owns, from a CSV of `account,id` rows (the account's
    number, 1-based as in `username = "user{n}"`, or its username)."""
    import csv

    if not path.is_absolute() and root is not None:
        path = root / path
    names = {a.username for a in accounts}
    owned: dict[str, list[ObjectId]] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"[objects] file: cannot read {str(path)!r}: {exc.strerror}") from None
    for line, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or row[0].startswith("#"):
            continue
        if len(row) != 2 or not row[1].strip():
            raise ValueError(f"{path}:{line}: expected `account,id`, got {','.join(row)!r}")
        who, oid = row[0].strip(), row[1].strip()
        name = who if who in names else None
        if name is None and who.isdigit() and 1 <= int(who) <= len(accounts):
            name = accounts[int(who) - 1].username
        if name is None:
            raise ValueError(f"{path}:{line}: {who!r} is no declared account")
        owned.setdefault(name, []).append(oid)
    if not owned:
        raise ValueError(f"[objects] file {str(path)!r} lists no object")
    return owned


def default_target() -> Target:
    """The example shop's declaration without importing the shop (the TOML defaults)."""
    return Target.from_mapping(
        {"accounts": {"count": 1000}, "objects": {"per_account": 5}},
        Target(
            accounts=(),
            flow_codes=("WELCOME10", "SPRING25", "FREESHIP", "LOYAL15", "BUNDLE20", "VIP30"),
        ),
    )
