"""`@guard.login` and `guard.login_result`: login outcomes for account-takeover detection.

The username is read from the endpoint's own arguments (a callable whose parameter names
pick them, or a dotted name such as "form_data.username"), normalised (stripped,
case-folded) and kept only as a keyed hash. Two cookies, both stateless and signed with
the guard's secret:
- the device cookie (`apiguard_device`), set on each successful login: a client that
  presents it for an account is never held back by attacks on that account;
- the pass cookie (`apiguard_pass`), set by `Guard.challenge_passed()`: the client passed
  the app's challenge and is not challenged again until it expires.
"""

from __future__ import annotations

import hmac
import secrets
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from apiguard.picking import Picker, Spec
from apiguard.rules import Rule

if TYPE_CHECKING:
    from apiguard.request import KeyedHasher, RequestContext
    from apiguard.store.base import Hit

_DEVICES_KEPT = 5  # accounts one device cookie remembers
_MAC = 20  # hex digits of a cookie MAC (80 bits)
_NONCE = 12  # hex digits of a pass's nonce: each pass issued is a value of its own
PASS_COOKIE = "apiguard_pass"

UsernameSpec = Spec


class LoginRule(Rule):
    """Marks a login endpoint; it charges nothing (limits are separate decorators)."""

    plans_hits = False

    def __init__(
        self,
        username: UsernameSpec,
        success: Callable[[Any], bool] | None,
        where: str,
        reports: bool | None = None,
    ) -> None:
        self.name = "login"
        self.mode = None
        self.where = where
        self.success = success
        # `reports=` as declared (None: learned from the reports the route makes)
        self.reports = reports
        # the route's app reports its outcomes with `login_result()`, so a 2xx it did
        # not report is no success (a form's login answers 200 or 302 either way); an
        # undeclared view whose source calls it starts so (`make_reporting`)
        self.reported = reports is True
        self.warned = False  # (an unreported 2xx here was said to be no login: once)
        # (a callable may take no argument: a Flask view reads its body from `request`)
        self.picker = Picker(username, where, "username", "form_data.username", bare=True)
        self.params = self.picker.params

    def make_reporting(self, fn: Callable[..., Any]) -> None:
        """Undeclared `reports=`: a reporting route for good when the view's own code
        calls `login_result()` (a fresh process must not take a form rejected before the
        report, answered 200, for a success; nor may any answer teach it otherwise)."""
        if self.reports is None and calls_login_result(fn):
            self.reported = True

    def learn(self, success: bool, status: int) -> None:
        """Learn from one outcome the app reported on this route (answered `status`)
        that its status cannot tell the outcome, for good: a reported success, or a
        failure answered 2xx or 3xx (a form's 200 or 302). Nothing teaches the opposite
        (an attacker's own failure answered 403 must not turn a form login into one
        whose 200 is a success)."""
        if self.reports is None and (success or 200 <= status < 400):
            self.reported = True

    def check_endpoint(self, fn: Callable[..., Any], where: str) -> None:
        """Refuse a username spec naming arguments the endpoint does not have."""
        self.picker.check_endpoint(fn, where)

    def plan(self, ctx: RequestContext, hits: list[Hit], enforce: bool) -> int:
        return 0

    def username(self, arguments: Mapping[str, Any]) -> str | None:
        """The username from the endpoint's bound arguments (None: none given)."""
        value = self.picker.pick(arguments)
        if value is None:
            return None
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        text = str(value)  # (as sent: `user_key` normalises it, `device_key` does not)
        return text if normalise(text) else None


def calls_login_result(endpoint: Any) -> bool:
    """Whether the view's code (or what it wraps) calls `login_result()`: a view that
    reports its logins' outcomes itself (a call, not a comment or a docstring naming it;
    source that does not parse alone, a lambda's line, is searched as text)."""
    import ast
    import inspect
    import textwrap

    from apiguard.guard import _unwrap_chain

    for obj in _unwrap_chain(endpoint):
        try:
            source = inspect.getsource(obj)
        except (OSError, TypeError):
            continue
        if "login_result" not in source:
            continue
        try:
            tree = ast.parse(textwrap.dedent(source))
        except SyntaxError:
            if "login_result(" in source:
                return True
            continue
        for node in ast.walk(tree):
            # a reference read is a report (`report = guard.login_result`, a partial of
            # it, `getattr(guard, "login_result")`); a docstring, a dict key or an
            # attribute of that name being set is not
            if (
                (
                    isinstance(node, (ast.Attribute, ast.Name))
                    and isinstance(node.ctx, ast.Load)
                    and (node.attr if isinstance(node, ast.Attribute) else node.id)
                    == "login_result"
                )
                or (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id == "getattr"
                    and len(node.args) >= 2
                    and isinstance(node.args[1], ast.Constant)
                    and node.args[1].value == "login_result"
                )
            ):
                return True
    return False


def html_answer(headers: Iterable[tuple[Any, Any]]) -> bool:
    """Whether a response's headers (bytes or str pairs) say it may be an HTML page: an
    HTML type, or none at all (a Starlette `Response(html)`). A login answered so shows a
    page (a form shown again after a failed login, or a rejected one), where an API's
    login answers data; its 2xx tells no success."""
    for name, value in headers:
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        if name.lower() == "content-type":
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            kind = str(value).split(";", 1)[0].strip().lower()
            return kind in ("text/html", "application/xhtml+xml", "")
    return True


def normalise(username: str) -> str:
    """A username as compared: NFKC (full-width and compatibility forms folded, as
    Django and most identity providers do), stripped, case-folded."""
    return unicodedata.normalize("NFKC", username).strip().casefold()


def user_key(hasher: KeyedHasher, username: str) -> str:
    """The keyed hash a username is known by (after `normalise`)."""
    return hasher("un", normalise(username))


def device_key(hasher: KeyedHasher, username: str) -> str:
    """The keyed hash of a login name as the client sent it, unnormalised: a device
    cookie marks the account its client logged in to (or created), never the look-alike
    names `normalise` folds to it (`USER7@…` signed up on an app that tells case apart
    must not mark `user7@…`'s device)."""
    return hasher("ud", username)


def device_mac(hasher: KeyedHasher, user: str) -> str:
    """The device-cookie entry for the account whose device key (`device_key`) is
    `user`."""
    return hasher("dv", user)[-_MAC:]


def _cookies(ctx: RequestContext) -> Iterator[tuple[str, str]]:
    """The request's cookies as (name, raw value), in order (parsed only when asked)."""
    for key, value in ctx.scope.get("headers") or ():
        if key == b"cookie":
            for part in bytes(value).decode("latin-1").split(";"):
                name, _, raw = part.strip().partition("=")
                yield name, raw


def only_pass_cookie(ctx: RequestContext) -> bool:
    """Whether every cookie the request carries is apiguard's pass (a person who passed
    a challenge before signing up carries nothing of the app's)."""
    return all(not name or name == PASS_COOKIE for name, _ in _cookies(ctx))


def cookie(ctx: RequestContext, name: str) -> str | None:
    """The value of cookie `name` in the request (parsed only when asked)."""
    for k, v in _cookies(ctx):
        if k == name:
            return v.strip().strip('"')
    return None


def device_entries(ctx: RequestContext, name: str) -> list[str]:
    """The account entries of the request's device cookie."""
    value = cookie(ctx, name)
    if not value:
        return []
    return [e for e in value.split("-") if len(e) == _MAC][:_DEVICES_KEPT]


def device_cookie(ctx: RequestContext, name: str, mac: str, days: float) -> str:
    """The Set-Cookie value remembering this device for one more account."""
    entries = [e for e in device_entries(ctx, name) if e != mac]
    entries = [mac, *entries][:_DEVICES_KEPT]
    return _set_cookie(ctx, name, "-".join(entries), int(days * 86400))


def pass_value(hasher: KeyedHasher, until: int, nonce: str | None = None) -> str:
    """A pass cookie value good until `until` (the guard's clock, whole seconds), with a
    random nonce: each pass issued is its own value (people who pass within the same
    second do not share one, nor its `pass_addresses` and one-person allowances)."""
    if nonce is None:
        nonce = secrets.token_hex(_NONCE // 2)
    return f"{until}.{nonce}.{hasher('ps', f'{until}.{nonce}')[-_MAC:]}"


def pass_valid(hasher: KeyedHasher, value: str | None, now: float) -> bool:
    """Whether a pass cookie value is genuine and not expired."""
    if not value or not value.isascii():
        return False
    until, _, rest = value.partition(".")
    nonce = rest.partition(".")[0]
    # ASCII digits only (checked above): `str.isdigit` also accepts '¹', which int() refuses
    if not until.isdigit() or len(until) > 12 or int(until) <= now or len(nonce) != _NONCE:
        return False
    return hmac.compare_digest(pass_value(hasher, int(until), nonce), value)


def pass_cookie(ctx: RequestContext, value: str, seconds: float) -> str:
    """The Set-Cookie value of a pass."""
    return _set_cookie(ctx, PASS_COOKIE, value, int(seconds))


def _set_cookie(ctx: RequestContext, name: str, value: str, max_age: int) -> str:
    secure = "; Secure" if ctx.scope.get("scheme") in ("https", "wss") else ""
    return f"{name}={value}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax{secure}"
