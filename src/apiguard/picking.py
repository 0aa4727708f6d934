"""Reading a value from an endpoint's own arguments, as `@guard.login(username=...)` and
`@guard.objects(ids=...)` declare it: a callable whose parameter names pick the arguments
it receives (`lambda form_data: form_data.username`), or a dotted name
(`"form_data.username"`: attributes or mapping keys after the argument)."""

from __future__ import annotations

import inspect
import typing
import unicodedata
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from apiguard.errors import ConfigurationError

Spec = str | Callable[..., Any]


class Picker:
    """One declared way to read a value from an endpoint's bound arguments.

    `keyword` and `example` name the setting in errors (`username=`,
    `"form_data.username"`); `bare`: a callable may take no argument (it reads the
    framework's request global, as a Flask view does)."""

    def __init__(
        self, spec: Spec, where: str, keyword: str, example: str, *, bare: bool = False
    ) -> None:
        self.keyword = keyword
        if isinstance(spec, str):
            parts = spec.split(".")
            if not all(p.isidentifier() for p in parts):
                raise ConfigurationError(
                    f"{where}: {keyword}={spec!r} is not a parameter name or a dotted "
                    f"path such as {example!r}"
                )
            self.params: tuple[str, ...] = (parts[0],)
            self._path = tuple(parts[1:])
            self._fn: Callable[..., Any] | None = None
        elif callable(spec):
            try:
                sig = inspect.signature(spec)
            except (TypeError, ValueError) as exc:
                raise ConfigurationError(f"{where}: {keyword}= has no signature ({exc})") from None
            self.params = tuple(sig.parameters)
            if not self.params and not bare:
                raise ConfigurationError(
                    f"{where}: {keyword}= must take the endpoint argument(s) it reads, named "
                    f"as the endpoint names them (e.g. lambda {example.split('.')[0]}: {example})"
                )
            self._path = ()
            self._fn = spec
        else:
            raise ConfigurationError(
                f"{where}: {keyword}= must be a callable or a dotted name, not "
                f"{type(spec).__name__}"
            )

    def check_endpoint(self, fn: Callable[..., Any], where: str) -> None:
        """Refuse a spec naming arguments the endpoint does not have."""
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            return
        takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        missing = [p for p in self.params if p not in sig.parameters]
        if missing and not takes_any:
            raise ConfigurationError(
                f"{where}: {self.keyword}= reads {', '.join(missing)}, which "
                f"{getattr(fn, '__qualname__', fn)} does not take (its parameters: "
                f"{', '.join(sig.parameters) or 'none'})"
            )
        if self._path and not missing:
            self._check_model(fn, where)

    def _check_model(self, fn: Callable[..., Any], where: str) -> None:
        """A dotted name's first field, where the argument is annotated with a pydantic
        model (FastAPI's body): a name the model does not have would read None on every
        request, silently."""
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # (an annotation that does not resolve: nothing to check)
            return
        model = hints.get(self.params[0])
        fields = getattr(model, "model_fields", None)
        if not isinstance(model, type) or not isinstance(fields, dict):
            return
        field = self._path[0]
        if field not in fields and not hasattr(model, field):
            raise ConfigurationError(
                f"{where}: {self.keyword}={'.'.join((*self.params, *self._path))!r}: "
                f"{model.__name__} has no field {field!r} (its fields: "
                f"{', '.join(fields) or 'none'})"
            )

    def pick(self, arguments: Mapping[str, Any]) -> Any:
        """The value from the endpoint's bound arguments (None: not there)."""
        if self._fn is not None:
            return self._fn(*(arguments.get(p) for p in self.params))
        value = arguments.get(self.params[0])
        for part in self._path:
            if value is None:
                return None
            value = value.get(part) if isinstance(value, Mapping) else getattr(value, part, None)
        return value


class ArgumentKey:
    """A flow's `per=` for `@guard.flow(key=...)`: the value `picker` read from the
    endpoint's arguments as the decorated function was entered (`RequestContext.picked`),
    normalised as usernames are (an e-mail in another case is the same key); a request
    without it is keyed on its address. Equal to another for the same spec (every route
    of one flow must share its key)."""

    def __init__(self, picker: Picker, spec: Spec) -> None:
        self.picker = picker
        self.spec = spec

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ArgumentKey) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(self.spec) if isinstance(self.spec, str) else id(self.spec)

    def __call__(self, ctx: Any) -> str:
        picked: dict[int, str] | None = ctx.picked
        value = picked.get(id(self)) if picked is not None else None
        return value if value is not None else "ip:" + str(ctx.ip_key)


def read_integer(text: str) -> int | None:
    """The integer `text` is as `int()` and pydantic read one (spaces around, a sign,
    leading zeros, digits grouped by underscores `5_001`, a decimal point followed by
    zeros only `5001.0`), at most 18 digits; None for anything else (a slug, a UUID)."""
    text = text.strip()
    sign = ""
    if text[:1] in ("+", "-"):
        sign, text = text[0], text[1:].strip()
    if "_" in text and text[:1] != "_" and text[-1:] != "_" and "__" not in text:
        grouped = text.replace("_", "")
        if grouped.isdecimal():
            text = grouped
    if "." in text:
        head, _, tail = text.partition(".")
        if head.isdecimal() and tail and tail.strip("0") == "":
            text = head
    # (decimal digits only: int() refuses other digit characters, such as "²")
    if not text.isdecimal():
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > 18:
        return None
    return -int(digits) if sign == "-" else int(digits)


# a flow key (or a login's username) whose callable failed: one bucket for all
UNREADABLE = "\x00unreadable"


def key_text(value: object) -> str | None:
    """A flow key (`@guard.flow(key=...)`) as compared: a number however it is written
    (`4242`, `4242.0`, `"04242"`, `"+4242"`, `"4_242"`), else the text NFKC-normalised,
    stripped and lower-cased (not case-folded: `straße` and `strasse` are two mailboxes);
    None when absent or blank. Another type (a dict, a list) is a `TypeError`."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError("a flow key is a str, an int or a uuid.UUID, not a bool")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e18:
        return str(int(value))
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        kind = type(value)
        raise TypeError(
            f"a flow key is a str, an int or a uuid.UUID, not {kind.__module__}.{kind.__qualname__}"
        )
    number = read_integer(value)
    if number is not None:
        return str(number)
    text = unicodedata.normalize("NFKC", value).strip().lower()
    return text or None
