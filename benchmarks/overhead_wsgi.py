"""In-process overhead on WSGI: Flask and Django, bare and guarded, against their peers.

Flask: bare, a no-op WSGI middleware, apiguard (`init_app`), Flask-Limiter (memory
storage, the same never-reached limit per client IP). Django: bare (no middleware),
apiguard (`apiguard.django.GuardMiddleware`), django-ratelimit (`@ratelimit(key="ip")` on
every view, local-memory cache). Each app has 10 routes `/r{i}/items/<int:item_id>` whose
views return "ok"; requests are driven straight through the WSGI callable (a fresh copy of
a hand-built environ, the body iterated and closed), from a pool of 1,000 client
addresses, round-robin in shuffled order; medians as in overhead.py, of this thread's CPU
time (time.thread_time_ns), which time slices lost to other processes on a shared machine
do not inflate. Nothing is refused: this measures overhead only. With `overhead.py
--before REV`, apiguard at git revision REV runs too (detectors on and off), in the same
run; each table ends with apiguard's added µs as a share of its peer's (issue 8's ratios).

    python benchmarks/overhead_wsgi.py [--quick]     (overhead.py runs it too)
"""

from __future__ import annotations

import argparse
import gc
import io
import random
import statistics
import sys
import time
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from apiguard.config import DetectionConfig

HIGH = "100000000/minute"
GUARD_CONFIG: dict[str, Any] = {
    "limits": {"principal": HIGH, "ip": HIGH},
    "identity": {"new_credentials_per_ip": HIGH},
}
# the same with every detector off: the adapter and the limits alone (every detector
# the configuration knows, so one added later is off here too)
NO_DETECTORS: dict[str, Any] = {
    **GUARD_CONFIG,
    "detection": {
        name: {"enabled": False}
        for name, field in DetectionConfig.model_fields.items()
        if isinstance(field.default, BaseModel) and "enabled" in type(field.default).model_fields
    },
}
ROUTES = 10
# `overhead.py --before REV`: the git revision whose apiguard (imported as
# `apiguard_before`) also runs, side by side with this one in the same run
BEFORE_REV: str | None = None
WSGIApp = Callable[[dict[str, Any], Any], Iterable[bytes]]


# -- Flask ------------------------------------------------------------------------------
def flask_app(kind: str) -> tuple[WSGIApp, Callable[[], bool]]:
    from flask import Flask

    app = Flask(f"bench_{kind}")
    probe: Callable[[], bool] = lambda: True  # noqa: E731
    guard = None
    if kind.startswith("apiguard"):
        import importlib

        package = "apiguard_before" if kind.startswith("apiguard-before") else "apiguard"
        Guard = importlib.import_module(package).Guard
        init_app = importlib.import_module(f"{package}.flask").init_app
        guard = Guard(NO_DETECTORS if kind.endswith("no-detectors") else GUARD_CONFIG)
        init_app(app, guard)
        probe = lambda: len(guard.store._windows) > 0  # type: ignore[attr-defined]  # noqa: E731
    for i in range(ROUTES):

        def item(item_id: int) -> str:
            return "ok"

        item.__name__ = f"r{i}_item"
        app.add_url_rule(f"/r{i}/items/<int:item_id>", view_func=item)
    if kind == "flask-limiter":
        from flask_limiter import Limiter
        from flask_limiter.util import get_remote_address

        limiter = Limiter(
            get_remote_address, app=app, default_limits=[HIGH], storage_uri="memory://"
        )
        probe = lambda: bool(limiter.storage.storage)  # type: ignore[attr-defined]  # noqa: E731
    if kind == "noop":
        inner = app.wsgi_app

        def noop(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            return inner(environ, start_response)

        app.wsgi_app = noop  # type: ignore[method-assign]
    return app, probe


# -- Django -----------------------------------------------------------------------------
def configure_django() -> None:
    import django
    from django.conf import settings

    if settings.configured:
        return
    urls = types.ModuleType("bench_urls")
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=urls,
        INSTALLED_APPS=[],
        MIDDLEWARE=[],
        DATABASES={},
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
        APIGUARD=GUARD_CONFIG,
        USE_TZ=True,
        LOGGING_CONFIG=None,
        SILENCED_SYSTEM_CHECKS=["django_ratelimit.E003", "django_ratelimit.W001"],
    )
    django.setup()
    from django.http import HttpResponse
    from django.urls import path
    from django_ratelimit.decorators import ratelimit

    patterns = []
    for i in range(ROUTES):

        def item(request: Any, item_id: int) -> HttpResponse:
            return HttpResponse("ok")

        patterns.append(path(f"r{i}/items/<int:item_id>", item))
        limited = ratelimit(key="ip", rate=HIGH.replace("minute", "m"), block=True)(item)
        patterns.append(path(f"rl/r{i}/items/<int:item_id>", limited))
    urls.urlpatterns = patterns  # type: ignore[attr-defined]


def django_app(kind: str) -> tuple[WSGIApp, Callable[[], bool]]:
    configure_django()
    from django.conf import settings
    from django.core.cache import cache
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.signals import setting_changed

    guarded = kind.startswith("apiguard")
    package = "apiguard_before" if kind.startswith("apiguard-before") else "apiguard"
    settings.MIDDLEWARE = [f"{package}.django.GuardMiddleware"] if guarded else []
    settings.APIGUARD = NO_DETECTORS if kind.endswith("no-detectors") else GUARD_CONFIG
    setting_changed.send(sender=None, setting="APIGUARD", value=settings.APIGUARD, enter=True)
    handler = WSGIHandler()  # loads the middleware now (a guard from the new settings)
    if guarded:
        import importlib

        guard = importlib.import_module(f"{package}.django").get_guard()
        return handler, lambda: len(guard.store._windows) > 0  # type: ignore[attr-defined]
    if kind == "django-ratelimit":
        return handler, lambda: bool(cache._cache)  # type: ignore[attr-defined]
    return handler, lambda: True


# -- the driver -------------------------------------------------------------------------
def environs(prefix: str, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for _ in range(2048):
        out.append(
            {
                "REQUEST_METHOD": "GET",
                "SCRIPT_NAME": "",
                "PATH_INFO": f"{prefix}/r{rng.randrange(ROUTES)}/items/{rng.randrange(1, 99_999)}",
                "QUERY_STRING": "",
                "SERVER_NAME": "bench.local",
                "SERVER_PORT": "8000",
                "SERVER_PROTOCOL": "HTTP/1.1",
                "HTTP_HOST": "bench.local",
                "HTTP_USER_AGENT": "overhead_wsgi.py",
                "HTTP_ACCEPT": "*/*",
                "wsgi.version": (1, 0),
                "wsgi.url_scheme": "http",
                "wsgi.input": io.BytesIO(b""),
                "wsgi.errors": sys.stderr,
                "wsgi.multithread": False,
                "wsgi.multiprocess": False,
                "wsgi.run_once": False,
            }
        )
    return out


CLIENTS = [f"10.0.{i >> 8 & 255}.{i & 255}" for i in range(1000)]


@dataclass
class Variant:
    table: str  # "Flask" or "Django"
    label: str
    app: WSGIApp
    probe: Callable[[], bool]
    templates: list[dict[str, Any]]
    header: str | None = None  # the header that proves apiguard checked
    cursor: int = 0
    samples: list[float] = field(default_factory=list)

    def run(self, n: int, check: bool = False) -> float:
        app, templates = self.app, self.templates
        nt, nc = len(templates), len(CLIENTS)
        statuses: list[str] = []
        seen: list[list[tuple[str, str]]] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> Any:
            if check:
                statuses.append(status)
                seen.append(headers)
            return None

        k = self.cursor
        end = k + n
        t0 = time.thread_time_ns()
        while k < end:
            environ = templates[k % nt].copy()
            environ["REMOTE_ADDR"] = CLIENTS[k % nc]
            body = app(environ, start_response)
            for _ in body:
                pass
            close = getattr(body, "close", None)
            if close is not None:
                close()
            k += 1
        elapsed = time.thread_time_ns() - t0
        self.cursor = end
        if check:
            bad = [s for s in statuses if not s.startswith("200")]
            if bad or len(statuses) != n:
                sys.exit(f"{self.label}: unexpected responses {bad[:3]}")
            if self.header and not any(h[0].lower() == self.header for h in seen[0]):
                sys.exit(f"{self.label}: no {self.header} header: apiguard did not check")
            if not self.probe():
                sys.exit(f"{self.label}: the limiter recorded nothing")
        return elapsed / n / 1000


def build_variants() -> list[Variant]:
    plain = environs("", 1)
    limited = environs("/rl", 1)  # the same requests to django-ratelimit's views
    out = []
    was = f"apiguard at {BEFORE_REV}"
    flask_kinds = [
        ("bare Flask", "bare"),
        ("no-op WSGI middleware", "noop"),
        ("apiguard (init_app)", "apiguard"),
        ("apiguard, detectors off", "apiguard-no-detectors"),
        ("Flask-Limiter, memory storage", "flask-limiter"),
    ]
    django_kinds = [
        ("bare Django", "bare"),
        ("apiguard (GuardMiddleware)", "apiguard"),
        ("apiguard, detectors off", "apiguard-no-detectors"),
        ("django-ratelimit, locmem cache", "django-ratelimit"),
    ]
    if BEFORE_REV:
        flask_kinds[4:4] = [
            (f"{was} (init_app)", "apiguard-before"),
            (f"{was}, detectors off", "apiguard-before-no-detectors"),
        ]
        django_kinds[3:3] = [
            (f"{was} (GuardMiddleware)", "apiguard-before"),
            (f"{was}, detectors off", "apiguard-before-no-detectors"),
        ]
    for label, kind in flask_kinds:
        app, probe = flask_app(kind)
        header = "ratelimit" if kind.startswith("apiguard") else None
        out.append(Variant("Flask", label, app, probe, plain, header))
    for label, kind in django_kinds:
        app, probe = django_app(kind)
        header = "ratelimit" if kind.startswith("apiguard") else None
        templates = limited if kind == "django-ratelimit" else plain
        out.append(Variant("Django", label, app, probe, templates, header))
    return out


def measure(rounds: int, batch: int, warmup: int) -> list[Variant]:
    vs = build_variants()
    for v in vs:
        v.run(200, check=True)
        v.run(max(warmup, len(CLIENTS)))
    gc.collect()
    gc.freeze()
    rng = random.Random(1)
    order = list(vs)
    for _ in range(rounds):
        rng.shuffle(order)
        for v in order:
            v.samples.append(v.run(batch))
    for v in vs:
        v.run(200, check=True)
    return vs


def tables(vs: list[Variant]) -> str:
    out = []
    for name in ("Flask", "Django"):
        rows = [v for v in vs if v.table == name]
        bare = rows[0]
        out.append(
            f"\n{name} (WSGI), {ROUTES} routes, 1,000 client IPs\n\n"
            "| variant | CPU µs/req | ratio to bare | added µs | IQR µs/req |\n"
            "|---|---:|---:|---:|---:|"
        )
        for v in rows:
            pairs = list(zip(v.samples, bare.samples, strict=True))
            ratio = statistics.median(x / y for x, y in pairs)
            added = statistics.median(x - y for x, y in pairs)
            q1, _, q3 = statistics.quantiles(v.samples, n=4)
            out.append(
                f"| {v.label} | {statistics.median(v.samples):.1f} | {ratio:.2f}x "
                f"| {added:+.1f} | {q1:.1f}-{q3:.1f} |"
            )
        peer = rows[-1]  # Flask-Limiter, django-ratelimit
        out.append("")
        for v in rows:
            if v.label.startswith("apiguard"):
                share = statistics.median(v.samples) - statistics.median(bare.samples)
                share /= statistics.median(peer.samples) - statistics.median(bare.samples)
                out.append(f"{v.label}: added µs / {peer.label}'s added µs = {share:.2f}")
    return "\n".join(out)


def run(quick: bool = False) -> str:
    rounds, batch, warmup = (10, 400, 500) if quick else (30, 1000, 2000)
    started = time.perf_counter()
    vs = measure(rounds, batch, warmup)
    head = (
        f"WSGI overhead, in process: Python {sys.version.split()[0]}, {rounds} round-robin "
        f"rounds x {batch} requests per variant, medians ({time.perf_counter() - started:.0f} s)"
    )
    return head + "\n" + tables(vs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer, shorter repetitions")
    print(run(ap.parse_args().quick))


if __name__ == "__main__":
    main()
