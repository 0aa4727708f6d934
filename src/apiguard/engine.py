"""The per-request pipeline: resolve, plan one batch, execute it, decide, observe.

A request is checked once, at the first of these moments (the "checkpoint"):
1. the app declares its principal with `identify()` (an auth dependency, a view);
2. a handler decorated with `@guard.limit` / `@guard.flow` is entered;
3. the response starts (undecorated handlers, 404/405, validation errors): the app's
   response is replaced by the refusal before a byte of it leaves.
Every rule that applies (global defaults and the served endpoint's declared rules) is
planned into ONE store batch at that moment.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from apiguard import detectors
from apiguard.admission import Admission
from apiguard.config import GuardConfig, Mode
from apiguard.decision import ALLOWED, Action, Decision
from apiguard.detectors.account_takeover import ACCOUNT, DEVICE_FAILS, AccountTakeover
from apiguard.detectors.base import (
    LOGINS,
    MISSES,
    PRINCIPALS,
    SIGNUPS,
    Detector,
    Finding,
    Judge,
    LoginAttempt,
    Outcome,
)
from apiguard.detectors.bola import YOUNG_ALARM, Bola, names_object
from apiguard.detectors.flow_groups import BORN, GROUP, SURGE, FlowGroups
from apiguard.detectors.known_clients import COOKIELESS, CookielessPasses
from apiguard.detectors.rotation import Rotation, home_key, shaped_key
from apiguard.detectors.scraping import Scraping
from apiguard.detectors.unfinished import Unfinished, unfinished_key
from apiguard.login import (
    PASS_COOKIE,
    cookie,
    device_cookie,
    device_entries,
    device_key,
    device_mac,
    pass_cookie,
    pass_valid,
    pass_value,
    user_key,
)
from apiguard.objects import ObjectsRule
from apiguard.picking import UNREADABLE
from apiguard.request import (
    IP_CACHE_MAX,
    ClientIPResolver,
    Identity,
    KeyedHasher,
    RequestContext,
    callable_failed,
    identity_text,
    network_of,
)
from apiguard.responses import tightest_ratelimit
from apiguard.routes import route_template
from apiguard.rules import FlowRule, Rule
from apiguard.store.base import (
    Ban,
    Batch,
    BatchResult,
    Hit,
    Objects,
    Observation,
    Store,
    expand,
)
from apiguard.telemetry import Telemetry

log = logging.getLogger("apiguard")

PrincipalResolver = Callable[[RequestContext], "Identity | None"]


_BY_PRINCIPAL = ("principal", "principal_route")
_ENDPOINTS_MAX = 4096
_SAFE_METHODS = frozenset({"GET", "OPTIONS"})  # (not HEAD: a view runs its body for it)
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# the owner recorded for a bearer token two vouched principals presented: it is banned
# with neither of them
_SHARED_TOKEN = "*shared*"
GATE = "gate:"  # ban-table prefix of what holds logins back (at the login route only)
PASSED = "passed:"  # ban-table prefix of a person who passed a detector's challenge
PASS_USED = "pu:"  # ban-table prefix of a pass that answered one person's challenge
_IN_FLIGHT_MAX = 10  # unanswered login attempts one address may have at once
_USER = "u:"  # the prefix of a user's key (`hasher("u", ...)`)
_IN_FLIGHT_SHARED = 100  # and at most, where many people signed in (`_in_flight`)
_SIGNED_IN_KEPT = 16_384  # addresses whose signed-in accounts are kept for it (the latest)
_PROXIED_MAX = 4096  # addresses remembered as untrusted proxies
_TOKENS_VOUCHED = 4  # bearer tokens one principal may vouch for (`vouched_token`)...
_TOKENS_VOUCHED_EVERY = 3600.0  # ... per this many seconds
# distinct accounts that must log in (or distinct users the app identified) from an address
# sending forwarding headers no setting trusts before it is taken for an undeclared proxy
# (a bot adding a made-up X-Forwarded-For stays one client; one with accounts of its own
# becomes a proxy, whose account-takeover findings challenge rather than ban)
PROXY_ACCOUNTS = 8


_PEOPLE_KEPT = 8  # `Engine._people_at`: principals remembered per address (then: many)

# declared object ids the BOLA detector counts per request (a batch read of more counts
# this many: far over any route's bar)
OBJECTS_PER_REQUEST = 1000

# what a ban's action asks of the client (anything else: a block)
_BAN_ACTIONS = {"throttle": Action.THROTTLE, "challenge": Action.CHALLENGE}


def ban_decision(ban: Ban, now: float) -> Decision:
    """The refusal of a request a ban applies to: 403, or 429 for a detector's throttle."""
    return Decision(
        _BAN_ACTIONS.get(ban.action, Action.BLOCK),
        ban.reason or "ban",
        ban.until - now,
        ban_level=ban.level,
        banned=ban.key,
        detector=ban.reason,
    )


class Refused(Exception):
    """Raised at a checkpoint that refuses the request; the adapter answers it.

    Framework-neutral: it carries the HTTP status (429, or 403 for bans) as `status_code`,
    and each adapter maps it to its framework. Whatever the app's own handler renders for
    it, the middleware replaces with apiguard's answer before a byte leaves.
    """

    def __init__(self, decision: Decision) -> None:
        self.status_code = 429 if decision.action is Action.THROTTLE else 403
        self.detail = f"apiguard refused the request ({decision.rule})"
        super().__init__(self.status_code, self.detail)
        self.decision = decision


def _unreported(login: LoginAttempt) -> None:
    """Say once per route that an unreported 2xx on a login route taken to report its
    outcomes (its view calls `login_result()`) is no login: if its status tells, the
    app must say `reports=False`."""
    rule = login.rule
    if rule is None or rule.reports is not None or rule.warned:
        return
    if rule.reported:
        rule.warned = True
        log.warning(
            "apiguard: %s answered 2xx without login_result(): no login is counted and no "
            "device cookie is set (the view calls login_result(), so it is taken to report "
            "every outcome); if its status tells success, declare @guard.login(..., "
            "reports=False); to silence this, reports=True",
            rule.where,
        )
    elif login.html:
        rule.warned = True
        log.warning(
            "apiguard: %s answered a page (HTML, 2xx) and reports no outcome: such an "
            "answer is counted neither as a success nor as a failure (a form shown again, "
            "or a page after a good password), so this login is blind to brute force; "
            "report each outcome with guard.login_result(username, ok) in the view and "
            "declare @guard.login(..., reports=True), or reports=False if its 2xx is a "
            "success",
            rule.where,
        )


# scope key: a body byte of this request has arrived (set by the ASGI adapter for reads
# over HTTP/2 and later, whose bodies need no Content-Length)
BODY_KEY = "apiguard.body"
# scope keys: the ASGI adapter watches this read's body (HTTP/2 and later), and the flows
# its checkpoint skipped as a read's, charged once a body byte arrives
WATCH_KEY = "apiguard.watch_body"
DROPPED_KEY = "apiguard.dropped"


def _has_body(scope: Mapping[str, Any]) -> bool:
    """Whether the request declares a body (a Content-Length other than 0, or a
    Transfer-Encoding): a browser's GET never does."""
    for name, value in scope.get("headers") or ():
        if name == b"transfer-encoding" or (
            name == b"content-length" and bytes(value).strip() not in (b"0", b"")
        ):
            return True
    return False


def _observed_status(ctx: RequestContext, status: int | None) -> int:
    """The status detectors see: the response's, or for a handler that raised (no
    response through the middleware; the server answers 500) 500, or 403 for a login the
    gate refused."""
    if status is not None:
        return status
    return 403 if _gated(ctx) else 500


def _watches(kind: str, login: bool, address: bool, signup: bool, miss: bool) -> bool:
    """Whether a detector that `watches` requests of `kind` plans this kind of request."""
    if kind == MISSES:
        return miss
    if kind == LOGINS:
        return login
    if kind == PRINCIPALS:
        return not address
    if kind == SIGNUPS:
        return not address or signup
    return True


def _watchers(ctx: RequestContext, principal: str, status: int) -> int:
    """The request's index in `Engine._watching` (see `_watches`)."""
    address = principal == ctx.ip_key
    index = (ctx.login is not None) * 2 + address
    # (a refused request observed is a gated one: a sign-up held in its flow's surge;
    # rules that ran: maybe a flow an anonymous client completed)
    if address and (
        ctx.declared is not None or ctx.born or ctx.refused_sent or ctx.ran is not None
    ):
        index += 4
    if status == 404 or status == 405:
        index += 8
    return index


def _gated(ctx: RequestContext) -> bool:
    """Whether the request was refused by a detector that still counts it: a login the
    login gate held back, or a flow step refused to its group or in its flow's surge (an
    attack refused must not look like an attack that stopped)."""
    if ctx.login is not None and ctx.login.gated:
        return True
    decision = ctx.decision
    banned = decision.banned if decision is not None else None
    return banned is not None and banned.startswith((GROUP, SURGE))


# the holds of one account (its failures, its devices'): an attempt they gate is the
# account's own protection at work, no sign of the population's climate
_ACCOUNT_HOLDS = frozenset({"account_takeover.account", "account_takeover.devices"})


def _evidence_only() -> None:
    """What follows refused evidence written to a shared store: nothing is judged."""


def _collect(combined: list[Objects]) -> None:
    for op in combined:
        op.collect()


def endpoint_rules(scope: Mapping[str, Any], engine: Engine) -> tuple[Rule, ...]:
    """Rules declared with `engine`'s guard on the endpoint the router selected (another
    guard's decorators, e.g. on a mounted sub-app, belong to that guard's middleware)."""
    endpoint = scope.get("endpoint")
    if getattr(endpoint, "__apiguard_engine__", None) is not engine:
        return ()
    rules = getattr(endpoint, "__apiguard_rules__", None)
    return rules if isinstance(rules, tuple) else ()


class Engine:
    """Framework-neutral decisions; adapters call `begin`, the checkpoints and `finish`."""

    def __init__(
        self,
        config: GuardConfig,
        store: Store,
        clock: Callable[[], float],
        hasher: KeyedHasher,
        telemetry: Telemetry,
        global_rules: Sequence[Rule],
        resolver: PrincipalResolver | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.hasher = hasher
        # the account every login whose username could not be read counts for (it gets
        # no device cookie: a login to it would exempt its device from its failures)
        self.unreadable_user = user_key(hasher, UNREADABLE)
        self.telemetry = telemetry
        self.global_rules: tuple[Rule, ...] = tuple(global_rules)
        self.enforce_default = config.mode == "enforce"
        self.mode_override: Mode | None = None  # `override_mode`: every rule in this mode
        self._global_plan = self._with_modes(self.global_rules)
        self.resolver = resolver
        # what a refusing checkpoint raises: adapters may set a subclass their framework
        # treats as an HTTP client error (the ASGI adapter: a Starlette HTTPException)
        self.refusal: type[Refused] = Refused
        self.ip = ClientIPResolver(config.client_ip)
        self.bans = config.bans
        self._key_headers = frozenset(h.encode("latin-1") for h in config.identity.api_key_headers)
        self._bearer = config.identity.bearer_tokens
        self._wanted_headers = self._key_headers | {b"authorization", b"cookie", self.ip.header}
        if not self.ip.walks:  # watched only to warn once about a likely proxy set-up
            self._wanted_headers |= {b"x-forwarded-for", b"forwarded"}
        self._ok_low, self._ok_high = config.success_statuses
        self._late_identify_warned: set[str] = set()
        self._ip_keys: dict[str, str] = {}  # client address -> its IP key (bounded)
        # bearer token key -> the one vouched principal seen presenting it, or _SHARED_TOKEN (LRU,
        # bounded): decides which credentials are banned with a principal
        self._owners: OrderedDict[str, str] = OrderedDict()
        self.challenges_answered = False  # someone passed a challenge in this process
        self._late_objects_warned = False  # objects_touched() after the detectors looked
        # id(rules) -> (rules, those a read of a route that also writes is charged, the
        # flows it skips)
        self._read_rules: dict[
            int, tuple[tuple[Rule, ...], tuple[Rule, ...], tuple[Rule, ...]]
        ] = {}
        # address -> the principal the app vouched for there, or the first few (two or more)
        self._people_at: dict[str, str | set[str]] = {}
        # the app's challenge route for the scraping gate: declared, or learned where
        # `challenge_passed()` ran (`_learn_challenge_route`)
        self.challenge_path: str | None = config.detection.challenge_path
        self._challenge_warned = False
        # bearer tokens that were a vouched request's only credential (`vouched_token`),
        # and how many each principal vouched for
        self._vouched_tokens: OrderedDict[str, None] = OrderedDict()
        self._tokens_per_principal: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._monitor_logged: dict[str, float] = {}  # rule -> when last logged
        # bans this process knows (optional store attribute): while it is empty, there is
        # nothing to check before routing; a store without it is always asked
        self._local_bans: Mapping[str, Ban] | None = getattr(store, "local_bans", None)
        # the store runs `Objects` operations itself (else it gets their parts)
        self._runs_objects = bool(getattr(store, "runs_objects", False))
        # endpoint object -> its rules; strong references, so no id() is ever reused
        self._rules_by_endpoint: dict[Any, tuple[Rule, ...]] = {}
        self._fast = Admission.compile(self._global_plan, store, advertise=config.ratelimit_headers)
        # endpoint rules -> the global rules and them, compiled (None: general path only)
        self._fast_with: dict[tuple[Rule, ...], Admission | None] = {}
        # a flow was declared (`Guard.flow`, or a completing flow step checked): only then
        # does the flow-group detector record which principals are active
        self.flows_declared = False
        # flows declared with `finished_by=` (None: none yet, so nothing watches for them)
        self._unfinished: Unfinished | None = None
        self._use(detectors.build(config.detection, self.enforce_default))
        self._bola_query = frozenset(config.detection.bola.query_params)
        # the app called guard.account_created(): only declared sign-ups make accounts young
        self.accounts_declared = False
        self._net_keys: dict[str, str] = {}  # client address -> its network's key (bounded)
        self._flights: dict[str, int] = {}  # IP key -> its unanswered login attempts
        # IP key -> accounts that logged in there (in process, the latest
        # `_SIGNED_IN_KEPT` addresses, 45 accounts each: `_in_flight`'s allowance)
        self._signed_in_at: OrderedDict[str, set[str]] = OrderedDict()
        # IP keys that sent untrusted forwarding headers -> the distinct accounts logged
        # in from them and the distinct users the app identified there (bounded LRU)
        self._forwarding: OrderedDict[str, tuple[set[str], set[str]]] = OrderedDict()
        # of those, the ones PROXY_ACCOUNTS people used: probable undeclared proxies
        self._proxied: set[str] = set()
        # principal -> when a detector's challenge on it began (in process): a pass issued
        # after that answers it
        self._challenged_at: dict[str, float] = {}
        # people who passed a detector's challenge -> when (in process, the latest
        # `IP_CACHE_MAX`): what they did before it is not held against them for long
        self._passed_at: OrderedDict[str, float] = OrderedDict()
        self._forgiven: set[str] = set()  # IP keys whose passed challenge was forgiven
        # challenges passed by clients that may keep no cookie (a phone app): one login
        # each past the login alarm, from the same client shape and region
        self._cookieless_passes = CookielessPasses()
        self._proxy_warned = False
        self._scraping_unheld_warned = False  # a surge reported only: said once
        # new readers a scraping surge let through for want of a known challenge route
        self.surge_reads_unheld = 0
        self._wide_keys: dict[str, str] = {}  # client address -> its provider network's key
        self._site_keys: dict[str, str] = {}  # IPv6 client address -> its /48's key ("": v4)
        # a client shape's built-in hash -> its fingerprint (`apiguard.detectors.fingerprint`)
        self.fingerprints: dict[int, str] = {}
        self._detections_logged: dict[str, float] = {}
        # key -> (level, until) of its last detector ban: escalation memory (bounded LRU)
        self._levels: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def _with_modes(self, rules: Sequence[Rule]) -> tuple[tuple[Rule, bool], ...]:
        """(rule, enforced) pairs: the override, else a rule's own mode, else the guard's."""
        if self.mode_override is not None:
            forced = self.mode_override == "enforce"
            return tuple((r, forced) for r in rules)
        default = self.enforce_default
        return tuple((r, default if r.mode is None else r.mode == "enforce") for r in rules)

    def override_mode(self, mode: Mode | None) -> None:
        """Run every rule (global and declared, whatever its own mode) in `mode`; None
        restores each rule's own. Recompiles the plans that carry modes."""
        self.mode_override = mode
        self._global_plan = self._with_modes(self.global_rules)
        self._fast = Admission.compile(
            self._global_plan, self.store, advertise=self.config.ratelimit_headers
        )
        self._fast_with = {}

    def forget(self) -> None:
        """Drop the engine's per-client tables (`Guard.reset`; the store is reset apart)."""
        self._ip_keys.clear()
        self.ip.forget()
        self._late_identify_warned.clear()
        self._owners.clear()
        self._people_at.clear()
        self._vouched_tokens.clear()
        self._tokens_per_principal.clear()
        self._monitor_logged.clear()
        self._rules_by_endpoint.clear()
        self._fast_with = {}
        self._net_keys.clear()
        self._wide_keys.clear()
        self._site_keys.clear()
        self.fingerprints.clear()
        self._flights.clear()
        self._signed_in_at.clear()
        self._forwarding.clear()
        self._proxied.clear()
        self._challenged_at.clear()
        self._forgiven.clear()
        self._cookieless_passes.clear()
        self._detections_logged.clear()
        self._levels.clear()
        self.challenges_answered = False
        self.surge_reads_unheld = 0
        self.challenge_path = self.config.detection.challenge_path
        if self._unfinished is not None:
            self._unfinished.clear()  # (its declarations are the app's code: kept)
        self._use(detectors.build(self.config.detection, self.enforce_default))

    def _use(self, found: list[Detector]) -> None:
        """Run `found`; which of them watch which requests, worked out once (keyed by
        whether the request reported a login, whether its principal is an address, and
        whether such an anonymous request named an account, a possible sign-up)."""
        if self._unfinished is not None:
            found.append(self._unfinished)  # (declared by the app's code: kept)
        self.detectors = found
        run_now = getattr(self.store, "run_objects", None) if self._runs_objects else None
        # (and its `run_walk`, unless a subclass's `run_objects` overrides the class's
        # that wrote it: each object then goes through the override)
        kind = type(self.store)
        own = _defined_in(kind, "run_walk") is _defined_in(kind, "run_objects")
        walk_now = getattr(self.store, "run_walk", None) if run_now is not None and own else None
        for detector in found:
            if isinstance(detector, Bola):
                detector.run_now, detector.walk_now = run_now, walk_now
        self.ato = next((d for d in found if isinstance(d, AccountTakeover)), None)
        self._flow_groups = next((d for d in found if isinstance(d, FlowGroups)), None)
        if self._flow_groups is not None:
            self._flow_groups.activity = self.flows_declared
        self._rotation = next((d for d in found if isinstance(d, Rotation)), None)
        self._scraping = next((d for d in found if isinstance(d, Scraping)), None)
        self._bola = next((d for d in found if isinstance(d, Bola)), None)
        self._index_watchers()

    def _index_watchers(self) -> None:
        """`_watching`, indexed by `_watchers`: 8 * (answered 404 or 405) + 4 * (an
        anonymous request named an account, or ran decorated rules: a sign-up, a flow
        completed anonymously) + 2 * (a login was reported) + (the
        principal is the address). While no flow is declared, the flow-group detector
        watches anonymous requests only (sign-ups: births); a principal's request has
        nothing for it then (no flow to complete, no activity to record)."""
        found = self.detectors
        groups = None if self.flows_declared else self._flow_groups
        self._watching = [
            tuple(
                d
                for d in found
                if _watches(d.watches, login, address, signup, miss)
                and (address or d is not groups)
            )
            for miss in (False, True)
            for signup in (False, True)
            for login in (False, True)
            for address in (False, True)
        ]

    def declare_flow(self) -> None:
        """A sensitive flow is declared: the flow-group detector records from now on
        which principals are active (its shares' baseline; an app without flows has no
        use for it)."""
        if self.flows_declared:
            return
        self.flows_declared = True
        if self._flow_groups is not None:
            self._flow_groups.activity = True
            self._index_watchers()

    def declare_unfinished(
        self, flow: str, finished_by: tuple[str, ...], bar: int, window: float
    ) -> None:
        """`flow` is finished by the flows `finished_by`: at most `bar` of it left
        unfinished per principal within `window` (`apiguard.detectors.unfinished`)."""
        if self._unfinished is None:
            self._unfinished = Unfinished(self.enforce_default)
            self._use(list(self.detectors))
        self._unfinished.declare(flow, finished_by, bar, window)

    def may_be_banned(self) -> bool:
        """Whether `early_ban` can find anything (False while no ban is known)."""
        return self._local_bans is None or bool(self._local_bans)

    # -- request view ---------------------------------------------------------------
    def begin(self, scope: Mapping[str, Any]) -> RequestContext:
        """Build the request context from an ASGI-shaped scope (one pass over headers)."""
        peer = scope.get("client")
        peer_ip = peer[0] if peer else None
        api_key: bytes | None = None
        key_name: bytes | None = None
        more: dict[bytes, bytes] | None = None  # first value of each other key header
        bearer: bytes | None = None
        forwarded: list[str] = []
        cookie = False
        proxied: bytes | None = None  # a forwarding header from a peer no setting trusts
        walks = self.ip.walks
        key_headers = self._key_headers
        wanted = self._wanted_headers
        for name, value in scope.get("headers") or ():
            if name not in wanted:
                continue
            if name in key_headers:
                if api_key is None:
                    api_key = value.strip() or None
                    key_name = name
                elif name != key_name:
                    if more is None:
                        more = {}
                    if name not in more:
                        more[name] = value.strip()
            elif name == b"authorization":
                if self._bearer and bearer is None and value[:7].lower() == b"bearer ":
                    bearer = value[7:].strip() or None
            elif name == b"cookie":
                cookie = cookie or b"=" in value  # (an empty header carries no cookie)
            elif walks:
                if name == self.ip.header:
                    forwarded.append(value.decode("latin-1"))
            elif proxied is None:
                proxied = name
        return self.context(scope, peer_ip, api_key, more, bearer, forwarded, cookie, proxied)

    def context(
        self,
        scope: Mapping[str, Any],
        peer_ip: str | None,
        api_key: bytes | None,
        more: dict[bytes, bytes] | None,
        bearer: bytes | None,
        forwarded: list[str],
        cookie: bool,
        proxied: bytes | None,
    ) -> RequestContext:
        """The request context from what `begin` read in the headers (an adapter that
        reads them another way, e.g. from a WSGI environ, calls it directly): the peer
        address, the first API key (stripped; None if blank) and the first value of each
        other API key header, the bearer token, the proxy header's values in order,
        whether a cookie came, and the first forwarding header sent while no proxy is
        trusted."""
        walks = self.ip.walks
        client = self.ip.resolve(peer_ip, forwarded) if walks else (peer_ip or "unknown")
        ip_key = self._ip_keys.get(client)
        if ip_key is None:
            ip_key = self._ip_key(client)
        if proxied is not None:
            self._untrusted_forwarding(proxied, ip_key)
        # the principal of an unvouched request: the bearer token (by HTTP convention the
        # caller's own credential), else the API key; every credential presented is kept,
        # and each is checked against bans
        credential: str | None = None
        credentials: tuple[str, ...] = ()
        token: str | None = None
        if bearer is not None:
            credential = token = self.hasher("k", bearer)
            credentials = (credential,)
            if api_key is not None:
                credentials = self._all_credentials(token, api_key, more)
        elif api_key is not None:
            credential = self.hasher("k", api_key)
            credentials = (credential,)
            if more is not None:
                credentials = self._all_credentials(None, api_key, more)
        return RequestContext(
            self,
            scope,
            client,
            ip_key,
            credential,
            cookie,
            credentials,
            token,
        )

    def _all_credentials(
        self, token: str | None, api_key: bytes, more: dict[bytes, bytes] | None
    ) -> tuple[str, ...]:
        """Keyed hashes of every credential presented, the principal's (the token's, else
        the first API key's) first, no repeats (one secret sent as an API key or as a
        bearer token is one credential)."""
        found: list[str] = [token] if token is not None else []
        for raw in (api_key, *(more.values() if more else ())):
            if raw:
                key = self.hasher("k", raw)
                if key not in found:
                    found.append(key)
        return tuple(found)

    def _ip_key(self, client: str) -> str:
        """The keyed hash of the client's counting unit (address or /prefix network),
        remembered in a bounded table (one dict lookup per request once seen)."""
        keys = self._ip_keys
        if len(keys) >= IP_CACHE_MAX:
            keys.clear()
        key = keys[client] = self.hasher.ip(self.ip.group(client))
        return key

    def rules_of(self, scope: Mapping[str, Any]) -> tuple[Rule, ...]:
        """`endpoint_rules` through a bounded per-endpoint table (the middleware asks on
        every request; most endpoints carry no rules, and a missed getattr is slow)."""
        endpoint = scope.get("endpoint")
        try:
            rules = self._rules_by_endpoint.get(endpoint)
        except TypeError:  # an unhashable endpoint object
            return endpoint_rules(scope, self)
        if rules is None:
            rules = endpoint_rules(scope, self)
            if len(self._rules_by_endpoint) >= _ENDPOINTS_MAX:
                self._rules_by_endpoint.clear()
            self._rules_by_endpoint[endpoint] = rules
        return rules

    def succeeded(self, status: int) -> bool:
        """Whether `status` is a success (`success_statuses`, 200-399 by default)."""
        return self._ok_low <= status <= self._ok_high

    def rules_at_response(self, scope: Mapping[str, Any], status: int) -> tuple[Rule, ...]:
        """The endpoint rules the response-start checkpoint runs. A decorated handler runs
        its rules when it is entered, so at the response start they are still unchecked
        only when the handler never ran (405 from the router, 422, a failing dependency):
        such a request spends none of them. The exception is a generator handler, whose
        body runs as the response streams: it was called, and when the response is a
        success (2xx) its rules run now, before a byte of the body leaves."""
        rules = self.rules_of(scope)
        if rules and (
            not 200 <= status < 300
            or not getattr(scope.get("endpoint"), "__apiguard_streams__", False)
        ):
            return ()  # (a redirect or an error: the generator's body does not run)
        return rules

    def _untrusted_forwarding(self, name: bytes, ip_key: str) -> None:
        """A peer sent a forwarding header and no proxy is trusted: it may be a proxy
        every client shares, or a client that added the header (free to send). Its address
        is remembered (bounded) and watched: once `PROXY_ACCOUNTS` distinct accounts
        logged in from it (or users the app identified there), it is taken for an
        undeclared proxy and detectors never ban it (a ban would lock out everyone behind
        it): an account-takeover finding on it challenges logins there instead (see
        `_at_proxy`), since eight accounts of its own are cheap for a stuffer. Until then
        it is one client. Warned once."""
        forwarding = self._forwarding
        if ip_key not in self._proxied and ip_key not in forwarding:
            if len(forwarding) >= _PROXIED_MAX:
                forwarding.popitem(last=False)
            forwarding[ip_key] = (set(), set())
        if self._proxy_warned:
            return
        self._proxy_warned = True
        log.warning(
            "apiguard: requests carry %s but no trusted_proxies are configured, so it is "
            "ignored and the TCP peer is the client. Behind a proxy or load balancer every "
            "client would share its address: set client_ip.trusted_proxies (and run uvicorn "
            "with --no-proxy-headers, or it may already have rewritten the client address). "
            "Until then, an address many people log in from is never banned by detectors "
            "(a stuffer there is challenged at the login route); any other is one client.",
            name.decode("latin-1"),
        )

    def _forwarded_evidence(self, ctx: RequestContext, status: int) -> None:
        """At an address that sent untrusted forwarding headers: an account logged in to
        from it, or a user the app identified there, counts towards taking it for an
        undeclared proxy (see `_untrusted_forwarding`)."""
        ip_key = ctx.ip_key
        seen = self._forwarding.get(ip_key)
        if seen is None:
            return
        login = ctx.login
        if login is not None:
            if login.gated:
                return
            ok = login.success if login.success is not None else (
                200 <= status < 300 and login.status_succeeds()
            )
            if not ok:
                return
            found, account = seen[0], login.user
        elif ctx.vouched and ctx.principal and 200 <= status < 400:
            found, account = seen[1], ctx.principal
        else:
            return
        found.add(account)
        if len(found) >= PROXY_ACCOUNTS:
            del self._forwarding[ip_key]
            proxied = self._proxied
            if len(proxied) >= _PROXIED_MAX:
                proxied.clear()
            proxied.add(ip_key)

    def _warn_late_identify(self, ctx: RequestContext) -> None:
        # only where it matters: a rule of this endpoint is keyed on the principal (a login
        # view limited per IP that identifies the user after checking the password is fine)
        # (declared object ids are counted per principal too: BOLA's)
        keyed = [
            r
            for r in endpoint_rules(ctx.scope, self)
            if getattr(r, "per", None) in _BY_PRINCIPAL or isinstance(r, ObjectsRule)
        ]
        if not keyed:
            return
        endpoint = ctx.scope.get("endpoint")
        name = getattr(endpoint, "__qualname__", None) or repr(endpoint)
        if name in self._late_identify_warned or len(self._late_identify_warned) > 1024:
            return
        self._late_identify_warned.add(name)
        log.warning(
            "apiguard: identify() was called in %s after this request had been checked "
            "(keyed on the API key or IP); call it from an auth dependency or before the "
            "decorated handler runs, or use Guard(principal_resolver=...)",
            name,
        )

    def early_ban(self, ctx: RequestContext) -> Decision | None:
        """A block from the local ban table before routing (no store trip).

        Checked: every credential the request presents (a banned one refuses whatever
        else the request carries: adding a cookie or another key changes nothing), and
        the IP if the request carries neither a credential, a cookie nor an Authorization
        header of any scheme (a session or a token the app may vouch for with
        `identify()` or its authentication: IP bans must not lock out signed-in colleagues
        behind the same NAT), or always with `bans.strict_ip`. Anything not refused here
        is checked again at the checkpoint, once the principal is known. Callers skip this
        while `may_be_banned()` is False.
        """
        now = self.clock()
        store = self.store
        ban = None
        creds = ctx.credentials
        for c in creds:
            ban = store.active_ban(c, now)
            if (
                ban is not None
                and ban.action != "challenge"  # (decided at the checkpoint, where the
                and not self._excused(ctx, ban, now)  # route is known)
            ):
                break
            ban = None
        if ban is None and (
            self.bans.strict_ip
            or (not creds and not ctx.has_cookie and ctx.header("authorization") is None)
        ):  # any Authorization scheme (DRF's `Token`, Basic) may be vouched for too
            ban = store.active_ban(ctx.ip_key, now)
            if ban is not None and ban.action == "challenge" and self._not_challenged_here(ctx):
                ban = None  # (the app's challenge route: the people there must pass it)
        if ban is None:
            return None
        decision = ban_decision(ban, now)
        ctx.principal = ban.key
        ctx.decision = decision
        ctx.global_done = True
        self.telemetry.record(ctx, decision)
        self._rotation_refused(ctx, decision, ban.owner or ban.key)
        return decision

    def _note_token(self, ctx: RequestContext, principal: str) -> None:
        """Record that the app vouched for `principal` on a request with a bearer token;
        a token two vouched principals presented is banned with neither."""
        token = ctx.token_key
        if token is None:
            return
        self._vouch_token(ctx, principal, token)
        owners = self._owners
        owner = owners.get(token)
        if owner is None:
            if len(owners) >= IP_CACHE_MAX:
                owners.popitem(last=False)
            owners[token] = principal
        else:
            owners.move_to_end(token)
            if owner != principal:
                owners[token] = _SHARED_TOKEN

    def token_owner(self, ctx: RequestContext) -> str | None:
        """The one principal the app vouched for on earlier requests carrying this
        request's bearer token (None: none, or several), at this request's address, as
        this process saw it: the user behind a token sent where no `identify()` runs (a
        path no route serves)."""
        token = ctx.token_key
        if token is None or ctx.has_cookie:
            return None
        owner = self._owners.get(token)
        if owner is None or owner is _SHARED_TOKEN:
            return None
        # and only from an address the app vouched for that user at: an old token
        # replayed from elsewhere is a made-up credential there (it must not get its
        # user challenged everywhere)
        people = self._people_at.get(ctx.ip_key)
        if people is None or (owner != people if isinstance(people, str) else owner not in people):
            return None
        return owner

    def vouched_token(self, key: str) -> bool:
        """Whether the app vouched for a principal on a request whose only credential was
        bearer token `key` (as this process saw it, bounded; at most `_TOKENS_VOUCHED`
        tokens per principal an hour): a signed-in user's token sent to a route that does
        not call `identify()` is no made-up credential. A request that also carried a
        cookie may have been vouched for by the cookie: its token proves nothing."""
        return key in self._vouched_tokens

    def _vouch_token(self, ctx: RequestContext, principal: str, token: str) -> None:
        if ctx.has_cookie or token in self._vouched_tokens:
            return
        counts = self._tokens_per_principal
        now = self.clock()
        count, since = counts.get(principal, (0, now))
        if now - since >= _TOKENS_VOUCHED_EVERY:  # (a refreshed token each hour is fine)
            count, since = 0, now
        if count >= _TOKENS_VOUCHED:
            return
        if principal not in counts and len(counts) >= IP_CACHE_MAX:
            counts.popitem(last=False)
        counts[principal] = (count + 1, since)
        tokens = self._vouched_tokens
        if len(tokens) >= IP_CACHE_MAX:
            tokens.popitem(last=False)
        tokens[token] = None

    def _carried_tokens(self, ctx: RequestContext, principal: str) -> list[str]:
        """The request's bearer token if only `principal` presented it: banned with it, so
        its next request is refused before routing. Never an API key: a key every copy of
        an app sends is shared by all its users (see the README, *Shared app keys*)."""
        token = ctx.token_key
        if token is None or self._owners.get(token) != principal:
            return []
        return [token]

    # -- principal ------------------------------------------------------------------
    def _principal(self, ctx: RequestContext) -> str:
        """The principal, and whether the app vouched for it (identify() or the resolver)."""
        if ctx.declared is not None:
            ctx.vouched = True
            self._person_at(ctx.ip_key, ctx.declared)
            return ctx.declared
        if self.resolver is not None:
            # not an identity (a user object, bytes, a bool): reported once, anonymous
            try:
                resolved = self.resolver(ctx)
            except Exception as exc:  # anonymous, but counted: never an uncounted request
                callable_failed(self, "principal_resolver", exc)
                resolved = None
            found = (
                identity_text(resolved, self, "principal_resolver")
                if resolved is not None
                else None
            )
            if found:
                ctx.vouched = True
                principal = self.hasher("c", found)
                self._person_at(ctx.ip_key, principal)
                return principal
        return ctx.credential_key or ctx.ip_key

    def _person_at(self, ip: str, principal: str) -> None:
        """Remember that the app vouched for `principal` at address `ip` (the first
        `_PEOPLE_KEPT` per address, in process, bounded)."""
        people = self._people_at.get(ip)
        if people is None:
            if len(self._people_at) >= IP_CACHE_MAX:
                self._people_at.clear()
            self._people_at[ip] = principal
        elif isinstance(people, str):
            if people != principal:
                self._people_at[ip] = {people, principal}
        elif len(people) < _PEOPLE_KEPT:
            people.add(principal)

    def people_at(self, ip: str) -> int:
        """How many principals the app vouched for at address `ip` (at most
        `_PEOPLE_KEPT`), as this process saw it."""
        people = self._people_at.get(ip)
        if people is None:
            return 0
        return 1 if type(people) is str else len(people)

    def forwarding_address(self, ip: str) -> bool:
        """Whether address `ip` sent a forwarding header no setting trusts (a proxy many
        clients may share, as this process saw it)."""
        return ip in self._forwarding or ip in self._proxied

    def shared_address(self, ip: str) -> bool:
        """Whether the app vouched for two principals or more at address `ip` (an office's
        or a carrier's NAT, as this process saw it): its people's stale credentials may
        be refused there, never end in a ban of the address."""
        people = self._people_at.get(ip)
        return people is not None and type(people) is not str

    def declare(self, ctx: RequestContext, user_id: str) -> None:
        """`identify()`: record the app's principal and run the checkpoint now."""
        ctx.declared = self.hasher("u", user_id)
        if ctx.global_done:
            if ctx.principal != ctx.declared:
                self._warn_late_identify(ctx)
            return
        ctx.principal = ctx.declared
        ctx.vouched = True
        self._person_at(ctx.ip_key, ctx.declared)
        if self._may_block() and not self.rules_of(ctx.scope):
            self.check_sync(ctx, ())
        # a decorated handler checks every rule, global and its own, when it is entered (a
        # request that never reaches it, a 422, spends none of its rules); remote stores
        # called on the event loop: the next async checkpoint (decorated entry, response
        # start) runs it

    def declare_anonymous(self, ctx: RequestContext) -> None:
        """`identify(None)`: the app found no user; run the checkpoint now (as for a user)."""
        if not ctx.global_done and self._may_block() and not self.rules_of(ctx.scope):
            self.check_sync(ctx, ())

    def _may_block(self) -> bool:
        """Whether synchronous code may run a checkpoint now: always on a local store; on
        a remote one with a sync client (`sync_ready`) only off the event loop (a sync
        dependency in the threadpool, WSGI), never on it."""
        if self.store.local:
            return True
        if not getattr(self.store, "sync_ready", False):
            return False
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return True
        return False

    # -- checkpoints ----------------------------------------------------------------
    def _plan(self, ctx: RequestContext, rules: tuple[Rule, ...]) -> Batch | None:
        """The batch for the global rules (once per request) and `rules` (every call)."""
        todo_global = not ctx.global_done
        todo_endpoint = bool(rules)
        if not todo_global and not todo_endpoint:
            return None
        if ctx.principal is None:
            ctx.principal = self._principal(ctx)
        scraping = self._scraping
        if todo_global and scraping is not None and scraping.surging:
            self._scraping_gate(ctx, scraping)
        hits: list[Hit] = []
        if todo_global:
            self._plan_rules(ctx, self._global_plan, hits)
            ctx.global_done = True
        if todo_endpoint:
            self._plan_rules(ctx, self._with_modes(rules), hits)
            ctx.note_ran(rules)
        return Batch(hits, self._with_groups(self._ban_keys(ctx), ctx, rules))

    def _plan_rules(
        self, ctx: RequestContext, plan: tuple[tuple[Rule, bool], ...], hits: list[Hit]
    ) -> None:
        """Let each rule add its hits; a rule that raises (a plugin) is reported once and
        skipped, so the others still count the request."""
        for rule, enforce in plan:
            try:
                rule.plan(ctx, hits, enforce)
            except Exception as exc:
                callable_failed(self, f"rule {getattr(rule, 'name', rule)!r}", exc)

    def _scraping_gate(self, ctx: RequestContext, scraping: Scraping) -> None:
        """Raise `Refused` (a challenge) when a route under a scraping surge is read by a
        new anonymous address without a pass (`apiguard.detectors.scraping`); only in
        an app whose challenge route is known (`detection.challenge_path`, or where
        `challenge_passed()` was called): without one, nobody new could get through, so
        the surge is reported only."""
        if not self._enforced(scraping.enforce):
            return
        if self.challenge_path is None:
            self.surge_reads_unheld += 1
            if not self._scraping_unheld_warned:
                self._scraping_unheld_warned = True
                log.warning(
                    "apiguard: a scraping surge was found (see the detection log) but is "
                    "reported only: set detection.challenge_path to your app's challenge "
                    "route (where it calls guard.challenge_passed()) to challenge new "
                    "readers during a surge (it is also taken once somebody passes a "
                    "challenge there)"
                )
            return
        if ctx.route is None:  # not routed yet (or no route): the response start asks again
            ctx.scrape_late = not ctx.vouched
            return
        now = self.clock()
        if scraping.holds(ctx, now):
            ctx.global_done = True
            decision = Decision(
                Action.CHALLENGE,
                scraping.name,
                scraping.config.window / 2,  # (a bot waiting is judged again by then)
                detector=scraping.name,
            )
            self._settle(ctx, decision)

    def late_gate(self, ctx: RequestContext) -> Decision | None:
        """At the response start, the scraping gate of a request whose checkpoint ran
        before routing (`identify()` in a middleware), now that its route is known: the
        challenge that replaces the response, or None."""
        ctx.scrape_late = False
        scraping = self._scraping
        if scraping is None or not scraping.surging or ctx.route is None:
            return None
        try:
            self._scraping_gate(ctx, scraping)
        except Refused as refused:
            return refused.decision
        return None

    def _with_groups(
        self, keys: tuple[str, ...], ctx: RequestContext, rules: tuple[Rule, ...]
    ) -> tuple[str, ...]:
        """`keys` and, at a completing flow step, the bans of the request's fingerprint
        and network on that flow, and of the network the principal was born in
        (`apiguard.detectors.flow_groups`)."""
        groups = self._flow_groups
        if not rules:
            return keys
        principal = ctx.principal or ctx.ip_key
        if self._unfinished is not None and principal != ctx.ip_key:  # (not an address)
            keys = self._unfinished_held(keys, ctx, rules, principal)
        if groups is None:
            return keys
        if not groups.activity and any(isinstance(rule, FlowRule) for rule in rules):
            self.declare_flow()  # (a flow rule not made by `Guard.flow`)
        extra = [
            k
            for rule in rules
            if isinstance(rule, FlowRule) and rule.completes
            for k in (
                *groups.group_held(rule.name, principal, ctx, self.clock()),
                *groups.young_held(rule.name, principal, ctx, self.clock()),
            )
        ]
        return (*keys, *extra) if extra else keys

    def _unfinished_held(
        self, keys: tuple[str, ...], ctx: RequestContext, rules: tuple[Rule, ...], principal: str
    ) -> tuple[str, ...]:
        """`keys` and the unfinished-flow ban of each `finished_by` flow the request
        starts; a start past the bar (counting those admitted and not yet judged) is
        refused by a ban imposed now (`apiguard.detectors.unfinished`)."""
        unfinished = self._unfinished
        assert unfinished is not None
        now = self.clock()
        extra = []
        for rule in rules:
            if not isinstance(rule, FlowRule) or not rule.completes or not rule.finished_by:
                continue
            key = unfinished_key(rule.name, principal)
            extra.append(key)
            holding = ctx.holding
            if (holding is not None and (rule.name, principal) in holding) or (
                self.store.active_ban(key, now) is not None
            ):
                continue  # (counted by an earlier path of this request; or refused)
            admitted = unfinished.admit(rule, principal, now, unfinished.bar(rule, key, self, now))
            if holding is None:
                holding = ctx.holding = []
            holding.append((rule.name, principal))
            if not admitted:
                evidence: dict[str, float | int | str] = {
                    "flow": rule.name,
                    "threshold": rule.unfinished,
                    "window": rule.longest,
                    "basis": "admitted",
                }
                enforce = unfinished.enforces(rule)
                self._apply(ctx, Finding(unfinished.name, key, "throttle", enforce, evidence), now)
        return (*keys, *extra) if extra else keys

    def _answered_with_pass(self, ctx: RequestContext, principal: str) -> None:
        """A challenged person whose request carries a pass issued after the challenge
        began (its challenge request did not name them: no token, an anonymous challenge
        route) has answered it: lift it as `challenge_passed` would."""
        now = self.clock()
        value = cookie(ctx, PASS_COOKIE)
        if not pass_valid(self.hasher, value, now) or value is None:
            return
        until = int(value.partition(".")[0])
        issued = until - self.config.detection.challenge_for
        if issued + 1 < self._challenged_at[principal]:
            return  # a pass from before (e.g. a login challenge): not an answer to this one
        # one pass answers one person's challenge: a solved CAPTCHA's cookie replayed on a
        # batch of accounts lifts the first one only (kept in the shared ban table)
        tag = self.hasher("pk", value)
        self._cookieless_passes.withdraw(ctx, tag)  # (it keeps cookies: no twin for others)
        mark = PASS_USED + tag
        used = self.store.active_ban(mark, now)
        if used is not None and used.owner != principal:
            return
        if used is None:
            self.store.impose(Ban(mark, float(until), 1, principal, "pass"), now)
        for key in (principal, *ctx.credentials):  # (its token carries the challenge too)
            self._lift_challenge(key, now)

    def _answered_cookieless(self, ctx: RequestContext, principal: str) -> None:
        """A challenged person whose client keeps no cookie (a phone app; its challenge
        request named nobody) retries from the address it solved from: a challenge
        passed there by its client shape since this one began answers it
        (`CookielessPasses.take_here`, within `PASS_SECONDS`), as `_answered_with_pass`
        would, for this principal only (the pass cookie it was issued with then answers
        no other)."""
        if any(c.startswith(PASS_COOKIE + "=") for c in ctx.cookies or ()):
            return  # (this request passed the challenge: its pass is for its retry)
        now = self.clock()
        since = self._challenged_at[principal] - 1
        tag = self._cookieless_passes.take_here(ctx, now, since)
        if tag is None:
            return
        mark = PASS_USED + tag  # (one solve, one account: its cookie and its twin alike)
        used = self.store.active_ban(mark, now)
        if used is not None and used.owner != principal:
            return
        if used is None:
            until = now + self.config.detection.challenge_for  # (its cookie's, at most)
            self.store.impose(Ban(mark, until, 1, principal, "pass"), now)
        ctx.pass_key = COOKIELESS + tag
        for key in (principal, *ctx.credentials):
            self._lift_challenge(key, now)

    def _lift_challenge(self, principal: str, now: float) -> None:
        ban = self.store.active_ban(principal, now)
        if ban is None or ban.action != "challenge":
            self._challenged_at.pop(principal, None)
            return
        self.store.lift(principal)
        # a challenge a person (a user the app vouched for) passed is no offence: not a
        # repeat offender for it (judged on half the evidence for a day after, a real-app
        # trial's power user was asked again two hours later reading her own objects);
        # an earlier level is kept, as ended now. Not an address's: one person's pass
        # there forgives no stuffer behind the same NAT
        last = self._levels.get(principal) if principal.startswith(_USER) else None
        if last is not None and last[0] == ban.level:
            if ban.level > 1:
                self._levels[principal] = (ban.level - 1, now)
            else:
                del self._levels[principal]
        if self.store.local:
            self._challenged_at.pop(principal, None)
        # (a shared store writes the lift after the response, and a request before that
        # may learn the ban back from it: the next request with the pass lifts it again)
        # remembered in the ban table (shared by workers): the detector that asked gives
        # this person four times the bar before it blocks
        seconds = self.config.detection.challenge_for
        self.store.impose(Ban(PASSED + principal, now + seconds, 1, None, "pass"), now)
        passed_at = self._passed_at
        passed_at.pop(principal, None)
        if len(passed_at) >= IP_CACHE_MAX:
            passed_at.popitem(last=False)
        passed_at[principal] = now

    def _learn_challenge_route(self, ctx: RequestContext) -> None:
        """`challenge_passed()` was called on an app that did not declare its challenge
        route: this request's path is taken for it by the scraping gate (people can get
        through, so a surge may hold newcomers; the detector does not watch that route).
        Only the declared route is exempt from other detectors' challenges: an app that
        calls `challenge_passed()` in its login handler must not open its login route to
        challenged clients."""
        path = ctx.scope.get("path")
        if not isinstance(path, str):
            return
        self.challenge_path = path
        scraping = self._scraping
        if scraping is not None and scraping.challenge_path is None:
            scraping.challenge_path = route_template(ctx.scope) or path
        log.info(
            "apiguard: guard.challenge_passed() was called on %s: taken for the app's "
            "challenge route (declare it as detection.challenge_path to hold scraping "
            "surges from the start)",
            path,
        )

    def _not_challenged_here(self, ctx: RequestContext) -> bool:
        """Whether a detector's challenge does not hold this request: it is for the app's
        challenge route (`detection.challenge_path`), or it was routed (a checkpoint
        before routing, e.g. `identify()` in a Django middleware, cannot tell) to a route
        that names no object."""
        scope = ctx.scope
        declared = self.config.detection.challenge_path
        path = scope.get("path")
        # (a trailing slash either side: `/challenge` declared for `/challenge/`)
        if (
            declared is not None
            and isinstance(path, str)
            and path.rstrip("/") == declared.rstrip("/")
        ):
            return True
        if scope.get("route") is None and scope.get("endpoint") is None:
            return False
        return not self._object_route(ctx)

    def _object_route(self, ctx: RequestContext) -> bool:
        """Whether the request names objects the BOLA detector watches (path parameters,
        its configured query parameters, or ids the app declared)."""
        return ctx.objects is not None or names_object(ctx.scope, self._bola_query)

    def objects_touched(self, ctx: RequestContext, name: str, ids: Iterable[object]) -> None:
        """The app declared that this request touches the objects `ids` (their parameter
        `name`): the BOLA detector counts them with the route's path parameters. A
        detector's challenge standing on the principal, which holds only requests that
        name objects, refuses this one now (raises `Refused`)."""
        if ctx.observed:  # (the detectors saw the request: a streaming body's call)
            if not self._late_objects_warned:
                self._late_objects_warned = True
                log.warning(
                    "apiguard: guard.objects_touched() was called after the response "
                    "started (in a streaming body?): those ids are not counted; call it "
                    "before the response starts (reported once)"
                )
            return
        objects = ctx.objects
        if objects is None:
            objects = ctx.objects = []
        for value in ids:
            if value is None:
                continue
            if len(objects) >= OBJECTS_PER_REQUEST:
                break
            objects.append((name, value))
        if not objects or ctx.principal is None or not self._local_bans:
            return
        decision = ctx.decision
        if decision is not None and decision.refused:
            return
        now = self.clock()
        for key in self._ban_keys(ctx):
            ban = self.store.active_ban(key, now)
            if ban is not None:  # (a challenge held now: the request names objects)
                self._settle(ctx, ban_decision(ban, now))  # raises Refused

    def _ban_keys(self, ctx: RequestContext) -> tuple[str, ...]:
        """Whose bans refuse this request: the principal and every credential presented;
        with a principal the app has not vouched for, the IP too (so a made-up key escapes
        neither an IP ban nor another credential's ban)."""
        principal = ctx.principal or ctx.ip_key
        creds = ctx.credentials
        keys = self._principal_ban_keys(ctx, principal, creds)
        if self._challenged_at and principal in self._challenged_at:
            if ctx.has_cookie and cookie(ctx, PASS_COOKIE) is not None:
                self._answered_with_pass(ctx, principal)
            else:
                self._answered_cookieless(ctx, principal)
        if self._local_bans:
            now = self.clock()
            if self._rotation is not None and principal != ctx.ip_key:
                shaped = shaped_key(principal, ctx.fingerprint)
                if self.store.active_ban(shaped, now) is not None:
                    keys = (*keys, shaped)  # the principal as this client software uses it
            # a detector's challenge is about objects: it does not hold the app's challenge
            # route, nor a routed request that names no object
            unheld = self._not_challenged_here(ctx)
            keys = tuple(k for k in keys if not self._not_held(ctx, k, unheld, now))
        return keys

    def known_principal(self, key: str) -> bool:
        """Whether this process has seen `key` answered below 400 (the rotation detector's
        places: its first few networks and client shapes)."""
        rotation = self._rotation
        return rotation is not None and rotation.homes.knows(key)

    def _not_held(self, ctx: RequestContext, key: str, unheld: bool, now: float) -> bool:
        """Whether the ban on `key` (if any) does not hold this request: a challenge where
        challenges do not hold (`unheld`), or a rotation ban at the principal's home."""
        ban = self.store.active_ban(key, now)
        if ban is None:
            return False
        if ban.action == "challenge":
            return unheld
        return self._excused(ctx, ban, now)

    def _excused(self, ctx: RequestContext, ban: Ban, now: float) -> bool:
        """Whether `ban` is a rotation ban and this request comes from the banned
        principal's home (`apiguard.detectors.rotation`): its owner, not the thief."""
        rotation = self._rotation
        if rotation is None or ban.reason != rotation.name:
            return False
        return rotation.excuses(ctx, ban, now)

    def _principal_ban_keys(
        self, ctx: RequestContext, principal: str, creds: tuple[str, ...]
    ) -> tuple[str, ...]:
        if ctx.vouched:
            if not creds:
                return (principal,)
            self._note_token(ctx, principal)
            return (principal, *creds)
        ip = ctx.ip_key
        if not creds or (len(creds) == 1 and creds[0] == principal):
            return (principal,) if principal == ip else (principal, ip)
        keys = [principal, *(c for c in creds if c != principal)]
        if principal != ip:
            keys.append(ip)
        return tuple(keys)

    def ratelimit_values(
        self, ctx: RequestContext, status: int | None = None
    ) -> tuple[bytes, bytes] | None:
        """Encoded `RateLimit-Policy` and `RateLimit` for an admitted response: the enforced
        policy closest to its limit (smallest remaining share of its quota). With the
        response's `status`: a `count="success"` flow's charge that a failure gives back
        counts as remaining (the client did not spend it)."""
        charges = ctx.charges
        if charges and status is not None and not self._ok_low <= status <= self._ok_high:
            fast = ctx.fast
            verdicts = ctx.verdicts or (fast[0].verdicts(ctx) if fast is not None else ())
            return tightest_ratelimit(verdicts, charges)
        if ctx.verdicts:
            return tightest_ratelimit(ctx.verdicts)
        return ctx.fast[3] if ctx.fast is not None else None

    def _admission(self, rules: tuple[Rule, ...]) -> Admission | None:
        """The fast path for a checkpoint that runs the global rules and `rules`."""
        if not rules:
            return self._fast
        if self._fast is None:
            return None
        try:
            return self._fast_with[rules]
        except KeyError:
            pass
        pairs = (*self._global_plan, *self._with_modes(rules))
        plan = Admission.compile(pairs, self.store, advertise=self.config.ratelimit_headers)
        if len(self._fast_with) >= _ENDPOINTS_MAX:
            self._fast_with.clear()
        self._fast_with[rules] = plan
        return plan

    def _admit_fast(self, ctx: RequestContext, rules: tuple[Rule, ...]) -> bool:
        """The checkpoint on the fast path (see `apiguard.admission`), when the global
        rules are still to run; False: nothing was charged, run the general path."""
        if ctx.global_done:
            return False
        # (`_admission`, `_with_groups` and `note_ran` are called only for an endpoint with
        # rules of its own: every request comes here, most to an endpoint without)
        fast = self._admission(rules) if rules else self._fast
        if fast is None or fast.call is not None:  # (a remote store: `_acheck_fast`)
            return False
        principal = ctx.principal
        if principal is None:
            principal = ctx.principal = self._principal(ctx)
        scraping = self._scraping
        if scraping is not None and scraping.surging:
            self._scraping_gate(ctx, scraping)
        keys = self._ban_keys(ctx)
        if rules:
            keys = self._with_groups(keys, ctx, rules)
        if not fast.try_admit(ctx, principal, keys, self.clock()):
            return False
        ctx.global_done = True
        if rules:
            ctx.note_ran(rules)
        if ctx.decision is None:
            ctx.decision = ALLOWED
        self.telemetry.record(ctx, ALLOWED)
        return True

    def _for_read(self, ctx: RequestContext, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        """`rules` for a GET or OPTIONS request (a HEAD runs the view: counted), without
        its flows when its route also takes a write (a form's page is no sign-up: it must
        not spend the flow). A read-only route's flow, one declared `count_reads=True`,
        and a read that carries a body (a GET+POST FastAPI route parses a GET's JSON body)
        still count; routes whose methods are not known (a Django function view, a
        class-based view's handler) keep them."""
        scope = ctx.scope
        route = scope.get("route")
        methods = getattr(route, "methods", None)
        if (
            not methods
            or _WRITE_METHODS.isdisjoint(methods)
            or getattr(route, "body_field", None) is not None
            or scope.get(BODY_KEY)
            or _has_body(scope)
        ):
            # (a read with a body may reach the write: a FastAPI route taking a body
            # parses a GET's, which HTTP/2 sends with no Content-Length)
            return rules
        found = self._read_rules.get(id(rules))
        if found is None or found[0] is not rules:
            kept = tuple(r for r in rules if not isinstance(r, FlowRule) or r.count_reads)
            dropped = tuple(r for r in rules if isinstance(r, FlowRule) and not r.count_reads)
            found = (rules, kept if len(kept) < len(rules) else rules, dropped)
            if len(self._read_rules) < 4096:
                self._read_rules[id(rules)] = found
        if found[2] and WATCH_KEY in scope:
            # (an HTTP/2 read: the flows it skips are charged if its body bytes arrive)
            scope[DROPPED_KEY] = found[2]  # type: ignore[index]
        return found[1]

    def check_sync(self, ctx: RequestContext, rules: tuple[Rule, ...] = ()) -> Decision:
        """Run the checkpoint from synchronous code: the global rules if they have not run
        for this request, and `rules` (a decorated function's, charged on every call);
        raise `Refused` when refused."""
        if rules and ctx.scope.get("method") in _SAFE_METHODS:
            rules = self._for_read(ctx, rules)
        if self._admit_fast(ctx, rules):
            return ALLOWED
        batch = self._plan(ctx, rules)
        if batch is None:
            return ctx.decision or ALLOWED
        now = self.clock()
        return self._conclude(ctx, batch, self.store.execute(batch, now, self.bans), now)

    async def check_async(self, ctx: RequestContext, rules: tuple[Rule, ...] = ()) -> Decision:
        """Run the checkpoint from async code; raise `Refused` when refused."""
        if rules and ctx.scope.get("method") in _SAFE_METHODS:
            rules = self._for_read(ctx, rules)
        fast = self._fast
        if fast is not None and fast.call is not None:  # a remote store
            if not ctx.global_done:
                if rules:
                    fast = self._admission(rules)
                if fast is not None:
                    return await self._acheck_fast(ctx, rules, fast)
        elif self._admit_fast(ctx, rules):
            return ALLOWED
        batch = self._plan(ctx, rules)
        if batch is None:
            return ctx.decision or ALLOWED
        now = self.clock()
        if self.store.local:  # in-process work: no need to suspend
            result = self.store.execute(batch, now, self.bans)
        else:
            result = await self.store.aexecute(batch, now, self.bans)
        return self._conclude(ctx, batch, result, now)

    async def _acheck_fast(
        self, ctx: RequestContext, rules: tuple[Rule, ...], fast: Admission
    ) -> Decision:
        """The checkpoint on a remote store's fast path (`Admission.acheck`): the store's
        one call made from the compiled rules; an admitted request where every rule fits
        ends as on `_admit_fast`, any other through `_conclude`, as on the general path."""
        principal = ctx.principal
        if principal is None:
            principal = ctx.principal = self._principal(ctx)
        scraping = self._scraping
        if scraping is not None and scraping.surging:
            self._scraping_gate(ctx, scraping)
        keys = self._ban_keys(ctx)
        if rules:
            keys = self._with_groups(keys, ctx, rules)
        ctx.global_done = True
        if rules:
            ctx.note_ran(rules)
        now = self.clock()
        done = await fast.acheck(ctx, principal, keys, now, self.bans)
        if done is not None:
            return self._conclude(ctx, *done, now)
        if ctx.decision is None:
            ctx.decision = ALLOWED
        self.telemetry.record(ctx, ALLOWED)
        return ALLOWED

    def _conclude(
        self, ctx: RequestContext, batch: Batch, result: BatchResult, now: float
    ) -> Decision:
        ban = result.ban
        if not result.hits and ban is not None:  # an existing ban
            return self._settle(ctx, ban_decision(ban, now))
        hits = result.hits
        verdicts = ctx.verdicts
        if verdicts is None:
            if ctx.fast is not None:  # an earlier checkpoint admitted on the fast path
                verdicts = ctx.verdicts = [*ctx.fast[0].verdicts(ctx), *hits]
                ctx.fast = None
            else:
                verdicts = ctx.verdicts = hits
        else:
            verdicts.extend(hits)
        admitted = result.admitted
        if result.new_ban and ban is not None:
            log.warning(
                "apiguard: %s banned for %.0fs (level %d)", ban.key, ban.until - now, ban.level
            )
        deciding: Hit | None = None
        monitored: Hit | None = None
        retry = 0.0
        for hit in hits:
            if not hit.fits:
                if hit.enforce:
                    if deciding is None:
                        deciding = hit
                    if hit.retry_after > retry:
                        retry = hit.retry_after
                elif monitored is None:
                    monitored = hit
            elif admitted and hit.consume and hit.rule.observes:
                if ctx.charges is None:
                    ctx.charges = []
                ctx.charges.append(hit)
        if admitted:
            if monitored is None:
                if ctx.decision is None:
                    ctx.decision = ALLOWED
                self.telemetry.record(ctx, ALLOWED)
                return ALLOWED
            decision = Decision(
                Action.MONITOR, monitored.rule.name, monitored.retry_after, verdicts
            )
            self._log_monitored(monitored.rule_name, now)
        elif result.new_ban and ban is not None and ban.key in batch.ban_keys:
            if ctx.vouched and ban.key == ctx.principal:
                # the user's own token is banned with it, so its next request is refused
                # before routing (and on routes without identify())
                for token in self._carried_tokens(ctx, ban.key):
                    self.store.impose(Ban(token, ban.until, ban.level, ban.key), now)
            decision = Decision(
                Action.BLOCK,
                deciding.rule.name if deciding else "ban",
                ban.until - now,
                verdicts,
                ban.level,
                True,
                ban.key,
            )
        else:
            decision = Decision(
                Action.THROTTLE, deciding.rule.name if deciding else None, retry, verdicts
            )
            if result.new_ban and ban is not None:  # a ban on something else (e.g. the IP
                decision.new_ban = True  # of a vouched user): reported, not applied here
                decision.ban_level = ban.level
                decision.banned = ban.key
        return self._settle(ctx, decision)

    def _log_monitored(self, rule: str, now: float) -> None:
        """A monitor-mode rule would have refused: say so in the log, at most once a
        minute per rule (telemetry has every occurrence), so a roll-out in monitor mode
        is visible without an OpenTelemetry SDK."""
        last = self._monitor_logged.get(rule)
        if last is not None and now - last < 60.0:
            return
        if len(self._monitor_logged) >= _ENDPOINTS_MAX:
            self._monitor_logged.clear()
        self._monitor_logged[rule] = now
        log.warning(
            "apiguard: rule %s would have refused a request (monitor mode: admitted; "
            "logged at most once a minute per rule, every one is in the apiguard.decisions "
            "metric)",
            rule,
        )

    def _settle(self, ctx: RequestContext, decision: Decision) -> Decision:
        previous = ctx.decision
        if previous is None or previous.action is Action.ALLOW or decision.refused:
            ctx.decision = decision
        self.telemetry.record(ctx, decision)
        if decision.refused:
            self._rotation_refused(ctx, decision)
            raise self.refusal(decision)
        return decision

    def _rotation_refused(
        self, ctx: RequestContext, decision: Decision, principal: str | None = None
    ) -> None:
        """A principal refused for rotating keeps adding its networks to its own evidence
        (in process; a refused request touches nothing else), so a thief that tries on
        through its ban is banned again (one level up) as soon as the ban ends, not after
        a new run."""
        rotation = self._rotation
        if rotation is None or decision.detector != rotation.name:
            return
        store = self.store
        # a shared store: queued with the writes that follow responses (on an event
        # loop), never a call of its own
        later = None if store.local else getattr(store, "observe_later", None)
        if not store.local and later is None:
            return
        principal = principal or ctx.principal
        if principal is None or principal == ctx.ip_key:
            return
        now = self.clock()
        ops: list[Observation] = []
        try:
            # evidence only: judged when the ban has ended (a ban that grew on every
            # refused request would be a day long within minutes)
            rotation.plan(Outcome(ctx, 403, principal, now, None, route_template(ctx.scope)), ops)
            if not ops:
                return
            if later is None:
                store.observe(ops, now)
            else:
                later(ops, now, _evidence_only, judged=False)
        except Exception:
            log.exception("apiguard: the rotation detector failed on a refused request")

    # -- logins and challenges ------------------------------------------------------
    def net_key(self, client: str, wide: bool = False) -> str:
        """Keyed hash of `client`'s network: /24 for IPv4, /64 for IPv6, or with `wide`
        /16 and /32 (a provider's size); a bounded cache."""
        keys = self._wide_keys if wide else self._net_keys
        key = keys.get(client)
        if key is None:
            if len(keys) >= IP_CACHE_MAX:
                keys.clear()
            net = network_of(client, 16, 32) if wide else network_of(client)
            key = keys[client] = self.hasher("net", net)
        return key

    def site_key(self, client: str) -> str | None:
        """Keyed hash of an IPv6 `client`'s /48 (a site's allocation: a tunnel broker's,
        a cloud's, a customer's), None for IPv4; a bounded cache."""
        keys = self._site_keys
        key = keys.get(client)
        if key is None:
            if len(keys) >= IP_CACHE_MAX:
                keys.clear()
            net = network_of(client, 24, 48)
            key = keys[client] = self.hasher("net", net) if ":" in net else ""
        return key or None

    def login_started(self, ctx: RequestContext, username: str | None) -> None:
        """A login attempt for `username` is about to be checked by the app: record it,
        and raise `Refused` when the client must first pass a challenge (or wait)."""
        if self.ato is None or username is None or ctx.login is not None:
            return
        now = self.clock()
        login, passed = self._attempt(ctx, username, now)
        decision = self._login_gate(ctx, login.user, passed, now)
        if decision is None:
            decision = self._in_flight(ctx, now)
        if decision is None:
            return
        self._hold_login(ctx, login, decision)  # raises Refused

    def login_renamed(self, ctx: RequestContext, username: str, gate: bool = True) -> None:
        """`login_result()` named another account than the one `@guard.login` read (a
        "username or e-mail" form whose other field the app checked): the verdict is on
        the account reported, so the attempt becomes its (its failures, its device
        cookie on success: never the name the decorator read), and its gate applies
        (unless `gate` is false: the password was checked already)."""
        login = ctx.login
        if self.ato is None or login is None:
            return
        user = user_key(self.hasher, username)
        device = device_key(self.hasher, username)
        if device == login.device:
            return
        # its device cookie marks the name reported, never the one read (a look-alike
        # account, `VICTIM` on an app that tells case apart, is another account)
        login.device = device
        if user == login.user:
            return  # (the same account by `normalise`: its gate has run)
        login.user = user
        if login.gated:
            return
        ctx.device_ok = device_mac(self.hasher, device) in device_entries(
            ctx, self.ato.config.device_cookie
        )
        if not gate:
            return
        decision = self._login_gate(ctx, user, ctx.pass_key is not None, self.clock())
        if decision is None:
            return
        self._hold_login(ctx, login, decision)  # raises Refused

    def _hold_login(self, ctx: RequestContext, login: LoginAttempt, decision: Decision) -> None:
        """Refuse a login at the gate, before its password is checked: marked gated, and
        held when its account's own hold decided it (`_ACCOUNT_HOLDS`)."""
        login.gated = True
        login.held = decision.detector in _ACCOUNT_HOLDS
        self._settle(ctx, decision)  # raises Refused

    def _in_flight(self, ctx: RequestContext, now: float) -> Decision | None:
        """Count this attempt among its address's unanswered ones (in process): attempts
        are judged when answered, so a burst of parallel guesses would all reach the
        password check before the first is judged. Past `_IN_FLIGHT_MAX` at once (and
        two more for each account that logged in at the address lately, up to
        `_IN_FLIGHT_SHARED`: a lecture hall pressing "log in" at once), the next waits
        (429)."""
        flights = self._flights
        n = flights.get(ctx.ip_key, 0)
        if n >= _IN_FLIGHT_MAX and n >= min(
            _IN_FLIGHT_MAX + 2 * len(self._signed_in_at.get(ctx.ip_key, ())),
            _IN_FLIGHT_SHARED,
        ):
            return Decision(
                Action.THROTTLE,
                "account_takeover.parallel",
                1.0,
                detector="account_takeover.parallel",
            )
        if n == 0 and len(flights) >= IP_CACHE_MAX:
            return None  # (a full table counts nothing more; it empties as requests end)
        flights[ctx.ip_key] = n + 1
        assert ctx.login is not None
        ctx.login.in_flight = True
        return None

    def _landed(self, ctx: RequestContext, status: int | None) -> None:
        """The attempt `_in_flight` counted has been answered (`status`)."""
        login = ctx.login
        if login is None or not login.in_flight:
            return
        login.in_flight = False
        success = login.success
        if success is None and status is not None:
            success = self.succeeded(status)
        if success:  # (the accounts signed in at this address: `_in_flight`'s allowance)
            table = self._signed_in_at
            accounts = table.pop(ctx.ip_key, None)
            if accounts is None:
                if len(table) >= _SIGNED_IN_KEPT:
                    table.popitem(last=False)
                accounts = set()
            if len(accounts) < (_IN_FLIGHT_SHARED - _IN_FLIGHT_MAX) // 2:  # (all it needs)
                accounts.add(login.user)
            table[ctx.ip_key] = accounts
        n = self._flights.get(ctx.ip_key, 0) - 1
        if n > 0:
            self._flights[ctx.ip_key] = n
        else:
            self._flights.pop(ctx.ip_key, None)

    def _login_gate(
        self, ctx: RequestContext, user: str, passed: bool, now: float
    ) -> Decision | None:
        """What holds this login back, if anything. A device that logged in to the
        account before is never held back, unless that account has seen many failures
        from its devices (a copied cookie). A client that passed a challenge is not
        challenged again, except by what its pass did itself. Else: the account, client,
        network or fingerprint a detector flagged, or the population under attack."""
        ato = self.ato
        login = ctx.login
        assert ato is not None and login is not None
        store = self.store
        maybe = self.may_be_banned()
        if ctx.device_ok:
            marked = login.device or user  # (as the detector counts them)
            if not maybe or store.active_ban(GATE + DEVICE_FAILS + marked, now) is None:
                return None
            ctx.device_ok = False
        if maybe:
            own = []  # bans a pass does not lift: what the pass itself earned
            if ctx.pass_key is not None:
                own = [GATE + ctx.pass_key, GATE + ctx.pass_key + ":" + user]
            for key in own:
                ban = store.active_ban(key, now)
                if ban is not None:
                    return self._gate_decision(ban, now)
            keys = [GATE + ACCOUNT + user, GATE + ctx.ip_key, GATE + ctx.net_key]
            site = ctx.site_key
            if site is not None:
                keys.append(GATE + site)
            if ctx.principal is not None and ctx.principal != ctx.ip_key:
                keys.append(GATE + ctx.principal)
            keys.append(GATE + ctx.fingerprint)
            for key in keys:
                ban = store.active_ban(key, now)
                if ban is not None:
                    if not (passed and ban.action == "challenge"):
                        return self._gate_decision(ban, now)
                    login.past_gate = True  # (a pass let it past a standing challenge)
        if not ato.climate.under_attack(now):
            return None
        if passed:
            login.past_gate = True
        elif ato.known.knows(login.device or user, ctx, now):
            login.known = True  # (a client that logged in to it from here before)
            return None
        elif self.cookieless_pass(ctx, now):
            login.past_gate = True
        elif self._enforced(ato.enforce):
            reason = "account_takeover.population"
            retry = ato.config.population_window / 2
            return self._gate_decision(
                Ban("", now + retry, 1, None, ato.config.population_action, reason), now
            )
        return None

    def cookieless_pass(self, ctx: RequestContext, now: float) -> bool:
        """Whether a client without a pass cookie takes a pass a person solved a
        challenge for lately with its client shape in its region (a phone app that keeps
        no cookie: `CookielessPasses`); then it is the request's pass (`ctx.pass_key`),
        for this request only. At the login, the population alarm's gate only (a flagged
        address, network or shape, a stuffer's own, is not lifted so); the surge of new
        accounts' (`pass_for`); a scraping surge's hold on new readers."""
        if ctx.has_cookie and cookie(ctx, PASS_COOKIE) is not None:
            return False  # (a client that keeps cookies shows its own pass)
        key = ctx.pass_key
        if key is not None:  # (asked again for this request: the pass it took)
            return key.startswith(COOKIELESS)
        until = self._cookieless_passes.take(ctx, now)
        if until is None:
            return False
        ctx.pass_key = COOKIELESS + self.hasher("pk", f"{until!r}:{ctx.ip_key}")
        return True

    @staticmethod
    def _gate_decision(ban: Ban, now: float) -> Decision:
        reason = ban.reason or "account_takeover"
        return Decision(
            _BAN_ACTIONS.get(ban.action, Action.BLOCK),
            reason,
            max(ban.until - now, 1.0),
            detector=reason,
        )

    def login_observed(self, ctx: RequestContext, username: str, success: bool) -> None:
        """An outcome the framework's own authentication reported for `username` (Django's
        `user_login_failed` / `user_logged_in` signals): recorded as `login_result()`
        records one, never gated here: the password was checked already, so a challenge
        now would only tell a bot which guess was right (`apiguard.django.LoginGate`
        gates before the check)."""
        if self.ato is None:
            return
        login = ctx.login
        if login is None:
            login, _ = self._attempt(ctx, username, self.clock())
        else:
            self.login_renamed(ctx, username, gate=False)
        login.checking = False
        login.success = success

    def _attempt(
        self, ctx: RequestContext, username: str, now: float
    ) -> tuple[LoginAttempt, bool]:
        """Record a login attempt for `username` on `ctx` (whether the client presents the
        account's device cookie, and its challenge pass): the attempt, and whether that
        pass is valid."""
        assert self.ato is not None
        device = device_key(self.hasher, username)
        ctx.login = login = LoginAttempt(user_key(self.hasher, username), device=device)
        entries = device_entries(ctx, self.ato.config.device_cookie)
        ctx.device_ok = device_mac(self.hasher, device) in entries
        value = cookie(ctx, PASS_COOKIE) if ctx.has_cookie else None
        passed = value is not None and pass_valid(self.hasher, value, now)
        if passed:
            ctx.pass_key = key = self.hasher("pk", value or "")
            self._cookieless_passes.withdraw(ctx, key)  # (it keeps cookies)
        return login, passed

    def login_finished(
        self, ctx: RequestContext, success: bool | None, exists: bool | None = None
    ) -> None:
        """The app's verdict on the login `login_started` recorded (None: the status
        decides)."""
        login = ctx.login
        if login is not None:
            if success is not None:
                login.success = success
            if exists is not None:
                login.exists = exists

    def challenge_passed(self, ctx: RequestContext) -> None:
        """The person behind this request passed the app's challenge: give the client a
        pass (a signed cookie) and lift the detectors' challenges on the person."""
        self.challenges_answered = True
        if self.challenge_path is None:  # (not declared: this is the app's challenge route)
            self._learn_challenge_route(ctx)
        now = self.clock()
        seconds = self.config.detection.challenge_for
        value = pass_value(self.hasher, int(now + seconds))
        if ctx.cookies is None:
            ctx.cookies = []
        ctx.cookies.append(pass_cookie(ctx, value, seconds))
        # (and for a client that will not keep the cookie)
        self._cookieless_passes.passed(ctx, now, self.hasher("pk", value))
        # (no login gate is lifted: the pass itself gets its holder past a challenge
        # there; a ban stands, since a solved CAPTCHA does not undo stuffing, and so does
        # a shared address's challenge, which everyone else behind the NAT or proxy
        # passes for themselves: one pass lifting it would let a stuffer among them go on)
        # the person: the request's principal, or (on a challenge route that does not
        # call identify()) the user this bearer token was last vouched for
        people = {ctx.principal, ctx.declared, *ctx.credentials}
        if ctx.token_key is not None:
            people.add(self._owners.get(ctx.token_key))
        people.discard(None)
        people.discard(_SHARED_TOKEN)
        for principal in people:
            assert principal is not None
            self._lift_challenge(principal, now)
        # a person, not a bot: the refused login that asked is not a failure (once per
        # address, bounded: a client passing challenges again and again is not forgiven
        # again and again)
        if self.ato is not None and ctx.ip_key not in self._forgiven:
            if len(self._forgiven) >= IP_CACHE_MAX:
                self._forgiven.clear()
            self._forgiven.add(ctx.ip_key)
            self.ato.climate.forgive(now)

    def response_cookies(self, ctx: RequestContext, status: int) -> list[bytes]:
        """Set-Cookie values for the response: a pass, and the device cookie after a
        successful login; none under `override_mode("monitor")` (an app's test suite,
        whose tests of other features must see the app's own responses)."""
        if self.mode_override == "monitor":
            return []
        found = [c.encode("latin-1") for c in ctx.cookies or ()]
        login = ctx.login
        ato = self.ato
        if ato is None or not self._ok_low <= status <= self._ok_high:
            return found
        # a login's on a 2xx, or on any success status (`success_statuses`: a form's
        # login redirects, post/redirect/get) where the app said it succeeded
        # (`login_result(..., True)`, `success=`); never against the app's own verdict (an
        # inactive user's 400 after a correct password gets no device cookie); or a
        # sign-up's (`account_created(..., username=)`: its creator's device)
        device = ctx.device_for
        if login is not None and login.success is None and status < 300:
            _unreported(login)
        if (
            login is not None
            and (login.success is True or (200 <= status < 300 and login.status_succeeds()))
            and not login.gated
            and login.success is not False
            and not login.inferred
            and login.user != self.unreadable_user
        ):
            device = login.device
        if device is not None:
            cfg = ato.config
            mac = device_mac(self.hasher, device)
            found.append(
                device_cookie(ctx, cfg.device_cookie, mac, cfg.device_days).encode("latin-1")
            )
        return found

    # -- after the response ---------------------------------------------------------
    def _settle_holding(self, ctx: RequestContext, status: int | None) -> None:
        """Starts of `finished_by` flows this request was admitted to that came to
        nothing (refused, failed, raised): no judgement will settle them."""
        holding = ctx.holding
        if holding is None or (status is not None and self.succeeded(status)):
            return
        ctx.holding = None
        unfinished = self._unfinished
        if unfinished is not None:
            for flow, principal in holding:
                unfinished.settle(flow, principal)

    def finish(self, ctx: RequestContext, status: int | None) -> None:
        """Let rules observe the outcome (status None: the handler raised), and the
        detectors, unless `observe` already ran for this request."""
        if ctx.charges:
            self._rules_observe(ctx, status)
        if ctx.holding is not None:
            self._settle_holding(ctx, status)
        if self.detectors and not ctx.observed:
            self.observe(ctx, _observed_status(ctx, status))
        login = ctx.login
        if login is not None:
            if login.rule is not None and login.success is not None and status is not None:
                login.rule.learn(login.success, status)  # (whether its status tells)
            self._landed(ctx, status)

    def observe(self, ctx: RequestContext, status: int) -> None:
        """The detectors' look at a finished request: their operations in one store call,
        then their findings. Adapters on an in-process store call it when the response
        starts (the server span is still open for the findings' events; the work is the
        same dict work it would be later); `finish` calls it otherwise."""
        ctx.observed = True
        if ctx.holding is not None:  # (a response observed at its start may end no other way)
            self._settle_holding(ctx, status)
        if self._forwarding:
            self._forwarded_evidence(ctx, status)
        # (`_plan_observation`, inlined: this runs after every response)
        if ctx.refused_sent and not _gated(ctx):
            return  # a refused request touched nothing (a gated login still counts)
        login = ctx.login
        principal = ctx.principal or ctx.ip_key
        # (`_watchers`, inlined)
        address = principal == ctx.ip_key
        index = (login is not None) * 2 + address
        if address and (
            ctx.declared is not None or ctx.born or ctx.refused_sent or ctx.ran is not None
        ):
            index += 4
        if status == 404 or status == 405:
            index += 8
        watching = self._watching[index]
        if not watching:
            return
        now = self.clock()
        outcome = Outcome(ctx, status, principal, now, login, route_template(ctx.scope))
        ops: list[Observation] = []
        judges: list[Judge] | None = None
        for detector in watching:
            try:
                judge = detector.plan(outcome, ops)
            except Exception as exc:
                callable_failed(self, f"detector {detector.name}", exc)
                continue
            if judge is not None:
                if judges is None:
                    judges = [judge]
                else:
                    judges.append(judge)
        if ops:
            combined = None
            if not self._runs_objects:
                ops, combined = expand(ops)
            try:
                self.store.observe(ops, now)
            except Exception:
                log.exception("apiguard: the store failed to record observations")
                return
            if combined:
                _collect(combined)
        if judges is not None:
            for judge in judges:  # (`_judge`, inlined)
                try:
                    findings = judge()
                except Exception as exc:
                    callable_failed(self, "a detector's judgement", exc)
                    continue
                for finding in findings:
                    self._apply(ctx, finding, now)
            groups = self._flow_groups
            if groups is not None and groups.born_in_bursts:
                self._publish_births(groups)

    async def afinish(self, ctx: RequestContext, status: int | None) -> None:
        """`finish` for async adapters: a remote store's observations are awaited."""
        if ctx.holding is not None:
            self._settle_holding(ctx, status)
        if (
            self.store.local
            or not self.detectors
            or ctx.observed
        ):
            self.finish(ctx, status)
            return
        if ctx.charges:
            self._rules_observe(ctx, status)
        if ctx.login is not None:
            self._landed(ctx, status)
        ctx.observed = True
        planned = self._plan_observation(ctx, _observed_status(ctx, status))
        if planned is None:
            return
        ops, judges, now = planned
        combined: list[Objects] = []
        if not self._runs_objects:
            ops, combined = expand(ops)

        def judge() -> None:
            _collect(combined)
            self._judge(ctx, judges, now)

        later = getattr(self.store, "observe_later", None)  # judged after a batched write
        if later is not None and later(ops, now, judge):
            return
        if ops:
            try:
                await self.store.aobserve(ops, now)
            except Exception:
                log.exception("apiguard: the store failed to record observations")
                return
        judge()

    def _rules_observe(self, ctx: RequestContext, status: int | None) -> None:
        charges = ctx.charges or ()
        ctx.charges = None
        success = status is not None and self._ok_low <= status <= self._ok_high
        for hit in charges:
            try:
                hit.rule.observe(hit, success, ctx)
            except Exception:  # an observer must never break the response path
                log.exception("apiguard: rule %s failed to observe a response", hit.rule_name)

    def _plan_observation(
        self, ctx: RequestContext, status: int
    ) -> tuple[list[Observation], list[Judge], float] | None:
        """Every detector's operations for this request, and their judges."""
        if self._forwarding:
            self._forwarded_evidence(ctx, status)
        login = ctx.login
        if ctx.refused_sent and not _gated(ctx):
            return None  # a refused request touched nothing (a gated login still counts)
        principal = ctx.principal or ctx.ip_key
        watching = self._watching[_watchers(ctx, principal, status)]
        if not watching:
            return None
        now = self.clock()
        outcome = Outcome(ctx, status, principal, now, login, route_template(ctx.scope))
        ops: list[Observation] = []
        judges: list[Judge] = []
        for detector in watching:
            try:
                judge = detector.plan(outcome, ops)
            except Exception as exc:
                callable_failed(self, f"detector {detector.name}", exc)
                continue
            if judge is not None:
                judges.append(judge)
        if not judges and not ops:
            return None
        return ops, judges, now

    def _judge(self, ctx: RequestContext, judges: list[Judge], now: float) -> None:
        for judge in judges:
            try:
                findings = judge()
            except Exception as exc:
                callable_failed(self, "a detector's judgement", exc)
                continue
            for finding in findings:
                self._apply(ctx, finding, now)
        groups = self._flow_groups
        if groups is not None and groups.born_in_bursts:
            self._publish_births(groups)

    def _publish_births(self, groups: FlowGroups) -> None:
        """Accounts born in a burst (`apiguard.detectors.flow_groups`), in the shared ban
        table as marks that refuse nothing, so every worker knows where they were born."""
        young_for = self.config.detection.flow_groups.young_for
        born, groups.born_in_bursts = groups.born_in_bursts, []
        now = self.clock()
        for account, network, at in born:
            mark = Ban(BORN + account, at + young_for, 1, network, "pass", groups.name)
            self.store.impose(mark, now)

    def _enforced(self, configured: bool) -> bool:
        override = self.mode_override
        return configured if override is None else override == "enforce"

    def _warn_unanswered_challenge(self, finding: Finding) -> None:
        """Once: a detector asks for a challenge and no person has passed one in this
        process yet; an app without a challenge flow refuses people it would challenge."""
        if self._challenge_warned:
            return
        self._challenge_warned = True
        declared = self.config.detection.challenge_path
        if declared is not None:  # (the app has a challenge route: no advice to drop it)
            log.warning(
                "apiguard: detector %s asks clients for a challenge, and nobody has passed "
                "one at the declared challenge route %s yet: people asked must pass it "
                "there (where the app calls guard.challenge_passed()) to go on",
                finding.detector,
                declared,
            )
            return
        log.warning(
            "apiguard: detector %s asks clients for a challenge, and nobody has passed one "
            "here yet: if your app has no challenge flow (a route that calls "
            "guard.challenge_passed()), people asked are refused until it ends; set the "
            "detectors' challenge actions to 'throttle' or 'block' instead (see the README, "
            "People are challenged, not banned)",
            finding.detector,
        )

    def _apply(self, ctx: RequestContext, finding: Finding, now: float) -> None:
        """Report a finding; when enforced, make it a ban the checkpoints already check
        (a challenge: at the login route only)."""
        enforced = self._enforced(finding.enforce)
        if enforced and finding.subject in self._proxied:
            if self.ato is not None and finding.detector.startswith("account_takeover."):
                finding = self._at_proxy(finding, self.ato.config.population_action)
            else:
                enforced = False  # an untrusted proxy's address: reported, never banned
        self.telemetry.detection(ctx, finding, enforced)
        self._log_detection(finding, enforced, now)
        if (
            enforced
            and finding.action == "challenge"
            and not self.challenges_answered
            # (a scraping surge without a known challenge route asks nobody: said apart)
            and not (self.challenge_path is None and finding.detector.startswith("scraping"))
        ):
            self._warn_unanswered_challenge(finding)
        if not enforced or finding.subject == "population":
            return
        key = finding.subject
        if finding.detector.startswith("account_takeover."):
            key = GATE + key  # held back at the login route, nowhere else
        renewed = None
        if finding.detector.startswith("flow_groups."):
            last = self._levels.get(key)
            if last is not None and now < last[1]:
                # the group's ban still runs: a member's refused attempt renews it at its
                # level (the flag holds while the farm keeps trying), but is no repeat
                # offence (colleagues who each tried once would double it each time); a
                # group flagged again after its ban ended is one
                renewed = last[0]
        level = self._escalate(key, now) if renewed is None else renewed
        if finding.detector in ("account_takeover.account", "account_takeover.devices"):
            cfg = self.config.detection.account_takeover
            seconds = min(cfg.account_protect_for * 2 ** min(level - 1, 16), 86_400.0 * 7)
        elif finding.detector == "unfinished":  # (a quarter of the flow's window)
            quarter = float(finding.evidence["window"]) / 4 * 2 ** min(level - 1, 30)
            seconds = min(max(self.bans.duration(level), quarter), self.bans.max)
        else:
            seconds = self._detector_ban(finding.detector, level)
        # (a person's challenge stands until passed; a flow's surge is nobody's to pass:
        # it lasts its ban, renewed while new accounts keep coming at its pace)
        challenge = finding.action == "challenge" and not key.startswith((GATE, SURGE, GROUP))
        if challenge:
            seconds = max(seconds, self.config.detection.challenge_hold)  # until passed
        ban = Ban(key, now + seconds, level, finding.owner, finding.action, finding.detector)
        if finding.detector != YOUNG_ALARM:  # (a newcomer asked during a harvest: no offence)
            self._levels[key] = (level, ban.until)
        if challenge:
            starts = self._challenged_at
            if len(starts) >= IP_CACHE_MAX:
                starts.clear()
            starts[key] = now
        self.store.impose(ban, now)
        rotation = self._rotation
        bola = self._bola
        if rotation is not None and finding.detector == rotation.name and bola is not None:
            bola.young_flagged(finding.owner or key, now)  # (a throwaway account)
        if rotation is not None and finding.detector == rotation.name and finding.owner:
            # its home, as this worker knows it, for every worker while the ban lasts
            owner = finding.owner
            for net, fp in rotation.homes.of(owner, now):
                self.store.impose(Ban(home_key(owner, net, fp), ban.until, 1, owner, "pass"), now)
        if not key.startswith(GATE) and ctx.vouched and key == ctx.principal:
            for token in self._carried_tokens(ctx, key):
                self.store.impose(
                    Ban(token, ban.until, level, key, finding.action, finding.detector), now
                )

    @staticmethod
    def _at_proxy(finding: Finding, action: str) -> Finding:
        """An account-takeover finding on an address taken for an undeclared proxy
        (`_untrusted_forwarding`), whose ban would lock out everyone behind it: it gets
        what a shared network gets (`population_action` at the login route: a challenge by
        default, which a device with the account's cookie or a passed challenge never
        meets). Logging in to a few accounts of its own from an address buys a stuffer a
        challenge instead of a ban, nothing more."""
        return replace(finding, action=action, evidence={**finding.evidence, "proxy": 1})

    def _detector_ban(self, detector: str, level: int) -> float:
        """Seconds of a detector's ban at escalation `level`: a quarter of the detector's
        evidence window (the evidence outlives a shorter ban, and the first request after
        it would be banned again; rotation: the whole window), doubling with each level,
        capped at `bans.max`."""
        family = detector.split(".", 1)[0]
        window = getattr(getattr(self.config.detection, family, None), "window", 0.0)
        # a rotation ban lasts the whole window: its owner goes on meanwhile (another
        # client shape, or its home), and a thief waiting out a shorter one would be let
        # in again while its evidence still stands
        share = 1.0 if family == "rotation" else 0.25
        seconds = float(window) * share * 2 ** min(level - 1, 30)
        return float(min(max(self.bans.duration(level), seconds), self.bans.max))

    def pass_for(
        self,
        ctx: RequestContext,
        principal: str,
        now: float,
        rebind: bool = False,
        cookieless: bool = True,
    ) -> bool:
        """Whether the request carries a valid pass that answers for `principal`: one
        pass answers one principal (the first that presents it; kept in the shared ban
        table), so a solved CAPTCHA's cookie replayed on a farm's accounts lets one by;
        `rebind`: it answers for `principal` from now on (the account a sign-up made);
        `cookieless`: a client without a pass cookie may take a cookieless pass."""
        value = cookie(ctx, PASS_COOKIE) if ctx.has_cookie else None
        if value is None:
            return cookieless and self.cookieless_pass(ctx, now)  # (one keeping no cookie)
        if not pass_valid(self.hasher, value, now):
            return False
        tag = self.hasher("pk", value)
        self._cookieless_passes.withdraw(ctx, tag)  # (it keeps cookies: no twin for others)
        mark = PASS_USED + tag
        used = self.store.active_ban(mark, now)
        if used is None or rebind:
            if used is not None:
                self.store.lift(mark)  # (a ban table keeps the first owner otherwise)
            until = float(value.partition(".")[0])
            self.store.impose(Ban(mark, until, 1, principal, "pass"), now)
            return True
        return used.owner == principal

    def passed(self, principal: str, now: float) -> bool:
        """Whether this person passed a detector's challenge recently."""
        return self.store.active_ban(PASSED + principal, now) is not None

    def passed_within(self, principal: str, now: float, seconds: float) -> bool:
        """Whether this person passed a detector's challenge in the last `seconds` (as
        this process saw it)."""
        at = self._passed_at.get(principal)
        return at is not None and 0 <= now - at <= seconds

    def prior(self, key: str, now: float, within: float | None = None) -> int:
        """The level of `key`'s last detector ban if it ended within `within` seconds
        (default `bans.memory`)."""
        last = self._levels.get(key)
        if last is None or now - last[1] > (self.bans.memory if within is None else within):
            return 0
        return last[0]

    def held_before(self, subject: str, now: float) -> bool:
        """Whether a login-gate ban on `subject` (an account) ran within `bans.memory`
        (as this process saw it)."""
        last = self._levels.get(GATE + subject)
        return last is not None and now - last[1] <= self.bans.memory

    def _escalate(self, key: str, now: float) -> int:
        """The level of the next detector ban on `key`: one more than its last one if
        that ended less than `bans.memory` ago (or is still running), else 1. Kept in
        process, bounded (the store keeps the bans themselves)."""
        levels = self._levels
        last = levels.get(key)
        if last is None:
            if len(levels) >= IP_CACHE_MAX:
                levels.popitem(last=False)
            return 1
        levels.move_to_end(key)
        level, until = last
        return level + 1 if now - until <= self.bans.memory else 1

    def _log_detection(self, finding: Finding, enforced: bool, now: float) -> None:
        """One log line per detector and subject kind a minute (telemetry has them all)."""
        name = finding.detector
        last = self._detections_logged.get(name)
        if last is not None and now - last < 60.0:
            return
        if len(self._detections_logged) >= _ENDPOINTS_MAX:
            self._detections_logged.clear()
        self._detections_logged[name] = now
        evidence = ", ".join(f"{k}={v}" for k, v in finding.evidence.items())
        log.warning(
            "apiguard: %s detected %s (%s); %s%s",
            name,
            finding.subject,
            evidence,
            finding.action
            if enforced
            else (finding.unenforced or f"monitor mode, would {finding.action}"),
            " (logged at most once a minute per detector; every one is in the "
            "apiguard.detections metric)",
        )


def _defined_in(kind: type, name: str) -> type | None:
    """The class of `kind`'s method resolution order that defines `name`."""
    return next((k for k in kind.__mro__ if name in vars(k)), None)
