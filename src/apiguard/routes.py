"""Route templates from the router that served the request, and a walk of an app's routes.

At request time nothing is re-matched: Starlette and FastAPI record the selected route in
the scope as they route, and the template is read from there (mount prefixes included).
The walk is used once at start-up (decorator-order checks) and by `audit`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Starlette's routing is imported only where a Starlette app is walked or its scope read,
# so `import apiguard` under Flask or Django loads none of Starlette's request machinery.


def _mount_prefix(scope: Mapping[str, Any]) -> str:
    root = scope.get("root_path", "") or ""
    app_root = scope.get("app_root_path", root) or ""
    return root[len(app_root) :] if root.startswith(app_root) else root


# scope key: the route serves static files (set by an adapter that knows it: Flask's
# `static` endpoints)
STATIC_KEY = "apiguard.static"


def static_endpoint(name: object) -> bool:
    """Whether a Flask endpoint name is a static-files one (the app's `static`, or a
    blueprint's `<name>.static`)."""
    return name == "static" or str(name).endswith(".static")


def serves_files(scope: Mapping[str, Any]) -> bool:
    """Whether the route serving `scope` serves static files (Flask's `static` endpoints,
    an app's or a blueprint's; Starlette's `StaticFiles`; Django's `static.serve`): its
    path is a file name, no object of anyone's, and every page's visitor reads it (stale
    asset links after a deploy answer 404 in bursts)."""
    if scope.get(STATIC_KEY):
        return True
    endpoint = scope.get("endpoint")
    if endpoint is None:
        return False
    name = getattr(endpoint, "__name__", None)
    if name == "send_static_file":
        return True
    if name == "serve" and getattr(endpoint, "__module__", None) in (
        "django.views.static",
        "django.contrib.staticfiles.views",
    ):
        return True
    kind = type(endpoint)
    return kind.__name__ == "StaticFiles" and kind.__module__.startswith(
        ("starlette.", "fastapi.")
    )


# scope key: the template an adapter read from its router as it recorded the route (mount
# prefixes included), answered as it is
TEMPLATE_KEY = "apiguard.template"


def route_template(scope: Mapping[str, Any]) -> str | None:
    """The template of the route being served ("/v1/users/{user_id}"), or None (no match).

    Read from what the router recorded in the scope (`route`, FastAPI's effective route
    context). Routers that record only the `endpoint` (FastAPI 0.165 for non-APIRoute
    routes and mounts) are answered from a per-app index of endpoint -> template built by
    walking the app once, never by matching the path against every route. An adapter
    that knows the template (Flask) records it under `TEMPLATE_KEY`.
    """
    template = scope.get(TEMPLATE_KEY)
    if template is not None:
        return template  # type: ignore[no-any-return]
    route = scope.get("route")
    endpoint = scope.get("endpoint")
    # is `route` the route that selected `endpoint`? (else: the index)
    if route is None or (
        endpoint is not None
        and getattr(route, "endpoint", None) is not endpoint
        and getattr(route, "app", None) is not endpoint
    ):
        if endpoint is None:
            return None
        return _index_template(scope, endpoint)
    source = route
    fastapi_scope = scope.get("fastapi")
    if fastapi_scope is not None:
        effective = (
            fastapi_scope.get("effective_route_context")
            if isinstance(fastapi_scope, dict)
            else None
        )
        if effective is not None and getattr(effective, "original_route", None) is route:
            source = effective
    # the template depends only on the route (and FastAPI's context for it) and the mount
    # prefix: remembered on the route object itself for its latest mount prefix (one
    # attribute read: at 200 routes the key tuple and the table below cost 1.5-3 µs a
    # request in the detectors' look at it), else per such key (routes are code-defined;
    # bounded all the same). Keyed on id() (routes define __eq__ without __hash__); the
    # entry holds the route, so its id is not reused while remembered.
    root = scope.get("root_path", "")
    app_root = scope.get("app_root_path")
    memo = getattr(source, _MEMO, None)
    if memo is not None and memo[0] == root and memo[1] == app_root:
        return memo[2]  # type: ignore[no-any-return]
    key = (id(source), root, app_root)
    try:
        held, found = _by_route[key]
    except KeyError:
        held = None
    except TypeError:  # an unhashable root path: not remembered
        return _template_of(scope, route, source)
    if held is source:
        return found
    found = _template_of(scope, route, source)
    try:
        setattr(source, _MEMO, (root, app_root, found))
        return found
    except (AttributeError, TypeError):  # (slots, a frozen object: the table instead)
        pass
    if len(_by_route) >= _BY_ROUTE_MAX:
        _by_route.clear()
    _by_route[key] = (source, found)
    return found


_BY_ROUTE_MAX = 4096
_MEMO = "_apiguard_template_memo"  # (root_path, app_root_path, template) on a route object
_by_route: dict[tuple[int, Any, Any], tuple[Any, str | None]] = {}


def _template_of(scope: Mapping[str, Any], route: Any, source: Any) -> str | None:
    fmt = getattr(source, "path_format", None)
    if not isinstance(fmt, str):
        return None
    prefix = _mount_prefix(scope)
    if _is_mount(route):
        prefix = _strip_own_mount(prefix, fmt)
    return prefix + fmt


def _strip_own_mount(prefix: str, fmt: str) -> str:
    """The scope is already inside this mount: drop the mount's own part of the prefix."""
    return _strip_depth(prefix, fmt.removesuffix("/{path}").count("/"))


class _TemplateIndex:
    """endpoint -> templates for one app, rebuilt when an unknown endpoint shows up."""

    _MAX_MISSES = 1024

    def __init__(self, app: Any) -> None:
        self.app = app
        self.misses: set[int] = set()
        self.by_endpoint: dict[int, tuple[tuple[str, int, Any], ...]] = {}
        self.build()

    def build(self) -> None:
        from starlette.routing import compile_path

        found: dict[int, list[tuple[str, int, Any]]] = {}
        for entry in walk_routes(self.app):
            if entry.endpoint is None:
                continue
            pattern = entry.template
            if entry.kind == "mount":
                inside = pattern.removesuffix("/{path}")
                pattern = inside + "/{path:path}"
            else:
                inside = entry.prefix
            regex = compile_path(pattern)[0]
            found.setdefault(id(entry.endpoint), []).append(
                (entry.template, inside.count("/"), regex)
            )
        self.by_endpoint = {k: tuple(v) for k, v in found.items()}

    def lookup(self, endpoint: Any, route_path: str) -> tuple[str, int] | None:
        key = id(endpoint)
        candidates = self.by_endpoint.get(key)
        if candidates is None and key not in self.misses:
            self.build()
            candidates = self.by_endpoint.get(key)
            if candidates is None:
                if len(self.misses) >= self._MAX_MISSES:
                    self.misses.clear()
                self.misses.add(key)
        if not candidates:
            return None
        if len(candidates) > 1:  # one endpoint under several templates
            for template, depth, regex in candidates:
                if regex.match(route_path):
                    return template, depth
        return candidates[0][0], candidates[0][1]


_indexes: dict[int, _TemplateIndex] = {}


def _index_template(scope: Mapping[str, Any], endpoint: Any) -> str | None:
    app = scope.get("app")
    if app is None:
        return None
    index = _indexes.get(id(app))
    if index is None or index.app is not app:
        if len(_indexes) >= 256:
            _indexes.clear()
        index = _indexes[id(app)] = _TemplateIndex(app)
    root = scope.get("root_path", "") or ""
    path = scope.get("path", "") or ""
    route_path = path[len(root) :] if root and path.startswith(root) else path
    found = index.lookup(endpoint, route_path)
    if found is None:
        return None
    template, depth = found
    # the scope's prefix also holds the mounts inside `app` that the template already has
    return _strip_depth(_mount_prefix(scope), depth) + template


def _strip_depth(prefix: str, depth: int) -> str:
    return prefix.rsplit("/", depth)[0] if depth else prefix


def _is_mount(route: object) -> bool:
    routing = sys.modules.get("starlette.routing")  # not imported: no Starlette route
    return routing is not None and isinstance(route, routing.Mount)


# Django REST Framework's `format_suffix_patterns` (every `DefaultRouter`, and any URLconf
# passed through it) serves each route again with a format suffix (`/todo/7.json`): a
# `re_path()` route's regex gets `\.(?P<format>[a-z0-9]+)/?$` (or `\.(?P<format>(json|api))/?$`
# for allowed formats), a `path()` route the converter `<drf_format_suffix:format>`
# (`<drf_format_suffix_json_api:format>`); the keyword is DRF's FORMAT_SUFFIX_KWARG
_FORMAT_SUFFIX = re.compile(
    r"(?:\\\.\(\?P<(?P<group>\w+)>.+\)/\?\$|<drf_format_suffix(?:_[^:>]*)?:(?P<conv>\w+)>)$"
)


def format_suffix(template: str, kwarg: str = "format") -> str | None:
    """The template without its DRF format suffix, for a route DRF's
    `format_suffix_patterns` made with the keyword `kwarg`, else None."""
    found = _FORMAT_SUFFIX.search(template)
    if found is None or (found.group("group") or found.group("conv")) != kwarg:
        return None
    return template[: found.start()]


def _stem(template: str) -> str:
    return template.rstrip("$").rstrip("/")  # (as DRF cuts a route to add its suffix)


def format_twins(templates: Iterable[str], kwarg: str = "format") -> dict[str, str]:
    """For each DRF format-suffix route among `templates` (`kwarg`: DRF's
    FORMAT_SUFFIX_KWARG), the template it is a twin of: the route without the suffix
    when `templates` has it (`/^todo/(?P<pk>[^/.]+)\\.(?P<format>[a-z0-9]+)/?$` ->
    `/^todo/(?P<pk>[^/.]+)/$`), else itself (`suffix_required=True`). One object
    route is one route whatever its spelling, and the keyword (a renderer's name)
    names no object."""
    plain: dict[str, str] = {}
    suffixed: dict[str, str] = {}
    for template in templates:
        stem = format_suffix(template, kwarg)
        if stem is None:
            plain.setdefault(_stem(template), template)
        else:
            suffixed[template] = stem
    return {t: plain.get(_stem(stem), t) for t, stem in suffixed.items()}


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """One leaf of an app's route tree."""

    template: str
    methods: frozenset[str]
    endpoint: Any
    kind: str  # "http", "websocket" or "mount" (an opaque mounted ASGI app)
    prefix: str = ""  # the mount prefixes inside the walked app, before the route's own path
    route: Any = None  # the framework's route object, where there is one (`audit`)


def _expand(routes: Sequence[Any]) -> Iterator[Any]:
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI or none: routes are already flat
        yield from routes
        return
    yield from iter_route_contexts(list(routes))


def walk_routes(app: Any, prefix: str = "", _depth: int = 0) -> Iterator[RouteEntry]:
    """Every leaf route under `app`, nested routers, mounts and hosts included. An app
    that is no Starlette app may list its own leaves with `__apiguard_routes__()` (the
    Flask and Django adapters do)."""
    own = getattr(app, "__apiguard_routes__", None)
    if callable(own):
        yield from own()
        return
    routes = getattr(app, "routes", None)
    if routes is None or _depth > 32:
        return
    from starlette.routing import Host, Mount, WebSocketRoute
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
                yield RouteEntry(prefix + fmt, frozenset(), sub, "mount", prefix)
            continue
        kind = (
            "websocket"
            if isinstance(original, WebSocketRoute) or "WebSocket" in type(original).__name__
            else "http"
        )
        methods = frozenset(getattr(item, "methods", None) or ())
        # (FastAPI's effective route of an included router carries the dependencies its
        # routers added, `include_router(..., dependencies=...)`; the original has its own)
        route = effective if getattr(effective, "dependant", None) is not None else original
        yield RouteEntry(
            prefix + fmt, methods, getattr(item, "endpoint", None), kind, prefix, route
        )
