"""`Guard`: configuration, state, the engine, and the route decorators."""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import itertools
import logging
import math
import numbers
import os
import re
import sys
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, Literal, TypeVar

from opentelemetry import metrics

from apiguard.config import GuardConfig, Mode
from apiguard.decision import Decision
from apiguard.engine import Engine, PrincipalResolver
from apiguard.errors import ConfigurationError as ConfigurationError
from apiguard.errors import check_arity
from apiguard.login import (
    LoginRule,
    UsernameSpec,
    device_entries,
    device_key,
    device_mac,
)
from apiguard.objects import ObjectsRule, object_ids
from apiguard.picking import UNREADABLE, ArgumentKey, Picker, Spec, key_text
from apiguard.request import (
    KeyedHasher,
    RequestContext,
    callable_failed,
    current_request,
    identity_text,
)
from apiguard.responses import BlockHook, BlockResponse
from apiguard.routes import RouteEntry, walk_routes
from apiguard.rules import Cost, CredentialChurnRule, FlowRule, Per, Rule, WindowRule
from apiguard.simulate.clock import FakeClock
from apiguard.store.base import Store
from apiguard.store.memory import MemoryStore
from apiguard.telemetry import Telemetry

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("apiguard")

_SUMMARY_ROUTES = 20  # routes named in the start-up line; the rest are counted

# the guards whose `unguarded()` block the current code runs in (scripts, tasks)
_unguarded: ContextVar[tuple[Guard, ...]] = ContextVar("apiguard_unguarded", default=())


_workers_warned = False  # (once per process)


def _warn_if_one_of_several_workers(store: Store) -> None:
    """The in-process store counts for its own process: warn once when this process looks
    like one of several workers (`WEB_CONCURRENCY` above 1, which uvicorn and gunicorn take
    for their worker count, or a process started by another Python process, as `uvicorn
    --workers` and `--reload` start theirs), since every limit is then worth that many
    times what it says and a ban holds in one worker only."""
    global _workers_warned
    if _workers_warned or not isinstance(store, MemoryStore):
        return
    import multiprocessing

    concurrency = os.environ.get("WEB_CONCURRENCY", "").strip()
    several = concurrency.isdecimal() and int(concurrency) > 1
    if not several and multiprocessing.parent_process() is None:
        return
    _workers_warned = True
    why = (
        f"WEB_CONCURRENCY={concurrency}"
        if several
        else "this process was started by another Python process (uvicorn --workers or "
        "--reload, a process pool)"
    )
    log.warning(
        "apiguard: %s: if this is one of several workers, the in-process store counts for "
        "this worker alone (every limit is worth as many times what it says, a ban holds in "
        "one worker): use Guard(store=\"redis://...\") (see the README, several workers)",
        why,
    )


def _config_from(config: object) -> GuardConfig:
    if config is None:
        return GuardConfig()
    if isinstance(config, GuardConfig):
        return config
    if not isinstance(config, Mapping):
        raise ConfigurationError(
            "Guard(config): expected a GuardConfig, a mapping of settings or None, not a "
            f"{type(config).__name__} (keyword arguments such as mode go inside the config: "
            'Guard({"mode": "monitor"}))'
        )
    return GuardConfig.load(dict(config))


# the store contract (apiguard.store.base.Store): what the engine calls
_STORE_METHODS = ("execute", "aexecute", "refund", "impose", "active_ban")


def _store_from_url(url: str, config: GuardConfig) -> Store:
    """The store a URL names (redis://, rediss://, redis+sentinel://, redis+cluster://,
    valkey://): a ConfigurationError naming `store`, never echoing the URL (it may carry
    a password), for anything else."""
    from apiguard.store.redis import RedisStore  # redis-py is an optional extra

    settings = config.store
    return RedisStore.from_url(
        url,
        prefix=settings.prefix,
        timeout=settings.timeout,
        breaker_interval=settings.breaker,
        on_failure=settings.on_failure,
        strike_buckets=settings.window_buckets,
        max_bans=settings.max_keys,
        lease=settings.lease,
        lease_life=settings.lease_life,
    )


def _check_store(store: object) -> None:
    if isinstance(store, bytes | os.PathLike):
        # never echo it: a store URL may carry a password
        raise ConfigurationError(
            "Guard(store=...): pass a store URL as a str (redis://...) or a store object"
        )
    if isinstance(store, type):
        raise ConfigurationError(
            f"Guard(store=...): pass a store instance ({store.__name__}()), not the class"
        )
    missing = [m for m in _STORE_METHODS if not callable(getattr(store, m, None))]
    if not hasattr(store, "local"):
        missing.insert(0, "local")
    if missing:
        raise ConfigurationError(
            f"Guard(store=...): a {type(store).__name__} is not a store (it lacks "
            f"{', '.join(missing)}); see apiguard.store.base.Store"
        )


# clocks known to count seconds (no rate check needed)
_SECOND_CLOCKS: tuple[Callable[[], float], ...] = (
    time.monotonic,
    time.time,
    time.perf_counter,
    time.process_time,
    time.thread_time,
)
# clocks known to count nanoseconds
_NANOSECOND_CLOCKS: tuple[Callable[[], int], ...] = tuple(
    getattr(time, name)
    for name in (
        "monotonic_ns",
        "time_ns",
        "perf_counter_ns",
        "process_time_ns",
        "thread_time_ns",
        "clock_gettime_ns",
    )
    if hasattr(time, name)
)
_MAX_SECONDS = 1e11  # year 5138 as Unix time; beyond it the clock counts ms, µs or ns
_CLOCK_PROBE = 0.005  # real seconds between two readings of an unknown clock
_SECONDS_HINT = "pass a clock returning seconds, e.g. time.monotonic"


def _read_clock(clock: Callable[[], float]) -> float:
    try:
        value: object = clock()
    except Exception as exc:
        raise ConfigurationError(
            f"Guard(clock=...): calling the clock raised {type(exc).__name__}: {exc}"
        ) from exc
    reading = math.nan
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        with contextlib.suppress(ArithmeticError, ValueError, TypeError):
            reading = float(value)  # an int too large for a float: OverflowError
    if not math.isfinite(reading):
        shown = repr(value) if isinstance(value, float) else f"a {type(value).__name__}"
        raise ConfigurationError(
            f"Guard(clock=...): the clock returned {shown}, not a finite number of seconds; "
            + _SECONDS_HINT
        )
    if abs(reading) > _MAX_SECONDS:
        raise ConfigurationError(
            f"Guard(clock=...): the clock reads {reading:.4g}, which is not seconds "
            f"(milli-, micro- or nanoseconds?): {_SECONDS_HINT}"
        )
    return reading


def _check_clock(clock: object) -> Callable[[], float]:
    """The clock, checked once: it returns a finite number of seconds."""
    if clock is None:
        return time.monotonic
    if not callable(clock):
        raise ConfigurationError(
            f"Guard(clock=...): expected a callable returning seconds, got {type(clock).__name__}"
        )
    if any(clock is c for c in _NANOSECOND_CLOCKS):
        name = getattr(clock, "__name__", "clock")
        raise ConfigurationError(
            f"Guard(clock=time.{name}) counts nanoseconds, so no limit would ever bite: "
            f"pass time.{name.removesuffix('_ns')} (seconds)"
        )
    check_arity(clock, 0, "Guard(clock=...)", "clock() -> seconds")
    first = _read_clock(clock)
    if any(clock is c for c in _SECOND_CLOCKS) or isinstance(clock, FakeClock):
        return clock
    # an unknown clock: over a few ms of real time, a clock of seconds advances a few ms;
    # one of milliseconds (or finer) advances by thousands of times more. A fake clock
    # that does not move by itself advances by nothing and passes.
    started = time.perf_counter()
    time.sleep(_CLOCK_PROBE)
    second = _read_clock(clock)
    elapsed = time.perf_counter() - started
    advanced = second - first
    if advanced > 0.5 and advanced > 100 * elapsed:
        raise ConfigurationError(
            f"Guard(clock=...): the clock advanced by {advanced:.4g} in {elapsed:.4g} s of real "
            f"time, so it does not count seconds (milli-, micro- or nanoseconds?): {_SECONDS_HINT}"
        )
    return clock


class Guard:
    """Protects one app (or several sharing state). See the README for the full tour.

    `Guard()` keeps state in process. `clock` is any callable returning seconds (tests,
    simulations); `store` replaces the state backend; `principal_resolver(ctx)` returns
    the principal when the app does not call `identify()`; `on_block(decision, response)`
    customises refusals.
    """

    def __init__(
        self,
        config: GuardConfig | Mapping[str, Any] | None = None,
        *,
        clock: Callable[[], float] | None = None,
        store: Store | str | None = None,
        principal_resolver: PrincipalResolver | None = None,
        on_block: BlockHook | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.config = _config_from(config)
        self.clock: Callable[[], float] = _check_clock(clock)
        if isinstance(store, str):
            store = _store_from_url(store, self.config)
        if store is not None:
            _check_store(store)
            attach = getattr(store, "attach", None)
            if callable(attach):  # a shared store: injected clock, metrics
                attach(custom_clock=clock is not None, meter_provider=meter_provider)
        self.store: Store = (
            store
            if store is not None
            else MemoryStore(self.config.store.max_keys, self.config.store.window_buckets)
        )
        if principal_resolver is not None:
            check_arity(
                principal_resolver,
                1,
                "Guard(principal_resolver=...)",
                "principal_resolver(ctx) -> the principal's id or None",
            )
        if on_block is not None:
            check_arity(
                on_block,
                2,
                "Guard(on_block=...)",
                "on_block(decision, default_response) -> BlockResponse",
            )
        if meter_provider is not None and not callable(getattr(meter_provider, "get_meter", None)):
            raise ConfigurationError(
                f"Guard(meter_provider=...): a {type(meter_provider).__name__} is not an "
                "OpenTelemetry MeterProvider (it has no get_meter method)"
            )
        self.hasher = KeyedHasher(self._secret())
        self.on_block = on_block
        self._on_block_failed = False  # reported once
        try:
            self.telemetry = Telemetry(meter_provider)
        except Exception as exc:
            raise ConfigurationError(
                f"Guard(meter_provider=...): creating apiguard's instruments failed "
                f"({type(exc).__name__}: {exc}); pass an OpenTelemetry MeterProvider"
            ) from exc
        self._flows: dict[str, FlowRule] = {}
        self._flow_steps: dict[str, list[FlowRule]] = {}  # every step of each flow
        # advertised policy name -> the rule it belongs to: names in RateLimit-Policy and
        # violated-policies must say which limit they are
        self._policy_owners: dict[str, Rule] = {}
        # original function -> its guarded wrapper; strong references, so a wrapper that the
        # framework never routed (decorator order) is still known when routes are verified
        # original function -> every guarded wrapper made of it; strong references, so a
        # wrapper the framework never routed (decorator order) is still known at verify()
        self._decorated: dict[Callable[..., Any], list[Callable[..., Any]]] = {}
        self._verified: weakref.WeakSet[Any] = weakref.WeakSet()
        self._announced: set[int] = set()  # ids of apps verified but not weak-referenceable
        self._installed = False  # a middleware (or check()) walked an app's routes here
        global_rules = self._global_rules()
        for rule in global_rules:
            self._claim_names(rule)
        self.engine = Engine(
            self.config,
            self.store,
            self.clock,
            self.hasher,
            self.telemetry,
            global_rules,
            principal_resolver,
        )

    def _secret(self) -> bytes:
        """The keyed-hash secret: configured, else one shared through a shared store
        (created once, read by every worker), else random for this process (in-process
        state is per process anyway)."""
        if self.config.secret:
            return self.config.secret.get_secret_value().encode()
        if not self.store.local:
            shared = getattr(self.store, "shared_secret", None)
            if callable(shared):
                value = shared(os.urandom(32))
                if isinstance(value, bytes) and len(value) >= 16:
                    return value
            log.warning(
                "apiguard: %s is shared but no `secret` is configured, so this process "
                "hashes identities with its own random secret and shares no counter with "
                "other workers: set `secret` (the same everywhere)",
                type(self.store).__name__,
            )
        return os.urandom(32)

    def _global_rules(self) -> list[Rule]:
        lim = self.config.limits
        buckets = self.config.store.window_buckets
        rules: list[Rule] = []
        if lim.principal:
            rules.append(
                WindowRule(
                    "per-principal",
                    lim.principal,
                    per="principal",
                    mode=lim.mode,
                    buckets=buckets,
                    key="g.principal",
                )
            )
        if lim.ip:
            rules.append(
                WindowRule("per-ip", lim.ip, per="ip", mode=lim.mode, buckets=buckets, key="g.ip")
            )
        churn = self.config.identity.new_credentials_per_ip
        if churn:
            rules.append(CredentialChurnRule(churn, mode=lim.mode, buckets=buckets))
        if lim.route:
            rules.append(
                WindowRule(
                    "per-route",
                    lim.route,
                    per="principal_route",
                    mode=lim.mode,
                    buckets=buckets,
                    key="g.route",
                )
            )
        return rules

    # -- decorators -----------------------------------------------------------------
    def limit(
        self,
        rate: str,
        *,
        per: Per = "principal",
        cost: Cost = 1,
        mode: Mode | None = None,
        name: str | None = None,
        on_store_failure: Literal["open", "closed"] | None = None,
    ) -> Callable[[F], F]:
        """Limit the decorated handler: `rate` per principal, ip, the route, or `per(ctx)`.

        Put it directly above the function, below the framework's route decorator.
        `on_store_failure`: "closed" refuses while a shared store is unavailable (default:
        `store.on_failure`, "open").
        """
        _check_failure(on_store_failure, "@guard.limit")

        def make(fn: Any) -> Rule:
            where = f"@guard.limit on {_qualname(fn)}"
            if callable(per):
                check_arity(per, 1, f"{where}: per=", "per(ctx) -> key or None")
            if callable(cost):
                check_arity(cost, 1, f"{where}: cost=", "cost(ctx) -> int")
            base = name or f"limit:{getattr(fn, '__name__', 'handler')}"
            label = base
            for n in itertools.count(2):
                try:
                    rule = WindowRule(
                        label,
                        rate,
                        per=per,
                        cost=cost,
                        mode=mode,
                        buckets=self.config.store.window_buckets,
                        strikes=per != "ip",  # a NAT shares the address: throttle only
                    )
                except ValueError as exc:
                    raise ConfigurationError(f"@guard.limit on {_qualname(fn)}: {exc}") from None
                taken = self._taken_names(rule)
                if not taken:
                    break
                if name is not None:
                    raise ConfigurationError(
                        f"@guard.limit(name={name!r}) on {_qualname(fn)}: the policy name "
                        f"{taken[0]!r} is already used by another rule of this guard"
                    )
                label = f"{base}-{n}"  # two handlers with one __name__: limit:get, limit:get-2
            rule.on_store_failure = on_store_failure
            self._claim_names(rule)
            return rule

        return self._decorator(make)

    def flow(
        self,
        name: str,
        rate: str | None = None,
        *,
        per: Per = "principal",
        count: Literal["attempt", "success"] = "attempt",
        completes: bool = True,
        mode: Mode | None = None,
        on_store_failure: Literal["open", "closed"] | None = None,
        key: Spec | None = None,
        count_reads: bool = False,
        finished_by: str | Sequence[str] | None = None,
        unfinished: int | None = None,
    ) -> Callable[[F], F]:
        """Declare a sensitive business flow: `rate` completed flows per principal.

        One `name` may span several routes; they share the budget. Steps declared with
        `completes=False` only need budget left; the completing step charges it.
        `count="success"` charges only responses with a success status.
        `on_store_failure`: as for `limit`.
        `key`: instead of `per`, what the flow is counted per, read from the decorated
        function's arguments (an endpoint's, or a helper method's own) as
        `@guard.login(username=...)` reads them (`"payload.email"`: password
        resets per target e-mail, whatever address or account asks); kept as a keyed hash.
        `count_reads`: a GET, HEAD or OPTIONS request of a route that also takes a write
        counts too (by default it does not: a form view's page is no completed flow; set
        it where a GET of such a route completes the flow, an e-mail link confirming it).
        `finished_by`: the flow (or flows) whose completion finishes this one (a hold
        finished by a checkout); an account that leaves `unfinished` (default 3) of this
        flow unfinished within its longest window is refused it until it finishes one or
        a quarter of the window has passed (`apiguard.detectors.unfinished`).
        """
        _check_failure(on_store_failure, f"@guard.flow({name!r})")
        finishers, bar = _finishers(name, finished_by, unfinished)
        if not isinstance(count_reads, bool):
            raise ConfigurationError(f"@guard.flow({name!r}): count_reads must be True or False")
        argument_key: ArgumentKey | None = None
        if key is not None:
            if per != "principal":
                raise ConfigurationError(f"@guard.flow({name!r}): give per= or key=, not both")
            argument_key = ArgumentKey(
                Picker(key, f"@guard.flow({name!r})", "key", "payload.email", bare=True), key
            )
            per = argument_key
        # declared now, not when the decorator is applied: a decorator a framework applies
        # per request (Flask-RESTful's `method_decorators`, Django's `method_decorator`)
        # makes its rule at the first request, and the flow-group detector's baseline,
        # the principals active, is recorded from the declaration on
        self.engine.declare_flow()

        def make(fn: Any) -> Rule:
            if argument_key is not None:
                where = f"@guard.flow({name!r}) on {_qualname(fn)}"
                original = getattr(fn, "__apiguard_original__", fn)
                if inspect.isgeneratorfunction(original) or inspect.isasyncgenfunction(original):
                    raise ConfigurationError(
                        f"{where}: key= reads the arguments of a generator only as its "
                        "response streams, after the flow is counted: declare it on the "
                        "route's handler"
                    )
                argument_key.picker.check_endpoint(original, where)
            elif callable(per):
                check_arity(
                    per,
                    1,
                    f"@guard.flow({name!r}) on {_qualname(fn)}: per=",
                    "per(ctx) -> key or None",
                )
            known = self._flows.get(name)
            text = rate
            if text is None and known is not None:  # a later step inherits the flow's rates
                text = ";".join(r.text for r in known.rates)
            if text is None:
                raise ConfigurationError(
                    f"@guard.flow({name!r}) on {_qualname(fn)}: the first declaration needs a rate"
                )
            try:
                rule = FlowRule(
                    name,
                    text,
                    per=per,
                    count=count,
                    completes=completes,
                    mode=mode,
                    buckets=self.config.store.window_buckets,
                    strikes=per != "ip",  # a NAT shares the address: throttle only
                )
            except ValueError as exc:
                raise ConfigurationError(
                    f"@guard.flow({name!r}) on {_qualname(fn)}: {exc}"
                ) from None
            rule.on_store_failure = on_store_failure
            rule.count_reads = count_reads
            self._finish_steps(name, rule, finishers, bar, _qualname(fn))
            if known is not None:
                if known.specs != rule.specs or known.per != rule.per:
                    same_key = isinstance(known.per, ArgumentKey) and isinstance(
                        rule.per, ArgumentKey
                    )
                    hint = (
                        " (two key= callables are two keys, even written alike: define "
                        "it once and pass the same function to every step)"
                        if same_key and known.specs == rule.specs
                        else ""
                    )
                    raise ConfigurationError(
                        f"flow {name!r} is declared with different rates, per= or key= on "
                        f"{_qualname(fn)}; every route of one flow must share them{hint}"
                    )
            else:
                taken = self._taken_names(rule)
                if taken:
                    raise ConfigurationError(
                        f"@guard.flow({name!r}) on {_qualname(fn)}: the policy name "
                        f"{taken[0]!r} is already used by another rule of this guard"
                    )
                self._flows[name] = rule
                self._claim_names(rule)
            return rule

        return self._decorator(make)

    def _finish_steps(
        self, name: str, rule: FlowRule, finishers: tuple[str, ...], bar: int, where: str
    ) -> None:
        """Give every step of flow `name` its `finished_by` (whichever step declared it:
        the first route of a flow must not be left unwatched), and declare it once."""
        steps = self._flow_steps.setdefault(name, [])
        declared = next(((r.finished_by, r.unfinished) for r in steps if r.finished_by), None)
        if finishers and declared is not None and declared != (finishers, bar):
            raise ConfigurationError(
                f"@guard.flow({name!r}) on {where}: finished_by= and unfinished= differ "
                "from another step of the flow; declare them alike (or on one step only)"
            )
        if len(steps) < 256:  # (a framework that decorates per request makes one each time)
            steps.append(rule)
        if finishers and declared is None:
            for step in steps:
                step.finished_by, step.unfinished = finishers, bar
            self.engine.declare_unfinished(name, finishers, bar, rule.longest)
        elif declared is not None:
            rule.finished_by, rule.unfinished = declared

    def login(
        self,
        *,
        username: UsernameSpec,
        success: Callable[[Any], bool] | None = None,
        reports: bool | None = None,
    ) -> Callable[[F], F]:
        """Declare the login endpoint, for account-takeover detection.

        `username`: a callable whose parameter names pick the endpoint's arguments it
        reads (`lambda form_data: form_data.username`; on Flask, whose views get no body
        argument, one that takes none: `lambda: request.get_json()["username"]`), or a
        dotted name (`"form_data.username"`). The outcome comes from the status (2xx success; 400,
        401, 403 and 404 failure; others neither) unless `success(return_value)` says.
        `reports=True`: the view reports every outcome with `login_result()` (a form login
        answering 200 or 302 either way), so a 2xx it did not report is no login (a form
        rejected before the password check, such as a missing CSRF token). `reports=False`:
        the status decides even where the view calls `login_result()` (to report only its
        failures, or `exists=`). Not given: True where the view's own code calls
        `login_result()`; else learned, for good, from a report that says the status cannot
        tell (a success reported, or a failure answered 2xx/3xx). Short of `reports=False`,
        a form-encoded login to a route that also serves its page by GET is no success by
        its 2xx alone (a form's failed login shows the form again, 200).
        Before the handler checks the password, a client the detectors hold back gets the
        refusal (a challenge) instead.
        Put it directly above the function, below the framework's route decorator.
        """
        if success is not None:
            check_arity(success, 1, "@guard.login(success=...)", "success(return_value) -> bool")
        if reports is not None and not isinstance(reports, bool):
            raise ConfigurationError(
                f"@guard.login(reports=...) must be True, False or None, got {reports!r}"
            )

        LoginRule(username, success, "@guard.login")  # a malformed spec fails here

        def make(fn: Any) -> Rule:
            where = f"@guard.login on {_qualname(fn)}"
            rule = LoginRule(username, success, where, reports)
            original = getattr(fn, "__apiguard_original__", fn)
            rule.check_endpoint(original, where)
            rule.make_reporting(original)
            return rule

        return self._decorator(make)

    def login_result(
        self, username: str | None, success: bool, *, exists: bool | None = None
    ) -> None:
        """Report a login outcome from inside the request (apps whose login is not one
        route, or that know whether the account exists: `exists=False` is the strongest
        stuffing signal). Call it after checking the password and before issuing the
        session: it raises `Refused` (a challenge) when the client must first prove it is
        a person, whatever the outcome (so the answer never tells a bot which guess was
        right)."""
        ctx = current_request()
        if ctx is None:
            self._outside("guard.login_result()")
            return
        engine = ctx.engine  # the middleware's guard keeps the detection state
        name = None if username is None else str(username).strip() or None
        if ctx.login is None:
            engine.login_started(ctx, name)
        elif name is not None:
            engine.login_renamed(ctx, name)  # ("username or e-mail": the one it checked)
        engine.login_finished(ctx, bool(success), exists)

    def account_created(
        self, user_id: str | int | uuid.UUID, *, username: str | None = None
    ) -> None:
        """Call from the request that created the account `user_id` (the id `identify()`
        gets for it later) when it answers with a success status (`success_statuses`:
        2xx, or a form's redirect after post): the account is young for
        `detection.bola.young_for` (see *Young accounts* in the README). Needed where the
        sign-up does not sign the user in, or sets a cookie first; a sign-up flow that
        calls `identify()` on a request with neither credential nor cookie is seen alone,
        until the first call of this method: from then on only it makes accounts young.

        `username`: the name the account logs in with (what `@guard.login` reads). The
        client that created it gets the account's device cookie with that answer, as
        after a successful login, so its first login is not held back by a login alarm
        (a stuffing elsewhere) as a new device's would be."""
        ctx = current_request()
        if ctx is None:
            self._outside("guard.account_created()")
            return
        text = identity_text(user_id, ctx.engine, "account_created()")
        if not text:
            raise ValueError("account_created() needs the new account's non-empty user id")
        if username is not None and (not isinstance(username, str) or not username.strip()):
            raise ValueError("account_created(username=...) must be the account's login name")
        engine = ctx.engine
        engine.accounts_declared = True  # from now on, only declared sign-ups make accounts young
        ctx.born = (engine.hasher("u", text), engine.hasher("c", text))
        if username is not None:
            ctx.device_for = device_key(engine.hasher, username)

    def objects(self, *, ids: Spec, name: str = "id") -> Callable[[F], F]:
        """Declare the objects an endpoint touches that its path does not name, for BOLA
        detection: a JSON body's `order_id`, a batch read's list of ids.

        `ids`: a callable whose parameter names pick the endpoint's arguments it reads
        (`lambda payload: payload.order_ids`; on Flask, where a view's body is not an
        argument, one that takes none: `lambda: request.get_json()["order_id"]`), or a
        dotted name (`"payload.order_id"`). It returns one id (a str, an int, a float or
        a uuid.UUID), a list, tuple or set of them, or None. `name` tells them apart from
        the route's path parameters. Put it directly above the function, below the
        framework's route decorator; `guard.objects_touched()` does the same from inside
        the handler."""
        ObjectsRule(ids, name, "@guard.objects")  # a malformed spec fails here

        def make(fn: Any) -> Rule:
            where = f"@guard.objects on {_qualname(fn)}"
            original = getattr(fn, "__apiguard_original__", fn)
            if inspect.isgeneratorfunction(original) or inspect.isasyncgenfunction(original):
                raise ConfigurationError(
                    f"{where}: a generator's body runs as its response streams, after the "
                    "detectors saw the request: declare the ids on the route's handler "
                    "(which returns the streaming response), or call "
                    "guard.objects_touched() there before the response starts"
                )
            rule = ObjectsRule(ids, name, where)
            rule.check_endpoint(original, where)
            return rule

        return self._decorator(make)

    def objects_touched(self, *ids: object, name: str = "id") -> None:
        """Report, from inside a request, object ids it touches that its path does not
        name (each argument one id, a str, an int, a float or a uuid.UUID, or a list,
        tuple or set of them): the BOLA detector counts them as it counts path parameters, up to
        1,000 per request. Raises `Refused` when a detector's challenge stands on the
        caller (it holds only requests that name objects): call it before reading them."""
        ctx = current_request()
        if ctx is None:
            self._outside("guard.objects_touched()")
            return
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"objects_touched(name={name!r}): not a parameter name")
        found: list[object] = []
        for value in ids:
            found += object_ids(value, "guard.objects_touched()")
        ctx.engine.objects_touched(ctx, name, found)

    def challenge_passed(self) -> None:
        """Call from inside the request in which the person passed the app's challenge
        (CAPTCHA, e-mail code, WebAuthn): the client gets a pass (a signed cookie, good for
        `detection.challenge_for` seconds) and is not challenged again until it expires."""
        ctx = current_request()
        if ctx is None:
            self._outside("guard.challenge_passed()")
            return
        ctx.engine.challenge_passed(ctx)

    @contextlib.contextmanager
    def unguarded(self) -> Iterator[None]:
        """`with guard.unguarded():` runs the block's calls of this guard's decorated
        functions without their rules when no request is being handled (a create-user
        script, a background task, a CLI, a unit test calling a helper directly);
        `login_result()`, `account_created()`, `objects_touched()` and
        `challenge_passed()` do nothing there. Outside such a block those calls raise
        `RuntimeError`: a protection silently not applied is never the default. Inside a
        request apiguard is handling, the rules run as always. The block holds for the
        current thread or asyncio task (and the tasks it starts), not for concurrent
        requests."""
        token = _unguarded.set((*_unguarded.get(), self))
        try:
            yield
        finally:
            _unguarded.reset(token)

    def _outside(self, what: str, rules: tuple[Rule, ...] = ()) -> None:
        """A call needing a request, made outside one: nothing inside `unguarded()`,
        else a `RuntimeError` saying what happened and what to do."""
        if self in _unguarded.get():
            return
        described = ", ".join(_describe(r, self.config.mode) for r in rules)
        cannot = (
            f"so its rules ({described}) cannot be counted" if described else "so it cannot run"
        )
        lifted = "to run it without its rules" if described else "where it does nothing"
        text = (
            f"apiguard: {what} was called outside a request apiguard is handling (from a "
            "script, a background task or worker, a thread started without the request's "
            f"context, or a test calling it directly), {cannot}: there is no request and "
            "no client to count. "
        )
        if self._installed:
            text += (
                "This guard's middleware is installed (it checked the app's routes in this "
                "process), so the call came from outside the requests it handles. On "
                "purpose (a create-user script, a task)? Call it inside `with "
                f"guard.unguarded():`, {lifted}. From a handler, start threads with the "
                "request's context (asyncio.to_thread, contextvars.copy_context().run)."
            )
        else:
            text += (
                "No middleware of this guard has run in this process. If the call is part "
                "of handling a request, install it (FastAPI/Starlette: "
                "app.add_middleware(GuardMiddleware, guard=guard); Flask: init_app(app, "
                "guard); Django: apiguard's middleware in MIDDLEWARE). If it is a script, "
                f"a task or a test, call it inside `with guard.unguarded():`, {lifted}."
            )
        raise RuntimeError(text)

    def _taken_names(self, rule: Rule) -> list[str]:
        """`rule`'s policy names that another rule of this guard already advertises."""
        owners = self._policy_owners
        return [p.name for p in rule.policies if owners.get(p.name, rule) is not rule]

    def _claim_names(self, rule: Rule) -> None:
        for policy in rule.policies:
            self._policy_owners[policy.name] = rule

    def _decorator(self, make: Callable[[Any], Rule]) -> Callable[[F], F]:
        """The decorator applying the rule `make(fn)` builds. A method decorated anew on
        every call (Django's `method_decorator`, Flask-RESTful's and Flask-RESTX's
        `method_decorators` wrap the bound method per request) gets one rule per function,
        not a fresh rule (a fresh window, a fresh policy name) per request."""
        per_method: dict[Callable[..., Any], Rule] = {}

        def decorate(fn: F) -> F:
            if isinstance(fn, type):
                # a class-based view (a MethodView, a Flask-RESTX/RESTful Resource, an
                # HTTPEndpoint): wrapping the class in a function would leave the class
                # the router registered (above a class route decorator) unchecked
                raise ConfigurationError(
                    f"apiguard decorators apply to functions, not the class "
                    f"{_qualname(fn)}: decorate its handler methods (get, post, ...) instead"
                )
            if _django_probe(fn):
                # Django's `method_decorator` tries the decorator on a dummy at class
                # creation, for the attributes it adds: no rule (the method gets its own,
                # named after it, when decorated per call), only a mark of this guard for
                # the start-up walk
                fn.__apiguard_method__ = self  # type: ignore[attr-defined]
                return fn
            func = _method_function(fn)
            rule = per_method.get(func) if func is not None else None
            if rule is None:
                rule = make(fn)
                if func is not None and len(per_method) < 4096:
                    per_method[func] = rule
            return self._guard(fn, rule)

        return decorate

    def _guard(self, fn: F, rule: Rule) -> F:
        if not callable(fn):
            raise ConfigurationError(f"apiguard decorators apply to functions, not {fn!r}")
        original = getattr(fn, "__apiguard_original__", fn)
        rules: tuple[Rule, ...] = (*getattr(fn, "__apiguard_rules__", ()), rule)
        wrapper = _wrap(original, rules, self)
        if _method_function(original) is None:  # (a bound method, decorated per
            # request, is never what a router serves: not kept)
            self._decorated.setdefault(original, []).append(wrapper)
        return wrapper  # type: ignore[return-value]

    # -- start-up checks --------------------------------------------------------------
    def check(self, app: Any) -> None:
        """Walk `app`'s routes now (at start-up) and raise `ConfigurationError` for an
        apiguard decorator the router bypasses (written above the route decorator), a
        decorated websocket route, or a `detection.*.routes` template no route has.

        `app`: a Flask app (once its blueprints are registered: after `create_app()`), a
        Starlette or FastAPI app. Under Django, `apiguard.django.check()`. The middleware
        runs the same walk itself (Flask: on the first request, and on every request
        while it fails), so calling this is optional: it fails a deployment earlier."""
        flask = sys.modules.get("flask")
        if flask is not None and isinstance(app, flask.Flask):
            from apiguard.flask import FlaskRoutes

            app = FlaskRoutes(app)
        self.verify(app)

    def verify(self, app: Any, *, complete: bool = True) -> None:
        """Fail loudly if a decorated handler is routed without its checks.

        The classic bug: `@guard.flow` written above `@app.post`, so the framework routed
        the bare function and the limit would never run. `complete=False`: routes may
        still be added (decorator order only; nothing remembered, nothing logged).
        """
        self._installed = True
        if app in self._verified:
            return
        problems: list[str] = []
        sockets: list[str] = []
        routed: set[int] = set()  # ids of apiguard wrappers some route reaches
        served: dict[int, str] = {}  # id(original) -> a template serving it
        ruled: list[tuple[RouteEntry, tuple[Rule, ...]]] = []  # for the start-up line
        templates: set[str] = set()
        opaque = False  # a mounted app whose routes cannot be listed
        for entry in walk_routes(app):
            templates.add(entry.template)
            opaque = opaque or entry.kind == "mount"
            chain = _unwrap_chain(entry.endpoint)
            listed = False
            for obj in chain:
                if getattr(obj, "__apiguard_guard__", None) is self:
                    if not listed:  # the outermost wrapper carries every rule
                        ruled.append((entry, getattr(obj, "__apiguard_rules__", ())))
                        listed = True
                    routed.add(id(obj))
                    if entry.kind == "websocket":
                        sockets.append(f"{entry.template} -> {_qualname(obj)}")
                if _hashable(obj) and obj in self._decorated:
                    served.setdefault(id(obj), entry.template)
        for original, wrappers in self._decorated.items():
            template = served.get(id(original))
            if template is None:
                continue  # not routed by this app
            covered: set[int] = set()
            for w in wrappers:
                if id(w) in routed:
                    covered.update(id(r) for r in getattr(w, "__apiguard_rules__", ()))
            for w in wrappers:
                missing = [r for r in getattr(w, "__apiguard_rules__", ()) if id(r) not in covered]
                if id(w) not in routed and missing:
                    # a wrapper nobody routes, with rules no routed wrapper applies: an
                    # apiguard decorator written above the route decorator
                    problems.append(f"{template} -> {_qualname(original)}")
                    break
        # functions with rules no route of this app serves (helpers, dependencies,
        # library methods): counted when a request calls them, listed apart
        helpers: list[tuple[str, tuple[Rule, ...]]] = []
        if complete:
            self._check_route_settings(templates, opaque)
            for original, wrappers in self._decorated.items():
                if id(original) in served or any(id(w) in routed for w in wrappers):
                    continue
                rules = max((getattr(w, "__apiguard_rules__", ()) for w in wrappers), key=len)
                helpers.append((_qualname(original), rules))
        if problems:
            raise ConfigurationError(
                "apiguard decorators sit above the route decorator, so these routes serve the "
                "undecorated function and their limits would never run: "
                + ", ".join(problems)
                + ". Put apiguard decorators (@guard.limit, @guard.flow, @guard.login, "
                "@guard.objects) directly above `def`, below @app.get/@app.post."
            )
        if sockets:
            raise ConfigurationError(
                "apiguard limits apply to HTTP requests; websocket routes pass through, so "
                "these decorators would never run: " + ", ".join(sockets)
            )
        if not complete:
            return
        try:
            self._verified.add(app)
        except TypeError:  # not weak-referenceable: verified again next time, logged once
            if id(app) in self._announced:
                return
            if len(self._announced) < 256:
                self._announced.add(id(app))
        # (an app whose framework reports logins itself says how: Django's signals)
        told = getattr(app, "__apiguard_logins__", None)
        logins = told() if callable(told) else None
        log.info("%s", self.summary(ruled, helpers, logins if isinstance(logins, str) else None))
        _warn_if_one_of_several_workers(self.store)

    def _check_route_settings(self, templates: set[str], opaque: bool) -> None:
        """Settings naming route templates (`detection.bola.routes`,
        `detection.scraping.routes`) must name routes of the app: a misspelt template would
        silently not apply."""
        detection = self.config.detection
        for flow, rule in sorted(self._flows.items()):
            missing = [n for n in rule.finished_by if n not in self._flows]
            idle = [
                n
                for n in rule.finished_by
                if n in self._flows and not any(s.completes for s in self._flow_steps[n])
            ]
            if idle:
                raise ConfigurationError(
                    f"@guard.flow({flow!r}, finished_by=...) names "
                    f"{', '.join(map(repr, idle))}, declared only on steps with "
                    "completes=False, which never complete it: declare it on the step "
                    f"that completes it (else every {flow!r} stays unfinished)"
                )
            if missing:
                raise ConfigurationError(
                    f"@guard.flow({flow!r}, finished_by=...) names "
                    f"{', '.join(map(repr, missing))}, which no @guard.flow declares: "
                    f"{flow!r} would never be finished, and everyone who completes it "
                    f"{rule.unfinished} times would be refused it (its flows: "
                    f"{', '.join(map(repr, sorted(self._flows)))})"
                )
        unknown_flows = sorted(set(detection.flow_groups.ignore_flows) - set(self._flows))
        if unknown_flows:
            raise ConfigurationError(
                f"detection.flow_groups.ignore_flows names {', '.join(map(repr, unknown_flows))}, "
                f"which no @guard.flow declares (its flows: "
                f"{', '.join(map(repr, sorted(self._flows))) or 'none'})"
            )
        for name, routes in (
            ("bola", detection.bola.routes),
            ("scraping", detection.scraping.routes),
        ):
            unknown = sorted(t for t in routes if t not in templates)
            if not unknown:
                continue
            text = (
                f"detection.{name}.routes names {', '.join(repr(t) for t in unknown)}, which "
                f"no route of this app has{_template_hint(unknown, templates)}"
            )
            if opaque:  # it may be a route of a mounted app apiguard cannot list
                log.warning("apiguard: %s; it may belong to a mounted app", text)
                continue
            raise ConfigurationError(text)

    def summary(
        self,
        routes: list[tuple[RouteEntry, tuple[Rule, ...]]] | None = None,
        helpers: list[tuple[str, tuple[Rule, ...]]] | None = None,
        logins: str | None = None,
    ) -> str:
        """What is on, in one line (logged once per app at start-up): mode, global rules,
        `routes` with their rules, `helpers` (decorated functions not seen on a route, by
        name, with their rules), how logins are seen without `@guard.login` (`logins`:
        the framework's own authentication reports them, Django's signals), store,
        trusted proxies, bans. No secret is included."""
        config = self.config
        override = self.engine.mode_override
        mode = f"mode={config.mode}" + (f" (overridden: {override})" if override else "")
        rules = ", ".join(_describe(r, config.mode, False) for r in self.engine.global_rules)
        parts = [f"apiguard: {mode}", f"global rules: {rules or 'none'}"]
        if routes is not None:
            shown = [
                f"{_route_label(entry)} [{', '.join(_describe(r, config.mode) for r in rs)}]"
                for entry, rs in routes[:_SUMMARY_ROUTES]
            ]
            more = len(routes) - len(shown)
            parts.append(
                f"routes with rules ({len(routes)}): "
                + ("; ".join(shown) if shown else "none")
                + (f"; ... and {more} more" if more > 0 else "")
            )
            helpers = helpers or []
            named = [
                f"{name} [{', '.join(_describe(r, config.mode) for r in rs)}]"
                for name, rs in helpers[:_SUMMARY_ROUTES]
            ]
            more = len(helpers) - len(named)
            parts.append(
                f"functions with rules not seen on a route ({len(helpers)}; helpers, "
                "dependencies, library methods: counted when a request calls them): "
                + "; ".join(named)
                + (f"; ... and {more} more" if more > 0 else "")
                if named
                else "functions with rules not seen on a route: none"
            )
            declared = [r for _, rs in (*routes, *helpers) for r in rs]
            if self.engine.ato is not None and logins is not None:
                parts.append(f"logins: {logins}")
            elif self.engine.ato is not None and not any(
                isinstance(r, LoginRule) for r in declared
            ):
                parts.append(
                    "logins: no @guard.login (guard.login_result() reports are counted "
                    "when made, not listed here)"
                )
        max_keys = getattr(self.store, "max_keys", None)
        parts.append(
            f"store: {type(self.store).__name__}"
            + (f" (max_keys={max_keys})" if isinstance(max_keys, int) else "")
        )
        found = self.engine.detectors
        parts.append(
            "detectors: "
            + (
                ", ".join(
                    d.name
                    + (
                        ""
                        if d.enforce == (config.mode == "enforce")
                        else " (monitor)"
                        if not d.enforce
                        else " (enforce)"
                    )
                    for d in found
                )
                or "none"
            )
        )
        asks = [d.name for d in found if d.enforce and _asks_people(d)]
        if asks:
            path = self.engine.challenge_path
            parts.append(
                f"challenge route: {path}"
                if path is not None
                else "challenge route: none declared (people the detectors "
                + ", ".join(asks)
                + " ask to pass a challenge are refused until it ends: declare "
                "detection.challenge_path and call guard.challenge_passed() there, or set "
                "their person_action to 'throttle' or 'block')"
            )
        if any(d.name == "scraping" and d.enforce for d in found) and (
            self.engine.challenge_path is None
        ):
            parts.append(
                "scraping: surges reported only until the app's challenge route is known "
                "(set detection.challenge_path, or it is taken where challenge_passed() is "
                "first called)"
            )
        if found and config.secret is None:
            parts.append(
                "secret: random per process (set `secret`: device cookies then survive "
                "restarts and are valid in every worker)"
            )
        ip = config.client_ip
        proxies = ", ".join(ip.trusted_proxies) or "none"
        if ip.trusted_proxies:
            proxies += f" (header {ip.proxy_header})"
        if ip.unix_socket_proxy:
            proxies += " + unix socket proxy"
        parts.append(f"trusted proxies: {proxies}")
        bans = config.bans
        parts.append(
            f"bans: on (after {bans.after} refusals in {bans.within:g}s, {bans.base:g}s "
            f"x{bans.factor:g} up to {bans.max:g}s{', strict_ip' if bans.strict_ip else ''})"
            if bans.enabled
            else "bans: off"
        )
        return "; ".join(parts)

    # -- an app's own test suite ------------------------------------------------------
    def reset(self) -> None:
        """Forget all state: every window (limits, flows), new-credential marker, strike
        and ban, and the per-client caches. For an app's test suite, between tests (see
        the README's "Testing your app"); in production it would hand every client a
        fresh budget. The store must provide `reset()` (the in-process one does)."""
        reset = getattr(self.store, "reset", None)
        if not callable(reset):
            raise ConfigurationError(
                f"{type(self.store).__name__} has no reset(), so Guard.reset() cannot "
                "forget its state"
            )
        reset()
        self.engine.forget()

    def override_mode(self, mode: Mode | None) -> None:
        """Run every rule in `mode` ("monitor": nothing is refused and no ban starts,
        decisions are still reported; "enforce": rules declared in monitor mode refuse
        too), whatever the configuration or a decorator's own `mode=` says, until
        `override_mode(None)`. Bans already in place still apply (`reset()` clears them).
        For an app's test suite; `overridden(mode)` is the context-manager form."""
        if mode not in (None, "monitor", "enforce"):
            raise ConfigurationError(f"override_mode({mode!r}): use 'monitor', 'enforce' or None")
        self.engine.override_mode(mode)

    @property
    def mode_override(self) -> Mode | None:
        """The mode set by `override_mode`, or None."""
        return self.engine.mode_override

    @contextlib.contextmanager
    def overridden(self, mode: Mode | None) -> Iterator[Guard]:
        """`with guard.overridden("monitor"):` runs the block with every rule in `mode`,
        then restores the previous override (they nest)."""
        previous = self.engine.mode_override
        self.override_mode(mode)
        try:
            yield self
        finally:
            self.override_mode(previous)

    # -- refusals -------------------------------------------------------------------
    def block_response(self, decision: Decision, default: BlockResponse) -> BlockResponse:
        """The response to send for a refusal: `on_block`'s, or `default` when there is no
        hook or the hook failed (raised, or returned something else than a
        `BlockResponse`; reported once). A refusal is never turned into a 500."""
        hook = self.on_block
        if hook is None:
            return default
        try:
            response = hook(decision, default)
        except Exception:
            if not self._on_block_failed:
                self._on_block_failed = True
                log.exception("apiguard: on_block raised; the default refusal was sent")
            return default
        problem = _block_problem(response)
        if problem is None:
            return response
        if not self._on_block_failed:
            self._on_block_failed = True
            error = ConfigurationError(
                f"on_block returned {problem}; the default refusal is sent instead (reported once)"
            )
            log.error("apiguard: %s", error, exc_info=(ConfigurationError, error, None))
        return default

    # -- helpers for apps -----------------------------------------------------------
    def hash(self, kind: str, value: str) -> str:
        """The keyed hash apiguard would store for `value` (never store the raw value)."""
        return self.hasher(kind, value)


def _finishers(
    name: str, finished_by: str | Sequence[str] | None, unfinished: object
) -> tuple[tuple[str, ...], int]:
    """`finished_by` as a tuple of flow names, and the `unfinished` bar, checked."""
    where = f"@guard.flow({name!r})"
    if finished_by is None:
        if unfinished is not None:
            raise ConfigurationError(
                f"{where}: unfinished= needs finished_by= (the flow that finishes this one)"
            )
        return (), 0
    bar = 3 if unfinished is None else unfinished
    if isinstance(bar, bool) or not isinstance(bar, int) or bar < 1:
        raise ConfigurationError(f"{where}: unfinished must be a whole number of at least 1")
    names = (finished_by,) if isinstance(finished_by, str) else tuple(finished_by)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ConfigurationError(
            f"{where}: finished_by must be a flow name or a list of flow names"
        )
    if name in names:
        raise ConfigurationError(f"{where}: a flow cannot finish itself (finished_by)")
    return names, bar


def _check_failure(value: object, where: str) -> None:
    if value not in (None, "open", "closed"):
        raise ConfigurationError(f"{where}: on_store_failure={value!r}: use 'open' or 'closed'")


def _describe(rule: Rule, default_mode: str, with_per: bool = True) -> str:
    """`name rate[;rate] [per x] [mode]` of a rule (`per` when not the principal, the mode
    only when it differs from the guard's)."""
    rates = getattr(rule, "rates", ())
    text = ";".join(str(getattr(r, "text", r)) for r in rates)
    per = getattr(rule, "per", "principal")
    name = f"flow {rule.name}" if isinstance(rule, FlowRule) else rule.name
    if isinstance(per, ArgumentKey):
        per_text = f"key={per.spec}" if isinstance(per.spec, str) else "key=(callable)"
    else:
        per_text = per if isinstance(per, str) else "custom"
    finished = ""
    if isinstance(rule, FlowRule) and rule.finished_by:
        finished = (
            f" finished by {' or '.join(rule.finished_by)} (at most {rule.unfinished} "
            "unfinished)"
        )
    return (
        name
        + (f" {text}" if text else "")
        + (f" per {per_text}" if with_per and per != "principal" else "")
        + (f" {rule.mode}" if rule.mode is not None and rule.mode != default_mode else "")
        + finished
    )


def _asks_people(detector: object) -> bool:
    """Whether `detector` challenges people (its `person_action`, where it has one)."""
    config = getattr(detector, "config", None)
    return getattr(config, "person_action", None) == "challenge"


def _route_label(entry: RouteEntry) -> str:
    methods = set(entry.methods)
    if "GET" in methods:
        methods.discard("HEAD")  # routed with every GET
    template = entry.template if len(entry.template) <= 120 else entry.template[:117] + "..."
    return f"{','.join(sorted(methods)) or '*'} {template}"


def _block_problem(response: Any) -> str | None:
    """What makes `response` unsendable as an HTTP answer, or None when it is fine."""
    if not isinstance(response, BlockResponse):
        return f"a {type(response).__name__}, not a BlockResponse"
    status = response.status
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        return f"a BlockResponse with status {status!r}"
    if not isinstance(response.body, bytes):
        return "a BlockResponse whose body is not bytes"
    for item in response.headers:
        if not (isinstance(item, tuple) and len(item) == 2):
            return "a BlockResponse with a header that is not a (name, value) pair"
        name, value = item
        if not (isinstance(name, str) and isinstance(value, str)):
            return "a BlockResponse with a header name or value that is not a str"
        try:
            name.encode("latin-1")
            value.encode("latin-1")
        except UnicodeEncodeError:
            return "a BlockResponse with a header that is not latin-1"
        if any(c in name + value for c in "\r\n\0") or not name:
            return "a BlockResponse with a malformed header"
    return None


# a path parameter in any router's syntax: Starlette's {id} / {id:int}, Flask's and
# Django's <id> / <int:id>, a Django regex group (?P<id>...) (one level of nesting)
_PARAM = re.compile(r"\{[^}]*\}|\(\?P<[^>]+>(?:[^()]|\([^()]*\))*\)|<[^>]*>")


def _shape(template: str) -> str:
    """A template with every path parameter as `{}` (and no regex anchors): the same
    route in another router's syntax has the same shape."""
    return _PARAM.sub("{}", template.replace("^", "").replace("$", ""))


def _template_hint(unknown: list[str], templates: set[str]) -> str:
    """What to write instead, in this app's own syntax: the app's templates closest to
    each unknown one, else an example of the app's templates with a parameter."""
    known = sorted(templates)
    shapes: dict[str, list[str]] = {}
    for t in known:
        shapes.setdefault(_shape(t), []).append(t)
    close: list[str] = []
    for t in unknown:
        found = shapes.get(_shape(t)) or difflib.get_close_matches(t, known, n=2, cutoff=0.6)
        close.extend(c for c in found if c not in close)
    if close:
        return (
            f" (closest routes of this app: {', '.join(repr(c) for c in close[:5])}; "
            "templates are written as this app's router declares them)"
        )
    example = next((t for t in known if _PARAM.search(t)), None)
    syntax = f"e.g. {example!r}" if example is not None else "as the router declares them"
    return (
        f" (templates are written as this app's router declares them, {syntax}, "
        "prefixes of mounts, blueprints and include()s included)"
    )


def _django_probe(fn: Any) -> bool:
    """Whether `fn` is the dummy function Django's `method_decorator` decorates once at
    class creation (`_update_method_wrapper`), never called."""
    return (
        getattr(fn, "__module__", None) == "django.utils.decorators"
        and getattr(fn, "__qualname__", "") == "_update_method_wrapper.<locals>.dummy"
    )


def _call_signature(fn: Callable[..., Any]) -> inspect.Signature:
    """The signature `fn` is called with. A `functools.partial` of a bound method that
    `functools.wraps` marked as wrapping the method's function (Django's
    `method_decorator`) is called without `self`: its own signature, not the function's."""
    if isinstance(fn, functools.partial):
        return inspect.signature(fn, follow_wrapped=False)
    return inspect.signature(fn)


def _arguments_of(original: Callable[..., Any]) -> Callable[..., Mapping[str, Any]]:
    """What reads an endpoint call's arguments by name, as `original` is called (see
    `_call_signature`), for the declarations that pick them (`@guard.login`,
    `@guard.objects`, `@guard.flow(key=...)`); without a signature, the keyword ones."""
    try:
        sig: inspect.Signature | None = _call_signature(original)
    except (TypeError, ValueError):
        sig = None

    def read(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Mapping[str, Any]:
        return sig.bind_partial(*args, **kwargs).arguments if sig is not None else kwargs

    return read


def _method_function(fn: Any) -> Callable[..., Any] | None:
    """The function of a bound method being decorated (possibly already wrapped by an
    apiguard decorator, or in a `functools.partial` as Django's `method_decorator` wraps
    it on every call), else None."""
    target = getattr(fn, "__apiguard_original__", fn)
    for _ in range(8):
        if not isinstance(target, functools.partial):
            break
        target = target.func
    return target.__func__ if inspect.ismethod(target) else None


def _unwrap_chain(endpoint: Any) -> list[Any]:
    """The endpoint and what it wraps (`__wrapped__`, `functools.partial.func`), bounded;
    a bound method as its function (what decorators wrapped: Flask-Classful routes a
    function wrapping a bound method of the view)."""
    chain: list[Any] = []
    obj = endpoint
    while obj is not None and len(chain) < 32:
        if inspect.ismethod(obj):
            obj = obj.__func__
        if any(obj is o for o in chain):
            break
        chain.append(obj)
        obj = getattr(obj, "__wrapped__", None) or getattr(obj, "func", None)
    return chain


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _qualname(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _already_refused(ctx: RequestContext) -> Decision | None:
    decision = ctx.decision
    return decision if decision is not None and decision.refused else None


def _enter_sync(
    guard: Guard, ctx: RequestContext | None, rules: tuple[Rule, ...], fn: Any
) -> Decision | None:
    """A call of a decorated function: charge its rules (and the global rules, once per
    request), raising `Refused`; or return the refusal of an earlier checkpoint. Outside
    a request: nothing inside `guard.unguarded()`, else a `RuntimeError`."""
    if ctx is None:
        guard._outside(_qualname(fn), rules)
        return None
    refused = _already_refused(ctx)
    if refused is not None:
        return refused
    if ctx.prechecked is rules:  # a streaming endpoint, charged at the response start
        ctx.prechecked = None
        return None
    guard.engine.check_sync(ctx, rules)
    return None


async def _enter_async(
    guard: Guard, ctx: RequestContext | None, rules: tuple[Rule, ...], fn: Any
) -> Decision | None:
    """`_enter_sync` for async functions."""
    if ctx is None:
        guard._outside(_qualname(fn), rules)
        return None
    refused = _already_refused(ctx)
    if refused is not None:
        return refused
    if ctx.prechecked is rules:
        ctx.prechecked = None
        return None
    await guard.engine.check_async(ctx, rules)
    return None


def _login_of(rules: tuple[Rule, ...], original: Callable[..., Any]) -> Callable[..., Any] | None:
    """For an endpoint declared with `@guard.login`: what runs on entry (records the
    attempt and may refuse it) and returns the hook for the handler's return value."""
    login = next((r for r in rules if isinstance(r, LoginRule)), None)
    if login is None:
        return None
    arguments_of = _arguments_of(original)

    def enter(decorating: Engine, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        ctx = current_request()
        if ctx is None:
            return None
        # the request's own engine (its middleware's guard): detection state lives there,
        # even if the decorator came from another Guard object
        engine = ctx.engine
        try:
            arguments = arguments_of(args, kwargs)
            name = login.username(arguments)
        except Exception as exc:
            # a failing username= callable (a form body where JSON was read): reported,
            # and the attempt still counts, for one account every such attempt shares
            # (uncounted, a stuffer had only to change its body's encoding)
            callable_failed(engine, "@guard.login(username=...)", exc)
            name = UNREADABLE
        engine.login_started(ctx, name)  # raises Refused for a held-back client
        if ctx.login is not None and ctx.login.rule is None:
            ctx.login.rule = login
        success = login.success
        if success is None or ctx.login is None:
            return None

        def finished(result: Any) -> None:
            try:
                ok = bool(success(result))
            except Exception as exc:
                callable_failed(engine, "@guard.login(success=...)", exc)
                return
            engine.login_finished(ctx, ok)

        return finished

    return enter


def _keys_of(
    rules: tuple[Rule, ...], original: Callable[..., Any]
) -> Callable[[tuple[Any, ...], dict[str, Any]], None] | None:
    """For an endpoint with `@guard.flow(key=...)`: what runs on entry, before its rules
    are charged (reads each key from the arguments onto the request)."""
    keys = [r.per for r in rules if isinstance(r, FlowRule) and isinstance(r.per, ArgumentKey)]
    if not keys:
        return None
    arguments_of = _arguments_of(original)

    def enter(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ctx = current_request()
        if ctx is None:
            return
        for key in keys:
            raw: object = None
            try:
                arguments = arguments_of(args, kwargs)
                raw = key.picker.pick(arguments)
                text = key_text(raw)
            except Exception as exc:
                # a failing key= callable (a form body where JSON was read) or a value of
                # another type: one budget for every such request of the flow, never the
                # address's (each rotating address would get a fresh one)
                callable_failed(ctx.engine, "@guard.flow(key=...)", exc)
                text = UNREADABLE
            if text is None:
                continue  # absent: counted per address
            if ctx.picked is None:
                ctx.picked = {}
            ctx.picked[id(key)] = _device_key(ctx, text, raw)

    return enter


def _device_key(ctx: RequestContext, text: str, raw: object) -> str:
    """A flow key (`text`, as compared; `raw`, as sent), apart for a client whose device
    cookie is for the account the key names (its owner, logged in on that device: an
    attacker spending the key's budget, resets bombed at it, does not lock it out of its
    own). The cookie marks a login name as sent, so the key as sent is looked up."""
    engine = ctx.engine
    ato = engine.ato
    if ato is None or not ctx.has_cookie:
        return text
    sent = raw if isinstance(raw, str) else text
    mac = device_mac(engine.hasher, device_key(engine.hasher, sent))
    if mac in device_entries(ctx, ato.config.device_cookie):
        return text + "\x00device"
    return text


def _objects_of(
    rules: tuple[Rule, ...], original: Callable[..., Any]
) -> Callable[[tuple[Any, ...], dict[str, Any]], None] | None:
    """For an endpoint declared with `@guard.objects`: what runs on entry (reads the ids
    from the arguments and reports them; may refuse the request)."""
    declared = [r for r in rules if isinstance(r, ObjectsRule)]
    if not declared:
        return None
    arguments_of = _arguments_of(original)

    def enter(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ctx = current_request()
        if ctx is None:
            return
        engine = ctx.engine
        for rule in declared:
            try:
                arguments = arguments_of(args, kwargs)
                ids = object_ids(rule.picker.pick(arguments), "@guard.objects(ids=...)")
            except Exception as exc:  # a failing ids= callable: report it, count the rest
                callable_failed(engine, "@guard.objects(ids=...)", exc)
                continue
            engine.objects_touched(ctx, rule.id_name, ids)  # may raise Refused

    return enter


def _wrap(
    original: Callable[..., Any], rules: tuple[Rule, ...], guard: Guard
) -> Callable[..., Any]:
    engine = guard.engine
    login = _login_of(rules, original)
    declared = _objects_of(rules, original)
    keyed = _keys_of(rules, original)

    if inspect.iscoroutinefunction(original):

        @functools.wraps(original)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            if keyed is not None:
                keyed(args, kwargs)
            refused = await _enter_async(guard, current_request(), rules, original)
            if refused is not None:
                raise engine.refusal(refused)
            if declared is not None:
                declared(args, kwargs)
            if login is not None:
                finished = login(engine, args, kwargs)
                result = await original(*args, **kwargs)
                if finished is not None:
                    finished(result)
                return result
            return await original(*args, **kwargs)

        wrapper: Callable[..., Any] = async_wrapper
    elif inspect.isasyncgenfunction(original):

        @functools.wraps(original)
        async def agen_wrapper(*args: Any, **kwargs: Any) -> Any:
            if await _enter_async(guard, current_request(), rules, original) is not None:
                return  # refused when the response started: the body never runs
            async for item in original(*args, **kwargs):
                yield item

        wrapper = agen_wrapper
    elif inspect.isgeneratorfunction(original):

        @functools.wraps(original)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
            if _enter_sync(guard, current_request(), rules, original) is not None:
                return  # refused when the response started: the body never runs
            yield from original(*args, **kwargs)

        wrapper = gen_wrapper
    else:

        @functools.wraps(original)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            if keyed is not None:
                keyed(args, kwargs)
            refused = _enter_sync(guard, current_request(), rules, original)
            if refused is not None:
                raise engine.refusal(refused)
            if declared is not None:
                declared(args, kwargs)
            if login is not None:
                finished = login(engine, args, kwargs)
                result = original(*args, **kwargs)
                if finished is not None:
                    finished(result)
                return result
            return original(*args, **kwargs)

        wrapper = sync_wrapper
    # a generator's body runs as the response streams: its rules run at the response start
    wrapper.__apiguard_streams__ = inspect.isasyncgenfunction(  # type: ignore[attr-defined]
        original
    ) or inspect.isgeneratorfunction(original)
    wrapper.__apiguard_rules__ = rules  # type: ignore[attr-defined]
    wrapper.__apiguard_original__ = original  # type: ignore[attr-defined]
    wrapper.__apiguard_guard__ = guard  # type: ignore[attr-defined]
    wrapper.__apiguard_engine__ = guard.engine  # type: ignore[attr-defined]
    return wrapper
