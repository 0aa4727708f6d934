"""The Redis (or Valkey) store: state shared by every worker and host, one script a batch.

    Guard(store="redis://localhost:6379/0")          # or rediss://, redis+sentinel://,
    Guard(store=RedisStore(redis.asyncio.Redis()))   # redis+cluster://, valkey://

- One round trip per checkpoint: the whole batch (bans, windows, markers, strikes) runs in
  one Lua script (`apiguard.store.redis_lua`) with the `MemoryStore`'s semantics, called
  with EVALSHA (reloaded after a Redis restart). A plain asyncio client's calls go
  through the store's own pipelined connection (`apiguard.store.redis_wire`: redis-py's
  per-call machinery cost more CPU than the call); other clients go through redis-py.
- One clock: the script reads the Redis server's `TIME`, so app hosts with skewed clocks
  share exact windows. A guard on an injected clock (`Guard(clock=...)`: tests, the
  simulator) sends its own time instead.
- Every key lives under `prefix` with a Cluster hash tag (one slot: no CROSSSLOT) and
  expires once it stops counting (its window plus a margin).
- Failure policy: a call that fails or takes longer than `timeout` falls back (fail-open,
  or fail-closed for rules that ask for it) and opens a circuit breaker: for the next
  `breaker_interval` seconds every call falls back at once, then one probe decides. Each
  fallback is counted (`apiguard.store.fallbacks`) and put on the current span; the
  breaker logs one line per outage and per recovery. No exception leaves the store.
- Bans are cached in process (`local_bans`): a banned caller is refused before routing
  with no Redis call. Every ban change is numbered in Redis and each script reply
  (checkpoints and flushes) carries the changes since the worker's previous call, so a
  ban earned on one worker reaches the others' caches with their next store call (the
  checkpoint itself reads Redis, unless quota leases decide it: then the flushes bring
  them, at least every 0.1 s while the worker admits from leases).
- Detector state (`observe`) and the writes that follow a response (refunds, bans put on a
  token, lifts) wait on the event loop and go to Redis together, many requests' worth in
  one script call, never on a response's path (`apiguard.store.redis_after`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Generic, Literal, TypeVar

from opentelemetry import metrics, trace

from apiguard.config import BanConfig
from apiguard.errors import ConfigurationError
from apiguard.store.base import Ban, Batch, BatchResult, Hit, Observation, Op
from apiguard.store.breaker import Breaker
from apiguard.store.redis_after import Flusher, Then, fill, observe_args
from apiguard.store.redis_cover import covered
from apiguard.store.redis_lua import AFTER, CHECKPOINT
from apiguard.store.redis_urls import client_factories, redis_module
from apiguard.store.redis_wire import Packed, Wire, bulk
from apiguard.window import WindowSpec

log = logging.getLogger("apiguard")

Failure = Literal["open", "closed"]
_SCRIPTS = {"checkpoint": CHECKPOINT, "after": AFTER}
_MARGIN = 2.0  # seconds a key outlives the last moment it counts
_NEWS = 64  # ban changes a reply carries at most (the next reply carries the rest)
_SEP = "\x1f"  # separates the fields packed in one argument, and those of a reply
_NAN = float("nan")  # "use the server's clock"
SECRET_TTL = 30 * 86_400.0  # the shared secret: refreshed by every checkpoint


_timeout: Callable[[float], Any] | None = getattr(asyncio, "timeout", None)


def _is_async(client: Any) -> bool:
    return inspect.iscoroutinefunction(getattr(client, "execute_command", None))


# redis-py's option to leave a reply undecoded (a client may decode responses; the
# checkpoint's reply is binary)
_RAW: dict[str, Any] = {"NEVER_DECODE": []}


def _evalsha(script: Any, key: str, args: list[Any]) -> tuple[Any, ...]:
    return ("EVALSHA", script.sha, 1, key, *args)


def _doubles(raw: bytes) -> tuple[list[float], list[bytes]]:
    """The `AFTER` script's reply: its doubles packed by `struct` (now, then the
    operations' results; the count the script sends is left out) and its text fields."""
    n = int(struct.unpack_from("<d", raw, 8)[0])
    values = list(struct.unpack_from(f"<{n}d", raw))
    del values[1]
    return values, raw[8 * n + 1 :].split(b"\x1f") if len(raw) > 8 * n else []


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Lane:
    """Connections of a plain `redis.asyncio.Redis`, kept out of its pool between calls.

    The pool's per-command work (a connection health probe with its own task, locks,
    instrumentation) cost more CPU than the script call itself (measured here: 120 µs a
    PING through the client, 50-65 µs on a kept connection). The connections are still
    redis-py's (protocol, timeouts, reconnection); one that fails or is cancelled
    mid-call is disconnected by redis-py and reconnects on its next use.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.pool = client.connection_pool
        self.free: list[Any] = []

    @staticmethod
    def fits(client: Any) -> bool:
        """A plain client with a connection pool (not a cluster or sentinel client)."""
        pool = getattr(client, "connection_pool", None)
        return (
            pool is not None
            and callable(getattr(pool, "get_connection", None))
            and "sentinel" not in type(pool).__module__ + type(pool).__name__.lower()
        )

    async def evalsha(self, script: Any, key: str, args: list[Any]) -> Any:
        """EVALSHA on a kept connection. NOSCRIPT (a restarted Redis) loads the script
        again; a kept connection found broken (Redis restarted since) is reconnected and
        the call made once more (within the caller's timeout)."""
        errors = redis_module().exceptions
        kept = bool(self.free)
        conn = self.free.pop() if kept else await self.pool.get_connection()
        try:
            for attempt in (1, 2):
                try:
                    return await self._call(conn, script, key, args)
                except errors.NoScriptError:
                    script.sha = await self.client.script_load(script.script)
                    return await self._call(conn, script, key, args)
                except errors.ConnectionError:
                    if attempt == 2 or not kept:
                        raise
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            self.free.append(conn)  # (disconnected by redis-py if the stream broke)

    @staticmethod
    async def _call(conn: Any, script: Any, key: str, args: list[Any]) -> Any:
        await conn.send_packed_command(
            conn.pack_command("EVALSHA", script.sha, 1, key, *args), False
        )
        return await conn.read_response(disable_decoding=True)


class _SyncLane:
    """`_Lane` for a plain sync `redis.Redis` (threads take and give back connections)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.pool = client.connection_pool
        self.free: list[Any] = []

    def evalsha(self, script: Any, key: str, args: list[Any]) -> Any:
        """EVALSHA on a kept connection (see `_Lane.evalsha`)."""
        errors = redis_module().exceptions
        kept = bool(self.free)
        try:
            conn = self.free.pop()
        except IndexError:  # (another thread took the last one)
            kept = False
            conn = self.pool.get_connection()
        try:
            for attempt in (1, 2):
                try:
                    return self._call(conn, script, key, args)
                except errors.NoScriptError:
                    script.sha = self.client.script_load(script.script)
                    return self._call(conn, script, key, args)
                except errors.ConnectionError:
                    if attempt == 2 or not kept:
                        raise
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            self.free.append(conn)

    @staticmethod
    def _call(conn: Any, script: Any, key: str, args: list[Any]) -> Any:
        conn.send_packed_command(conn.pack_command("EVALSHA", script.sha, 1, key, *args), False)
        return conn.read_response(disable_decoding=True)


_T = TypeVar("_T")
_LEASE_FIRST = 2  # the lease a key asks for when this worker has no history of it
_LEASE_MAX = 128  # the most a key asks for (the script grants at most 1/4 of the headroom)
_LEASE_TABLE = 20_000  # leases held at most (full: no more are asked for)
_LEASE_SAFETY = 0.001  # seconds a lease ends before its bucket does (float rounding)
_SWEEP = 0.25  # seconds between two sweeps of expired leases
# seconds at most between two reads of the ban news by a worker admitting from leases
# (a flush brings them; one is sent for them alone when no other came meanwhile)
_NEWS_EVERY = 0.1


class _Lease:
    """Units of one window this worker may admit without Redis: charged by the script in
    bucket `bucket` (store clock) and usable until `until` (caller clock, before that
    bucket ends); `remaining` and `reset_at` answer the RateLimit fields meanwhile."""

    __slots__ = ("bucket", "buckets", "left", "remaining", "reset_at", "until", "used")

    def __init__(
        self, left: int, until: float, bucket: int, buckets: int, remaining: int,
        reset_at: float,
    ) -> None:
        self.left = left
        self.until = until
        self.bucket = bucket
        self.buckets = buckets
        self.remaining = remaining
        self.reset_at = reset_at
        self.used = 0


class _PerClient(Generic[_T]):
    """What the store keeps for each Redis client, at most `most` (full: forgotten).
    Keyed on the client itself, by identity (a client need not be hashable); an entry
    holds its client, so a new client is never taken for a dead one whose `id()` it
    got (a client is made per event loop, often where the one before it was)."""

    __slots__ = ("_items", "_most")

    def __init__(self, most: int) -> None:
        self._items: dict[int, tuple[Any, _T]] = {}
        self._most = most

    def holds(self, client: Any) -> bool:
        held = self._items.get(id(client))
        return held is not None and held[0] is client

    def get(self, client: Any) -> _T | None:
        held = self._items.get(id(client))
        return held[1] if held is not None and held[0] is client else None

    def put(self, client: Any, value: _T) -> _T:
        if len(self._items) >= self._most:
            self._items.clear()
        self._items[id(client)] = (client, value)
        return value

    def values(self) -> list[_T]:
        return [value for _, value in self._items.values()]


class RedisStore:
    """Windows, markers, strikes, bans and detector state in Redis (see the module doc).

    `client`: a `redis.Redis` (WSGI, sync code) or `redis.asyncio.Redis` (ASGI), or a
    cluster or sentinel client of either kind; `aclient` adds the other kind. A store
    with only a sync client serves async callers from a worker thread; with only an async
    client, sync callers (WSGI) fall back per the failure policy: give both, or use a URL
    (`RedisStore.from_url`, `Guard(store=url)`), which makes each client when first needed.
    `server_time`: None lets the `Guard` decide (Redis time, unless the guard runs on an
    injected clock).
    `lease`: admit from quota leases (a prototype, off by default): a checkpoint may be
    granted more units of a window it charges, charged at once in the current bucket,
    which this worker admits without Redis until that bucket ends or `lease_life`
    seconds pass, giving back what it did not use; windows the principal's window
    covers are charged after the response (`apiguard.store.redis_cover`); every
    window's bound holds exactly (README, "Quota leases", for the one exception).
    """

    local = False

    def __init__(
        self,
        client: Any = None,
        *,
        aclient: Any = None,
        prefix: str = "apiguard",
        timeout: float = 0.05,
        breaker_interval: float = 5.0,
        on_failure: Failure = "open",
        server_time: bool | None = None,
        strike_buckets: int = 10,
        max_bans: int = 200_000,
        meter_provider: metrics.MeterProvider | None = None,
        name: str | None = None,
        lease: bool = False,
        lease_life: float = 5.0,
    ) -> None:
        if client is not None and _is_async(client):
            client, aclient = aclient, client
        if client is not None and _is_async(client):
            raise ConfigurationError("RedisStore: client= and aclient= are both asyncio clients")
        if on_failure not in ("open", "closed"):
            raise ConfigurationError(f"RedisStore(on_failure={on_failure!r}): 'open' or 'closed'")
        if not prefix or any(c in prefix for c in "{}*?[] "):
            raise ConfigurationError(
                "RedisStore(prefix=...): a non-empty name without braces, spaces or glob "
                "characters"
            )
        if not isinstance(lease, bool):
            raise ConfigurationError(f"RedisStore(lease={lease!r}): True or False")
        if (
            isinstance(lease_life, bool)
            or not isinstance(lease_life, int | float)
            or not 0 < lease_life <= 60
        ):
            raise ConfigurationError(
                f"RedisStore(lease_life={lease_life!r}): seconds, more than 0 and at most 60"
            )
        self.lease = lease
        self.lease_life = float(lease_life)
        self._leases: dict[str, _Lease] = {}  # window key -> this worker's lease on it
        self._want: dict[str, int] = {}  # window key -> the lease to ask for next
        self._sweep_at = float("-inf")
        self._lease_lock = threading.Lock()  # leases are taken from threads and the loop
        self.local_admissions = 0  # checkpoints decided from leases (tests, benchmark)
        self.leased_hits = 0  # hits admitted from leases (tests, benchmark)
        self._client = client
        self._aclient = aclient
        self._make_sync: Callable[[], Any] | None = None
        self._make_async: Callable[[], Any] | None = None
        self._aloop: asyncio.AbstractEventLoop | None = None  # the loop of a made client
        self._scripts: _PerClient[dict[str, Any]] = _PerClient(64)  # name -> Script
        # asyncio clients initialised -> their connections (None: redis-py's own)
        self._lanes: _PerClient[_Lane | Wire | None] = _PerClient(8)
        # the running loop's `Wire` and its scripts, once a call found them (`_acall`)
        self._wired: tuple[asyncio.AbstractEventLoop, Wire, dict[str, Any]] | None = None
        self._sync_lanes: _PerClient[_SyncLane | bool] = _PerClient(8)  # sync clients
        self.prefix = prefix
        self._p = "{" + prefix + "}:"  # every key in one Cluster slot
        self._seq_key = self._p + "seq"
        self.timeout = timeout
        self.on_failure: Failure = on_failure
        self.server_time = server_time
        self.strike_buckets = strike_buckets
        self.max_bans = max_bans
        self.name = name or "the Redis store"
        self._breaker = Breaker(breaker_interval, self.name)
        self._bans: dict[str, Ban] = {}
        self.local_bans = self._bans
        # entries of the ban table that refuse nothing (action "pass": a passed
        # challenge, a principal's published home, an account born in a burst), apart
        # and bounded on their own (oldest out), so they never crowd out real bans
        self._passes: OrderedDict[str, Ban] = OrderedDict()
        self._lock = threading.Lock()  # ban cache writes (threadpool and loop)
        self._seen = 0.0  # the last ban change this worker has seen
        self._news_at = float("-inf")  # (monotonic) when the last flush brought ban news
        self._last_now = 0.0  # the callers' clock at the last batch, and when (monotonic)
        self._last_tick = 0.0
        self._secret: str | None = None  # hex, when the secret is kept in Redis
        # id(spec) -> (spec, limit, width, buckets + 1, window)
        self._specs: dict[int, tuple[WindowSpec, int, float, int, float]] = {}
        # hit count -> (pack the numbers, the fixed arguments (prefix, ban settings, the
        # numbers' format, the reply's), those encoded, the reply's Struct)
        self._shapes: dict[
            int, tuple[Callable[..., bytes], tuple[str, ...], bytes, struct.Struct]
        ] = {}
        self._bans_cfg: BanConfig | None = None
        self._bans_arg = ""
        self._secret_refreshed = float("-inf")
        self._tasks: set[asyncio.Task[Any]] = set()
        self._flusher: Flusher | None = None  # what follows responses, on `_flusher.loop`
        self.fallbacks = 0  # calls answered by the failure policy (tests, benchmark)
        self.dropped = 0  # operations after responses not written (tests)
        self._no_sync_warned = False
        self.attach(custom_clock=False, meter_provider=meter_provider)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        """A store for `url` (see `apiguard.store.redis_urls`); clients are made when
        first used. A bad scheme or URL raises `ConfigurationError` without the URL."""
        sync, make_async, described = client_factories(url, options.get("timeout", 0.05))
        store = cls(name=options.pop("name", None) or described, **options)
        store._make_sync = sync
        store._make_async = make_async
        return store

    def attach(
        self, *, custom_clock: bool, meter_provider: metrics.MeterProvider | None = None
    ) -> None:
        """Called by `Guard`: a guard on an injected clock sends its own time (unless
        `server_time` was set), and the fallback metric goes to the guard's provider."""
        if custom_clock and self.server_time is None:
            self.server_time = False
        provider = meter_provider or metrics.get_meter_provider()
        self._fallback_counter = provider.get_meter("apiguard").create_counter(
            "apiguard.store.fallbacks",
            unit="{call}",
            description="Store calls answered by the failure policy (store down or slow).",
        )
        self._dropped_counter = provider.get_meter("apiguard").create_counter(
            "apiguard.store.dropped",
            unit="{operation}",
            description="Operations after responses (detector state, refunds, bans) not "
            "written: the store was down or slow, or too many waited.",
        )

    # -- clients -------------------------------------------------------------------------
    @property
    def sync_ready(self) -> bool:
        """Whether sync callers can be served (a sync client, or a URL to make one)."""
        return self._client is not None or self._make_sync is not None

    def _sync(self) -> Any:
        if self._client is None and self._make_sync is not None:
            self._client = self._make_sync()
        return self._client

    def _async(self) -> Any:
        if self._make_async is None:
            return self._aclient
        loop = asyncio.get_running_loop()
        if self._aclient is None or self._aloop is not loop:
            # a client made here is bound to its event loop (tests run several loops)
            self._aclient = self._make_async()
            self._aloop = loop
        return self._aclient

    def _script(self, client: Any, name: str) -> Any:
        scripts = self._scripts.get(client)
        if scripts is None:
            scripts = self._scripts.put(client, {})
        script = scripts.get(name)
        if script is None:
            script = scripts[name] = client.register_script(_SCRIPTS[name])
        return script

    def _call(self, name: str, args: list[Any] | Packed) -> Any:
        """Run script `name` with the sync client (raises on failure)."""
        if isinstance(args, Packed):
            args = args.args()
        client = self._sync()
        if client is None:
            raise ConnectionError("RedisStore has no sync client (pass client= or a URL)")
        script = self._script(client, name)
        lane = self._sync_lanes.get(client)
        if lane is None:
            lane = self._sync_lanes.put(client, _SyncLane(client) if _Lane.fits(client) else False)
        if isinstance(lane, _SyncLane):
            return lane.evalsha(script, self._seq_key, args)
        try:
            return client.execute_command(*_evalsha(script, self._seq_key, args), **_RAW)
        except redis_module().exceptions.NoScriptError:
            script.sha = client.script_load(script.script)
            return client.execute_command(*_evalsha(script, self._seq_key, args), **_RAW)

    async def _acall(self, name: str, args: list[Any] | Packed) -> Any:
        """Run script `name` without blocking the loop, within `timeout` (raises)."""
        wired = self._wired
        if wired is not None and wired[0] is asyncio.get_running_loop():
            # (the store's own connection on this loop: its lookups made once)
            return await wired[1].evalsha(wired[2][name], self._seq_key, args, self.timeout)
        client = self._async()
        if client is None:
            return await asyncio.wait_for(
                asyncio.to_thread(self._call, name, args), self.timeout + 0.05
            )
        if not self._lanes.holds(client):
            # first use: a cluster client discovers its slots, connections are opened;
            # outside the per-call timeout (once per client, bounded all the same)
            lane: _Lane | Wire | None = None
            if Wire.fits(client):
                lane = Wire(client)
            elif _Lane.fits(client):
                lane = _Lane(client)
            await asyncio.wait_for(self._warm_up(client, lane), max(self.timeout, 1.0))
            self._lanes.put(client, lane)
        script = self._script(client, name)
        lane = self._lanes.get(client)
        if isinstance(lane, Wire):
            if lane.loop is not asyncio.get_running_loop():
                lane = Wire(client)  # (a client on another loop)
                self._lanes.put(client, lane)
            scripts = {n: self._script(client, n) for n in _SCRIPTS}
            self._wired = (lane.loop, lane, scripts)
            return await lane.evalsha(script, self._seq_key, args, self.timeout)  # (its own)
        if isinstance(args, Packed):
            args = args.args()
        call = (
            lane.evalsha(script, self._seq_key, args)
            if lane is not None
            else self._araw(client, script, args)
        )
        if _timeout is None:  # Python 3.10
            return await asyncio.wait_for(call, self.timeout)
        async with _timeout(self.timeout):  # no task per call (wait_for made one)
            return await call

    async def _araw(self, client: Any, script: Any, args: list[Any]) -> Any:
        """EVALSHA through redis-py (cluster, sentinel), its reply left undecoded."""
        try:
            return await client.execute_command(*_evalsha(script, self._seq_key, args), **_RAW)
        except redis_module().exceptions.NoScriptError:
            script.sha = await client.script_load(script.script)
            return await client.execute_command(*_evalsha(script, self._seq_key, args), **_RAW)

    @staticmethod
    async def _warm_up(client: Any, lane: _Lane | Wire | None) -> None:
        """Discover a cluster's slots, open a connection, load the checkpoint script."""
        init = getattr(client, "initialize", None)
        if callable(init):
            await init()
        await client.script_load(CHECKPOINT)
        if isinstance(lane, Wire):
            await lane.call(b"*1\r\n$4\r\nPING\r\n", lane.loop.time() + 5.0)

    def _now_arg(self, now: float) -> str:
        return "" if self.server_time is not False else repr(now)

    # -- the batch -------------------------------------------------------------------
    def execute(self, batch: Batch, now: float, bans: BanConfig) -> BatchResult:
        """Run `batch` in one script call (semantics in `apiguard.store.base`)."""
        # (the callers' clock, for the ban news a flush brings: see `_news`)
        self._last_now = now
        self._last_tick = time.monotonic()
        known = self._known_ban(batch.ban_keys, now)
        if known is not None:
            return BatchResult(False, [], known)
        if not self.lease:
            return self._execute(batch, now, bans)
        taken, rest = self._take(batch, now)
        if rest is None:
            if self._news_at < self._last_tick - _NEWS_EVERY:
                self._poll_news(sync=True)
            return BatchResult(True, batch.hits)
        return self._merge(batch, taken, self._execute(rest, now, bans))

    def _execute(self, batch: Batch, now: float, bans: BanConfig) -> BatchResult:
        if not self.sync_ready:
            if not self._no_sync_warned:
                self._no_sync_warned = True
                log.error(
                    "apiguard: %s has only an asyncio client and was called from sync code "
                    "(WSGI?): requests fall back per rule; give it a sync client too",
                    self.name,
                )
            return self._fallback(batch, None)
        if not self._breaker.allow():
            return self._fallback(batch, None)
        try:
            reply = self._call("checkpoint", self._checkpoint_args(batch, now, bans))
            result = self._decode(batch, reply, now)
        except Exception as exc:
            return self._fallback(batch, exc)
        self._breaker.success()
        return result

    async def aexecute(self, batch: Batch, now: float, bans: BanConfig) -> BatchResult:
        """`execute` on the asyncio client: never blocks the event loop, never waits
        longer than `timeout`."""
        # (the callers' clock, for the ban news a flush brings: see `_news`)
        self._last_now = now
        self._last_tick = time.monotonic()
        known = self._known_ban(batch.ban_keys, now)
        if known is not None:
            return BatchResult(False, [], known)
        if not self.lease:
            return await self._aexecute(batch, now, bans)
        pairs = covered(batch.hits)
        if pairs is not None and self._flusher_for(asyncio.get_running_loop()).busy:
            pairs = None  # (writes falling behind: checked and charged in the script)
        inner = batch
        if pairs is not None:  # charged after the response (`apiguard.store.redis_cover`)
            skip = {i for i, _ in pairs}
            inner = Batch([h for i, h in enumerate(batch.hits) if i not in skip], batch.ban_keys)
        taken, rest = self._take(inner, now)
        if rest is None:
            result = BatchResult(True, inner.hits)
            if self._news_at < self._last_tick - _NEWS_EVERY:  # nothing else brings news
                self._poll_news()
        else:
            result = self._merge(inner, taken, await self._aexecute(rest, now, bans))
        if pairs is None:
            return result
        return self._cover(batch, pairs, result, now)

    async def _aexecute(self, batch: Batch, now: float, bans: BanConfig) -> BatchResult:
        if not self._breaker.allow():
            return self._fallback(batch, None)
        try:
            args = self._checkpoint_args(batch, now, bans)
            wired = self._wired
            if wired is not None and wired[0] is asyncio.get_running_loop():
                # (`_acall`'s common case, one coroutine less on every request)
                reply = await wired[1].evalsha(
                    wired[2]["checkpoint"], self._seq_key, args, self.timeout
                )
            else:
                reply = await self._acall("checkpoint", args)
            result = self._decode(batch, reply, now)
        except Exception as exc:
            return self._fallback(batch, exc)
        self._breaker.success()
        return result

    async def aadmit(
        self,
        ops: Sequence[Op],
        subjects: Sequence[str | None],
        ban_keys: tuple[str, ...],
        now: float,
        bans: BanConfig,
        hits: Callable[[], list[Hit]],
    ) -> tuple[list[tuple[int, float, int]], int] | BatchResult:
        """The fast path (`apiguard.admission`) of `aexecute`: the same one script call for
        the hits `ops` stand for (`subjects`: their strike subjects; every op consumes),
        without making them. Admitted with every op fitting: what `admit` returns.
        Otherwise (refused, banned, a monitor-mode op that does not fit, a fallback):
        `aexecute`'s result for `Batch(hits(), ban_keys)`, the general path's hits, made
        only then and filled from the same reply."""
        self._last_now = now  # (as `aexecute`)
        self._last_tick = time.monotonic()
        known = self._known_ban(ban_keys, now)
        if known is not None:
            return BatchResult(False, [], known)
        if self.lease:  # (leases: `admit`, then `aexecute`, which takes them)
            return await self.aexecute(Batch(hits(), ban_keys), now, bans)
        if not self._breaker.allow():
            return self._fallback(Batch(hits(), ban_keys), None)
        try:
            args = self._args(ops, subjects, ban_keys, now, bans)
            wired = self._wired
            if wired is not None and wired[0] is asyncio.get_running_loop():
                reply = await wired[1].evalsha(
                    wired[2]["checkpoint"], self._seq_key, args, self.timeout
                )
            else:
                reply = await self._acall("checkpoint", args)
            values, text, i, offset = self._reply(len(ops), reply, now)
            if values[1] == 0:  # admitted: as `admit`, unless an op did not fit (monitor)
                out: list[tuple[int, float, int]] = []
                best = -1
                best_share = 2.0
                v = 5
                for n, op in enumerate(ops):
                    if values[v] != 1:
                        break
                    remaining = int(values[v + 1])
                    if op[4]:  # (advertised)
                        share = remaining / op[1].limit
                        if share < best_share:
                            best = n
                            best_share = share
                    out.append((remaining, values[v + 2], int(values[v + 4])))
                    v += 5
                else:
                    self._breaker.success()
                    return out, best
            result = self._result(Batch(hits(), ban_keys), values, text, i, offset, now)
        except Exception as exc:
            return self._fallback(Batch(hits(), ban_keys), exc)
        self._breaker.success()
        return result

    def _checkpoint_args(self, batch: Batch, now: float, bans: BanConfig) -> Packed:
        """The `CHECKPOINT` script's arguments for `batch` (see `_args`)."""
        return self._args(batch.hits, None, batch.ban_keys, now, bans)

    def _args(
        self,
        rows: Sequence[Any],  # `Hit`s, or `Op`s
        subjects: Sequence[str | None] | None,
        ban_keys: tuple[str, ...],
        now: float,
        bans: BanConfig,
    ) -> Packed:
        """The `CHECKPOINT` script's arguments (layout in `apiguard.store.redis_lua`),
        already encoded for the store's own connection (`Packed.args()`: as a list for
        redis-py): the numbers packed in one binary argument, every key its own argument,
        built whole here (the script neither parses text nor concatenates keys).

        `rows`: the batch's hits (`subjects` None), or the fast path's ops (every one
        consumes) and `subjects`, each one's strike subject."""
        if bans is not self._bans_cfg:
            self._bans_cfg = bans
            self._bans_arg = " ".join(
                (
                    "1" if bans.enabled else "0",
                    str(bans.after),
                    repr(bans.within / self.strike_buckets),
                    str(self.strike_buckets),
                    repr(bans.base),
                    repr(bans.factor),
                    repr(bans.max),
                    repr(bans.memory),
                    str(_NEWS),
                )
            )
            self._shapes.clear()  # (their encoded arguments carry the settings)
        refresh = 0
        if self._secret is not None:
            tick = time.monotonic()
            if tick - self._secret_refreshed > 60.0:  # the secret's TTL, once a minute
                self._secret_refreshed = tick
                refresh = int(SECRET_TTL * 1000)
        nbk = len(ban_keys)
        nh = len(rows)
        shape = self._shapes.get(nh)
        if shape is None:
            if len(self._shapes) > 64:
                self._shapes.clear()
            fmt = "<ddddHH" + ("dddddBHHHH" if self.lease else "dddddBHHH") * nh
            reply = "<dBdBH" + "Bdddd" * nh
            fixed: tuple[str, ...] = (self._p, self._bans_arg, fmt, reply)
            shape = self._shapes[nh] = (
                struct.Struct(fmt).pack,
                fixed,
                bulk(fixed),
                struct.Struct(reply),
            )
        p = self._p
        nums: list[Any] = [
            _MARGIN,
            self._seen,
            refresh,
            _NAN if self.server_time is not False else now,
            nbk,
            nh,
        ]
        specs = self._specs
        extra: list[str] | None = None
        # per hit, the number of the first hit on the same window key (0: this one)
        row: Any
        hits = subjects is None
        windows = [row.key for row in rows] if hits else [row[0] for row in rows]
        dups = None if len(set(windows)) == nh else windows
        at = 6 + nbk + nh  # ARGV index of the next extra argument
        lease = self.lease
        # the subject a batch's hits share (most often its first ban key), and its index
        last: str | None = ban_keys[0] if ban_keys else None
        last_si = 6
        for n, row in enumerate(rows):
            if subjects is None:  # a `Hit`
                spec = row.spec
                cost = row.cost
                once = row.once
                subject = row.subject
                flags = (1 if row.consume else 0) | (2 if row.enforce else 0)
            else:  # an `Op`
                _, spec, cost, once, enforce, _ = row
                subject = subjects[n]
                flags = 3 if enforce else 1
            numbers = specs.get(id(spec))
            if numbers is None or numbers[0] is not spec:  # (keyed by identity: no hash)
                if len(specs) > 4096:
                    specs.clear()
                numbers = specs[id(spec)] = (
                    spec, spec.limit, spec.width, spec.buckets + 1, spec.window
                )
            if subject is None:
                si = 0
            elif subject is last or subject == last:
                si = last_si
            elif subject in ban_keys:
                si = 6 + ban_keys.index(subject)
            else:
                if extra is None:
                    extra = []
                extra.append(subject)
                si = at
                at += 1
            if once is None:
                oi = 0
            else:
                if extra is None:
                    extra = []
                extra.append(p + "m:" + once)
                oi = at
                at += 1
            if dups is None:
                seen = 0
            else:
                seen = dups.index(dups[n]) + 1
                if seen > n:
                    seen = 0
            nums += (
                numbers[1],
                numbers[2],
                numbers[3],
                numbers[4],
                cost,
                flags,
                si,
                oi,
                seen,
            )
            if lease:  # (`aadmit` leaves leases to `aexecute`: its ops ask for none)
                nums.append(self._ask(row, now) if dups is None and hits else 0)
        # text that can come back in a reply's \x1f-separated fields: refused with it
        if _SEP in "".join(ban_keys) or (extra is not None and _SEP in "".join(extra)):
            raise ValueError("a store key contains the field separator \\x1f")
        blob = shape[0](*nums)
        fixed = shape[1]
        # the keys as RESP bulk strings, each in one f-string (ASCII: characters are bytes)
        lp = len(p) + 2
        text = "".join([f"${lp + len(k)}\r\n{p}b:{k}\r\n" for k in ban_keys]) + "".join(
            [f"${lp + len(k)}\r\n{p}w:{k}\r\n" for k in windows]
        )
        if extra is not None:
            text += "".join([f"${len(k)}\r\n{k}\r\n" for k in extra])
        count = 5 + nbk + nh + (len(extra) if extra is not None else 0)

        def args() -> list[Any]:
            keys = [p + "b:" + k for k in ban_keys] + [p + "w:" + k for k in windows]
            return [*fixed, blob, *keys, *(extra or ())]

        encoded = text.encode() if text.isascii() else bulk(args()[5:])
        data = b"%b$%d\r\n%b\r\n%b" % (shape[2], len(blob), blob, encoded)
        return Packed(count, data, args)

    def _decode(self, batch: Batch, raw: bytes, now: float) -> BatchResult:
        return self._result(batch, *self._reply(len(batch.hits), raw, now), now)

    def _reply(
        self, nh: int, raw: bytes, now: float
    ) -> tuple[tuple[Any, ...], list[bytes], int, float]:
        """A checkpoint's reply for `nh` hits: its numbers, its text fields, the index of
        the first text field after the ban news (learnt here), and the store's clock
        minus the caller's."""
        unpack = self._shapes[nh][3]
        values = unpack.unpack_from(raw)
        text = raw[unpack.size + 1 :].split(b"\x1f") if len(raw) > unpack.size else []
        offset = values[0] - now  # store clock - caller clock
        self._seen = values[2]
        self._news_at = self._last_tick
        if values[3] and self._secret is not None:
            self._defer_secret()
        i = 0
        for _ in range(values[4]):
            self._learn(text[i : i + 6], offset, now)
            i += 6
        return values, text, i, offset

    def _result(
        self,
        batch: Batch,
        values: tuple[Any, ...],
        text: list[bytes],
        i: int,
        offset: float,
        now: float,
    ) -> BatchResult:
        """`batch`'s result from its checkpoint's reply (`_reply`)."""
        hits = batch.hits
        status = values[1]
        if status == 1:
            ban = self._learn(text[i : i + 6], offset, now)
            return BatchResult(False, [], ban)
        v = 5
        for hit in hits:
            fits = values[v]
            hit.fits = fits >= 1
            hit.remaining = int(values[v + 1])
            hit.reset = values[v + 2]
            hit.retry_after = values[v + 3]
            hit.bucket = int(values[v + 4])
            if fits > 1:  # a lease of fits - 1 more units (admitted batches only)
                self._granted(hit, fits - 1, values[0], now)
            v += 5
        if status == 0:
            return BatchResult(True, hits)
        new_ban = None
        if text[i] == b"1":
            new_ban = Ban(_text(text[i + 1]), float(text[i + 2]) - offset, int(text[i + 3]))
            self._cache(new_ban, now)
        return BatchResult(False, hits, new_ban, new_ban is not None)

    # -- quota leases (lease=True) -----------------------------------------------------
    @property
    def admits_without_io(self) -> bool:
        """Whether `admit` may be called on a request's path (it never waits on Redis)."""
        return self.lease

    @property
    def covers(self) -> bool:
        """Whether covered windows are charged after the response (`redis_cover`)."""
        return self.lease

    def admit(
        self,
        ops: Sequence[Op],
        ban_keys: tuple[str, ...],
        now: float,
        covers: dict[int, int] | None = None,
    ) -> tuple[list[tuple[int, float, int]], int] | None:
        """The fast path (`apiguard.admission`) on leases alone: every op taken from a
        live lease of this worker, or covered (`covers`: covered op's tag -> its
        covering op's tag; charged after the response, on an event loop only); else
        None, nothing taken, and the caller runs `aexecute`/`execute`. No Redis call."""
        leases = self._leases
        if not self.lease or not leases:
            return None
        if self._known_ban(ban_keys, now) is not None:
            return None
        self._last_now = now
        self._last_tick = time.monotonic()
        if now >= self._sweep_at:
            self._sweep(now)
        out: list[tuple[int, float, int]] = []
        taken: list[tuple[_Lease, int]] = []
        charges: list[Any] | None = None
        best = -1
        best_share = 2.0
        at: dict[int, int] = {}  # tag -> its op's index
        with self._lease_lock:
            for n, (key, spec, cost, once, advertised, tag) in enumerate(ops):
                lease = leases.get(key)
                if (
                    lease is not None
                    and lease.left >= cost > 0
                    and lease.until > now
                    and once is None
                ):
                    lease.left -= cost
                    lease.used += cost
                    taken.append((lease, cost))
                    result = (
                        max(lease.remaining - lease.used, 0),
                        max(lease.reset_at - now, 0.0),
                        lease.bucket,
                    )
                else:
                    d = at.get(covers.get(tag, -1), -1) if covers and once is None else -1
                    if d < 0:
                        for lease, cost in taken:  # (nothing charged: all goes back)
                            lease.left += cost
                            lease.used -= cost
                        return None
                    d_spec = ops[d][1]
                    remaining, reset, bucket = out[d]
                    result = (remaining + spec.limit - d_spec.limit, reset, bucket)
                    if charges is None:
                        charges = []
                    charges += ["C", key, bucket, cost, spec.buckets, repr(spec.width)]
                at[tag] = n
                out.append(result)
                if advertised:
                    share = result[0] / spec.limit
                    if share < best_share:
                        best = n
                        best_share = share
        if charges is not None:
            loop = asyncio._get_running_loop()
            flusher = self._flusher_for(loop) if loop is not None else None
            if flusher is None or flusher.busy:
                # sync callers, or writes falling behind: the checkpoint charges them
                self._untake(taken)
                return None
            if self.server_time is False:
                charges[:0] = ["N", repr(now)]
            flusher.add(charges, len(charges) // 6)
        self.leased_hits += len(taken)
        self.local_admissions += 1
        if self._news_at < self._last_tick - _NEWS_EVERY:
            self._poll_news()
        return out, best

    def _untake(self, taken: list[tuple[_Lease, int]]) -> None:
        with self._lease_lock:
            for lease, cost in taken:
                lease.left += cost
                lease.used -= cost

    def _poll_news(self, sync: bool = False) -> None:
        """Read the ban news (none came for `_NEWS_EVERY`): with the next flush on an
        event loop, else (or `sync`: a sync caller) one call now."""
        self._news_at = self._last_tick
        loop = None if sync else asyncio._get_running_loop()  # (None: not on a loop)
        if loop is not None:
            self._flusher_for(loop).add([], 0)
        elif self.sync_ready:
            self._guarded(self._sync_news)

    def _take(self, batch: Batch, now: float) -> tuple[list[Hit], Batch | None]:
        """Take from this worker's leases every hit they cover: a plain charge (no `once`
        marker) of a window with a live lease holding enough units. Returns those hits
        (their results set, as admitted) and the batch of the others for the script, or
        None when the leases covered every hit (the batch is admitted without Redis).
        The units taken go back to their leases if the script does not admit the rest
        (`_merge`): a batch is still admitted or refused as a whole."""
        if now >= self._sweep_at:
            self._sweep(now)
        leases = self._leases
        hits = batch.hits
        if not leases or not hits:
            return [], batch
        taken: list[Hit] = []
        rest: list[Hit] = []
        with self._lease_lock:
            for hit in hits:
                lease = leases.get(hit.key)
                cost = hit.cost
                if (
                    lease is None
                    or lease.left < cost
                    or lease.until <= now
                    or cost <= 0
                    or not hit.consume
                    or hit.once is not None
                ):
                    rest.append(hit)
                    continue
                lease.left -= cost
                lease.used += cost
                hit.fits = True
                hit.remaining = max(lease.remaining - lease.used, 0)
                hit.reset = max(lease.reset_at - now, 0.0)
                hit.retry_after = 0.0
                hit.bucket = lease.bucket
                taken.append(hit)
        self.leased_hits += len(taken)
        if not rest:
            self.local_admissions += 1
            return taken, None
        return taken, (Batch(rest, batch.ban_keys) if taken else batch)

    def _merge(self, batch: Batch, taken: list[Hit], result: BatchResult) -> BatchResult:
        """The whole batch's result from the script's for the hits leases did not cover."""
        if not taken:
            return result
        if result.admitted:
            return BatchResult(True, batch.hits)
        back: list[Any] = []
        with self._lease_lock:  # not admitted: nothing is charged, the units go back
            for hit in taken:
                lease = self._leases.get(hit.key)
                if lease is not None and lease.bucket == hit.bucket:
                    lease.left += hit.cost
                    lease.used -= hit.cost
                else:  # (its lease has ended meanwhile: straight back to Redis)
                    back += ["F", hit.key, hit.bucket, hit.cost, hit.spec.buckets]
        if back:
            self._give_back(back)
        return BatchResult(False, batch.hits if result.hits else [], result.ban, result.new_ban)

    def _cover(
        self, batch: Batch, pairs: list[tuple[int, int]], result: BatchResult, now: float
    ) -> BatchResult:
        """The whole batch's result once its covering hits are decided: each covered hit
        answers as its cover did (at least the cover's remaining, plus the difference of
        their limits) and, admitted, is charged after the response into its cover's
        bucket (one 'C' operation each, with the writes that follow responses)."""
        if not result.hits:  # banned: nothing was decided
            return result
        hits = batch.hits
        ops: list[Any] = ["N", repr(now)] if self.server_time is False else []
        for i, j in pairs:
            w = hits[i]
            d = hits[j]
            w.fits = True
            w.remaining = d.remaining + w.spec.limit - d.spec.limit
            w.reset = d.reset
            w.retry_after = 0.0
            w.bucket = d.bucket
            if result.admitted and d.bucket > -(1 << 61):  # (not a fallback's)
                ops += ["C", w.key, d.bucket, w.cost, w.spec.buckets, repr(w.spec.width)]
        if len(ops) > 2:
            self._flusher_for(asyncio.get_running_loop()).add(ops, len(pairs))
        return BatchResult(result.admitted, hits, result.ban, result.new_ban)

    def _ask(self, hit: Hit, now: float) -> int:
        """The lease hit's checkpoint asks for (0: none): a plain charge of a window on
        which this worker holds no live lease with units left."""
        if not hit.consume or hit.cost <= 0 or hit.once is not None:
            return 0
        key = hit.key
        lease = self._leases.get(key)
        if lease is None:
            return 0 if len(self._leases) >= _LEASE_TABLE else self._want.get(key, _LEASE_FIRST)
        if lease.until <= now:
            return self._want.get(key, _LEASE_FIRST)
        if lease.left >= hit.cost:
            return 0  # (the batch went to Redis for another hit: this lease stays)
        # used up before its end: ask for twice as much
        want = min(_LEASE_MAX, 2 * self._want.get(key, _LEASE_FIRST))
        if len(self._want) >= 4 * _LEASE_TABLE:
            self._want.clear()
        self._want[key] = want
        return want

    def _granted(self, hit: Hit, units: int, store_now: float, now: float) -> None:
        """Keep a lease the script granted on hit's window: usable until its bucket ends
        (store clock; `now`, the caller's time before the call, maps the store's time
        after it: the lease ends no later in real time than the bucket) and at most
        `lease_life` seconds."""
        life = min(self.lease_life, (hit.bucket + 1) * hit.spec.width - store_now - _LEASE_SAFETY)
        lease = _Lease(
            units, now + life, hit.bucket, hit.spec.buckets, hit.remaining, now + hit.reset
        )
        key = hit.key
        back: list[Any] = []
        with self._lease_lock:
            old = self._leases.pop(key, None)
            if old is not None:
                self._settle(key, old, now, back)
            if life > 0:
                self._leases[key] = lease
            else:  # (the bucket ends now: nothing to admit from it)
                back += ["F", key, lease.bucket, units, lease.buckets]
        if back:
            self._give_back(back)

    def _settle(self, key: str, lease: _Lease, now: float, back: list[Any]) -> None:
        """A lease ends: what it did not use goes back to its bucket ('F', after the
        response), and the next lease on the key is sized by this one's use (doubled when
        used up (`_ask`), halved when units were left)."""
        if lease.left > 0:
            back += ["F", key, lease.bucket, lease.left, lease.buckets]
            if len(self._want) >= 4 * _LEASE_TABLE:
                self._want.clear()
            self._want[key] = max(_LEASE_FIRST, self._want.get(key, _LEASE_FIRST) // 2)

    def _sweep(self, now: float) -> None:
        """End the leases whose time is up, giving back their unused units."""
        self._sweep_at = now + _SWEEP
        back: list[Any] = []
        with self._lease_lock:
            leases = self._leases
            for key in [k for k, lease in leases.items() if lease.until <= now]:
                self._settle(key, leases.pop(key), now, back)
        if back:
            self._give_back(back)

    def release_leases(self) -> None:
        """End every lease now, giving back its unused units (`aclose`, tests)."""
        back: list[Any] = []
        with self._lease_lock:
            for key, lease in list(self._leases.items()):
                self._settle(key, lease, 0.0, back)
            self._leases.clear()
        if back:
            self._give_back(back)

    def _give_back(self, ops: list[Any]) -> None:
        """Queue refunds ('F' operations) after responses; sync callers: one call now.
        (Lost when Redis fails: the units then stay counted until their bucket leaves
        the window, which only refuses sooner.)"""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            self._guarded(lambda: self._call("after", self._after_args(ops)))
            return
        flusher = self._flusher_for(loop)
        for i in range(0, len(ops), 5):
            flusher.add(ops[i : i + 5], 1)

    # -- failure policy --------------------------------------------------------------
    def _fallback(self, batch: Batch, exc: BaseException | None) -> BatchResult:
        """Answer `batch` without Redis: rules fail open, except enforced hits of rules
        that fail closed (`on_store_failure="closed"`), which refuse (without a strike)."""
        if exc is not None:
            self._breaker.failure(exc)
        self.fallbacks += 1
        closed = False
        retry = self._breaker.retry_in()
        for hit in batch.hits:
            hit.bucket = -(1 << 62)  # nothing charged: refunds find nothing
            if hit.enforce and self._fails_closed(hit):
                closed = True
                hit.fits = False
                hit.remaining = 0
                hit.reset = retry
                hit.retry_after = retry
            else:
                hit.fits = True
                hit.remaining = hit.spec.limit
                hit.reset = 0.0
                hit.retry_after = 0.0
        policy = "closed" if closed else "open"
        self._fallback_counter.add(1, {"apiguard.store.policy": policy})
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(
                "apiguard.store.fallback",
                {
                    "apiguard.store.policy": policy,
                    "apiguard.store.reason": type(exc).__name__ if exc else "breaker open",
                },
            )
        return BatchResult(not closed, batch.hits)

    def _fails_closed(self, hit: Hit) -> bool:
        policy = getattr(hit.rule, "on_store_failure", None) or self.on_failure
        return bool(policy == "closed")

    @property
    def available(self) -> bool:
        """Whether the breaker is closed (Redis answered the last call)."""
        return self._breaker.closed

    # -- bans --------------------------------------------------------------------------
    def _known_ban(self, keys: Sequence[str], now: float) -> Ban | None:
        """A running ban on one of `keys` known to this process (no Redis call)."""
        if not self._bans:
            return None
        for key in keys:
            ban = self._bans.get(key)
            if ban is not None:
                if ban.until > now:
                    return ban
                self._bans.pop(key, None)  # (another thread may have dropped it)
        return None

    def _learn(self, fields: list[Any], offset: float, now: float) -> Ban:
        """Cache a ban read from Redis (an empty `until`: lifted or gone)."""
        key, until, level, owner, action, reason = (_text(f) for f in fields)
        if not until:
            self._bans.pop(key, None)
            self._passes.pop(key, None)
            return Ban(key, now, 0)
        ban = Ban(
            key,
            float(until) - offset,
            int(level or 1),
            owner or None,
            action or "block",
            reason or None,
        )
        self._cache(ban, now)
        return ban

    def _cache(self, ban: Ban, now: float) -> None:
        """Remember `ban` in process (bounded: a full table drops expired bans first,
        then does not record it; the checkpoint still reads it from Redis)."""
        if ban.action == "pass":
            with self._lock:
                passes = self._passes
                if ban.key not in passes and len(passes) >= self.max_bans:
                    passes.popitem(last=False)
                passes[ban.key] = ban
            return
        bans = self._bans
        with self._lock:
            if ban.key not in bans and len(bans) >= self.max_bans:
                for key in [k for k, b in list(bans.items()) if b.until <= now]:
                    del bans[key]
                if len(bans) >= self.max_bans:
                    return
            bans[ban.key] = ban

    def active_ban(self, key: str, now: float) -> Ban | None:
        """The ban on `key` known to this process, if running (no network trip)."""
        ban = self._bans.get(key) if self._bans else None
        if ban is None and self._passes:
            ban = self._passes.get(key)
        if ban is None or ban.until <= now:
            return None
        return ban

    def impose(self, ban: Ban, now: float) -> None:
        """Record `ban` (kept if a longer one is in place): cached at once, written to
        Redis in the background when called from the event loop."""
        current = self.active_ban(ban.key, now)
        if current is None or current.until < ban.until:
            self._cache(ban, now)
        keep = self._bans_cfg.max if self._bans_cfg is not None else 86_400.0
        self._write(
            [
                "I",
                ban.key,
                repr(max(ban.until - now, 0.001)),
                ban.level,
                ban.owner or "",
                ban.action if ban.action != "block" else "",
                ban.reason or "",
                repr(max(keep, ban.until - now)),
            ],
            now,
            urgent=True,
        )

    def lift(self, key: str) -> None:
        """Remove any ban on `key`, here and (in the background) in Redis."""
        self._bans.pop(key, None)
        self._passes.pop(key, None)
        keep = self._bans_cfg.max if self._bans_cfg is not None else 86_400.0
        self._write(["L", key, repr(keep)], None, urgent=True)

    # -- writes after the response ---------------------------------------------------
    def refund(self, key: str, spec: WindowSpec, bucket: int, cost: int) -> None:
        """Give back a charge (count="success" flows), off the response's path."""
        if cost <= 0 or bucket < -(1 << 61):
            return
        self._write(["F", key, bucket, cost, spec.buckets], None)

    def _write(self, args: list[Any], now: float | None, urgent: bool = False) -> None:
        """Queue one `AFTER` operation on a running event loop (see `redis_after`); with no
        loop (sync callers) run it now. Failures fall back (nothing is written)."""
        if now is not None and self.server_time is False:
            args = ["N", repr(now), *args]
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            self._guarded(lambda: self._call("after", self._after_args(args)))
            return
        self._flusher_for(loop).add(args, 1, urgent=urgent)

    def _after_args(self, ops: list[Any]) -> list[Any]:
        # on an injected clock every operation carries its time ('N'); the first one's
        # spares the script a TIME call
        now = ops[1] if ops and ops[0] == "N" else ""
        return [self._p, now, _MARGIN, *ops]

    def _flusher_for(self, loop: asyncio.AbstractEventLoop) -> Flusher:
        flusher = self._flusher
        if flusher is None or flusher.loop is not loop:
            flusher = self._flusher = Flusher(loop, self._flush, self._dropped)
        return flusher

    async def _flush(self, ops: list[Any]) -> list[Any] | None:
        """One flush's script call under the failure policy: its reply, or None."""
        if not self._breaker.allow():
            return None
        try:
            reply = await self._acall("after", self._after_args(self._with_news(ops)))
        except Exception as exc:
            self._breaker.failure(exc)
            return None
        self._breaker.success()
        values, text = _doubles(reply)
        self._news(values[0], values[1], int(values[2]), text)
        del values[1:3]
        return values

    def _with_news(self, ops: list[Any]) -> list[Any]:
        """`ops` and a read of the ban news ('S'), after a first 'N' (which spares the
        script a TIME call); on an injected clock one is added (the news' times are
        mapped to the callers' clock)."""
        news = ["S", self._seen, _NEWS]
        if ops and ops[0] == "N":
            return [*ops[:2], *news, *ops[2:]]
        if self.server_time is False:
            now = self._last_now + (time.monotonic() - self._last_tick)
            return ["N", repr(now), *news, *ops]
        return [*news, *ops]

    def _sync_news(self) -> None:
        """A flush of nothing but the ban news, from sync code (`_NEWS_EVERY`)."""
        values, text = _doubles(self._call("after", self._after_args(self._with_news([]))))
        self._news(values[0], values[1], int(values[2]), text)

    def _news(self, store_now: float, seen: float, count: int, text: list[bytes]) -> None:
        """Learn the ban changes a flush brought (as a checkpoint's reply does): a worker
        admitting from leases hears of a ban earned elsewhere with its next flush."""
        if not self._last_tick:
            return  # (no checkpoint yet: the callers' clock is unknown; the first brings it)
        self._seen = seen
        self._news_at = time.monotonic()
        if not count:
            return
        now = self._last_now + (self._news_at - self._last_tick)  # (the callers' clock)
        offset = store_now - now
        for i in range(0, 6 * count, 6):
            self._learn(text[i : i + 6], offset, now)

    def _dropped(self, count: int) -> None:
        self.dropped += count
        self._dropped_counter.add(count)

    def _spawn(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> None:
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _guarded(self, call: Callable[[], Any]) -> Any:
        if not self._breaker.allow():
            return None
        try:
            result = call()
        except Exception as exc:
            self._breaker.failure(exc)
            return None
        self._breaker.success()
        return result

    async def drain(self) -> None:
        """Send what waits to be written after responses, and wait for it (tests,
        shutdown: `aclose` drains first)."""
        flusher = self._flusher
        if flusher is not None and flusher.loop is asyncio.get_running_loop():
            await flusher.drain()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- detectors' state ----------------------------------------------------------------
    def _observe_ops(self, ops: Sequence[Observation], now: float) -> list[Any]:
        args = observe_args(ops, self._p)
        return ["N", repr(now), *args] if self.server_time is False else args

    def observe(self, ops: Sequence[Observation], now: float) -> None:
        """Run `Tally` and `Run` operations in one script call and fill their results
        (left at zero when Redis is unavailable: detectors see no evidence)."""
        if not ops:
            return
        args = self._after_args(self._observe_ops(ops, now))
        reply = self._guarded(lambda: self._call("after", args))
        if reply is not None:
            fill(ops, _doubles(reply)[0], 1)

    def observe_later(
        self, ops: Sequence[Observation], now: float, then: Then, judged: bool = True
    ) -> bool:
        """Queue `ops` to be written with other requests' (a few ms later, one script
        call for all) and call `then` once their results are in (or Redis failed: left
        at zero). On a guard's injected clock this declines (False: call `aobserve`),
        so a simulated campaign is judged before its next request, unless nothing is
        `judged` on the results (evidence only). Off an event loop: False."""
        if not ops or (judged and self.server_time is False):
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._flusher_for(loop).add(observe_args(ops, self._p), len(ops), ops, then)
        return True

    async def aobserve(self, ops: Sequence[Observation], now: float) -> None:
        """`observe` on the asyncio client, sent with whatever else waits at the loop's
        next turn (one script call for all of it)."""
        if not ops:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def then() -> None:
            if not done.done():
                done.set_result(None)

        self._flusher_for(loop).add(self._observe_ops(ops, now), len(ops), ops, then, True)
        await done

    # -- one identity across workers -------------------------------------------------
    def shared_secret(self, candidate: bytes) -> bytes:
        """The deployment's keyed-hash secret: `candidate` if no worker stored one yet
        (SET NX), else the stored one; every worker then hashes identities alike. Kept
        while any worker runs (each checkpoint refreshes it; restored if it vanished)."""
        client = self._sync()
        if client is None:
            raise ConfigurationError(
                "Guard(store=RedisStore(...)) with only an asyncio client cannot read the "
                "shared hashing secret at start-up: set `secret` in the configuration (the "
                "same in every worker), or give the store a sync client too"
            )
        key = self._p + "secret"
        try:
            client.set(key, candidate.hex(), nx=True, px=int(SECRET_TTL * 1000))
            value = client.get(key)
        except Exception as exc:
            raise ConfigurationError(
                f"Guard(store=...): {self.name} could not be reached at start-up to read "
                f"the shared hashing secret ({type(exc).__name__}); make it reachable, or set "
                "`secret` in the "
                "configuration (the same in every worker)"
            ) from None
        self._secret = _text(value)
        return bytes.fromhex(self._secret)

    def _defer_secret(self) -> None:
        """Put the secret back (it expired while workers ran): SET NX, off the path."""
        secret = self._secret
        if secret is None:
            return
        key = self._p + "secret"
        ttl = int(SECRET_TTL * 1000)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            client = self._sync()
            if client is not None:
                self._guarded(lambda: client.set(key, secret, nx=True, px=ttl))
            return
        client = self._async()
        if client is not None:
            self._spawn(loop, client.set(key, secret, nx=True, px=ttl))

    # -- an app's test suite ---------------------------------------------------------
    def reset(self) -> None:
        """Forget every window, marker, strike, ban and detector state of this prefix
        (`Guard.reset()`, for test suites): deletes the prefix's keys (sync client)."""
        self._bans.clear()
        self._passes.clear()
        self._seen = 0.0
        self._leases.clear()
        self._want.clear()
        client = self._sync()
        if client is None:
            raise ConfigurationError("RedisStore.reset() needs a sync client (or a URL)")
        keep = self._p + "secret"
        batch: list[Any] = []
        for key in client.scan_iter(match=self._p + "*", count=1000):
            if _text(key) != keep:
                batch.append(key)
            if len(batch) >= 500:
                client.delete(*batch)
                batch = []
        if batch:
            client.delete(*batch)

    def close(self) -> None:
        """Close the sync client's connections (an asyncio client: `aclose`)."""
        if self._client is not None:
            self._client.close()

    async def aclose(self) -> None:
        """Write what waits (`drain`), then close the asyncio client's connections."""
        self.release_leases()
        await self.drain()
        self._wired = None
        for lane in self._lanes.values():
            if isinstance(lane, Wire):
                await lane.aclose()
        if self._aclient is not None:
            await self._aclient.aclose()


__all__ = ["RedisStore", "redis_module"]
