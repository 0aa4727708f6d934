"""Route templates from the router that served the request, and a walk of an app's routes.

At request time nothing is re-matched: Starlette and FastAPI record the selected route in
the scope as they route, and the template is read from there (mount prefixes included).
The walk is used once at start-up (decorator-order checks) and by `audit`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


def _mount_prefix(scope: Mapping[str, Any]) -> str:
    root = scope.get("root_path", "") or ""
    app_root = scope.get("app_root_path", root) or ""
    return root[len(app_root) :] if root.startswith(app_root) else root


def route_template(scope: Mapping[str, Any]) -> str | None:
    """The template of the route being served ("/v1/users/{user_id}"), or None (no match)."""
    route = scope.get("route")
    if route is None:
        return None
    fastapi_scope = scope.get("fastapi")
    effective = (
        fastapi_scope.get("effective_route_context") if isinstance(fastapi_scope, dict) else None
    )
    source = (
        effective
        if effective is not None and getattr(effective, "original_route", None) is route
        else route
    )
    fmt = getattr(source, "path_format", None)
    if not isinstance(fmt, str):
        return None
    prefix = _mount_prefix(scope)
    if _is_mount(route):
        # the scope is already inside this opaque mount: drop its own part of the prefix
        depth = fmt.removesuffix("/{path}").count("/")
        if depth:
            prefix = prefix.rsplit("/", depth)[0]
    return prefix + fmt


def _is_mount(route: object) -> bool:
    from starlette.routing import Mount

    return isinstance(route, Mount)


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """One leaf of an app's route tree."""

    template: str
    methods: frozenset[str]
    endpoint: Any
    kind: str  # "http", "websocket" or "mount" (an opaque mounted ASGI app)


def _expand(routes: Sequence[Any]) -> Iterator[Any]:
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI or none: routes are already flat
        yield from routes
        return
    yield from iter_route_contexts(list(routes))


def walk_routes(app: Any, prefix: str = "", _depth: int = 0) -> Iterator[RouteEntry]:
    """Every leaf route under `app`, nested routers, mounts and hosts included."""
    from starlette.routing import Host, Mount, WebSocketRoute

    routes = getattr(app, "routes", None)
    if routes is None or _depth > 32:
        return
    for item in _expand(routes):
        original = getattr(item, "original_route", item)
        effective = getattr(item, "_effective_route", item)
        if isinstance(original, Host) or isinstance(effective, Host):
            yield from walk_routes(getattr(effective, "app", None), prefix, _depth + 1)
            continue
        fmt = getattr(item, "path_format", None) or ""
        if isinstance(original, Mount) or isinstance(effective, Mount):
            sub = getattr(effective, "app", None)
            base = prefix + fmt.removesuffix("/{path}")
            if getattr(sub, "routes", None) is not None:
                yield from walk_routes(sub, base, _depth + 1)
            else:
                yield RouteEntry(prefix + fmt, frozenset(), sub, "mount")
            continue
        kind = (
            "websocket"
            if isinstance(original, WebSocketRoute) or "WebSocket" in type(original).__name__
            else "http"
        )
        methods = frozenset(getattr(item, "methods", None) or ())
        yield RouteEntry(prefix + fmt, methods, getattr(item, "endpoint", None), kind)
