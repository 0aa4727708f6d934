"""`ConfigurationError` and the checks shared by the configuration and the `Guard`.

A module of its own so that `apiguard.config` can raise it without importing `Guard`.
"""

from __future__ import annotations

import inspect
from typing import Any

from pydantic import ValidationError


class ConfigurationError(ValueError):
    """apiguard is configured in a way that would not protect what it says it does."""


def from_validation_error(
    exc: ValidationError, what: str = "invalid apiguard configuration"
) -> ConfigurationError:
    """A `ConfigurationError` listing `location: message` for each error of `exc`.

    Never the input values: the one that failed may be the hashing secret (or a store URL
    with a password), and this message goes to logs.
    """
    problems: list[str] = []
    for err in exc.errors(include_url=False, include_context=False, include_input=False):
        loc = ".".join(str(part) for part in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        problems.append(f"{loc}: {msg}" if loc else msg)
    return ConfigurationError(f"{what}: {'; '.join(problems) or 'invalid value'}")


def check_arity(fn: object, args: int, what: str, expected: str) -> None:
    """Raise `ConfigurationError` unless `fn` is a callable that accepts `args` positional
    arguments, as apiguard will call it (`expected` shows the call, e.g. "resolver(ctx)").
    A callable whose signature cannot be read (some builtins) is accepted."""
    if not callable(fn):
        raise ConfigurationError(f"{what}: expected a callable {expected}, got {type(fn).__name__}")
    call = type(fn).__call__ if not inspect.isroutine(fn) else None  # an object's __call__
    if inspect.iscoroutinefunction(fn) or (call is not None and inspect.iscoroutinefunction(call)):
        raise ConfigurationError(
            f"{what}: apiguard calls it synchronously as {expected}, but {_name(fn)} is "
            "async (it would return a coroutine, never run)"
        )
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*([None] * args))
    except TypeError as exc:
        raise ConfigurationError(
            f"{what}: apiguard calls it as {expected}, which {_name(fn)} cannot take ({exc})"
        ) from None


def _name(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or type(fn).__qualname__)
