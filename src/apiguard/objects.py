"""`@guard.objects` and `guard.objects_touched`: object ids a request touches that its
route's path does not name (a JSON body's `order_id`, a batch read's list of ids), for
the BOLA detector."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from apiguard.errors import ConfigurationError
from apiguard.picking import Picker, Spec
from apiguard.rules import Rule

if TYPE_CHECKING:
    from apiguard.request import RequestContext
    from apiguard.store.base import Hit

_COLLECTIONS = (list, tuple, set, frozenset)


def _is_id(value: object) -> bool:
    return isinstance(value, (str, uuid.UUID)) or (
        isinstance(value, (int, float)) and not isinstance(value, bool)
    )


def object_ids(value: object, source: str) -> list[object]:
    """`value` as a list of object ids: one id (a str, an int, a float as a JSON body
    gives numbers, or a uuid.UUID), a list, tuple or set of them, or None (no object).
    Anything else is a `TypeError` naming `source` (an object's default `str()` would
    make every request a new object)."""
    if value is None:
        return []
    if _is_id(value):
        return [value]
    if isinstance(value, _COLLECTIONS):
        ids = [v for v in value if v is not None]
        bad = next((v for v in ids if not _is_id(v)), None)
        if bad is None:
            return ids
        value = bad
    kind = type(value)
    raise TypeError(
        f"{source}: an object id is a str, an int, a float or a uuid.UUID (or a list, "
        f"tuple or set of them), not {kind.__module__}.{kind.__qualname__}"
    )


class ObjectsRule(Rule):
    """Marks an endpoint whose arguments name the objects it touches; charges nothing."""

    plans_hits = False

    def __init__(self, ids: Spec, name: str, where: str) -> None:
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigurationError(f"{where}: name={name!r} is not a parameter name")
        self.name = "objects"
        self.mode = None
        self.id_name = name
        self.picker = Picker(ids, where, "ids", "payload.order_id", bare=True)

    def check_endpoint(self, fn: Callable[..., Any], where: str) -> None:
        """Refuse an ids spec naming arguments the endpoint does not have."""
        self.picker.check_endpoint(fn, where)

    def plan(self, ctx: RequestContext, hits: list[Hit], enforce: bool) -> int:
        return 0
