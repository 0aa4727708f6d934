"""Flask (2.2 and later): `init_app(app, guard)`.

    guard = Guard()
    app = Flask(__name__)
    init_app(app, guard)

    @app.post("/orders/<int:order_id>/refund")
    @guard.flow("refund", "3/day")
    def refund(order_id): ...

`init_app` registers everything at once (Flask 2.2 refuses set-up after the first
request): the WSGI middleware around `app.wsgi_app` (every request counted, refusals sent
as complete responses that no error handler of the app can rewrite), a wrapper of the
app's `full_dispatch_request` that records the matched rule (`/orders/<int:order_id>`,
blueprint prefixes included) and the view for the rules before the app's URL value
preprocessors and `before_request` functions run (and tells the middleware whether the
response's body runs app code), and an error handler that answers `Refused` (so a
refusal is never logged as a server error). The first request walks `app.url_map`:
decorators written above `@app.route` raise `ConfigurationError`, on that request and on
every later one until the app is fixed. Routes already registered when `init_app` runs are
checked there too; `guard.check(app)` runs the whole walk at start-up.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, request
from werkzeug.wrappers import Response as BaseResponse

from apiguard.cors_copy import flask_cors_headers
from apiguard.engine import Refused
from apiguard.guard import Guard
from apiguard.routes import STATIC_KEY, TEMPLATE_KEY, RouteEntry, static_endpoint
from apiguard.steps import render
from apiguard.wsgi import COMPLETE_KEY, SCOPE_KEY, GuardMiddleware

EXTENSION = "apiguard"

try:  # the context variable behind `flask.request` (Flask 2.2 to 3.1): one call, not the
    # proxy's several
    from flask.globals import _cv_request
except ImportError:  # pragma: no cover  (a later Flask: the proxy)
    _cv_request = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class MatchedRoute:
    """What a router recorded, in the shape `apiguard.routes.route_template` reads (and
    the methods the URL rule takes, as a Starlette route's)."""

    path_format: str
    endpoint: Any
    methods: Any = None


class FlaskRoutes:
    """A Flask app's leaves for `Guard.verify` (`MethodView` methods one by one)."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def __apiguard_routes__(self) -> Iterator[RouteEntry]:
        views = self.app.view_functions
        for rule in self.app.url_map.iter_rules():
            view = views.get(rule.endpoint)
            if view is None:
                continue
            methods = frozenset(rule.methods or ())
            yield RouteEntry(rule.rule, methods, view, "http", route=rule)
            cls = getattr(view, "view_class", None)
            if cls is not None:
                yield from class_entries(rule.rule, cls, methods)


def class_entries(template: str, cls: type, methods: frozenset[str]) -> Iterator[RouteEntry]:
    """One entry per HTTP method handler of a class-based view."""
    for method in methods:
        handler = getattr(cls, method.lower(), None)
        if callable(handler):
            yield RouteEntry(template, frozenset({method}), handler, "http")


_PLAIN: dict[type, bool] = {}  # response class -> sent as werkzeug's Response sends it


def plain_class(cls: type) -> bool:
    """Whether responses of `cls` are sent as werkzeug's `Response` sends them (no
    override of how its body is produced)."""
    plain = _PLAIN.get(cls)
    if plain is None:
        names = ("__call__", "get_wsgi_response", "get_app_iter", "iter_encoded")
        plain = _PLAIN[cls] = all(
            getattr(cls, n, None) is getattr(BaseResponse, n) for n in names
        )
    return plain


def init_app(app: Flask, guard: Guard) -> Guard:
    """Protect the Flask `app` with `guard`; returns the guard."""
    if not isinstance(guard, Guard):
        raise TypeError("init_app(app, guard) needs a Guard")
    installed: object = app.extensions.get(EXTENSION)
    if installed is guard:
        return guard
    if installed is not None:
        raise RuntimeError("init_app: this Flask app is already protected by another Guard")

    # id(URL rule) -> (the rule, the scope entries it sets): one per rule (rules are
    # unhashable)
    matched: dict[int, tuple[Any, dict[str, Any]]] = {}

    def route_fields(rule: Any) -> dict[str, Any]:
        """The scope entries for a matched URL rule: the view, the rule, its template
        (`route_template` of it: a WSGI scope has no mount prefix, its root path being
        the app's)."""
        endpoint = rule.endpoint
        view = app.view_functions.get(endpoint) if endpoint is not None else None
        # (a class-based view's rules are its method handlers': a flow on its get() is
        # that GET's own, so its methods are not told: a read keeps its flows)
        methods = None if getattr(view, "view_class", None) is not None else rule.methods
        route = MatchedRoute(rule.rule, view, methods)
        fields: dict[str, Any] = {"endpoint": view, "route": route, TEMPLATE_KEY: route.path_format}
        if static_endpoint(endpoint):
            fields[STATIC_KEY] = True  # (the app's or a blueprint's static files)
        return fields

    dispatch = app.full_dispatch_request

    def full_dispatch_request() -> Any:
        """Flask's `full_dispatch_request`, after recording the matched rule and view where
        the engine reads them (no re-matching): before the `request_started` signal, the
        app's URL value preprocessors and `before_request` functions (where apps call
        `identify()`); then whether the final response's body is a finished sequence (no
        view code runs as it is iterated): the middleware then ends the request as the
        response starts, as for a list body. (One hook for both: a response an error
        handler makes outside it is not marked, and goes the general way.)"""
        req = (
            _cv_request.get().request
            if _cv_request is not None
            else request._get_current_object()
        )
        environ = req.environ
        scope = environ.get(SCOPE_KEY)
        if type(scope) is not dict or environ.get("apiguard.guard") is not guard:
            return dispatch()  # not under the middleware
        rule = req.url_rule
        if rule is not None:
            known = matched.get(id(rule))
            if known is None or known[0] is not rule:
                known = (rule, route_fields(rule))
                if len(matched) < 65536:
                    matched[id(rule)] = known
            scope.update(known[1])
            scope["method"] = req.method  # (as dispatched: a method-override middleware)
            values = req.view_args
            scope["path_params"] = dict(values) if values else {}
        response = dispatch()
        if type(response.response) is list and (  # (`is_sequence`, the usual list)
            _PLAIN.get(type(response)) or plain_class(type(response))
        ):
            scope[COMPLETE_KEY] = True
        return response

    def answer(refused: Refused) -> Response:
        """A refusal raised in a view: the complete refusal, never a 500 (the middleware
        sends it, whatever another handler renders)."""
        decision = refused.decision
        block = render(guard, decision)
        response = Response(block.body, status=block.status)
        response.headers.clear()
        for name, value in block.headers:
            response.headers.add(name, value)
        return response

    # the route is known to everything the app runs before its view (the URL value
    # preprocessors, `before_request`), read once the router matched: one wrapper of this
    # app's `full_dispatch_request` costs less than a hook per stage
    app.full_dispatch_request = full_dispatch_request  # type: ignore[method-assign]
    # a refusal raised by a view or a `before_request` function (a decorated view,
    # `identify()`) is answered where it is raised, before the app's exception handling:
    # Flask-RESTful's and Flask-RESTX's `Api` route a view's exceptions to their own
    # handler ahead of Flask's error handlers, which logged it as a server error and sent
    # `got_request_exception` (the error handler stays, for a refusal raised elsewhere)
    preprocess = app.preprocess_request
    view_dispatch = app.dispatch_request

    def preprocess_request() -> Any:
        try:
            return preprocess()
        except Refused as refused:
            return answer(refused)

    def dispatch_request() -> Any:
        try:
            return view_dispatch()
        except Refused as refused:
            return answer(refused)

    app.preprocess_request = preprocess_request  # type: ignore[method-assign]
    app.dispatch_request = dispatch_request  # type: ignore[method-assign]
    app.register_error_handler(Refused, answer)
    app.wsgi_app = GuardMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, guard, routes=FlaskRoutes(app), cors=flask_cors_headers(app)
    )
    app.extensions[EXTENSION] = guard
    if any(e != "static" for e in app.view_functions):  # routes already there: their
        guard.verify(FlaskRoutes(app), complete=False)  # decorator order, checked now
    return guard
