"""apiguard on Redis: µs per request and Redis round trips per request, side by side.

Variants (Starlette, 10 routes, requests driven straight through the ASGI callable, one
at a time, from a pool of 1,000 client addresses; nothing is ever refused):
  bare                      no limiter
  apiguard-memory-{1,5}     the in-process store
  apiguard-redis-{1,5}      RedisStore on the asyncio client (one script per checkpoint)
  apiguard-redis-{1,5}-lease  the same with quota leases (`store.lease`): a worker admits
                            from the units a checkpoint leased it on each window, without
                            Redis, until the window's bucket ends (or `lease_life`: 5 s, or
                            --lease-life)
  slowapi-redis-{1,5}       slowapi's middleware on limits' Redis storage
  floor-asyncio             one round trip and nothing else: a middleware awaiting one
                            EVALSHA of `return 1` on apiguard's own connection (the least
                            any design with one round trip per request costs here)
  floor-blocking            the same on a blocking redis-py call (as slowapi makes them)
  floor-apiguard-5          floor-asyncio in front of apiguard-memory-5: one round trip
                            and all of apiguard's in-process work at 5 rules, interleaved
                            as on Redis (caches cooled by the switch to Redis each request)
1 rule: a per-principal limit. 5 rules: apiguard per-principal, per-IP and per-route
global limits, a decorated limit and a flow on every route; slowapi five default limits.
Round trips are counted on the wire (every command or pipeline redis-py sends, sync and
asyncio connections alike, and every command apiguard's own connection sends,
`apiguard.store.redis_wire`; what follows responses is sent for many requests at once, so
apiguard's count can fall below one per request). The variants run round-robin for
several rounds; µs/req is the median of the rounds' means, "added" its difference with
bare. "Redis CPU µs" is the redis-server process's own CPU time (user and system, from
INFO cpu) per request, what follows responses included (each run is drained before it
is read): what the requests cost the one Redis every worker shares. "in scripts µs" is
the part of it spent running scripts (EVAL/EVALSHA, INFO commandstats; wall time inside
Redis, so preemption on a loaded machine counts): the rest is Redis reading, parsing and
answering the calls.

Then Redis memory for N distinct principals hitting once (1 rule, 600/hour, so every
window is still live at the end): the script runs for
each (pipelined, no HTTP), `used_memory` before and after, and this process's memory
(tracemalloc) for the store. `--principals` scales it down (the default 1,000,000 took
about 15 minutes on this loaded 2-core machine; the per-principal cost is linear).

    python benchmarks/redis.py                 # starts its own redis-server
    python benchmarks/redis.py --quick         # fewer requests, 100,000 principals
    python benchmarks/redis.py --url redis://127.0.0.1:6379/15   # an existing server
"""

from __future__ import annotations

import sys
from pathlib import Path

# this file is named redis.py: its folder must not shadow redis-py
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import gc  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import redis  # noqa: E402
import redis.asyncio.connection  # noqa: E402
import redis.connection  # noqa: E402
from slowapi import Limiter  # noqa: E402
from slowapi.middleware import SlowAPIASGIMiddleware  # noqa: E402
from slowapi.util import get_remote_address  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import PlainTextResponse, Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from apiguard import Guard  # noqa: E402
from apiguard.asgi import GuardMiddleware  # noqa: E402
from apiguard.config import BanConfig  # noqa: E402
from apiguard.store.base import Batch, Hit  # noqa: E402
from apiguard.store.redis import RedisStore  # noqa: E402
from apiguard.store.redis_wire import Wire  # noqa: E402
from apiguard.window import WindowSpec  # noqa: E402

HIGH = "1000000/minute"
SLOWAPI_5 = ["1000000/second", "1000000/minute", "1000000/hour", "1000000/day", "1000000/month"]
SECRET = "benchmark-secret-0123456789abcdef"
LEASE_LIFE = [5.0]  # seconds (--lease-life)

# -- counting round trips ---------------------------------------------------------------
TRIPS = [0]


def _count_trips() -> None:
    sync_send = redis.connection.AbstractConnection.send_packed_command
    async_send = redis.asyncio.connection.AbstractConnection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        TRIPS[0] += 1
        sync_send(self, command, check_health)

    async def acounted(self: Any, command: Any, check_health: bool = True) -> None:
        TRIPS[0] += 1
        await async_send(self, command, check_health)

    wire_send = Wire._send

    def wire_counted(self: Wire, proto: Any, command: bytes, *rest: Any) -> Any:
        TRIPS[0] += 1
        return wire_send(self, proto, command, *rest)

    redis.connection.AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
    redis.asyncio.connection.AbstractConnection.send_packed_command = acounted  # type: ignore[method-assign]
    Wire._send = wire_counted  # type: ignore[method-assign]


# -- apps -----------------------------------------------------------------------------
async def endpoint(request: Request) -> Response:
    return PlainTextResponse("ok")


def starlette_app(wrap: Callable[[Any], Any] | None = None) -> Starlette:
    handler: Any = endpoint
    if wrap is not None:
        handler = wrap(handler)
    return Starlette(routes=[Route(f"/r{i}/items/{{item_id}}", handler) for i in range(10)])


class Floor:
    """One EVALSHA of `return 1` per request, then the app: the cost of the round trip."""

    SCRIPT = "return 1"

    def __init__(self, app: Any, url: str, blocking: bool) -> None:
        self.app = app
        self.url = url
        self.blocking = blocking
        self.sync = redis.Redis.from_url(url)
        self.sha = self.sync.script_load(self.SCRIPT)
        self.wire: Wire | None = None
        self.script = type("S", (), {"sha": self.sha, "script": self.SCRIPT})()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            if self.blocking:
                self.sync.evalsha(self.sha, 1, "{floor}:k")
            else:
                if self.wire is None:
                    self.wire = Wire(redis.asyncio.Redis.from_url(self.url))
                await self.wire.evalsha(self.script, "{floor}:k", [], 2.0)
        await self.app(scope, receive, send)


def build(kind: str, url: str) -> Any:
    if kind == "bare":
        return starlette_app()
    if kind.startswith("floor"):
        # floor-apiguard-5: apiguard on the memory store behind the floor's round trip
        app = build("apiguard-memory-5", url) if kind.endswith("-5") else starlette_app()
        app.add_middleware(Floor, url=url, blocking=kind == "floor-blocking")
        return app
    lease = kind.endswith("-lease")
    rules = int(kind.removesuffix("-lease").rsplit("-", 1)[1])
    if kind.startswith("apiguard"):
        limits = {"principal": HIGH, "ip": None, "route": None}
        if rules == 5:
            limits.update(ip=HIGH, route=HIGH)
        config = {
            "secret": SECRET,
            "limits": limits,
            "identity": {"new_credentials_per_ip": None},
            # a loaded benchmark machine must not trip the 50 ms default into fallbacks
            "store": {"prefix": f"bench-{kind}", "timeout": 2.0, "lease": lease,
                      "lease_life": LEASE_LIFE[0]},
        }
        store = url if "redis" in kind else None
        guard = Guard(config, store=store) if store else Guard(config)

        def wrap(handler: Any) -> Any:
            if rules == 5:
                return guard.limit(HIGH)(guard.flow("browse", HIGH)(handler))
            return handler

        app = starlette_app(wrap)
        app.add_middleware(GuardMiddleware, guard=guard)
        STORES[kind] = guard.store
        return app
    limiter = Limiter(
        key_func=get_remote_address,
        default_limits=[HIGH] if rules == 1 else SLOWAPI_5,
        storage_uri=url,
        key_prefix=f"bench-{kind}",
    )
    app = starlette_app()
    app.state.limiter = limiter
    app.add_middleware(SlowAPIASGIMiddleware)
    return app


# -- driving requests ---------------------------------------------------------------
def scopes(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for k in range(n):
        i = rng.randrange(10)
        item = rng.randrange(1000)
        path = f"/r{i}/items/{item}"
        out.append(
            {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "GET",
                "scheme": "http",
                "path": path,
                "raw_path": path.encode(),
                "root_path": "",
                "query_string": b"",
                "headers": [(b"host", b"bench")],
                "client": (f"10.{k % 1000 // 250}.{k % 250}.9", 40000),
                "server": ("bench", 80),
            }
        )
    return out


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


STATUS: list[int] = []
STORES: dict[str, Any] = {}


async def send(message: dict[str, Any]) -> None:
    if message["type"] == "http.response.start":
        STATUS.append(message["status"])


def server_cpu(client: Any) -> float:
    """The redis-server process's CPU seconds so far (user and system)."""
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def script_time(client: Any) -> float:
    """Seconds Redis has spent running scripts so far (INFO commandstats: EVAL, EVALSHA)."""
    stats = client.info("commandstats")
    return sum(
        float(stats.get(f"cmdstat_{name}", {}).get("usec", 0))
        for name in ("eval", "evalsha", "eval_ro", "evalsha_ro")
    ) / 1e6


async def drain(kind: str) -> None:
    store = STORES.get(kind)
    if store is not None and hasattr(store, "drain"):
        await store.drain()


async def run(
    app: Any, batch: list[dict[str, Any]], kind: str = "", client: Any = None
) -> tuple[float, float, int, float, float]:
    """Seconds per request (wall, and this thread's CPU), round trips, and the Redis
    server's CPU seconds per request for `batch`, and of those its time in scripts."""
    STATUS.clear()
    await drain(kind)
    server = server_cpu(client) if client is not None else 0.0
    scripts = script_time(client) if client is not None else 0.0
    trips = TRIPS[0]
    gc.collect()
    started = time.perf_counter()
    cpu = time.thread_time()
    for scope in batch:
        await app(dict(scope), receive, send)
    cpu = time.thread_time() - cpu
    elapsed = time.perf_counter() - started
    trips = TRIPS[0] - trips
    await drain(kind)
    if client is not None:
        server = (server_cpu(client) - server) / len(batch)
        scripts = (script_time(client) - scripts) / len(batch)
    bad = [s for s in STATUS if s != 200]
    if bad:
        raise RuntimeError(f"refused or failed requests in a benchmark: {bad[:5]}")
    return elapsed / len(batch), cpu / len(batch), trips, server, scripts


async def measure(kinds: list[str], url: str, n: int, rounds: int) -> dict[str, Any]:
    apps = {k: build(k, url) for k in kinds}
    batch = scopes(n)
    client = redis.Redis.from_url(url)
    for kind, app in apps.items():  # warm up: routes verified, scripts loaded, pools filled
        await run(app, batch[:200], kind)
    times: dict[str, list[float]] = {k: [] for k in kinds}
    cpus: dict[str, list[float]] = {k: [] for k in kinds}
    servers: dict[str, list[float]] = {k: [] for k in kinds}
    scripts: dict[str, list[float]] = {k: [] for k in kinds}
    trips: dict[str, int] = dict.fromkeys(kinds, 0)
    for r in range(rounds):
        order = kinds[:]
        random.Random(r).shuffle(order)
        for kind in order:
            per, cpu, t, server, script = await run(apps[kind], batch, kind, client)
            times[kind].append(per)
            cpus[kind].append(cpu)
            servers[kind].append(server)
            scripts[kind].append(script)
            trips[kind] += t
    bare = statistics.median(times["bare"]) if "bare" in times else 0.0
    bare_cpu = statistics.median(cpus["bare"]) if "bare" in cpus else 0.0
    out = {}
    for k, v in times.items():
        median = statistics.median(v)
        cpu = statistics.median(cpus[k])
        out[k] = (
            median * 1e6,
            (median - bare) * 1e6,
            (cpu - bare_cpu) * 1e6,
            trips[k] / (n * rounds),
            max(statistics.median(servers[k]), 0.0) * 1e6,
            statistics.median(scripts[k]) * 1e6,
        )
    return out


# -- memory for many principals -------------------------------------------------------
def memory(url: str, principals: int) -> tuple[int, float]:
    """Redis bytes and local bytes for `principals` distinct principals hitting once."""
    client = redis.Redis.from_url(url)
    store = RedisStore(client, prefix="bench-memory", server_time=True)
    client.delete(*(list(client.scan_iter(match="{bench-memory}:*")) or ["-"]))
    bans = BanConfig()
    # one hour: every principal's window is still live when memory is read (a shorter
    # window would expire the first principals during a long run)
    spec = WindowSpec(600, 3600.0, 10)
    script = store._script(client, "checkpoint")
    gc.collect()
    before = int(client.info("memory")["used_memory"])
    tracemalloc.start()
    local_before = tracemalloc.get_traced_memory()[0]
    chunk = 2000
    for start in range(0, principals, chunk):
        pipe = client.pipeline(transaction=False)
        for p in range(start, min(start + chunk, principals)):
            principal = f"ip:{p:024x}"
            batch = Batch([Hit(f"g.principal.0|{principal}", spec, 1, subject=principal)],
                          (principal,))
            args = store._checkpoint_args(batch, 0.0, bans)
            args = args.args() if hasattr(args, "args") else args  # (earlier versions: a list)
            script(keys=[store._seq_key], args=args, client=pipe)
        pipe.execute()
    local = tracemalloc.get_traced_memory()[0] - local_before
    tracemalloc.stop()
    after = int(client.info("memory")["used_memory"])
    keys = client.dbsize()
    client.delete(*(list(client.scan_iter(match="{bench-memory}:*", count=10000)) or ["-"]))
    print(f"  ({keys:,} keys in the database after the run)")
    return after - before, local


# -- a redis-server of our own ----------------------------------------------------------
def start_server() -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed (or pass --url)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", tempfile.mkdtemp()],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    return proc, url


def report(results: dict[str, Any]) -> None:
    """Print the timing table and the targets."""
    print(
        f"{'variant':<20} {'µs/req':>9} {'added µs':>9} {'added CPU µs':>13} "
        f"{'round trips/req':>16} {'Redis CPU µs':>13} {'in scripts µs':>14}"
    )
    for kind, (us, added, cpu, trips, server, script) in results.items():
        print(
            f"{kind:<20} {us:>9.1f} {added:>9.1f} {cpu:>13.1f} {trips:>16.2f} {server:>13.1f} "
            f"{script:>14.1f}"
        )
    for kind, store in STORES.items():
        if getattr(store, "fallbacks", 0):
            print(f"warning: {kind} fell back {store.fallbacks} times (Redis too slow)")
    for kind, store in STORES.items():
        if getattr(store, "lease", False):
            print(f"{kind}: {getattr(store, 'local_admissions', 0):,} checkpoints decided "
                  f"from leases alone, {getattr(store, 'leased_hits', 0):,} hits admitted "
                  "from leases (warm-up included)")
    for ours_kind in ("apiguard-redis-5", "apiguard-redis-5-lease"):
        if ours_kind not in results:
            continue
        for col, what in ((1, "µs"), (2, "CPU µs")):
            target = results["slowapi-redis-1"][col] / 2
            ours = results[ours_kind][col]
            print(f"target: {ours_kind} added {ours:.1f} {what} <= half of slowapi-redis-1's "
                  f"({target:.1f}): {'met' if ours <= target else 'NOT met'}")
    slow = results["slowapi-redis-1"]
    for kind, what in (
        ("floor-asyncio", "one asyncio round trip alone"),
        ("floor-apiguard-5", "one round trip and apiguard's in-process work at 5 rules"),
        ("apiguard-redis-5", "apiguard on Redis at 5 rules"),
        ("apiguard-redis-1-lease", "apiguard on Redis with leases at 1 rule"),
        ("apiguard-redis-5-lease", "apiguard on Redis with leases at 5 rules"),
    ):
        if kind in results:
            r = results[kind]
            print(f"{what} ({kind}): {r[1] / slow[1]:.2f}x slowapi-redis-1's added µs, "
                  f"{(r[2] + r[4]) / (slow[2] + slow[4]):.2f}x its CPU (here and in Redis)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="an existing Redis (keys under bench-* prefixes)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--principals", type=int, default=None)
    parser.add_argument("--memory-only", action="store_true", help="skip the request timings")
    parser.add_argument("--lease-life", type=float, default=5.0,
                        help="lease_life of the -lease variants (seconds, default 5)")
    args = parser.parse_args()
    LEASE_LIFE[0] = args.lease_life
    n = args.requests or (1000 if args.quick else 3000)
    rounds = 3 if args.quick else 5
    principals = args.principals or (100_000 if args.quick else 1_000_000)
    proc = None
    url = args.url
    if url is None:
        proc, url = start_server()
    _count_trips()
    try:
        kinds = [
            "bare",
            "apiguard-memory-1", "apiguard-memory-5",
            "apiguard-redis-1", "apiguard-redis-5",
            "apiguard-redis-1-lease", "apiguard-redis-5-lease",
            "slowapi-redis-1", "slowapi-redis-5",
            "floor-asyncio", "floor-blocking", "floor-apiguard-5",
        ]
        if args.memory_only:
            kinds = []
        else:
            print(f"python {sys.version.split()[0]}, redis-server on loopback, {n} requests "
                  f"x {rounds} rounds per variant, one at a time (pid {os.getpid()})")
        results = asyncio.run(measure(kinds, url, n, rounds)) if kinds else {}
        if results:
            report(results)
        started = time.perf_counter()
        used, local = memory(url, principals)
        print(f"memory, {principals:,} distinct principals hitting once (1 rule, 600/hour): Redis "
              f"{used / 2**20:.1f} MiB ({used / principals:.0f} B each), local "
              f"{local / 2**20:.2f} MiB ({time.perf_counter() - started:.0f} s)")
        if principals != 1_000_000:
            print(f"  scaled to 1,000,000: Redis about {used / principals * 1e6 / 2**20:.0f} MiB")
    finally:
        if proc is not None:
            proc.kill()


if __name__ == "__main__":
    main()
