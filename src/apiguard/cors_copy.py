"""Refusals a browser can read under WSGI and Django: the app's own CORS headers, copied.

Under Flask (flask-cors) and Django (django-cors-headers) the CORS headers are added to the
app's response by the app itself (an `after_request` function, a middleware). A refusal
that replaces the app's response would lose them, and a browser front-end would see a CORS
error instead of the 429 and its Retry-After. So a refusal keeps the CORS headers of the
response it replaces — the app's own answer for this request and this origin, nothing
invented — and, where the app allowed the origin, `Access-Control-Expose-Headers` names
apiguard's `Retry-After`, `RateLimit` and `RateLimit-Policy` too. A refusal that replaces
no response of the app (an early ban, an app that raised) asks the app's CORS code for the
headers where the adapter knows it (`flask_cors_headers`, Django's `CorsMiddleware`).

Only CORS headers are copied (`Access-Control-*`, and `Vary`'s Origin): the status, body
and apiguard's own headers stay apiguard's, so no hook of the app can drop or rewrite them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

EXPOSED = ("Retry-After", "RateLimit", "RateLimit-Policy")  # what apiguard's answers carry
_ALLOW_ORIGIN = "access-control-allow-origin"
_EXPOSE = "access-control-expose-headers"

CorsSource = Callable[[Any], list[tuple[str, str]]]  # environ -> the app's CORS headers


def kept(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The CORS headers among a response's `headers`: `Access-Control-*`, and `Vary:
    Origin` (a cache must key the refusal on the origin as it would the app's answer)."""
    found: list[tuple[str, str]] = []
    for name, value in headers:
        lower = name.lower()
        if lower.startswith("access-control-"):
            found.append((name, value))
        elif lower == "vary" and "origin" in value.lower():
            found.append(("Vary", "Origin"))
    return found


def with_cors(
    headers: list[tuple[str, str]], cors: Iterable[tuple[str, str]]
) -> list[tuple[str, str]]:
    """A refusal's `headers` with the app's `cors` headers added; where the app allowed the
    origin, `Access-Control-Expose-Headers` also names apiguard's headers present (merged
    with the app's list). apiguard's own headers are never replaced."""
    own = {name.lower() for name, _ in headers}
    added: list[tuple[str, str]] = []
    exposed: list[str] = []
    allowed = False
    for name, value in cors:
        lower = name.lower()
        if lower == _EXPOSE:
            exposed.extend(p.strip() for p in value.split(",") if p.strip())
            continue
        if lower in own and lower != "vary":
            continue
        allowed = allowed or lower == _ALLOW_ORIGIN
        if (name, value) not in added:
            added.append((name, value))
    if allowed:
        known = {e.lower() for e in exposed}
        if "*" not in known or any(
            n.lower() == "access-control-allow-credentials" for n, _ in added
        ):
            exposed.extend(n for n in EXPOSED if n.lower() in own and n.lower() not in known)
    if allowed and exposed:
        added.append(("Access-Control-Expose-Headers", ", ".join(exposed)))
    return [*headers, *added]


def flask_cors_headers(app: Any) -> CorsSource:
    """For a refusal that replaces no response of the Flask `app`: the headers its
    flask-cors `after_request` functions (`CORS(app)`, `CORS(blueprint)`) add to a
    response to this request, run in a request context of their own (no other
    `after_request` function of the app runs). Only for a request with an Origin."""

    def headers(environ: Any) -> list[tuple[str, str]]:
        if "HTTP_ORIGIN" not in environ:
            return []
        funcs = app.after_request_funcs
        if not any(_is_flask_cors(f) for fs in funcs.values() for f in fs):
            return []
        from flask import request

        with app.request_context(dict(environ)):
            response = app.response_class()
            for name in (*request.blueprints, None):
                for func in reversed(funcs.get(name, ())):
                    if _is_flask_cors(func):
                        response = func(response)
            return kept(response.headers.items())

    return headers


def _is_flask_cors(func: Any) -> bool:
    return str(getattr(func, "__module__", "")).startswith("flask_cors")
