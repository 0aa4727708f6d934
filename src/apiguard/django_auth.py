"""Django's own authentication as login outcomes for account-takeover detection.

Every login that goes through `django.contrib.auth.authenticate()` (the admin's,
`LoginView`, Django REST Framework's token and basic authentication, SimpleJWT,
django-allauth) is seen without `@guard.login`:

- `user_login_failed` (sent by `authenticate()` when no backend accepted the
  credentials) is a failure for the name the client sent;
- `user_logged_in` (sent by `login()`) is a success for the account that logged in,
  which gets its device cookie.

These are recorded only, never refused: the password was checked already, so a
challenge then would only tell a bot which guess was right. To hold a login back before
the password is checked (an account under attack, a flagged client, the population
alarm), list `LoginGate` first in `AUTHENTICATION_BACKENDS`: it runs the login gate on
every `authenticate()` call and authenticates nobody itself; a call no backend fails is
then counted as a success even without `login()` (a token view), with no device cookie (a
backend error the view swallowed reports no failure either).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.contrib.auth.signals import user_logged_in, user_login_failed

from apiguard.errors import ConfigurationError
from apiguard.request import RequestContext, _current

log = logging.getLogger("apiguard")
GATE_PATH = "apiguard.django.LoginGate"
# the credential names a login's account is sent under, after `username` and the user
# model's `USERNAME_FIELD` (the order of Django's `ModelBackend`, which reads `username`
# first: the name gated must be the one whose password is checked)
_NAMES = ("email", "login")


def _context() -> RequestContext | None:
    """The request apiguard's middleware is checking (None: none, e.g. a management
    command, or a test client's `force_login()`)."""
    ctx = _current.get()
    if ctx is None or ctx.engine.ato is None:
        return None
    return ctx


def _name(credentials: Mapping[str, Any]) -> str | None:
    """The account name among `authenticate()`'s credentials, as sent (None: none; Django
    masks only secret-looking ones, never the name). Not stripped: `"victim "` is another
    account than `"victim"` to Django, and the device cookie marks the name as sent. A
    number (a JSON body's `{"username": 5551234567}`) is the text the database compares."""
    field = _username_field()
    for key in ("username", field, *_NAMES) if field else ("username", *_NAMES):
        value = credentials.get(key) if key else None
        if value is None:
            continue
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and value.strip():
            return value
        return None  # (the key the backend reads first holds no name: nothing to gate)
    return None


def _username_field() -> str | None:
    """The user model's `USERNAME_FIELD` (None: no user model can be loaded)."""
    try:
        from django.contrib.auth import get_user_model

        field = get_user_model().USERNAME_FIELD
    except Exception:  # (an app without django.contrib.auth's models)
        return None
    return field if isinstance(field, str) else None


def _failed(sender: Any, credentials: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
    try:
        ctx = _context()
        if ctx is None or not isinstance(credentials, Mapping):
            return
        name = _name(credentials)
        if name is None:
            return
        ctx.engine.login_observed(ctx, name, False)
        login = ctx.login
        if not _told and login is not None and login.rule is None and not _gated():
            _tell_ungated()
    except Exception:  # (never the app's login: a signal does not shield it)
        log.exception("apiguard: a failed Django login could not be recorded")


_told = False  # (said once per process that failures are counted, not held back)


def _gates(backends: list[str]) -> list[bool]:
    """Whether each backend path is a `LoginGate` (by any path it is imported under, a
    subclass too; a path that does not import is not)."""
    from django.utils.module_loading import import_string

    found = []
    for path in backends:
        try:
            backend = import_string(path.strip())
        except Exception:  # (not importable here: e.g. django.contrib.auth not installed)
            found.append(False)
            continue
        found.append(isinstance(backend, type) and issubclass(backend, LoginGate))
    return found


def _backends() -> list[str]:
    return [str(b) for b in getattr(settings, "AUTHENTICATION_BACKENDS", None) or ()]


def _gated() -> bool:
    """Whether a `LoginGate` is among `AUTHENTICATION_BACKENDS`."""
    return any(_gates(_backends()))


def _tell_ungated() -> None:
    global _told
    _told = True
    log.warning(
        "apiguard: a failed Django login (authenticate()) was counted, but nothing holds "
        "logins back before the password check: list %r first in "
        "settings.AUTHENTICATION_BACKENDS (or declare the view with @guard.login) so "
        "that account-takeover findings are enforced",
        GATE_PATH,
    )


def _logged_in(sender: Any, user: Any = None, **kwargs: Any) -> None:
    try:
        ctx = _context()
        if ctx is None or user is None:
            return
        get_username = getattr(user, "get_username", None)
        name = get_username() if callable(get_username) else None
        if isinstance(name, int | float) and not isinstance(name, bool):
            name = str(name)
        if isinstance(name, str) and name.strip():
            ctx.engine.login_observed(ctx, name, True)  # (as the account is named)
    except Exception:  # (never the app's login: a signal does not shield it)
        log.exception("apiguard: a Django login could not be recorded")


def connect() -> None:
    """Listen to Django's login signals (once, however often it is called)."""
    user_login_failed.connect(_failed, dispatch_uid="apiguard.login_failed", weak=False)
    user_logged_in.connect(_logged_in, dispatch_uid="apiguard.logged_in", weak=False)


class LoginGate:
    """An authentication backend that authenticates nobody: listed first in
    `AUTHENTICATION_BACKENDS`, it runs apiguard's login gate on the account a login
    names before any backend checks its password (raising the refusal the middleware
    answers: a challenge, a wait), and marks the attempt so that a check no backend
    failed counts as a success (without a device cookie: only `login()` gives one)."""

    def authenticate(self, request: Any, **credentials: Any) -> None:
        ctx = _context()
        if ctx is None:
            return None
        name = _name(credentials)
        if name is None:
            return None
        engine = ctx.engine
        login = ctx.login
        if login is None:
            engine.login_started(ctx, name)  # raises Refused for a held-back client
            login = ctx.login
        else:  # (a second check in one request: a "username or e-mail" view's other try)
            engine.login_renamed(ctx, name)
        if login is not None:
            login.success = None
            login.checking = True
        return None

    async def aauthenticate(self, request: Any, **credentials: Any) -> None:
        return self.authenticate(request, **credentials)

    def get_user(self, user_id: Any) -> None:
        return None


def check_backends() -> None:
    """`LoginGate` anywhere but first in `AUTHENTICATION_BACKENDS` is a
    `ConfigurationError`: a backend before it would accept a good password unheld, and
    the gate would then hold only the wrong guesses (telling a bot which was right)."""
    if "django.contrib.auth" not in getattr(settings, "INSTALLED_APPS", ()):
        return  # (no authenticate(): nothing to gate)
    gates = _gates(_backends())
    if any(gates) and not gates[0]:
        raise ConfigurationError(
            f"settings.AUTHENTICATION_BACKENDS: {GATE_PATH!r} must be listed first (it is "
            f"at position {gates.index(True) + 1}): a backend before it accepts a good "
            "password before the login gate runs"
        )
