"""What the self-test knows about the app it attacks: its routes, accounts and objects.

A `Target` is declared by flags or a TOML file (`apiguard attack --config attack.toml`),
or read from the example shop (`Target.from_shop`). Everything has the example shop's
value by default, so `apiguard attack examples/shop.py:app` needs no declaration.

    [login]
    path = "/login"             # POST; JSON body, or form with format = "form", or
    format = "json"             #   HTTP Basic with format = "basic" (no body; e.g. an
                                #   APIFairy or Flask-HTTPAuth token route)
    username_field = "username"   # a dotted name nests it: "user.email" sends
    password_field = "password"   #   {"user": {"email": ..., "password": ...}} (JSON only)
    token_field = "access_token"  # where the token is in the 2xx JSON answer ("user.token")
    # token_cookie = "session"    # or: the token is the cookie the login sets (a session
    #                             #   login); the client keeps it, sends no auth header
    auth_scheme = "Bearer"        # sent as `Authorization: Bearer <token>` ("Token", ...)
    # auth_header = "x-access-token"  # a custom header instead: the token alone (no scheme
    #                                 #   unless auth_scheme is given too)

    [accounts]                  # test accounts the benign population logs in with
    username = "user{n}"
    password = "password{n}"
    count = 1000

    [objects]                   # an object route (a path parameter {id}) and who owns what
    path = "/orders/{id}"
    per_account = 5             # account n owns ids n, n + count, n + 2*count, ...
    # or any ids (UUIDs, slugs): a CSV file of `account,id` rows (the account's number n,
    # counted from 1, or its username), relative to this file; every id listed exists
    # file = "objects.csv"

    [flow]
    path = "/coupons/{code}/redeem"   # POST, authenticated
    codes = ["WELCOME10", "SPRING25"]  # valid codes (the abuser's list contains them)
    signup = "/signup"                 # POST -> a token, as at the login; "" if none
    # signup_format = "json"           # its body's format (default: the login's)
    # signup_login = "{name}@example.org"  # a sign-up answering no token: log in as this
    # [flow.signup_fields]             # the sign-up body: dotted names nest, values are
    # "user.username" = "{name}"       #   templates of {name} and {password} (default:
    # "user.email" = "{name}@example.org"  # the login's username and password fields)
    # "user.password" = "{password}"
    # signup_password = "Pw!{password}X"  # the new account's password, a template of
    #                                     #   {password} (a generated one: upper and lower
    #                                     #   case, digits, a symbol, 16 characters); the
    #                                     #   sign-up and the later log-in both send it

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
    products = 200                     # {product} is 1..products,
    # ids = ["a-slug", "another-slug"] # or one of these (pages addressed by slug)

A key or section not listed here is an error (a typo must not silently leave a default in
place), and so is a value of the wrong type; the message names the section, the key and
the line.

Once anything is declared, the declaration describes the user's app: what a section it
leaves out would have given (the example shop's `/orders/{id}`, `/products/...`,
`/challenge`) is never requested (`Target.confined`); the campaigns that need it are
skipped (`campaigns.undeclared`), and the honest visitors neither browse nor read objects.

A template around `{password}` in `[flow.signup_fields]` (`"Pw!{password}X"`) is read as
`signup_password`: the password is made once from it, and the log-in after the sign-up
sends the same.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

ObjectId = int | str  # integers (walked by stride) or any text (a UUID, a slug)


def id_order(object_id: ObjectId) -> tuple[bool, int | str]:
    """A sort key over object ids: integers by value, then text."""
    return isinstance(object_id, str), object_id


FLOW_PATH = "flow.path"  # in `Target.declared`: a [flow] path was declared


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
    login_format: Literal["json", "form", "basic"] = "json"
    username_field: str = "username"
    password_field: str = "password"
    token_field: str = "access_token"
    token_cookie: str = ""  # the login's Set-Cookie of that name is the token (a session)
    auth_scheme: str = "Bearer"
    auth_header: str = "authorization"
    object_path: str = "/orders/{id}"
    object_ids: tuple[ObjectId, ...] = ()  # every object id that exists (foreign included)
    flow_path: str = "/coupons/{code}/redeem"
    flow_codes: tuple[str, ...] = ()
    signup_path: str = "/signup"
    signup_fields: tuple[tuple[str, str], ...] = ()  # (dotted name, template); () = login's
    signup_format: str | None = None  # "json" or "form"; None: the login's
    # the new account's username (a template of {name}) when the sign-up signs nobody in:
    # the account then logs in
    signup_login: str = ""
    # the new account's password, a template of {password} (the generated one): what the
    # sign-up's {password} and the log-in after it both send
    signup_password: str = "{password}"
    api_path: str = "/api/v1/reports?page={page}"
    api_header: str = "x-api-key"
    api_keys: tuple[str, ...] = ()
    api_pages: int = 400
    challenge_path: str = "/challenge"
    challenge_body: str = '{"answer": "human-ok"}'
    browse_paths: tuple[str, ...] = ("/products?page={page}", "/products/{product}")
    products: int = 200
    browse_ids: tuple[str, ...] = ()  # what {product} takes instead of 1..products
    # the sections a declaration (a TOML file, the command's flags) gave: once any is, an
    # app of the user's own is described, and a campaign whose section is missing is not
    # run against the example shop's default route (`campaigns.undeclared`)
    declared: frozenset[str] = frozenset()
    common_passwords: tuple[str, ...] = field(
        default=("Summer2024!", "Password1", "Welcome123", "Qwerty123!", "Company2024")
    )

    @property
    def usernames(self) -> frozenset[str]:
        """Every test account's username."""
        return frozenset(a.username for a in self.accounts)

    def login_request(
        self, username: str, password: str
    ) -> tuple[bytes, tuple[tuple[str, str], ...]]:
        """The login request's body and the headers it needs (its content type, or for
        `format = "basic"` no body and the Authorization header)."""
        if self.login_format == "basic":
            import base64

            pair = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
            return b"", (("authorization", f"Basic {pair}"),)
        body, ctype = self.login_body(username, password)
        return body, (("content-type", ctype),)

    def login_body(self, username: str, password: str) -> tuple[bytes, str]:
        """The login request's body and content type (a JSON or form login)."""
        return self._body(((self.username_field, username), (self.password_field, password)))

    def account_password(self, generated: str) -> str:
        """The password a fresh account gets (`signup_password` made from `generated`):
        the sign-up sends it and the account logs in with it."""
        return self.signup_password.replace("{password}", generated)

    def confined(self) -> Target:
        """What the campaigns and the honest visitors may request: once anything is
        declared (an app of the user's own), nothing of a section left out (the example
        shop's routes in its place): no page to browse without `[browse]`, no object to
        read without `[objects]`, no challenge route without `[challenge]` (a person asked
        for a challenge then cannot pass one)."""
        if not self.declared:
            return self
        changes: dict[str, Any] = {}
        if "browse" not in self.declared and self.browse_paths:
            changes.update(browse_paths=(), browse_ids=())
        if "objects" not in self.declared and (
            self.object_ids or any(a.objects for a in self.accounts)
        ):
            changes["object_ids"] = ()
            changes["accounts"] = tuple(replace(a, objects=()) for a in self.accounts)
        if "challenge" not in self.declared and self.challenge_path:
            changes["challenge_path"] = ""
        return replace(self, **changes) if changes else self

    def signup_body(self, name: str, password: str) -> tuple[bytes, str]:
        """The sign-up request's body and content type (`signup_fields`, else the login's
        fields); `password`: the account's (`account_password`)."""
        login = self.login_format if self.login_format != "basic" else None
        form = self.signup_format or login
        if not self.signup_fields:
            fields = ((self.username_field, name), (self.password_field, password))
            return self._body(fields, form)
        return self._body(
            tuple(
                (key, value.replace("{name}", name).replace("{password}", password))
                for key, value in self.signup_fields
            ),
            form,
        )

    def _body(
        self, fields: tuple[tuple[str, str], ...], form: str | None = None
    ) -> tuple[bytes, str]:
        if form == "form" or (form is None and self.login_format == "form"):
            from urllib.parse import urlencode

            return urlencode(fields).encode(), "application/x-www-form-urlencoded"
        import json

        data: dict[str, Any] = {}
        for name, value in fields:
            *parents, leaf = name.split(".")
            node = data
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        return json.dumps(data).encode(), "application/json"

    def auth_value(self, token: str) -> tuple[str, str] | None:
        """The header that carries a token (None for a session cookie: the cookie does)."""
        if self.token_cookie:
            return None
        return self.auth_header, f"{self.auth_scheme} {token}" if self.auth_scheme else token

    def token_in(self, status: int, headers: Sequence[str], data: Any) -> str | None:
        """The token of a 2xx login or sign-up answer: the declared cookie's value, or the
        (dotted) `token_field` of its JSON body. `headers`: the Set-Cookie values."""
        if not 200 <= status < 300:
            return None
        if self.token_cookie:
            for header in headers:
                name, sep, value = header.split(";", 1)[0].strip().partition("=")
                token = str(value).strip().strip('"')
                if sep and name == self.token_cookie and token:
                    return token
            return None
        return dotted(data, self.token_field)

    @classmethod
    def from_shop(cls, shop: ModuleType) -> Target:
        """The example shop's declaration, read from its tables (the Flask shop has no
        partner keys nor report pages: the stolen-key campaign finds no route)."""
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
            api_keys=tuple(str(k) for k in getattr(shop, "PARTNER_KEYS", ())),
            api_pages=int(getattr(shop, "REPORT_PAGES", 0)),
            products=len(getattr(shop, "PRODUCTS", ())),
            common_passwords=tuple(
                getattr(shop, "COMMON_PASSWORDS", None) or cls(accounts=()).common_passwords
            ),
        )

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], base: Target | None = None, root: Path | None = None
    ) -> Target:
        """A declaration from a parsed TOML document (see the module docstring); `root`:
        the directory files it names are relative to (the current one by default).
        Raises `DeclarationError` (a ValueError naming the section and key) on an unknown
        section or key, or a value of the wrong type."""
        target = base if base is not None else cls(accounts=())
        sections = _checked(data)
        declared = target.declared | frozenset(sections)
        if "path" in sections.get("flow", {}):
            declared |= {FLOW_PATH}  # (a [flow] with only a sign-up declares no flow to abuse)
        changes: dict[str, Any] = {"declared": declared}
        login = sections.get("login", {})
        for key, attr in (
            ("path", "login_path"),
            ("format", "login_format"),
            ("username_field", "username_field"),
            ("password_field", "password_field"),
            ("token_field", "token_field"),
            ("token_cookie", "token_cookie"),
            ("auth_scheme", "auth_scheme"),
            ("auth_header", "auth_header"),
        ):
            if key in login:
                changes[attr] = login[key]
        if changes.get("login_format", "json") not in ("json", "form", "basic"):
            raise DeclarationError("login", "format", 'must be "json", "form" or "basic"')
        if "auth_header" in login:
            changes["auth_header"] = login["auth_header"].strip().lower()
            if not changes["auth_header"]:
                raise DeclarationError("login", "auth_header", "must name a header")
            if "auth_scheme" not in login and changes["auth_header"] != "authorization":
                changes["auth_scheme"] = ""  # a custom header carries the token alone
        for key in ("username_field", "password_field", "token_field"):
            if key in login and any(not part for part in login[key].split(".")):
                raise DeclarationError("login", key, f"{login[key]!r} has an empty part")
        accounts = sections.get("accounts", {})
        objects = sections.get("objects", {})
        if accounts or objects:
            count = accounts.get("count", len(target.accounts) or 1000)
            per = objects.get("per_account", 5)
            if count < 1:
                raise DeclarationError("accounts", "count", "must be at least 1")
            if per < 0:
                raise DeclarationError("objects", "per_account", "must not be negative")
            user = accounts.get("username", "user{n}")
            password = accounts.get("password", "password{n}")
            for key, template in (("username", user), ("password", password)):
                try:
                    template.format(n=1)
                except (KeyError, IndexError, ValueError) as exc:
                    raise DeclarationError(
                        "accounts", key, f"{template!r} is no template of {{n}}: {exc}"
                    ) from None
            if accounts or not target.accounts:
                pairs = [(user.format(n=n), password.format(n=n)) for n in range(1, count + 1)]
            else:  # (objects declared over accounts already declared, e.g. --object)
                pairs = [(a.username, a.password) for a in target.accounts]
            changes["accounts"] = tuple(
                Account(name, secret, tuple(n + k * count for k in range(per)))
                for n, (name, secret) in enumerate(pairs, start=1)
            )
            changes["object_ids"] = tuple(range(1, count * per + 1))
        if "file" in objects:
            accounts_now = changes.get("accounts", target.accounts)
            owned = _owned_ids(Path(objects["file"]), root, accounts_now)
            changes["accounts"] = tuple(
                replace(a, objects=tuple(owned.get(a.username, ()))) for a in accounts_now
            )
            changes["object_ids"] = tuple(i for ids in owned.values() for i in ids)
        if "path" in objects:
            changes["object_path"] = objects["path"]
        flow = sections.get("flow", {})
        if "path" in flow:
            changes["flow_path"] = flow["path"]
        if "codes" in flow:
            changes["flow_codes"] = tuple(flow["codes"])
        if "signup" in flow:
            changes["signup_path"] = flow["signup"]
        if "signup_password" in flow:
            if "{password}" not in flow["signup_password"]:
                raise DeclarationError(
                    "flow", "signup_password", "must contain {password} (a template of it)"
                )
            changes["signup_password"] = flow["signup_password"]
        if "signup_fields" in flow:
            fields = tuple(_flat(flow["signup_fields"]))
            # a template around {password} ("Pw!{password}X") is the account's password:
            # made once, sent by the sign-up and by the log-in after it
            shaped = {v for _, v in fields if "{password}" in v and v != "{password}"}
            if len(shaped) > 1:
                raise DeclarationError(
                    "flow",
                    "signup_fields",
                    f"{{password}} in different templates ({', '.join(sorted(shaped))}): "
                    "give the password's in signup_password and {password} in the fields",
                )
            if shaped:
                (template,) = shaped
                if "signup_password" in flow and flow["signup_password"] != "{password}":
                    raise DeclarationError(
                        "flow",
                        "signup_fields",
                        f"{template!r} shapes the password and so does signup_password: "
                        "give one of them",
                    )
                changes["signup_password"] = template
                fields = tuple((k, "{password}" if v == template else v) for k, v in fields)
            changes["signup_fields"] = fields
        if "signup_login" in flow:
            changes["signup_login"] = flow["signup_login"]
        if "signup_format" in flow:
            if flow["signup_format"] not in ("json", "form"):
                raise DeclarationError("flow", "signup_format", 'must be "json" or "form"')
            changes["signup_format"] = flow["signup_format"]
        api = sections.get("api", {})
        for key, attr in (("path", "api_path"), ("header", "api_header")):
            if key in api:
                changes[attr] = api[key]
        if "keys" in api:
            changes["api_keys"] = tuple(api["keys"])
        if "pages" in api:
            changes["api_pages"] = api["pages"]
        challenge = sections.get("challenge", {})
        if "path" in challenge:
            changes["challenge_path"] = challenge["path"]
        if "body" in challenge:
            changes["challenge_body"] = challenge["body"]
        browse = sections.get("browse", {})
        if "paths" in browse:
            changes["browse_paths"] = tuple(browse["paths"])
        if "products" in browse:
            changes["products"] = browse["products"]
        if "ids" in browse:
            if not browse["ids"]:
                raise DeclarationError("browse", "ids", "give at least one id, or leave it out")
            changes["browse_ids"] = tuple(browse["ids"])
        return replace(target, **changes)

    @classmethod
    def from_toml(cls, path: str | Path, base: Target | None = None) -> Target:
        """A declaration from a TOML file."""
        return cls.from_document(read_toml(path), base)

    @classmethod
    def from_document(cls, document: TomlDocument, base: Target | None = None) -> Target:
        """A declaration from a TOML file already read (`read_toml`)."""
        data, text, root = document
        try:
            return cls.from_mapping(data, base, root)
        except DeclarationError as exc:
            line = exc.line_in(text)
            if line is None:
                raise
            raise DeclarationError(exc.section, exc.key, exc.problem, line) from None


# a TOML file read: its parsed document, its text, the directory its file names are under
TomlDocument = tuple[Mapping[str, Any], str, Path]


def read_toml(path: str | Path) -> TomlDocument:
    """Read and parse a declaration's file (not yet checked: `Target.from_document`); the
    directory its files are relative to is made absolute now, before anything (an app's
    module that changes the working directory) is imported."""
    toml = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")
    path = Path(path).absolute()
    with open(path, "rb") as handle:
        raw = handle.read()
    text = raw.decode("utf-8", errors="replace")
    try:
        data: Any = toml.loads(text)  # (its errors name the line and column)
    except ValueError as exc:
        raise ValueError(f"not valid TOML: {exc}") from None
    return data, text, path.parent


class DeclarationError(ValueError):
    """A declaration's error, naming its section, key and (from a file) line."""

    def __init__(self, section: str, key: str | None, problem: str, line: int | None = None):
        self.section, self.key, self.problem, self.line = section, key, problem, line
        where = f"[{section}]" + (f" {key}" if key else "")
        prefix = f"line {line}: " if line is not None else ""
        super().__init__(f"{prefix}{where}: {problem}")

    def line_in(self, text: str) -> int | None:
        """The line of the key (or section) in a TOML text, if it can be found."""
        import re

        section: str | None = None
        header = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\s*(#.*)?$")
        for number, line in enumerate(text.splitlines(), start=1):
            found = header.match(line)
            if found:
                section = found.group(1).strip("\"' ")
                if self.key is None and section == self.section:
                    return number
                continue
            if self.key is not None and section == self.section:
                name = line.split("=", 1)[0].strip().strip("\"'")
                if "=" in line and name == self.key:
                    return number
        return None


# The declaration's sections, their keys and each key's type: "str", "int", "strs" (a
# list of strings), "table" (a table of strings).
SCHEMA: dict[str, dict[str, str]] = {
    "login": {
        "path": "str",
        "format": "str",
        "username_field": "str",
        "password_field": "str",
        "token_field": "str",
        "token_cookie": "str",
        "auth_scheme": "str",
        "auth_header": "str",
    },
    "accounts": {"username": "str", "password": "str", "count": "int"},
    "objects": {"path": "str", "per_account": "int", "file": "str"},
    "flow": {
        "path": "str",
        "codes": "strs",
        "signup": "str",
        "signup_fields": "table",
        "signup_format": "str",
        "signup_login": "str",
        "signup_password": "str",
    },
    "api": {"path": "str", "header": "str", "keys": "strs", "pages": "int"},
    "challenge": {"path": "str", "body": "str"},
    "browse": {"paths": "strs", "products": "int", "ids": "strs"},
}
_KINDS = {
    "str": "a string",
    "int": "an integer",
    "strs": "a list of strings",
    "table": "a table of strings",
}


def _checked(data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """`data` with every section and key known and every value of its key's type."""
    out: dict[str, dict[str, Any]] = {}
    for section, body in data.items():
        keys = SCHEMA.get(section)
        if keys is None:
            raise DeclarationError(section, None, f"unknown section (known: {', '.join(SCHEMA)})")
        if not isinstance(body, Mapping):
            raise DeclarationError(section, None, "must be a table ([section] and keys)")
        for key, value in body.items():
            kind = keys.get(key)
            if kind is None:
                raise DeclarationError(
                    section, key, f"unknown key (known in [{section}]: {', '.join(keys)})"
                )
            ok = {
                "str": isinstance(value, str),
                "int": isinstance(value, int) and not isinstance(value, bool),
                "strs": isinstance(value, list) and all(isinstance(v, str) for v in value),
                "table": isinstance(value, Mapping)
                and all(isinstance(v, str) for _, v in _flat(value)),
            }[kind]
            if not ok:
                raise DeclarationError(section, key, f"expected {_KINDS[kind]}, got {value!r}")
        out[section] = dict(body)
    return out


def _flat(table: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """A table's leaves under dotted names (`user.email = ...` unquoted is a sub-table)."""
    out: list[tuple[str, Any]] = []
    for key, value in table.items():
        if isinstance(value, Mapping):
            out.extend(_flat(value, f"{prefix}{key}."))
        else:
            out.append((f"{prefix}{key}", value))
    return out


def dotted(data: Any, name: str) -> str | None:
    """The string at a dotted path of a JSON document ("user.token"), or None."""
    node = data
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, str) else None


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
            first = accounts[0].username if accounts else "none"
            raise ValueError(
                f"{path}:{line}: {who!r} is no declared account: write an account's "
                f"number, 1 to {len(accounts)} (1 is {first!r}), or its username as "
                "[accounts] username makes it"
            )
        owned.setdefault(name, []).append(oid)
    if not owned:
        raise ValueError(f"[objects] file {str(path)!r} lists no object")
    return owned


def default_target() -> Target:
    """The example shop's declaration without importing the shop (the TOML defaults)."""
    shop = Target.from_mapping(
        {"accounts": {"count": 1000}, "objects": {"per_account": 5}},
        Target(
            accounts=(),
            flow_codes=("WELCOME10", "SPRING25", "FREESHIP", "LOYAL15", "BUNDLE20", "VIP30"),
        ),
    )
    return replace(shop, declared=frozenset())  # (the defaults: nothing declared)
