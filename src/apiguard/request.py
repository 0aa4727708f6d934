"""Per-request state, client-IP and principal resolution, and `identify()`.

The adapter turns a request into a `RequestContext` once; everything else reads it. The
context is reachable from anywhere in the request (an auth dependency, a view, a
decorator) through a context variable, which is how `identify()` works without a
`request` parameter.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import uuid
import warnings
import weakref
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from apiguard.config import ClientIPConfig
from apiguard.detectors.fingerprint import fingerprint
from apiguard.errors import ConfigurationError
from apiguard.routes import route_template

if TYPE_CHECKING:
    from apiguard.admission import Admission
    from apiguard.decision import Decision
    from apiguard.detectors.base import LoginAttempt
    from apiguard.engine import Engine
    from apiguard.rules import Rule
    from apiguard.store.base import Hit, Op

IP_CACHE_MAX = 131_072  # bound of each per-client-address table
# RFC 6052 well-known NAT64 prefix: an IPv6-only client reaching an IPv4 host through a
# NAT64 gateway has this prefix followed by the IPv4 address it stands for
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# a released request's scope: read-only, so no late writer (a context copy that outlives
# its request) can put anything into a mapping every released request shares
_EMPTY_SCOPE: Mapping[str, Any] = MappingProxyType({})

log = logging.getLogger("apiguard")

# engine -> (source, type) pairs already reported by `identity_text`; bounded per engine
_reported: weakref.WeakKeyDictionary[Any, set[tuple[str, str]]] = weakref.WeakKeyDictionary()
_reported_nowhere: set[tuple[str, str]] = set()  # identify() outside a guarded request
_REPORTED_MAX = 64

Identity = str | int | uuid.UUID  # what identify() and a principal resolver may return


class KeyedHasher:
    """Keyed BLAKE2b: principals, keys and usernames are only ever kept as these hashes."""

    __slots__ = ("_keyed", "_secret")

    _KINDS_KEPT = 64  # pre-keyed states kept (apiguard's own kinds are a handful)

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the hashing secret must be at least 16 bytes")
        self._secret = secret[:64]
        # kind -> BLAKE2b state with the key block already absorbed; copying it is half the
        # cost of keying a new hash for every value (same digests)
        self._keyed: dict[str, tuple[Any, str]] = {}

    def __call__(self, kind: str, value: str | bytes) -> str:
        """`kind:<hex>`; the kind is part of the hashed input (no cross-kind collisions)."""
        data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
        keyed = self._keyed.get(kind)
        if keyed is None:
            state = hashlib.blake2b(key=self._secret, digest_size=12, person=kind.encode()[:16])
            keyed = (state, f"{kind}:")
            if len(self._keyed) < self._KINDS_KEPT:  # kinds chosen by callers stay bounded
                self._keyed[kind] = keyed
        h = keyed[0].copy()
        h.update(data)
        return keyed[1] + h.hexdigest()

    def ip(self, address: str) -> str:
        """Hash of a client address (or network); the engine keeps the bounded cache."""
        return self("ip", address)


class ClientIPResolver:
    """Finds the client address: the peer, or walking proxy headers right to left.

    Only hops added by trusted proxies are believed: starting from the TCP peer, while the
    current hop is inside `trusted_proxies`, step one entry left in the header. The first
    untrusted hop is the client. With no trusted proxy (the default) headers are ignored.
    """

    def __init__(self, config: ClientIPConfig) -> None:
        self.header = config.proxy_header.encode("latin-1")
        self._networks = [ipaddress.ip_network(n) for n in config.trusted_proxies]
        self._v4 = config.ipv4_prefix
        self._v6 = config.ipv6_prefix
        self._trust_cache: dict[str, bool] = {}
        self._group_cache: dict[str, str] = {}
        self._unix_proxy = config.unix_socket_proxy
        self.walks = bool(self._networks) or self._unix_proxy

    def forget(self) -> None:
        """Empty the per-address caches."""
        self._trust_cache.clear()
        self._group_cache.clear()

    def is_trusted(self, address: str) -> bool:
        """Whether `address` lies in a trusted proxy network."""
        hit = self._trust_cache.get(address)
        if hit is None:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                hit = False
            else:
                ip = getattr(ip, "ipv4_mapped", None) or ip
                hit = any(ip in net for net in self._networks)
            if len(self._trust_cache) >= IP_CACHE_MAX:
                self._trust_cache.clear()
            self._trust_cache[address] = hit
        return hit

    def resolve(self, peer: str | None, header_values: Iterable[str]) -> str:
        """The client address for a peer and the raw proxy header values, in order."""
        if peer is None and self._unix_proxy and self.walks:
            client = "unknown"  # a unix-socket peer: the configured local proxy
        else:
            client = peer or "unknown"
            if not self.walks or not self.is_trusted(client):
                return client
        hops = (
            _parse_forwarded(header_values)
            if self.header == b"forwarded"
            else _parse_xff(header_values)
        )
        for hop in reversed(hops):
            address = _normalise(hop)
            if address is None:
                break  # malformed entry from a trusted hop: keep the last trusted address
            client = address
            if not self.is_trusted(address):
                break
        return client

    def group(self, address: str) -> str:
        """The counting unit for an address: itself, or its /prefix network. IPv4-mapped
        (`::ffff:a.b.c.d`) and NAT64 (`64:ff9b::a.b.c.d`) addresses count as the IPv4
        address they carry (else every NAT64 client would share one /64)."""
        if ":" not in address and self._v4 == 32:
            return address
        if "%" in address:
            address = address.split("%", 1)[0]
        cached = self._group_cache.get(address)
        if cached is not None:
            return cached
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return address
        mapped = getattr(ip, "ipv4_mapped", None)
        if mapped is not None:
            ip = mapped
        elif ip.version == 6 and ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        prefix = self._v4 if ip.version == 4 else self._v6
        full = 32 if ip.version == 4 else 128
        grouped = str(ip) if prefix == full else str(ipaddress.ip_network(f"{ip}/{prefix}", False))
        if len(self._group_cache) >= IP_CACHE_MAX:
            self._group_cache.clear()
        self._group_cache[address] = grouped
        return grouped


def network_of(address: str, v4: int = 24, v6: int = 64) -> str:
    """The /v4 (IPv4) or /v6 (IPv6) network of an address, as text; IPv4-mapped and NAT64
    addresses as their IPv4 network; anything else unchanged."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        ip = mapped
    elif ip.version == 6 and ip in _NAT64:
        ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    prefix = v4 if ip.version == 4 else v6
    return str(ipaddress.ip_network(f"{ip}/{prefix}", False))


def _parse_xff(values: Iterable[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",")]


def _parse_forwarded(values: Iterable[str]) -> list[str]:
    hops: list[str] = []
    for value in values:
        for element in value.split(","):
            found = ""
            for pair in element.split(";"):
                name, _, val = pair.partition("=")
                if name.strip().lower() == "for":
                    found = val.strip().strip('"')
            hops.append(found)
    return hops


def _normalise(hop: str) -> str | None:
    """An address from a proxy hop ("1.2.3.4", "1.2.3.4:80", "[::1]:80"), else None."""
    hop = hop.strip()
    if hop.startswith("["):
        end = hop.find("]")
        hop = hop[1:end] if end > 0 else ""
    elif hop.count(":") == 1:
        hop = hop.partition(":")[0]
    hop = hop.split("%", 1)[0]  # an IPv6 zone id names a local interface, not a client
    if not hop or len(hop) > 64:
        return None
    try:
        return str(ipaddress.ip_address(hop))
    except ValueError:
        return None


class RequestContext:
    """Everything apiguard knows about one request, mutable as the request advances."""

    __slots__ = (
        "_fp",
        "_net",
        "born",
        "charges",
        "client_ip",
        "cookies",
        "credential_key",
        "credentials",
        "decision",
        "declared",
        "device_for",
        "device_ok",
        "engine",
        "fast",
        "global_done",
        "has_cookie",
        "holding",
        "ip_key",
        "login",
        "objects",
        "observed",
        "pass_key",
        "picked",
        "prechecked",
        "principal",
        "ran",
        "refused_sent",
        "scope",
        "scrape_late",
        "token_key",
        "verdicts",
        "vouched",
    )

    def __init__(
        self,
        engine: Engine,
        scope: Mapping[str, Any],
        client_ip: str,
        ip_key: str,
        credential_key: str | None,
        has_cookie: bool = False,
        credentials: tuple[str, ...] = (),
        token_key: str | None = None,
    ) -> None:
        self.engine = engine
        self.scope = scope
        self.client_ip = client_ip
        self.ip_key = ip_key
        # the credential an unvouched request is keyed on (the API key, else the bearer
        # token), and every credential the request presents (each is checked for bans)
        self.credential_key = credential_key
        self.credentials = credentials
        self.token_key = token_key  # the bearer token's (same hash as the same API key)
        self.has_cookie = has_cookie
        self.vouched = False  # the app declared or resolved the principal
        self.declared: str | None = None
        # the account this request created (account_created): its keys as identify() and
        # as a principal resolver would name it
        self.born: tuple[str, ...] = ()
        # the device key (`login.device_key`) of the account this request created
        # (`account_created(..., username=)`): its device cookie is set on a 2xx
        self.device_for: str | None = None
        # object ids the app declared this request touched (`guard.objects_touched()`,
        # `@guard.objects`), as (name, id) pairs for the BOLA detector: a list (maybe
        # empty) once declared, which also makes the request one that names objects
        self.objects: list[tuple[str, object]] | None = None
        # id(ArgumentKey) -> the flow key `@guard.flow(key=...)` read from the arguments
        self.picked: dict[int, str] | None = None
        self.principal: str | None = None
        self.global_done = False
        # the endpoint rules tuples a checkpoint of this request ran (a decorated function
        # charges its rules on every call), and those the response start ran for a
        # streaming endpoint, which its body's entry then does not charge again
        self.ran: list[tuple[Rule, ...]] | None = None
        # (flow, principal) of each `finished_by` flow this request was admitted to and
        # not yet judged (`apiguard.detectors.unfinished`: a burst counts at admission)
        self.holding: list[tuple[str, str]] | None = None
        self.prechecked: tuple[Rule, ...] | None = None
        self.decision: Decision | None = None
        self.verdicts: list[Hit] | None = None  # every evaluated hit, in order
        self.charges: list[Hit] | None = None  # charged hits whose rules observe outcomes
        # rules admitted on the fast path: (the compiled rules, ops, results, RateLimit
        # field values of the tightest advertised policy), until made into verdicts
        self.fast: (
            tuple[Admission, list[Op], list[tuple[int, float, int]], tuple[bytes, bytes] | None]
            | None
        ) = None
        self.refused_sent = False
        # a route under a scraping surge could not be told at a checkpoint that ran before
        # routing (`identify()` in a middleware): the response start asks again
        self.scrape_late = False
        # detection: the login this request reported, whether it carries the account's
        # device cookie, the key of a valid pass cookie, Set-Cookie values to add to the
        # response; network and fingerprint keys, computed when first asked
        self.login: LoginAttempt | None = None
        self.device_ok = False
        self.pass_key: str | None = None
        self.cookies: list[str] | None = None
        self.observed = False  # the detectors have seen this request's outcome
        self._net: str | None = None
        self._fp: str | None = None

    @property
    def net_key(self) -> str:
        """Keyed hash of the client's network (/24 for IPv4, /64 for IPv6)."""
        net = self._net
        if net is None:
            net = self._net = self.engine.net_key(self.client_ip)
        return net

    @property
    def site_key(self) -> str | None:
        """Keyed hash of an IPv6 client's /48 (one site's allocation, many /64s), None
        for IPv4 (its /24 is `net_key`)."""
        return self.engine.site_key(self.client_ip)

    @property
    def provider_key(self) -> str:
        """Keyed hash of the client's provider-sized network (/16 for IPv4, /32 for
        IPv6): a phone behind a carrier's NAT pool changes address, not provider."""
        return self.engine.net_key(self.client_ip, wide=True)

    @property
    def fingerprint(self) -> str:
        """Keyed hash of the client's header shape (`apiguard.detectors.fingerprint`)."""
        fp = self._fp
        if fp is None:
            engine = self.engine
            fp = self._fp = fingerprint(
                self.scope.get("headers") or (), engine.hasher, engine.fingerprints
            )
        return fp

    def checked(self, rules: tuple[Rule, ...]) -> bool:
        """Whether the global rules ran for this request, and `rules` at some checkpoint."""
        if not self.global_done:
            return False
        if not rules:
            return True
        ran = self.ran
        return ran is not None and any(done is rules for done in ran)

    def note_ran(self, rules: tuple[Rule, ...]) -> None:
        """Record that a checkpoint charged `rules`."""
        if rules:
            if self.ran is None:
                self.ran = [rules]
            else:
                self.ran.append(rules)

    def release(self) -> None:
        """Drop per-request objects once the request is over (context copies outlive it)."""
        self.scope = _EMPTY_SCOPE
        self.verdicts = None
        self.charges = None
        self.fast = None
        self.decision = None
        self.objects = None
        self.picked = None

    # -- the public, read-only view handed to custom `per=` and resolver callables ----
    @property
    def method(self) -> str:
        """The HTTP method."""
        method = self.scope.get("method", "GET")
        return method if isinstance(method, str) else "GET"

    @property
    def path(self) -> str:
        """The request path."""
        path = self.scope.get("path", "")
        return path if isinstance(path, str) else ""

    @property
    def route(self) -> str | None:
        """The route template that served the request, mount prefixes included."""
        return route_template(self.scope)

    @property
    def path_params(self) -> dict[str, Any]:
        """Path parameters the router extracted."""
        params = self.scope.get("path_params")
        return dict(params) if isinstance(params, dict) else {}

    def header(self, name: str) -> str | None:
        """First value of a request header (case-insensitive), decoded as latin-1."""
        raw = name.lower().encode("latin-1")
        for key, value in self.scope.get("headers") or ():
            if key == raw:
                return bytes(value).decode("latin-1")
        return None


def identity_text(value: object, where: Any, source: str) -> str | None:
    """The text an identity is keyed on, or None for an anonymous request.

    Identities are `str`, `int` (not `bool`) and `uuid.UUID`; `None` is anonymous. Anything
    else (a user object, bytes, a bool, a float, a list) would make every request a fresh
    principal (an object's default `str()` holds its address) or every caller one
    principal (`True`): it is a `ConfigurationError`, logged once per `source` and type
    for `where` (the engine), and the request is anonymous. An empty or blank string is
    returned as "" (callers decide: anonymous for a resolver, an error for `identify()`).
    """
    if value is None:
        return None
    if isinstance(value, str):
        # blank (whitespace only) is no id: it would merge every such caller into one
        return value if type(value) is str and value[:1].strip() else _text(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int.__repr__(value)  # an int subclass (IntEnum) as its number
    if isinstance(value, uuid.UUID):
        return str(value)
    kind = type(value)
    name = f"{kind.__module__}.{kind.__qualname__}"
    if _first_report(where, source, name):
        error = ConfigurationError(
            f"{source} returned a {name}: an identity is a str, an int or a uuid.UUID "
            "(None for anonymous), e.g. the user's id rather than the user object. The "
            "request is treated as anonymous (keyed on its API key or IP, not vouched); "
            "this is reported once per type."
        )
        log.error("apiguard: %s", error, exc_info=(ConfigurationError, error, None))
    return None


def _first_report(where: Any, source: str, name: str) -> bool:
    """Whether (`source`, `name`) is reported for the first time for `where` (bounded)."""
    try:
        seen = _reported.setdefault(where, set()) if where is not None else _reported_nowhere
    except TypeError:  # not weak-referenceable: report through the shared set
        seen = _reported_nowhere
    if (source, name) in seen or len(seen) >= _REPORTED_MAX:
        return False
    seen.add((source, name))
    return True


def callable_failed(where: Any, source: str, exc: Exception) -> None:
    """An app callable (resolver, `per=`, `cost=`) raised: log it once per exception type.
    The caller goes on without it, so the request is still counted (a raising resolver
    must not make password guesses free)."""
    kind = type(exc)
    if _first_report(where, source, f"{kind.__module__}.{kind.__qualname__}"):
        log.error(
            "apiguard: %s raised %s; the request is counted without it (reported once "
            "per exception type)",
            source,
            kind.__qualname__,
            exc_info=exc,
        )


def _text(value: str) -> str:
    """`value` as a plain str, or "" when it is blank."""
    text = str.__str__(value)
    return text if text.strip() else ""


_current: ContextVar[RequestContext | None] = ContextVar("apiguard_request", default=None)


def current_request() -> RequestContext | None:
    """The apiguard context of the request being handled, or None outside one."""
    return _current.get()


def identify(user_id: str | int | uuid.UUID | None) -> None:
    """Declare the authenticated principal of the current request.

    Call it where the app has verified who the caller is (an auth dependency, a login
    view). Checks run at this moment, before the handler body, keyed on a keyed hash of
    `user_id`; a refusal raises `apiguard.Refused`, which the middleware answers.
    `None` means anonymous: the checks run now too, keyed on the API key or IP, so an
    undecorated handler is refused before it runs. An empty id is an error (it would merge every
    anonymous caller into one principal). Any other type than `str`, `int` and
    `uuid.UUID` (a user object, bytes, a bool) is a `ConfigurationError`, logged once per
    type, and the call is ignored: the request stays anonymous.
    """
    ctx = _current.get()
    if user_id is None:
        if ctx is not None:
            ctx.engine.declare_anonymous(ctx)
        return
    text = identity_text(user_id, ctx.engine if ctx is not None else None, "identify()")
    if text is None:
        return
    if not text:
        raise ValueError("identify() needs a non-empty user id")
    if ctx is None:
        warnings.warn(
            "apiguard.identify() was called outside a request guarded by apiguard; "
            "is GuardMiddleware installed?",
            RuntimeWarning,
            stacklevel=2,
        )
        return
    ctx.engine.declare(ctx, text)
