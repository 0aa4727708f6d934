"""In-process overhead of apiguard against a bare app, a no-op middleware, limits and slowapi.

Every variant is a Starlette app with N routes `/r{i}/items/{item_id}` (N = 10 and 200)
whose async endpoints return a small PlainTextResponse. Requests are driven straight
through the ASGI callable (no server, no HTTP client): a hand-built scope, a `receive`
that returns one empty `http.request`, a `send` that discards. Requests hit a seeded mix
of routes and path parameters, from a pool of distinct client addresses.

Variants run round-robin (in a shuffled order each round, each round's batch in blocks of
`--block` requests, the variants interleaved block by block) so machine noise hits them all
alike; µs/req is the median over rounds of one batch's mean, and the ratio / added µs are
medians of per-round comparisons with the bare app at the same route count. Issue 7's
lines give the ratio of the median added costs and the median of each round's ratio. The CPU
columns repeat the measurement with this thread's CPU time (time.thread_time_ns), which
time slices lost to other processes on a shared machine do not inflate.
Limits are set high enough that nothing is ever refused: this measures overhead only.
"apiguard default" runs every detector (the default); "detectors off" is the same policy
with each detector disabled (the core alone), and the last lines give the ratio of the two
added costs per route count, and for 1,000 API keys at 10 routes (issue 7's target: at
most 2x). Every request here names an
object (a path parameter), so the BOLA detector observes each one.
"same work hand-fused" is fused_floor.py: the default policy's per-request work for an
admitted anonymous request in one function, with none of apiguard's layers (a lower bound
for this interpreter; the gap to "apiguard default" is what the layers cost).
Requests run one at a time, so costs that need concurrent requests or a real server (GC
pressure from objects kept alive per keep-alive connection, header serialisation) show
only in http.sh.

    /work/venv/bin/python benchmarks/overhead.py            # full run (~1.5-2 min)
    /work/venv/bin/python benchmarks/overhead.py --quick    # ~15 s
    /work/venv/bin/python benchmarks/overhead.py --profile apiguard-default
    /work/venv/bin/python benchmarks/overhead.py --before 65266cd   # + apiguard at a git
                                    revision, side by side in the same run (a change's cost)
    /work/venv/bin/python benchmarks/overhead.py --only wsgi   # Flask and Django tables only

After the ASGI table, the same run prints the Flask and Django (WSGI) tables of
overhead_wsgi.py: bare Flask, a no-op WSGI middleware, apiguard, Flask-Limiter; bare
Django, apiguard, django-ratelimit.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import overhead_wsgi
from fused_floor import FusedFloor
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from slowapi import Limiter
from slowapi.middleware import SlowAPIASGIMiddleware
from slowapi.util import get_remote_address
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import apiguard
from apiguard import Guard
from apiguard.asgi import GuardMiddleware
from apiguard.config import DetectionConfig

BEFORE: dict[str, Any] = {}  # Guard and GuardMiddleware of `--before REV`, once loaded


def load_before(rev: str) -> None:
    """Import apiguard as it was at git revision `rev`, renamed `apiguard_before` (its own
    modules, state and caches), so both versions run in one process, in one run."""
    import importlib
    import re
    import subprocess
    import tarfile
    import tempfile
    from io import BytesIO

    root = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "-C", root, "archive", rev, "src/apiguard"], capture_output=True, check=True
    ).stdout
    target = tempfile.mkdtemp(prefix="apiguard_before_")
    imports = re.compile(r"^(\s*)(from|import) apiguard\b", re.M)
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            rel = member.name.removeprefix("src/apiguard")
            path = os.path.join(target, "apiguard_before" + rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            if path.endswith(".py"):
                data = imports.sub(r"\1\2 apiguard_before", data.decode()).encode()
            with open(path, "wb") as handle:
                handle.write(data)
    sys.path.insert(0, target)
    BEFORE["Guard"] = importlib.import_module("apiguard_before").Guard
    BEFORE["GuardMiddleware"] = importlib.import_module("apiguard_before.asgi").GuardMiddleware
    BEFORE["rev"] = rev


HIGH = "100000000/minute"  # never reached: overhead, not refusals
# many keys from one client address look like made-up keys; raise that limit too, so the
# new-credentials-per-IP rule is measured (it runs), not tripped
GUARD_CONFIG: dict[str, Any] = {
    "limits": {"principal": HIGH, "ip": HIGH},
    "identity": {"new_credentials_per_ip": HIGH},
}
# the same with every detector off: the core's default policy alone (the detectors' cost
# is the difference; issue 7's target: detectors on add at most 2x what this adds)
# (every detector the configuration has, so one added later is off here too)
NO_DETECTORS: dict[str, Any] = {
    **GUARD_CONFIG,
    "detection": {
        name: {"enabled": False} for name, value in DetectionConfig() if hasattr(value, "enabled")
    },
}
SLOWAPI_LIMIT = "1000000/minute"
FLOW_RATE = "1000000/minute"
TEMPLATES = 4096  # distinct (route, item_id) scopes per route count

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


# -- the apps ---------------------------------------------------------------------------
def make_endpoint(i: int) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return PlainTextResponse("ok")

    endpoint.__name__ = endpoint.__qualname__ = f"r{i}_item"
    return endpoint


def starlette_app(n_routes: int, wrap: Callable[[Any], Any] | None = None) -> Starlette:
    endpoints = [make_endpoint(i) for i in range(n_routes)]
    if wrap is not None:
        endpoints = [wrap(ep) for ep in endpoints]
    routes = [Route(f"/r{i}/items/{{item_id}}", ep) for i, ep in enumerate(endpoints)]
    return Starlette(routes=routes)


class Noop:
    """The cheapest possible pure-ASGI middleware."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


class LimitsMiddleware:
    """The "15-line middleware on `limits`" baseline: one moving window per client IP."""

    def __init__(self, app: ASGIApp, rate: str = HIGH) -> None:
        self.app = app
        self.storage = MemoryStorage()
        self.limiter = MovingWindowRateLimiter(self.storage)
        self.item = parse(rate)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        client = scope.get("client")
        if not self.limiter.hit(self.item, client[0] if client else "unknown"):
            return await PlainTextResponse("Too Many Requests", 429)(scope, receive, send)
        await self.app(scope, receive, send)


M = TypeVar("M")


def with_middleware(n_routes: int, cls: type[M]) -> tuple[Starlette, M]:
    """A Starlette app wrapped in `cls`, and the middleware instance (to probe its state)."""
    app = starlette_app(n_routes)
    app.add_middleware(cls)  # type: ignore[arg-type]
    app.middleware_stack = app.build_middleware_stack()
    mw: Any = app.middleware_stack
    while not isinstance(mw, cls):
        mw = mw.app
    return app, mw


def build(kind: str, n_routes: int) -> tuple[ASGIApp, Callable[[], bool]]:
    """The app for `kind`, and a probe that says its limiter really counted requests."""
    if kind == "bare":
        return starlette_app(n_routes), lambda: True
    if kind == "noop":
        app = starlette_app(n_routes)
        app.add_middleware(Noop)
        return app, lambda: True
    if kind == "limits-mw":
        app, limiter = with_middleware(n_routes, LimitsMiddleware)
        return app, lambda: bool(limiter.storage.events)
    if kind == "fused-floor":
        app, floor = with_middleware(n_routes, FusedFloor)
        return app, lambda: len(floor) > 0
    if kind in (
        "apiguard-default",
        "apiguard-flow",
        "apiguard-no-detectors",
        "before-default",
        "before-flow",
    ):
        before = kind.startswith("before")
        guard_cls = BEFORE["Guard"] if before else Guard
        guard = guard_cls(NO_DETECTORS if kind.endswith("no-detectors") else GUARD_CONFIG)
        wrap = guard.flow("f", FLOW_RATE) if kind.endswith("flow") else None
        app = starlette_app(n_routes, wrap)
        app.add_middleware(BEFORE["GuardMiddleware"] if before else GuardMiddleware, guard=guard)
        return app, lambda: len(guard.store._windows) > 0
    if kind == "slowapi":
        limiter = Limiter(key_func=get_remote_address, default_limits=[SLOWAPI_LIMIT])
        app = starlette_app(n_routes)
        app.state.limiter = limiter
        app.add_middleware(SlowAPIASGIMiddleware)
        return app, lambda: bool(limiter._storage.storage)
    raise ValueError(kind)


# -- the requests -----------------------------------------------------------------------
def scope_templates(n_routes: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for _ in range(TEMPLATES):
        path = f"/r{rng.randrange(n_routes)}/items/{rng.randrange(1, 100_000)}"
        out.append(
            {
                "type": "http",
                "asgi": {"version": "3.0", "spec_version": "2.3"},
                "http_version": "1.1",
                "method": "GET",
                "scheme": "http",
                "path": path,
                "raw_path": path.encode(),
                "root_path": "",
                "query_string": b"",
                "headers": [
                    (b"host", b"bench.local"),
                    (b"user-agent", b"overhead.py"),
                    (b"accept", b"*/*"),
                ],
                "server": ("127.0.0.1", 8000),
            }
        )
    return out


def client_pool(n: int) -> list[tuple[str, int]]:
    """`n` distinct IPv4 peers (10.x.y.z), shuffled."""
    peers = [(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 40000 + i % 20000) for i in range(n)]
    random.Random(n).shuffle(peers)
    return peers


def key_headers(n: int) -> list[tuple[bytes, bytes]]:
    return [(b"x-api-key", f"key-{i:06d}-{i * 7919 % 1_000_003:07d}".encode()) for i in range(n)]


BODY_MSG = {"type": "http.request", "body": b"", "more_body": False}


async def receive() -> dict[str, Any]:
    return BODY_MSG


async def discard(message: dict[str, Any]) -> None:
    pass


@dataclass
class Variant:
    label: str
    kind: str
    routes: int
    principals: int
    identity: str  # "ip": principal = client address; "key": x-api-key header
    app: ASGIApp = field(init=False)
    probe: Callable[[], bool] = field(init=False)
    templates: list[dict[str, Any]] = field(init=False)
    clients: list[tuple[str, int]] = field(init=False)
    keys: list[tuple[bytes, bytes]] | None = field(init=False, default=None)
    cursor: int = 0
    samples: list[float] = field(default_factory=list)  # wall µs/req per round
    cpu: list[float] = field(default_factory=list)  # this thread's CPU µs/req per round

    def setup(self, templates: list[dict[str, Any]], pools: dict[int, Any]) -> None:
        self.app, self.probe = build(self.kind, self.routes)
        self.templates = templates
        if self.identity == "key":
            self.clients = pools[1000]
            self.keys = key_headers(self.principals)
        else:
            self.clients = pools[self.principals]

    async def run(self, n: int, send: Any = discard) -> tuple[float, float]:
        """`n` requests; mean µs/request by the wall clock and by this thread's CPU time."""
        app, templates, clients, keys = self.app, self.templates, self.clients, self.keys
        nt, nc = len(templates), len(clients)
        k = self.cursor
        end = k + n
        if keys is None:
            c0 = time.thread_time_ns()
            t0 = time.perf_counter_ns()
            while k < end:
                scope = templates[k % nt].copy()
                scope["client"] = clients[k % nc]
                await app(scope, receive, send)
                k += 1
            elapsed = time.perf_counter_ns() - t0
            cpu = time.thread_time_ns() - c0
        else:
            nk = len(keys)
            c0 = time.thread_time_ns()
            t0 = time.perf_counter_ns()
            while k < end:
                scope = templates[k % nt].copy()
                scope["client"] = clients[k % nc]
                scope["headers"] = [*scope["headers"], keys[k % nk]]  # ~0.1 µs, not subtracted
                await app(scope, receive, send)
                k += 1
            elapsed = time.perf_counter_ns() - t0
            cpu = time.thread_time_ns() - c0
        self.cursor = end
        return elapsed / n / 1000, cpu / n / 1000

    async def check(self, n: int = 200) -> None:
        """Every response is the endpoint's 200 "ok" and the limiter really counted."""
        seen: list[dict[str, Any]] = []

        async def keep(message: dict[str, Any]) -> None:
            seen.append(message)

        await self.run(n, keep)
        starts = [m for m in seen if m["type"] == "http.response.start"]
        bodies = [m.get("body") for m in seen if m["type"] == "http.response.body"]
        bad = [m["status"] for m in starts if m["status"] != 200]
        if len(starts) != n or bad or any(b != b"ok" for b in bodies):
            sys.exit(f"{self.label}: unexpected responses (statuses {bad[:5]})")
        if self.kind.startswith("apiguard") or self.kind == "fused-floor":
            names = {h[0] for h in starts[0]["headers"]}
            if b"ratelimit" not in names:
                sys.exit(f"{self.label}: no RateLimit header: apiguard did not check")
        if not self.probe():
            sys.exit(f"{self.label}: the limiter recorded nothing")


def variants(scaling: tuple[int, ...]) -> list[Variant]:
    out: list[Variant] = []
    for routes in (10, 200):
        for label, kind in (
            ("bare Starlette", "bare"),
            ("no-op ASGI middleware", "noop"),
            ("15-line middleware on limits", "limits-mw"),
            ("apiguard default", "apiguard-default"),
            ("apiguard default, detectors off", "apiguard-no-detectors"),
            ("same work hand-fused (fused_floor.py)", "fused-floor"),
            ("apiguard + @guard.flow", "apiguard-flow"),
            ("slowapi ASGI middleware", "slowapi"),
        ):
            out.append(Variant(label, kind, routes, 1000, "ip"))
            if kind in ("apiguard-default", "apiguard-flow") and BEFORE:
                was = label.replace("apiguard", f"apiguard at {BEFORE['rev']}")
                out.append(Variant(was, kind.replace("apiguard", "before"), routes, 1000, "ip"))
    for n in scaling:
        if n != 1000:
            out.append(Variant("apiguard default", "apiguard-default", 10, n, "ip"))
            out.append(Variant("same work hand-fused (fused_floor.py)", "fused-floor", 10, n, "ip"))
    for n in scaling:
        out.append(Variant("apiguard default (x-api-key)", "apiguard-default", 10, n, "key"))
        if n == 1000:  # (the detectors' cost for key principals: issue 7's ratio again)
            out.append(
                Variant(
                    "apiguard default, detectors off (x-api-key)",
                    "apiguard-no-detectors",
                    10,
                    n,
                    "key",
                )
            )
        if BEFORE:
            was = f"apiguard at {BEFORE['rev']} (x-api-key)"
            out.append(Variant(was, "before-default", 10, n, "key"))
    return out


# -- driver ---------------------------------------------------------------------------
async def measure(args: argparse.Namespace) -> list[Variant]:
    scaling = (1000, 100_000)
    vs = variants(scaling)
    templates = {r: scope_templates(r, seed=r) for r in (10, 200)}
    pools = {n: client_pool(n) for n in scaling}
    for v in vs:
        v.setup(templates[v.routes], pools)
        await v.check()
    # warm up: every principal seen once (steady state: keys already in the stores)
    for v in vs:
        await v.run(max(args.warmup, v.principals if v.identity == "ip" else 0))
        if v.keys is not None:
            await v.run(max(args.warmup, len(v.keys)))
    # long-lived state (stores filled by the warm-up) out of the collector's way, so a
    # variant with a big store does not slow the others' collections
    gc.collect()
    gc.freeze()
    rng = random.Random(1)
    order = list(vs)
    # each round's batch runs in blocks, the variants interleaved block by block: this
    # machine's speed swings up to 2x from one second to the next (bare Starlette's CPU
    # µs/req at 200 routes 99-208 within one run), and a variant whose whole batch ran in
    # a slow second made the per-round comparisons of the variants noisier than the
    # differences between them
    blocks = max(1, args.batch // args.block)
    per_block = args.batch // blocks
    for _ in range(args.rounds):
        rng.shuffle(order)
        walls = dict.fromkeys(map(id, order), 0.0)
        cpus = dict.fromkeys(map(id, order), 0.0)
        for _ in range(blocks):
            for v in order:
                wall, cpu = await v.run(per_block)
                walls[id(v)] += wall / blocks
                cpus[id(v)] += cpu / blocks
        for v in order:
            v.samples.append(walls[id(v)])
            v.cpu.append(cpus[id(v)])
    for v in vs:
        await v.check()  # still nothing refused after all the traffic
    return vs


def table(vs: list[Variant]) -> str:
    """Medians over rounds; ratio and added µs are medians of per-round comparisons with
    the bare app at the same route count (same round, so shared noise cancels)."""
    bare = {v.routes: v for v in vs if v.kind == "bare"}
    lines = [
        "| variant | routes | principals | µs/req | ratio to bare | added µs "
        "| IQR µs/req | CPU µs/req | CPU ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in vs:
        b = bare[v.routes]
        ratio = statistics.median(x / y for x, y in zip(v.samples, b.samples, strict=True))
        added = statistics.median(x - y for x, y in zip(v.samples, b.samples, strict=True))
        cpu_ratio = statistics.median(x / y for x, y in zip(v.cpu, b.cpu, strict=True))
        q1, _, q3 = statistics.quantiles(v.samples, n=4)
        who = f"{v.principals:,}" + (" keys" if v.identity == "key" else " IPs")
        lines.append(
            f"| {v.label} | {v.routes} | {who} | {statistics.median(v.samples):.1f} "
            f"| {ratio:.2f}x | {added:+.1f} | {q1:.1f}-{q3:.1f} "
            f"| {statistics.median(v.cpu):.1f} | {cpu_ratio:.2f}x |"
        )
    for routes in sorted(bare):
        for identity, who in (("ip", "1,000 IPs"), ("key", "1,000 API keys")):

            def twin(kind: str, routes: int = routes, identity: str = identity) -> list[Variant]:
                return [
                    v
                    for v in vs
                    if v.kind == kind
                    and v.routes == routes
                    and v.identity == identity
                    and v.principals == 1000
                ]

            on, off = twin("apiguard-default"), twin("apiguard-no-detectors")
            if not (on and off):
                continue
            b = bare[routes].samples
            added_on = statistics.median(x - y for x, y in zip(on[0].samples, b, strict=True))
            added_off = statistics.median(x - y for x, y in zip(off[0].samples, b, strict=True))
            # the ratio in each round (the three variants ran interleaved, in the same
            # seconds), then its median: a slow second slows the core and the detectors alike
            rounds = [
                (x - z) / (y - z)
                for x, y, z in zip(on[0].samples, off[0].samples, b, strict=True)
                if y > z
            ]
            q1, _, q3 = statistics.quantiles(rounds, n=4) if len(rounds) > 1 else [0.0] * 3
            lines.append(
                f"\n{routes} routes, {who}: detectors on add {added_on:+.1f} µs, off "
                f"{added_off:+.1f} µs: {added_on / added_off:.2f}x; per round: median "
                f"{statistics.median(rounds) if rounds else float('nan'):.2f}x, IQR "
                f"{q1:.2f}-{q3:.2f}x (issue 7's target: at most 2x)"
            )
    return "\n".join(lines)


async def profile(kind: str, n: int) -> None:
    import cProfile
    import pstats

    v = Variant(kind, kind, 10, 1000, "ip")
    v.setup(scope_templates(10, seed=10), {1000: client_pool(1000)})
    await v.check()
    await v.run(5000)
    prof = cProfile.Profile()
    prof.enable()
    await v.run(n)
    prof.disable()
    stats = pstats.Stats(prof).sort_stats("tottime")
    print(f"{kind}, 10 routes, {n} requests under cProfile: top 15 by own time")
    stats.print_stats(15)
    print("the same, apiguard's own functions only")
    stats.print_stats("apiguard", 15)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer, shorter repetitions (~15 s)")
    ap.add_argument("--rounds", type=int, help="round-robin rounds (default 50, quick 12)")
    ap.add_argument("--batch", type=int, help="requests per variant per round")
    ap.add_argument(
        "--block", type=int, default=250,
        help="a round's batch runs in blocks of this many requests, the variants interleaved "
        "block by block (default 250)",
    )
    ap.add_argument("--profile", metavar="KIND", help="cProfile one variant at 10 routes")
    ap.add_argument("--before", metavar="REV", help="also run apiguard as of git revision REV")
    ap.add_argument(
        "--only", choices=("asgi", "wsgi"), help="only the ASGI table, or only the Flask and "
        "Django tables (overhead_wsgi.py); both by default"
    )
    args = ap.parse_args()
    if args.before:
        load_before(args.before)
        overhead_wsgi.BEFORE_REV = args.before
    if args.profile:
        asyncio.run(profile(args.profile, args.batch or 50_000))
        return
    args.rounds = args.rounds or (12 if args.quick else 50)
    args.batch = args.batch or (500 if args.quick else 1500)
    args.warmup = 500 if args.quick else 2000
    if args.only == "wsgi":
        print(overhead_wsgi.run(args.quick))
        return
    started = time.perf_counter()
    vs = asyncio.run(measure(args))
    print(
        f"apiguard overhead, in process: Python {sys.version.split()[0]}, nproc {os.cpu_count()}, "
        f"{args.rounds} round-robin rounds x {args.batch} requests per variant (blocks of "
        f"{args.batch // max(1, args.batch // args.block)}), medians "
        f"({time.perf_counter() - started:.0f} s); apiguard from "
        f"{os.path.dirname(apiguard.__file__)}\n"
    )
    print(table(vs))
    if args.only is None:  # the Flask and Django tables, in the same run
        print()
        print(overhead_wsgi.run(args.quick))


if __name__ == "__main__":
    main()
