"""`apiguard audit`: which routes of an app apiguard protects, and how.

Read from the same facts the start-up check reads (the framework's route tree and the
decorators on each handler), never from traffic: every route with the rules declared on
it, the detectors that watch it, and what looks left out (a sign-up, reset or checkout
route with no flow or limit of its own; a login route that reports no outcome; a
mounted app apiguard cannot list). It cannot see what the app does at run time:
`guard.login_result()`, `guard.objects_touched()` and `identify()` calls are counted when
made, not listed.
"""

from __future__ import annotations

import dis
import inspect
import re
import sys
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from apiguard.errors import ConfigurationError
from apiguard.guard import Guard, _describe, _unwrap_chain
from apiguard.login import LoginRule, calls_login_result
from apiguard.objects import ObjectsRule
from apiguard.routes import (
    RouteEntry,
    format_suffix,
    serves_files,
    static_endpoint,
    walk_routes,
)
from apiguard.rules import FlowRule, Rule

WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# a path parameter: Starlette `{id}`, Flask and Django `<int:id>`, a Django regex group
_PARAMETER = re.compile(r"\{[^}]+\}|<[^>]+>|\(\?P<")
# route words that name a login, and sensitive business flows (OWASP API6), as whole
# path segments or words inside one (`/auth/token`, `/password-reset`, `/sign_up`)
_LOGIN = re.compile(r"(?:^|[/_.-])(?:log[-_]?in|sign[-_]?in|signon|authenticate)(?:$|[/_.-])")
# a token endpoint: the last literal segment (`/token`, `/api/token/`, `/oauth/token`,
# `/access-token`; not `/token/refresh` nor `/test-token`)
_TOKEN = re.compile(r"^(?:(?:access|auth|api|oauth2?|jwt)[-_]?)?tokens?$")
_FLOW = re.compile(  # verbs: a flow whatever the methods
    r"(?:^|[/_.-])(?:sign[-_]?up|register|registration|password|reset|forgot|recover"
    r"|otp|verify|verification|mfa|2fa|redeem|checkout|pay|withdraw|refund|purchase"
    r"|subscribe|invite|transfer)(?:$|[/_.-])",
)
# a confirmation page that follows a flow ("your password was changed": Django's
# `password_change/done/`, `password_reset/done/`, `reset/done/`, its admin's too): no flow
_DONE = re.compile(r"(?:^|/)done/?\$?$")
# nouns: a flow where the app creates one (a POST to the collection, its last segment)
_CREATES = re.compile(
    r"(?:^|[/_.-])(?:orders?|coupons?|vouchers?|promos?|gifts?|payments?|transfers?"
    r"|comments?|reviews?|votes?|bookings?|reservations?|messages?|contact|invites?"
    r"|users?|accounts?)/?$",
)
# settings whose default action is a challenge: without a challenge route, the ones
# that hold a person refuse (nobody can pass), a surge is reported only
CHALLENGE_SETTINGS = (
    ("account_takeover", "account_action"),
    ("account_takeover", "population_action"),
    ("bola", "person_action"),
    ("recon", "person_action"),
)
SURGE_SETTINGS = (("flow_groups", "surge_action"),)


@dataclass
class RouteAudit:
    """One route: its methods and template, its own rules, the detectors watching it, and
    what looks left out."""

    methods: tuple[str, ...]
    template: str
    kind: str  # "http", "websocket" or "mount"
    rules: list[str] = field(default_factory=list)
    detectors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "methods": list(self.methods),
            "template": self.template,
            "kind": self.kind,
            "rules": self.rules,
            "detectors": self.detectors,
            "notes": self.notes,
        }


@dataclass
class Audit:
    """An app's protection as declared: the guard's settings and every route."""

    app: str
    mode: str
    store: str
    global_rules: list[str]
    detectors: list[str]
    routes: list[RouteAudit]
    problems: list[str]  # what the start-up check refuses (decorator order, settings)
    warnings: list[str]  # app-wide
    # decorated functions no route serves (helpers, dependencies, library methods): their
    # rules count when a request calls them
    helpers: list[tuple[str, list[str]]] = field(default_factory=list)
    # app-wide facts worth knowing that no setting changes for the better by itself
    # (the in-process store: right for one worker): shown, never failing `--strict`
    info: list[str] = field(default_factory=list)

    @property
    def noted(self) -> list[RouteAudit]:
        """The routes with a note."""
        return [r for r in self.routes if r.notes]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "app": self.app,
            "mode": self.mode,
            "store": self.store,
            "global_rules": self.global_rules,
            "detectors": self.detectors,
            "routes": [r.as_dict() for r in self.routes],
            "problems": self.problems,
            "warnings": self.warnings,
            "helpers": [{"function": name, "rules": rules} for name, rules in self.helpers],
            "info": self.info,
        }


def _rules_of(guard: Guard, endpoint: Any) -> tuple[Rule, ...]:
    """The rules apiguard's outermost wrapper of `endpoint` carries (none: undecorated)."""
    for obj in _unwrap_chain(endpoint):
        if getattr(obj, "__apiguard_guard__", None) is guard:
            return tuple(getattr(obj, "__apiguard_rules__", ()))
    return ()


def _dependencies(route: Any) -> list[Any]:
    """The callables of a FastAPI route's dependencies, its routers' and their own
    dependencies included (a decorated dependency protects the route it runs for)."""
    found: list[Any] = []
    todo = [getattr(route, "dependant", None)]
    while todo and len(found) < 256:
        dependant = todo.pop()
        for sub in getattr(dependant, "dependencies", None) or ():
            call = getattr(sub, "call", None)
            if call is not None:
                found.append(call)
            todo.append(sub)
    return found


def _calls(guard: Guard, entry: RouteEntry) -> list[Any]:
    """What a route runs that may carry rules: its endpoint, its dependencies, and the
    functions with rules of `guard` those call by name (a global or closure variable
    of theirs, one level: a dependency that calls a decorated helper only when the body
    has an e-mail; `inspect.getclosurevars`, which reads names, not calls made)."""
    return [call for call, _ in _calls_via(guard, entry)]


def _calls_via(guard: Guard, entry: RouteEntry) -> list[tuple[Any, str | None]]:
    """`_calls`, each with the name it is called by when found by name (else None)."""
    calls = [entry.endpoint, *_dependencies(entry.route)]
    found: list[tuple[Any, str | None]] = [(call, None) for call in calls]
    for call in calls:
        inner = _unwrap_chain(call)[-1] if call is not None else None
        if not inspect.isfunction(inner):
            continue
        try:
            names = inspect.getclosurevars(inner)
        except (TypeError, ValueError):
            continue
        called = _called_names(inner)
        for name, value in (*names.nonlocals.items(), *names.globals.items()):
            # (a plain function only: a global may be a proxy that raises on any look,
            # Flask's `request` outside a request)
            if (
                name in called
                and type(value) is types.FunctionType
                and _rules_of(guard, value)
            ):
                found.append((value, name))
    return found


def _called_names(function: types.FunctionType) -> set[str]:
    """The global and closure names `function`'s own code calls (`name(...)`): not an
    attribute of the same name (`mailer.reset_password(...)`), nor a name only looked
    at (`reset_password.__name__`), nor one passed on. Python 3.11 and later mark the
    load of a name about to be called (a NULL pushed with it); before, a load that no
    attribute access follows."""
    found: set[str] = set()
    previous = None
    instructions = list(dis.get_instructions(function))
    for i, ins in enumerate(instructions):
        following = instructions[i + 1].opname if i + 1 < len(instructions) else ""
        if ins.opname in ("LOAD_GLOBAL", "LOAD_DEREF", "LOAD_NAME") and isinstance(
            ins.argval, str
        ):
            if sys.version_info >= (3, 11):
                marked = "NULL" in ins.argrepr or (
                    previous is not None and previous.opname == "PUSH_NULL"
                )
            else:  # pragma: no cover - 3.10
                marked = following not in ("LOAD_ATTR", "LOAD_METHOD", "STORE_ATTR")
            if marked:
                found.add(ins.argval)
        previous = ins
    return found


def _merged(
    entries: Iterable[RouteEntry], guard: Guard
) -> list[tuple[RouteEntry, list[Rule], dict[int, set[str]]]]:
    """One row per (template, kind) with the union of its methods and rules (Django lists
    a class-based view once per method handler, Flask a rule per endpoint), and the
    methods each rule came with (by id; empty: every method; by minus its id: the name
    of the function the route's code calls it by, for a rule found only so)."""
    rows: dict[tuple[str, str], tuple[set[str], list[Rule], RouteEntry, dict[int, set[str]]]] = {}
    for entry in entries:
        key = (entry.template, entry.kind)
        methods, rules, _, by_rule = rows.setdefault(key, (set(), [], entry, {}))
        methods.update(entry.methods)
        for call, via in _calls_via(guard, entry):
            for rule in _rules_of(guard, call):
                if not any(rule is r for r in rules):
                    rules.append(rule)
                    if via is not None:  # (counted only if the route's code calls it)
                        by_rule.setdefault(-id(rule), {via})
                elif via is None:
                    by_rule.pop(-id(rule), None)  # (the route runs it itself too)
                seen = by_rule.setdefault(id(rule), set())
                seen.update(entry.methods or {"*"})
    return [
        (
            RouteEntry(template, frozenset(methods), first.endpoint, kind, route=first.route),
            rules,
            by_rule,
        )
        for (template, kind), (methods, rules, first, by_rule) in rows.items()
    ]


def _looks_like_login(template: str) -> bool:
    """Whether a (lower-cased) route template names a login or a token endpoint."""
    if _LOGIN.search(template):
        return True
    literal = [p for p in template.strip("/^$").split("/") if p and not _PARAMETER.search(p)]
    return bool(literal) and bool(_TOKEN.match(literal[-1]))


_ID_NAME = re.compile(r"(?:^|_|-)(?:id|ids|uuid|uuids|pk|pks)$|[a-z](?:Id|Ids|Uuid|ID|IDs)$|^ID$")


def _query_id_names(route: Any) -> list[str]:
    """The query parameters of a FastAPI route whose names say they name objects (`id`,
    `order_id`, `orderId`, `order_ids`, `doc_uuid`, `pk`), as the client sends them
    (aliases), its dependencies' and a query model's fields too (`Annotated[Filters,
    Query()]`); none for other frameworks (their views do not declare query parameters)."""
    dependant = getattr(route, "dependant", None)
    names: list[str] = []

    def add(name: object) -> None:
        if isinstance(name, str) and _ID_NAME.search(name) and name not in names:
            names.append(name)

    stack = [dependant] if dependant is not None else []
    while stack:  # (the route's own parameters and its dependencies')
        found = stack.pop()
        for param in getattr(found, "query_params", ()) or ():
            kind = getattr(getattr(param, "field_info", None), "annotation", None)
            fields = getattr(kind, "model_fields", None)
            if isinstance(fields, dict):  # a query model: its fields are the parameters
                for field_name, info in fields.items():
                    add(getattr(info, "alias", None) or field_name)
                continue
            add(getattr(param, "alias", None) or getattr(param, "name", None))
        stack.extend(getattr(found, "dependencies", ()) or ())
    return names


def _serves_files(entry: RouteEntry) -> bool:
    """Whether the route serves static files (as `serves_files` tells at run time; a Flask
    rule by its endpoint's name, as the Flask adapter marks it)."""
    name = getattr(entry.route, "endpoint", None)
    if isinstance(name, str) and static_endpoint(name):
        return True
    return serves_files({"endpoint": entry.endpoint})


def _methods(methods: frozenset[str]) -> tuple[str, ...]:
    shown = set(methods)
    if "GET" in shown:
        shown.discard("HEAD")  # routed with every GET
    if len(shown) > 1:
        shown.discard("OPTIONS")  # (Flask adds it to every rule)
    return tuple(sorted(shown)) or ("*",)


def _label(rule: Rule, mode: str) -> str:
    if isinstance(rule, LoginRule):
        return "@guard.login"
    if isinstance(rule, ObjectsRule):
        return "@guard.objects"
    return _describe(rule, mode)


def _helpers(guard: Guard, entries: list[RouteEntry]) -> list[tuple[str, list[str]]]:
    """Functions with rules of `guard` that no route of `entries` serves."""
    routed: set[int] = set()
    for entry in entries:
        for call in _calls(guard, entry):
            routed.update(id(obj) for obj in _unwrap_chain(call))
    found = []
    for original, wrappers in guard._decorated.items():
        if id(original) in routed or any(id(w) in routed for w in wrappers):
            continue
        rules = max((getattr(w, "__apiguard_rules__", ()) for w in wrappers), key=len)
        name = getattr(original, "__qualname__", None) or repr(original)
        found.append((name, [_label(r, guard.config.mode) for r in rules]))
    return sorted(found)


def _unless_it_calls(names: list[str], what: str) -> str:
    """The end of a note on a route whose protection may be in a function it calls."""
    if not names:
        return ""
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (
        f"; unless it calls {shown} ({what}, no route of its own: a library's route "
        "calling the app's code, which audit cannot see; each counts when called)"
    )


def audit_routes(
    guard: Guard,
    entries: list[RouteEntry],
    app: str,
    verify: Callable[[], None],
    exclude: tuple[str, ...] = (),
    auth_seen: str | None = None,
    auth_login: Callable[[RouteEntry], bool] | None = None,
) -> Audit:
    """The audit of a route list (`walk_routes(app)`, `DjangoRoutes()`) under `guard`;
    `verify` runs the start-up check (its `ConfigurationError` is a problem listed);
    routes whose template starts with one of `exclude` are left out of the list.
    `auth_seen`: the framework's own authentication reports logins (Django's signals),
    and what to say of it (no route then needs `@guard.login` to be seen); `auth_login`
    tells the routes whose logins go through it (watched by account takeover then)."""
    config = guard.config
    detection = config.detection
    on = {d.name for d in guard.engine.detectors}
    mode = config.mode + (
        f" (overridden: {guard.engine.mode_override})" if guard.engine.mode_override else ""
    )
    routes: list[RouteAudit] = []
    logins = 0
    helpers = _helpers(guard, entries)
    # (a library's route calling a decorated function of the app's, fastapi-users'
    # `UserManager.authenticate`: audit cannot see the call, so its notes name them)
    login_helpers = [n for n, labels in helpers if any("@guard.login" in x for x in labels)]
    flow_helpers = [
        n for n, labels in helpers if any(not x.startswith("@guard.") for x in labels)
    ]
    for entry, rules, by_rule in sorted(_merged(entries, guard), key=lambda er: er[0].template):
        if exclude and entry.template.lstrip("/^").startswith(
            tuple(e.lstrip("/^") for e in exclude)
        ):
            continue
        row = RouteAudit(_methods(entry.methods), entry.template, entry.kind)
        routes.append(row)
        if entry.kind == "websocket":
            row.notes.append("websocket: apiguard checks HTTP requests only")
            continue
        if entry.kind == "mount":
            row.notes.append(
                "a mounted app apiguard cannot list: its requests get the global limits "
                "and the detectors, no per-route rules"
            )
            continue
        rules.sort(key=lambda r: not isinstance(r, LoginRule))
        shown = set(_methods(entry.methods))
        row.rules = []
        for rule in rules:
            label = _label(rule, config.mode)
            only = set(_methods(frozenset(by_rule.get(id(rule), ())) - {"*"}))
            if "*" not in by_rule.get(id(rule), ()) and only and only != shown:
                label += f" ({','.join(sorted(only))} only)"  # (one of the route's views)
            via = by_rule.get(-id(rule))  # (see `_merged`)
            if via:
                label += f" (when it calls {min(via)})"
            row.rules.append(label)
        login = any(isinstance(r, LoginRule) for r in rules)
        logins += login
        flows = [r for r in rules if isinstance(r, FlowRule)]
        methods = set(entry.methods) or {"GET", "POST"}  # (not known: any method)
        reads = bool(methods & {"GET", "HEAD"})
        lowered = entry.template.lower()
        framework_login = (
            auth_seen is not None and auth_login is not None and auth_login(entry)
        )
        if (login or framework_login) and "account_takeover" in on:
            row.detectors.append("account_takeover")
        # (a DRF format suffix, `.json`, names a renderer, no object: a suffix-only route)
        bare = format_suffix(entry.template) or entry.template
        named = bool(_PARAMETER.search(bare)) or bool(detection.bola.query_params)
        declared = any(isinstance(r, ObjectsRule) for r in rules)
        unwatched = [
            n for n in _query_id_names(entry.route) if n not in detection.bola.query_params
        ]
        if unwatched and not declared and "bola" in on:
            row.notes.append(
                f"takes object ids in the query string ({', '.join(unwatched)}): BOLA counts "
                "them only when detection.bola.query_params names them"
            )
        files = _serves_files(entry)  # (not watched at run time: file names)
        if "bola" in on and (named or declared) and not files:
            if detection.bola.routes.get(entry.template) == 0:
                row.notes.append("BOLA detection turned off here (detection.bola.routes)")
            else:
                row.detectors.append("bola")
        if (
            "scraping" in on
            and reads
            and not files
            and entry.template != detection.challenge_path
        ):
            if detection.scraping.routes.get(entry.template) == 0:
                row.notes.append("scraping detection turned off here (detection.scraping.routes)")
            else:
                row.detectors.append("scraping")
        if "flow_groups" in on and any(
            r.name not in detection.flow_groups.ignore_flows for r in flows
        ):
            row.detectors.append("flow_groups")
        writes = bool(methods & WRITES)
        own_limit = bool(flows) or any(
            getattr(r, "rates", None) and not isinstance(r, FlowRule) for r in rules
        )
        reports = calls_login_result(entry.endpoint)
        undeclared = [r for r in rules if isinstance(r, LoginRule) and r.reports is None]
        if undeclared and reports:
            row.notes.append(
                "@guard.login on a view that calls guard.login_result(): taken to report "
                "every outcome (a 2xx it did not report is no success) until a reported "
                "failure is answered 400-404; say reports=True (a form login) or "
                "reports=False (its status tells)"
            )
        blind = [r for r in rules if isinstance(r, LoginRule) and r.success is None]
        if blind and not reports and "GET" in methods and "POST" in methods:
            row.notes.append(
                "@guard.login on a view that also serves its page: if it is an HTML form, "
                "report outcomes with guard.login_result() (a page answered 2xx counts "
                "neither as a success nor as a failure: a form login reporting nothing is "
                "blind to brute force)"
            )
        if (
            writes
            and not login
            and not framework_login
            and _looks_like_login(lowered)
            and not reports
            and not auth_seen
        ):
            row.notes.append(
                "looks like a login: add @guard.login(username=...) below the route "
                "decorator (or report outcomes with guard.login_result()) so account "
                "takeover detection sees it" + _unless_it_calls(login_helpers, "@guard.login")
            )
        elif (
            writes
            and not own_limit
            and not login
            and not _DONE.search(lowered)
            and (_FLOW.search(lowered) or ("POST" in entry.methods and _CREATES.search(lowered)))
        ):
            row.notes.append(
                "looks like a sensitive flow with no @guard.flow or @guard.limit of its "
                "own: only the global per-principal and per-IP limits apply"
                + _unless_it_calls(flow_helpers, "a flow or limit")
            )
        if any(getattr(r, "mode", None) == "monitor" for r in rules) and config.mode != "monitor":
            row.notes.append("a rule here is in monitor mode: reported, never refused")
    problems: list[str] = []
    try:
        verify()
    except ConfigurationError as exc:
        problems.append(str(exc))
    logins += sum("@guard.login" in rules for _, rules in helpers)
    warnings = _app_warnings(guard, on, logins or auth_seen is not None)
    if auth_seen and "account_takeover" in on:
        warnings.append(auth_seen)
    if not entries:
        warnings.insert(
            0,
            "no route could be listed (not a Starlette/FastAPI, Flask or Django app, or no "
            "route yet): only the global rules and the detectors are known",
        )
    store = type(guard.store).__name__
    info = []
    if store == "MemoryStore":
        info.append(
            "in-process store: each worker process counts alone (run one worker, or "
            "Guard(store='redis://...'))"
        )
    return Audit(
        app,
        mode,
        store,
        [_describe(r, config.mode, False) for r in guard.engine.global_rules],
        sorted(on),
        routes,
        problems,
        warnings,
        helpers,
        info,
    )


def _app_warnings(guard: Guard, on: set[str], logins: int | bool) -> list[str]:
    config = guard.config
    detection = config.detection
    warnings: list[str] = []
    if config.mode == "monitor" or guard.engine.mode_override == "monitor":
        warnings.append("mode is monitor: everything is reported, nothing is refused")
    if detection.challenge_path is None:

        def asked(settings: tuple[tuple[str, str], ...]) -> list[str]:
            return [
                f"detection.{section}.{name}"
                for section, name in settings
                if section in on and getattr(getattr(detection, section), name) == "challenge"
            ]

        held = asked(CHALLENGE_SETTINGS)
        if held:
            warnings.append(
                "no challenge route (detection.challenge_path): what these settings answer "
                "with a challenge is refused (403, challenge required), and nobody can pass "
                "it until the app calls guard.challenge_passed() somewhere: "
                + ", ".join(held)
                + " (add a challenge route and declare it, or set them to 'throttle' or "
                "'block')"
            )
        surges = asked(SURGE_SETTINGS) + (["detection.scraping"] if "scraping" in on else [])
        if surges:
            warnings.append(
                "no challenge route (detection.challenge_path): surges are reported only, "
                "nobody is held, until somebody passes a challenge: " + ", ".join(surges)
            )
    if "account_takeover" in on and not logins:
        warnings.append(
            "no route has @guard.login: account takeover detection sees only the outcomes "
            "the app reports with guard.login_result()"
        )
    off = sorted(
        name
        for name in ("account_takeover", "bola", "rotation", "flow_groups", "scraping", "recon")
        if name not in on
    )
    if off:
        warnings.append("detectors turned off: " + ", ".join(off))
    if not config.client_ip.trusted_proxies:
        warnings.append(
            "no trusted proxies: X-Forwarded-For is ignored, so behind a load balancer or "
            "reverse proxy every client would share the proxy's address "
            "(set client_ip.trusted_proxies to its network)"
        )
    return warnings


def audit_app(app: Any, guard: Guard, name: str = "app", exclude: tuple[str, ...] = ()) -> Audit:
    """The audit of a Starlette/FastAPI or Flask `app` protected by `guard`."""
    import sys

    flask = sys.modules.get("flask")
    target: Any = app
    if flask is not None and isinstance(app, flask.Flask):
        from apiguard.flask import FlaskRoutes

        target = FlaskRoutes(app)
    else:
        from apiguard.wsgi import GuardMiddleware

        if isinstance(app, GuardMiddleware) and app._routes is not None:
            target = app._routes  # (any WSGI app: the routes it was given)
    entries = list(walk_routes(target))
    return audit_routes(guard, entries, name, lambda: guard.verify(target), exclude)


def audit_django(
    urlconf: str | None = None, name: str = "django", exclude: tuple[str, ...] = ()
) -> Audit:
    """The audit of the configured Django project's URLconf under `apiguard.django.guard`."""
    from django.conf import settings

    from apiguard.django import DjangoRoutes, check, get_guard
    from apiguard.django_auth import GATE_PATH, _gated

    entries = list(DjangoRoutes(urlconf).__apiguard_routes__())
    seen = None
    if "django.contrib.auth" in settings.INSTALLED_APPS:
        seen = "logins through django.contrib.auth are seen without @guard.login (its signals), "
        if _gated():
            seen += f"and held back before the password check ({GATE_PATH} is listed first)"
        else:
            seen += f"but never held back: list {GATE_PATH!r} first in AUTHENTICATION_BACKENDS"
    guard = get_guard()
    found = audit_routes(guard, entries, name, lambda: check(urlconf), exclude, seen, _django_login)
    unidentified = _drf_unidentified(guard, entries)
    if unidentified:
        shown = ", ".join(unidentified[:5]) + (
            f" and {len(unidentified) - 5} more" if len(unidentified) > 5 else ""
        )
        found.warnings.append(
            "Django REST Framework views that write, whose authentication classes never "
            "call identify() and whose write handlers carry no apiguard rule: a user's "
            "limit or ban is checked only after such a view ran, so their writes cannot "
            "be refused (put an identify()-calling authentication class in each view's "
            f"own authentication_classes: a view's list replaces the default): {shown}"
        )
    return found


def _identifies(auth: Any) -> bool:
    """Whether a DRF authentication class (or one of its own bases, DRF's left out)
    calls `identify()`."""
    for klass in getattr(auth, "__mro__", ()):
        if str(getattr(klass, "__module__", "")).startswith("rest_framework"):
            continue
        for value in vars(klass).values():
            inner = _unwrap_chain(value)[-1] if callable(value) else None
            if inspect.isfunction(inner) and "identify" in _called_names(inner):
                return True
    return False


def _drf_unidentified(guard: Guard, entries: list[RouteEntry]) -> list[str]:
    """The templates of DRF views with write handlers no apiguard rule checks, whose
    authentication classes (some) never call `identify()`."""
    found: list[str] = []
    for entry in entries:
        view = entry.endpoint
        cls = getattr(view, "cls", None)
        if entry.methods or not isinstance(cls, type) or entry.template in found:
            continue
        if not callable(getattr(cls, "perform_authentication", None)):
            continue  # (not a DRF view)
        classes = getattr(cls, "authentication_classes", None) or ()
        if not classes or any(_identifies(a) for a in classes):
            continue
        actions = getattr(view, "actions", None)
        for method in sorted(WRITES):
            name = actions.get(method.lower()) if isinstance(actions, dict) else method.lower()
            handler = getattr(cls, name, None) if isinstance(name, str) else None
            if callable(handler) and not _rules_of(guard, handler):
                found.append(entry.template)
                break
    return found


# a login view's class (Django's `LoginView`, DRF's `ObtainAuthToken`, SimpleJWT's
# `TokenObtainPairView`, dj-rest-auth's and knox's `LoginView`) or function (`login`,
# the admin site's `login`): not `LoginRequiredMixin`, `LogoutView`
_LOGIN_VIEW = re.compile(
    r"LoginView$|^Login$|ObtainAuthToken|TokenObtain|ObtainJSONWebToken|(?:^|_)log_?in(?:_view)?$",
    re.IGNORECASE,
)


def _django_login(entry: RouteEntry) -> bool:
    """Whether a Django route's view is a login, whose `authenticate()` Django's signals
    report (its view class or function named so, or its template)."""
    view = entry.endpoint
    cls = getattr(view, "view_class", None) or getattr(view, "cls", None)
    names = [c.__name__ for c in cls.__mro__] if isinstance(cls, type) else []
    names.append(str(getattr(view, "__name__", "")))
    return any(_LOGIN_VIEW.search(n) for n in names) or _looks_like_login(entry.template.lower())


def _cell(items: list[str]) -> str:
    return ", ".join(items) if items else "-"


def format_audit(audit: Audit) -> str:
    """The audit as text: a header, one table row per route, then the notes."""
    lines = [
        f"apiguard audit of {audit.app}: mode={audit.mode}, store {audit.store}",
        f"global rules (every request): {_cell(audit.global_rules)}",
        f"detectors on: {_cell(audit.detectors)}"
        + (" (recon and rotation watch every route)" if audit.detectors else ""),
        "",
        "| route | own rules | detectors watching | notes |",
        "|---|---|---|---|",
    ]
    for row in audit.routes:
        label = f"{','.join(row.methods)} {row.template}"
        notes = "see below" if row.notes else ""
        lines.append(f"| {label} | {_cell(row.rules)} | {_cell(row.detectors)} | {notes} |")
    ruled = sum(1 for r in audit.routes if r.rules)
    watched = sum(1 for r in audit.routes if r.detectors)
    lines += [
        "",
        f"{len(audit.routes)} routes: {ruled} with rules of their own, {watched} watched by "
        f"a route detector, {len(audit.noted)} with notes.",
    ]
    if audit.problems:
        lines += ["", "Problems (the app refuses to start with these):"]
        lines += [f"- {p}" for p in audit.problems]
    noted = audit.noted
    if noted:
        lines += ["", "Routes:"]
        for row in noted:
            label = f"{','.join(row.methods)} {row.template}"
            lines += [f"- {label}: {note}" for note in row.notes]
    if audit.helpers:
        lines += ["", "Functions with rules no route serves (counted when a request calls them):"]
        lines += [f"- {name} [{_cell(rules)}]" for name, rules in audit.helpers]
    if audit.warnings or audit.info:
        lines += ["", "App:"]
        lines += [f"- {w}" for w in (*audit.warnings, *audit.info)]
    return "\n".join(lines)
