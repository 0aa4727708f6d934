"""Django (4.2 and later), under WSGI and ASGI: a middleware configured from settings.

    MIDDLEWARE = [
        "django.middleware.security.SecurityMiddleware",
        "apiguard.django.GuardMiddleware",          # early: every request is counted
        ...
    ]
    APIGUARD = {"limits": {"principal": "600/minute"}, "secret": env("APIGUARD_SECRET")}

    from apiguard.django import guard               # the configured Guard, for decorators

    @guard.flow("refund", "3/day")
    def refund(request, order_id): ...

`settings.APIGUARD` is a dict validated by `GuardConfig` (a bad setting fails when the
middleware loads, naming the setting, never the secret's value), or a `Guard` built by the app.
Optional settings: `APIGUARD_CLOCK`, `APIGUARD_PRINCIPAL_RESOLVER` and `APIGUARD_ON_BLOCK`
(callables or dotted paths), passed to `Guard`.

The principal is what the app declares with `identify()`, else the authenticated user
(`request.user.pk`): Django's session user, or the user Django REST Framework
authenticated inside the view (DRF sets it on the Django request once it authenticates,
before the view's handler and any decorated method run).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.signals import setting_changed
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils.cache import patch_vary_headers
from django.utils.functional import empty
from django.utils.module_loading import import_string

from apiguard.config import GuardConfig
from apiguard.cors_copy import EXPOSED, kept
from apiguard.decision import Decision
from apiguard.django_auth import GATE_PATH, LoginGate, _gated, check_backends, connect
from apiguard.engine import Refused
from apiguard.errors import ConfigurationError
from apiguard.guard import Guard
from apiguard.request import RequestContext, _current
from apiguard.routes import TEMPLATE_KEY, RouteEntry, format_twins
from apiguard.steps import (
    at_cancelled,
    at_response,
    at_response_async,
    end,
    end_async,
    render,
    started,
)
from apiguard.wsgi import EnvironReader

log = logging.getLogger("apiguard")
__all__ = ["GuardMiddleware", "LoginGate", "check", "get_guard"]
connect()  # Django's login signals: outcomes of every authenticate() and login()

REQUEST_KEY = "django.request"  # scope key: the Django request
USER_KEY = "django.user"  # scope key: the user resolved ahead (async requests)
# scope key: `request.user` as Django's middleware left it, before the view (DRF sets its
# own over it: `AnonymousUser` in a view without authentication classes)
SESSION_USER_KEY = "django.session_user"
MARK = "_apiguard_guard"  # request attribute: the guard already checking this request
_SETTINGS = ("APIGUARD", "APIGUARD_CLOCK", "APIGUARD_PRINCIPAL_RESOLVER", "APIGUARD_ON_BLOCK")
_HTTP_METHODS = ("get", "post", "put", "patch", "delete", "head", "options", "trace")

_guard: Guard | None = None
# the values `settings` has read, as it keeps them until a change drops them (its
# `__getattr__` fills it, `__setattr__`, `__delattr__` and `override_settings` empty it):
# read here, not through `LazyObject.__getattribute__` (about 1.4 µs a setting)
_READ: dict[str, Any] = object.__getattribute__(settings, "__dict__")


def _root_urlconf() -> Any:
    """`settings.ROOT_URLCONF`, from `settings`' own cache when it holds it."""
    value = _READ.get("ROOT_URLCONF")
    return value if value is not None else settings.ROOT_URLCONF


def get_guard() -> Guard:
    """The guard configured by the settings (built once; again after a settings change)."""
    global _guard
    if _guard is None:
        _guard = _from_settings()
    return _guard


def __getattr__(name: str) -> Any:
    if name == "guard":  # `from apiguard.django import guard`
        return get_guard()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _option(name: str) -> Any:
    value = getattr(settings, name, None)
    if isinstance(value, str):
        try:
            value = import_string(value)
        except ImportError as exc:
            raise ConfigurationError(f"settings.{name}: cannot import {value!r} ({exc})") from None
    if value is not None and not callable(value):
        raise ConfigurationError(f"settings.{name}: expected a callable or a dotted path")
    return value


def _from_settings() -> Guard:
    value = getattr(settings, "APIGUARD", None)
    if isinstance(value, Guard):
        return value
    if value is not None and not isinstance(value, Mapping | GuardConfig):
        raise ConfigurationError(
            f"settings.APIGUARD: expected a dict of apiguard settings or a Guard, not a "
            f"{type(value).__name__}"
        )
    config = value if isinstance(value, GuardConfig) else GuardConfig.load(
        dict(value or {}), "settings.APIGUARD"
    )
    return Guard(
        config,
        clock=_option("APIGUARD_CLOCK"),
        principal_resolver=_option("APIGUARD_PRINCIPAL_RESOLVER") or django_user,
        on_block=_option("APIGUARD_ON_BLOCK"),
    )


def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    global _guard
    if setting in _SETTINGS:
        _guard = None
    elif setting == "ROOT_URLCONF":
        _routes.clear()


setting_changed.connect(_settings_changed)


def django_user(ctx: RequestContext) -> str | int | uuid.UUID | None:
    """The principal resolver of the configured guard: the authenticated user's primary
    key (DRF's user once DRF authenticated it inside the view), or None."""
    scope = ctx.scope
    request = scope.get(REQUEST_KEY)
    if request is None:
        return None
    user = _loaded(request.__dict__.get("user"), scope)
    if not getattr(user, "is_authenticated", False):
        # a DRF view without authentication classes wrote `AnonymousUser` (or None,
        # DRF's UNAUTHENTICATED_USER) over the user Django's session middleware verified:
        # that user still sent the request
        own = scope.get(SESSION_USER_KEY)
        if own is None or own is user:
            return None
        own = _loaded(own, scope)
        if not getattr(own, "is_authenticated", False):
            return None
        user = own
    pk = user.pk
    return pk if isinstance(pk, str | int | uuid.UUID) else str(pk)


def _loaded(user: Any, scope: Mapping[str, Any]) -> Any:
    """`user`, or the user resolved ahead for it when it is a session user not loaded
    yet (async: resolved ahead, never read from the event loop)."""
    if getattr(user, "_wrapped", None) is empty and USER_KEY in scope:
        return scope[USER_KEY]
    return user


class MatchedRoute:
    """What the resolver matched, in the shape `apiguard.routes.route_template` reads."""

    __slots__ = ("endpoint", "path_format")

    def __init__(self, path_format: str, endpoint: Any) -> None:
        self.path_format = path_format
        self.endpoint = endpoint


def logins_seen() -> str | None:
    """What the start-up line says of logins through django.contrib.auth (None: not
    installed)."""
    if "django.contrib.auth" not in getattr(settings, "INSTALLED_APPS", ()):
        return None
    seen = (
        "django.contrib.auth's authenticate() and login() (its signals; @guard.login "
        "adds to them)"
    )
    if _gated():
        return (
            f"{seen}, held back before the password check by {GATE_PATH} (first in "
            "AUTHENTICATION_BACKENDS)"
        )
    return f"{seen}, never held back: list {GATE_PATH!r} first in AUTHENTICATION_BACKENDS"


def format_kwarg() -> str:
    """DRF's FORMAT_SUFFIX_KWARG (`format`), the keyword of its format-suffix routes."""
    drf = sys.modules.get("rest_framework.settings")
    try:
        value = drf.api_settings.FORMAT_SUFFIX_KWARG if drf is not None else None
    except Exception:  # (DRF's settings unreadable: its default)
        value = None
    return value if isinstance(value, str) and value else "format"


class DjangoRoutes:
    """The URLconf's leaves for `Guard.verify` (class-based and DRF views method by
    method, ViewSet actions included), templates as `resolver_match.route` gives them,
    but for a DRF format-suffix route (`/^todo/(?P<pk>[^/.]+)\\.(?P<format>[a-z0-9]+)/?$`,
    `DefaultRouter`'s `/todo/7.json`): the template of the route it doubles
    (`/^todo/(?P<pk>[^/.]+)/$`), as requests carry it (`twins`)."""

    def __init__(self, urlconf: str | None = None) -> None:
        self.urlconf = urlconf
        self._twins: dict[str, str] | None = None
        self._drf_checked: weakref.WeakSet[Guard] = weakref.WeakSet()

    def _leaves(self) -> list[RouteEntry]:
        return list(_walk(get_resolver(self.urlconf).url_patterns, "", 0))

    def twins(self) -> dict[str, str]:
        """format-suffix template -> the template it counts as (`format_twins`)."""
        if self._twins is None:
            self._twins = format_twins((e.template for e in self._leaves()), format_kwarg())
        return self._twins

    def __apiguard_logins__(self) -> str | None:
        """How logins are seen without `@guard.login` (for the start-up line): Django's
        login signals, and whether `LoginGate` holds them back (None: no
        django.contrib.auth)."""
        return logins_seen()

    def __apiguard_routes__(self) -> Iterator[RouteEntry]:
        leaves = self._leaves()
        twins = format_twins((e.template for e in leaves), format_kwarg())
        for entry in leaves:
            twin = twins.get(entry.template)
            yield entry if twin is None else dataclasses.replace(entry, template=twin)


# urlconf -> its `DjangoRoutes`, one object per URLconf (emptied when ROOT_URLCONF
# changes): a guard verifies it, and logs its start-up summary, once, however many
# middleware chains load (the test client builds one per `Client()`)
_routes: dict[Any, DjangoRoutes] = {}


def routes_of(urlconf: Any) -> DjangoRoutes:
    """The `DjangoRoutes` of `urlconf`, the same object for the same URLconf."""
    try:
        found = _routes.get(urlconf)
    except TypeError:  # (an unhashable URLconf: a new one)
        return DjangoRoutes(urlconf)
    if found is None:
        if len(_routes) >= 256:
            _routes.clear()
        found = _routes[urlconf] = DjangoRoutes(urlconf)
    return found


def _join(prefix: str, pattern: Any) -> str:
    """Join routes as Django's resolver does for `resolver_match.route`: below a
    non-empty prefix, a regex's leading ``^`` is dropped (`^api/` + `^items/` is
    `^api/items/`), so the walk lists the templates requests carry."""
    route = str(pattern)
    return prefix + route.removeprefix("^") if prefix else route


def _walk(patterns: Any, prefix: str, depth: int) -> Iterator[RouteEntry]:
    if depth > 32:
        return
    for item in patterns:
        if isinstance(item, URLResolver):
            yield from _walk(item.url_patterns, _join(prefix, item.pattern), depth + 1)
        elif isinstance(item, URLPattern):
            template = "/" + _join(prefix, item.pattern)
            view = item.callback
            yield RouteEntry(template, frozenset(), view, "http")
            allowed = _required_methods(view)
            if allowed:  # `@require_GET`, `@require_http_methods([...])`: these only
                yield RouteEntry(template, allowed, view, "http")
            for methods, handler in _operations(view):
                yield RouteEntry(template, methods, handler, "http")
            cls = getattr(view, "view_class", None) or getattr(view, "cls", None)
            if isinstance(cls, type):
                # `as_view()` copies the attributes of `dispatch` onto the view (its
                # `__wrapped__` too, when an apiguard decorator wraps `dispatch`): the
                # decorated `dispatch` is what the view runs
                dispatch = getattr(cls, "dispatch", None)
                if callable(dispatch):
                    yield RouteEntry(template, frozenset(), dispatch, "http")
                actions = getattr(view, "actions", None)  # DRF ViewSet: {"get": "list"}
                names = actions.items() if isinstance(actions, dict) else (
                    (m, m) for m in _HTTP_METHODS
                )
                for method, name in names:
                    handler = getattr(cls, name, None)
                    if callable(handler):
                        yield RouteEntry(template, frozenset({method.upper()}), handler, "http")


def _required_methods(view: Any) -> frozenset[str]:
    """The methods a function view's Django `require_http_methods` decorator
    (`require_GET`, `require_POST`, `require_safe`) lets through, else none (any)."""
    obj = view
    for _ in range(32):
        code = getattr(obj, "__code__", None)
        closure = getattr(obj, "__closure__", None)
        if code is not None and closure and "request_method_list" in code.co_freevars:
            try:
                listed = closure[code.co_freevars.index("request_method_list")].cell_contents
            except (ValueError, IndexError):
                return frozenset()
            if isinstance(listed, list | tuple | set | frozenset):
                return frozenset(str(m).upper() for m in listed)
            return frozenset()
        obj = getattr(obj, "__wrapped__", None)
        if obj is None:
            break
    return frozenset()


def _operations(view: Any) -> Iterator[tuple[frozenset[str], Any]]:
    """The endpoint functions behind a django-ninja route: its view is a closure over the
    path's `PathView`, whose `operations` hold the functions `@api.get` registered."""
    for cell in getattr(view, "__closure__", None) or ():
        try:
            owner = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        operations = getattr(owner, "operations", None)
        if not isinstance(operations, list):
            continue
        for operation in operations:
            handler = getattr(operation, "view_func", None)
            if callable(handler):
                methods = getattr(operation, "methods", None) or ()
                yield frozenset(str(m).upper() for m in methods), handler


def _check_drf_order(guard: Guard, routes: DjangoRoutes) -> None:
    """An apiguard decorator above DRF's `@api_view` checks before DRF authenticates, so
    the principal could not be DRF's user: refuse it at start-up."""
    wrong = [
        entry.template
        for entry in routes.__apiguard_routes__()
        if getattr(entry.endpoint, "__apiguard_guard__", None) is guard
        and getattr(getattr(entry.endpoint, "__apiguard_original__", None), "cls", None)
        is not None
    ]
    if wrong:
        raise ConfigurationError(
            "apiguard decorators sit above @api_view on " + ", ".join(wrong) + ": they "
            "would check before Django REST Framework authenticates the user. Put "
            "@guard.limit/@guard.flow directly above `def`, below @api_view."
        )
    on_dispatch = sorted(
        {
            entry.template
            for entry in routes.__apiguard_routes__()
            if not entry.methods and _drf_dispatch_guarded(guard, entry.endpoint)
        }
    )
    if on_dispatch:
        raise ConfigurationError(
            "apiguard decorators on the dispatch() of a Django REST Framework view ("
            + ", ".join(on_dispatch)
            + ") would check before DRF authenticates the user (DRF authenticates inside "
            "dispatch): the user's limits would be keyed on the address. Decorate the "
            "handler methods (get, post, list, retrieve, ...) instead, or method_decorator("
            "..., name=\"get\")."
        )


def _drf_dispatch_guarded(guard: Guard, view: Any) -> bool:
    """Whether `view` is a DRF view (`APIView.as_view()` sets `cls`) whose `dispatch` an
    apiguard decorator of `guard` wraps (directly, or through Django's
    `method_decorator`)."""
    cls = getattr(view, "cls", None)
    if not isinstance(cls, type) or not callable(getattr(cls, "perform_authentication", None)):
        return False
    obj = getattr(cls, "dispatch", None)
    for _ in range(32):
        if obj is None:
            return False
        if (
            getattr(obj, "__apiguard_guard__", None) is guard
            or getattr(obj, "__apiguard_method__", None) is guard
        ):
            return True
        obj = getattr(obj, "__wrapped__", None)
    return False


def check(urlconf: str | None = None) -> None:
    """The start-up walk of the URLconf (`settings.ROOT_URLCONF` by default), now: raises
    `ConfigurationError` for an apiguard decorator above `@api_view`, a decorated view no
    route serves with its checks, or a `detection.*.routes` template no route has. The
    middleware runs it as it loads (a server's start-up; the test client's first request,
    and every request while it fails); call it from `AppConfig.ready()` or a test to fail
    earlier."""
    guard = get_guard()
    routes = routes_of(urlconf or settings.ROOT_URLCONF)
    guard.verify(routes)
    _check_drf_order(guard, routes)


_EXPOSE = "Access-Control-Expose-Headers"
_CORS_PATH = "corsheaders.middleware.CorsMiddleware"


def _middleware_names() -> list[str]:
    return [str(m) for m in getattr(settings, "MIDDLEWARE", None) or ()]


def _own_index() -> int:
    names = _middleware_names()
    return next((i for i, m in enumerate(names) if m.endswith("GuardMiddleware")), len(names))


def _cors_index() -> int:
    """Where `settings.MIDDLEWARE` lists django-cors-headers' `CorsMiddleware` (after
    everything when it does not)."""
    names = _middleware_names()
    return names.index(_CORS_PATH) if _CORS_PATH in names else len(names) + 1


def _inner_cors() -> Any:
    """django-cors-headers' `CorsMiddleware` when `settings.MIDDLEWARE` lists it after
    apiguard (its headers, for a refusal that replaces no response of the app), else None."""
    if not _own_index() < _cors_index() <= len(_middleware_names()):
        return None
    try:
        return import_string(_CORS_PATH)(lambda request: None)
    except ImportError:
        return None


class GuardMiddleware:
    """Checks every request against `apiguard.django.guard`'s rules (sync and async)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.guard = get_guard()  # a bad setting fails here, as the middleware loads
        self.engine = self.guard.engine
        self._headers = self.guard.config.ratelimit_headers
        self._reader = EnvironReader(self.engine)
        if self.engine.resolver is None:  # the authenticated user, unless the app's own
            self.engine.resolver = django_user
        self._verified: set[Any] = set()
        # DRF format-suffix route -> the template it counts as (`DjangoRoutes`), of
        # every URLconf verified; and the suffix's keyword, no object's name
        self._twins: dict[str, str] = {}
        self._format = format_kwarg()
        self._cors = _inner_cors()
        self._cors_outer = _cors_index() < _own_index()  # it sees the refusal after us
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)
        self._verify(settings.ROOT_URLCONF)  # start-up: decorators above @api_view fail here
        check_backends()  # `LoginGate` anywhere but first fails here

    def _verify(self, urlconf: Any) -> None:
        routes = routes_of(urlconf)  # (verified once per guard: logged once)
        self.guard.verify(routes)
        if self.guard not in routes._drf_checked:
            _check_drf_order(self.guard, routes)
            routes._drf_checked.add(self.guard)
        self._twins.update(routes.twins())
        self._verified.add(urlconf)

    def _begin(self, request: HttpRequest) -> tuple[RequestContext, Decision | None]:
        urlconf = getattr(request, "urlconf", None) or _root_urlconf()
        if urlconf not in self._verified:  # a URLconf a middleware chose for this request
            self._verify(urlconf)
        ctx = self._reader.begin(request.META)
        ctx.scope[REQUEST_KEY] = request  # type: ignore[index]
        if self.engine.may_be_banned():
            early = self.engine.early_ban(ctx)
            if early is not None:
                ctx.refused_sent = True
                return ctx, early
        return ctx, None

    def __call__(self, request: HttpRequest) -> Any:
        if self._async:
            return self.__acall__(request)
        if request.__dict__.get(MARK) is self.guard:  # listed twice: count once
            return self.get_response(request)
        request.__dict__[MARK] = self.guard
        engine = self.engine
        ctx, early = self._begin(request)
        if early is not None:
            end(engine, ctx, None)
            return self._with_cors(request, self._block(early), None)
        token = _current.set(ctx)
        try:
            response = self.get_response(request)
            if getattr(response, "apiguard_refusal", False):  # from process_exception
                refusal: Decision | None = ctx.decision
            else:
                refusal = at_response(engine, ctx, response.status_code)
        except BaseException:  # Django answers exceptions inside: interrupted
            at_cancelled(engine, ctx, False)
            end(engine, ctx, None)
            raise
        finally:
            _current.reset(token)
        response, outcome = self._answer(ctx, response, refusal)
        end(engine, ctx, outcome)
        return response

    async def __acall__(self, request: HttpRequest) -> Any:
        if request.__dict__.get(MARK) is self.guard:  # listed twice: count once
            return await self.get_response(request)
        request.__dict__[MARK] = self.guard
        engine = self.engine
        ctx, early = self._begin(request)
        if early is not None:
            end(engine, ctx, None)
            return self._with_cors(request, self._block(early), None)
        token = _current.set(ctx)
        try:
            await self._resolve_user(request, ctx)  # placed after AuthenticationMiddleware
            response = await self.get_response(request)
            if getattr(response, "apiguard_refusal", False):  # from process_exception
                refusal: Decision | None = ctx.decision
            else:
                if not ctx.global_done:
                    await self._resolve_user(request, ctx)
                refusal = await at_response_async(engine, ctx, response.status_code)
        except BaseException:
            at_cancelled(engine, ctx, False)
            end(engine, ctx, None)
            raise
        finally:
            _current.reset(token)
        response, outcome = self._answer(ctx, response, refusal)
        await end_async(engine, ctx, outcome)
        return response

    async def _resolve_user(self, request: HttpRequest, ctx: RequestContext) -> None:
        """Async: the session user, loaded the async way for the checkpoint still to run
        (the resolver must not touch the database from the event loop)."""
        scope = ctx.scope
        if USER_KEY in scope or not isinstance(scope, dict):
            return
        user = request.__dict__.get("user")
        auser: Callable[[], Awaitable[Any]] | None = getattr(request, "auser", None)
        if auser is not None and getattr(user, "_wrapped", None) is empty:
            scope[USER_KEY] = await auser()

    def process_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., Any],
        view_args: tuple[Any, ...],
        view_kwargs: dict[str, Any],
    ) -> None:
        """Record the view and its route template (`resolver_match.route`, include()d
        prefixes joined) where the engine reads them."""
        ctx = _current.get()
        scope = ctx.scope if ctx is not None and ctx.engine is self.engine else None
        match = request.resolver_match
        if not isinstance(scope, dict) or match is None:
            return
        user = request.__dict__.get("user")  # (a sync request's: not evaluated here)
        if user is not None:
            scope[SESSION_USER_KEY] = user
            if self._async and USER_KEY not in scope and getattr(user, "_wrapped", 1) is empty:
                # an async request whose session user is not loaded yet (apiguard before
                # Django's auth middleware): loaded here, where Django runs this hook in a
                # thread, for a decorated view's checkpoint (on the event loop, reading it
                # would raise SynchronousOnlyOperation) and the response start
                try:
                    user._setup()
                    scope[USER_KEY] = user._wrapped
                except Exception:
                    log.exception("apiguard: the session user could not be loaded")
        template = "/" + match.route
        # a re_path() of unnamed groups passes its values positionally: named by their
        # group number, as objects all the same
        params = (
            view_kwargs
            if view_kwargs or not view_args
            else {str(n): value for n, value in enumerate(view_args, 1)}
        )
        twin = self._twins.get(template) if self._twins else None
        if twin is not None:
            # DRF's `/todo/7.json`: `/todo/7/`'s route, object `pk=7` (a walker's two
            # spellings are one walk; `format` is a renderer's name)
            template = twin
            if self._format in params:
                params = {k: v for k, v in params.items() if k != self._format}
        scope["endpoint"] = view_func
        scope["route"] = MatchedRoute(template, view_func)
        scope["path_params"] = params
        # (`route_template` of it: the scope, read from `request.META`, has no mount
        # prefix, its root path being the app's)
        scope[TEMPLATE_KEY] = template

    def process_exception(self, request: HttpRequest, exception: Exception) -> Any:
        """A refusal raised in the view (a decorated view, `identify()`) is answered here,
        never as a server error."""
        if isinstance(exception, Refused):
            return self._block(exception.decision)
        return None

    def _answer(
        self, ctx: RequestContext, response: HttpResponseBase, refusal: Decision | None
    ) -> tuple[HttpResponseBase, int | None]:
        """The answer after the response-start checkpoint: the refusal in place of the
        app's response, or the app's with its cookies and RateLimit fields; and the
        outcome the rules observe (None: refused)."""
        if getattr(response, "apiguard_refusal", False):
            ctx.refused_sent = True
            request = ctx.scope.get(REQUEST_KEY)
            return (self._with_cors(request, response, None) if request else response), None
        if refusal is not None:  # the app's response is dropped (Django closes the answer)
            block = self._block(refusal)
            request = ctx.scope.get(REQUEST_KEY)
            if request is not None:  # with the app's CORS answer to this request
                block = self._with_cors(request, block, kept(response.items()))
            return block, None
        engine = self.engine
        status = response.status_code
        for cookie in started(engine, ctx, status, response.items()):
            response.cookies.load(cookie.decode("latin-1"))
        if self._headers:
            values = engine.ratelimit_values(ctx, status)
            if values is not None:
                policy = values[0].decode("latin-1")
                state = values[1].decode("latin-1")
                # straight into Django's header store (its `__setitem__` checks a value's
                # charset and line breaks, about 1 µs a header): latin-1 by construction,
                # and one with a line break (a rule named so) still goes through it
                store = getattr(response.headers, "_store", None)
                if type(store) is dict and "\n" not in policy and "\r" not in policy:
                    store["ratelimit-policy"] = ("RateLimit-Policy", policy)
                    store["ratelimit"] = ("RateLimit", state)
                else:
                    response["RateLimit-Policy"] = policy
                    response["RateLimit"] = state
        return response, status

    def _with_cors(
        self,
        request: HttpRequest,
        response: HttpResponseBase,
        cors: list[tuple[str, str]] | None,
    ) -> HttpResponseBase:
        """A refusal to a cross-origin request, readable by the page: the CORS headers of
        the app's response it replaced (`cors`), else, when django-cors-headers'
        `CorsMiddleware` sits below apiguard and the refusal did not pass through it,
        the headers it gives this request; and Retry-After/RateLimit exposed (a
        `CorsMiddleware` above apiguard adds its headers to the refusal itself)."""
        if "HTTP_ORIGIN" not in request.META:
            return response
        inner = self._cors
        if cors is None and inner is not None and "Access-Control-Allow-Origin" not in response:
            cors = kept(inner.add_response_headers(request, HttpResponse()).items())
        exposed = [p.strip() for p in response.get(_EXPOSE, "").split(",") if p.strip()]
        for name, value in cors or ():
            lower = name.lower()
            if lower == "vary":
                patch_vary_headers(response, ("origin",))
            elif lower == _EXPOSE:
                exposed.extend(p.strip() for p in value.split(",") if p.strip())
            elif name not in response:
                response[name] = value
        if "Access-Control-Allow-Origin" not in response and not self._cors_outer:
            return response  # no CORS answer for this origin: no CORS header either
        known = {e.lower() for e in exposed}
        exposed.extend(n for n in EXPOSED if n in response and n.lower() not in known)
        if exposed:
            response[_EXPOSE] = ", ".join(exposed)
        return response

    def _block(self, decision: Decision) -> HttpResponse:
        """The refusal as a complete Django response."""
        block = render(self.guard, decision)
        response = HttpResponse(block.body, status=block.status)
        del response["Content-Type"]
        for name, value in block.headers:
            response[name] = value
        response["Content-Length"] = str(len(block.body))
        response.apiguard_refusal = True
        return response
