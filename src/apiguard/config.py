"""Configuration models. Every setting is validated at start-up; an error names the field."""

from __future__ import annotations

import importlib
import ipaddress
import math
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from apiguard.errors import ConfigurationError, from_validation_error
from apiguard.rates import parse_rates

if TYPE_CHECKING:
    from typing_extensions import Self

Mode = Literal["monitor", "enforce"]

YEAR = 31_536_000.0  # the bound of every duration setting (and so of a ban's Retry-After)

# Networks this wide cannot be a set of proxies: trusting them lets any client write its
# own address into the forwarding header (and get a victim's address banned).
_MIN_V4_PREFIX = 8  # 10.0.0.0/8 is the widest private range
_MIN_V6_PREFIX = 7  # fc00::/7 (unique local addresses) likewise
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")

# Headers that cannot hold an API key: credentials apiguard reads otherwise (cookie,
# authorization), headers set by proxies or naming the client address, and headers every
# client sends (one value shared by many callers would make them one principal).
_NOT_KEY_HEADERS = frozenset(
    {
        "cookie",
        "authorization",
        "proxy-authorization",
        "host",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-port",
        "x-real-ip",
        "via",
        "user-agent",
        "accept",
        "accept-encoding",
        "accept-language",
        "content-type",
        "content-length",
        "connection",
        "transfer-encoding",
        "te",
        "upgrade",
        "origin",
        "referer",
    }
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _check_rate(value: str | None) -> str | None:
    if value is not None:
        parse_rates(value)  # raises ValueError with the offending text
    return value


class DefaultLimits(_Model):
    """Global limits applied to every request, routed or not (404s count too).

    `principal`: one budget per principal across the whole API.
    `ip`: one budget per client IP (or IP network, see `ClientIPConfig`); keep it high,
    because offices and mobile carriers put many people behind one address.
    `route`: one budget per (principal, method, route template), so each operation has its
    own; requests no route matched share one bucket (never one per concrete path).
    Each is a `limits` rate string, stackable ("100/minute;2000/day"), or None for off.
    """

    principal: str | None = "600/minute"
    ip: str | None = "3000/minute"
    route: str | None = None
    mode: Mode | None = None

    @field_validator("principal", "ip", "route")
    @classmethod
    def _rates(cls, value: str | None) -> str | None:
        return _check_rate(value)


class ClientIPConfig(_Model):
    """How the client address is found. By default no proxy is trusted.

    `unix_socket_proxy`: the server listens on a unix socket behind a local proxy (uvicorn
    `--uds` behind nginx), so requests have no peer address; trust that proxy's header.
    """

    trusted_proxies: tuple[str, ...] = ()
    proxy_header: Literal["x-forwarded-for", "forwarded"] = "x-forwarded-for"
    ipv4_prefix: int = Field(32, ge=8, le=32)
    ipv6_prefix: int = Field(64, ge=16, le=128)
    unix_socket_proxy: bool = False

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: object) -> tuple[str, ...]:
        if isinstance(value, str):
            value = tuple(v for v in (p.strip() for p in value.split(",")) if v)
        if not isinstance(value, list | tuple):
            raise ValueError("expected a list of networks such as ['10.0.0.0/8']")
        return tuple(str(_proxy_network(str(item))) for item in value)


class IdentityConfig(_Model):
    """Where a principal comes from when the app did not call `identify()`.

    `new_credentials_per_ip`: how many distinct API keys / tokens that the app has not
    vouched for (via `identify()` or the resolver) one IP may introduce per window; made-up
    keys would otherwise each get a fresh budget. None turns the check off.
    """

    api_key_headers: tuple[str, ...] = ("x-api-key",)
    bearer_tokens: bool = True
    new_credentials_per_ip: str | None = "100/hour"

    @field_validator("new_credentials_per_ip")
    @classmethod
    def _churn_rate(cls, value: str | None) -> str | None:
        return _check_rate(value)

    @field_validator("api_key_headers", mode="before")
    @classmethod
    def _lower(cls, value: object) -> tuple[str, ...]:
        if isinstance(value, str):
            value = tuple(p for p in value.split(","))
        if not isinstance(value, list | tuple):
            raise ValueError("expected a list of header names")
        names = tuple(str(v).strip().lower() for v in value)
        for name in names:
            if not name or any(c in name for c in " :\r\n\t"):
                raise ValueError(f"{name!r} is not a valid header name")
            if name in _NOT_KEY_HEADERS:
                raise ValueError(_not_a_key_header(name))
        return names


class BanConfig(_Model):
    """AppSensor-style escalation: throttle, then ban for `base`, doubling up to `max`.

    A principal whose requests are refused `after` times within `within` seconds is banned
    (403) for `base` seconds; each further ban starting within `memory` seconds of the end
    of the previous one multiplies the duration by `factor`, capped at `max`.

    `strict_ip`: refuse every request from a banned IP before routing, whatever cookie or
    API key it carries. Off by default, so that people signed in behind the same NAT are
    not banned with an anonymous abuser; then a banned IP that sends a cookie or a made-up
    key is refused at the checkpoint instead (an undecorated handler runs first).
    """

    enabled: bool = True
    after: int = Field(20, ge=1, le=1_000_000)
    within: float = Field(60.0, gt=0, le=YEAR)
    base: float = Field(60.0, gt=0, le=YEAR)
    factor: float = Field(2.0, ge=1.0, le=1000.0)
    max: float = Field(86_400.0, gt=0, le=YEAR)
    memory: float = Field(86_400.0, gt=0, le=YEAR)
    strict_ip: bool = False

    def duration(self, level: int) -> float:
        """Seconds of a ban at escalation `level` (1 for the first): `base * factor **
        (level - 1)`, capped at `max`. The exponent is capped too: past the level where
        the cap applies the power is never computed (a float power of a large level
        overflows)."""
        exponent = level - 1 if level > 1 else 0
        if exponent and self.factor > 1.0:
            try:
                reach = math.log(self.max / self.base) / math.log(self.factor)
            except (ValueError, ZeroDivisionError, OverflowError):  # max/base 0 or inf
                reach = 0.0 if self.max <= self.base else math.inf
            if exponent > reach:
                return self.max
            try:
                return min(self.base * self.factor**exponent, self.max)
            except OverflowError:
                return self.max
        return min(self.base, self.max)


class StoreConfig(_Model):
    """Bounds of the in-process store (every table is capped), and how a shared store
    (`Guard(store="redis://...")`) is used.

    `prefix`: the Redis key prefix (one Cluster hash tag: `{prefix}:...`).
    `timeout`: seconds a store call may take before the request falls back.
    `breaker`: seconds a failed store is left alone before one call probes it.
    `on_failure`: what rules do while the store is unavailable: "open" admits (the
    default), "closed" refuses; a decorator's `on_store_failure=` overrides it per rule.
    `lease`: Redis only: admit from quota leases a worker holds on each window (most
    requests decided without a round trip; the window's bound is kept exactly);
    `lease_life`: seconds a lease lasts at most (it also ends with its window's bucket;
    bans reach a worker admitting from leases with its flushes, not when they end).
    """

    max_keys: int = Field(200_000, ge=100)
    window_buckets: int = Field(10, ge=2, le=120)
    prefix: str = Field("apiguard", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    timeout: float = Field(0.05, gt=0, le=60.0)
    breaker: float = Field(5.0, gt=0, le=3600.0)
    on_failure: Literal["open", "closed"] = "open"
    # quota leases on Redis (a prototype, off by default; see the README's "Quota leases")
    lease: bool = False
    lease_life: float = Field(5.0, gt=0, le=60.0)


DetectorAction = Literal["block", "challenge", "throttle"]


def route_floors(value: dict[str, int]) -> dict[str, int]:
    """A detector's per-route floors: route templates, each 0 (off) or more."""
    for template, floor in value.items():
        if not template.startswith("/"):
            raise ValueError(
                f"{template!r} is not a route template: it starts with '/' (as the app's "
                "router declares it: '/orders/{id}' on FastAPI, '/orders/<int:id>' on Flask "
                "and Django)"
            )
        if floor < 0:
            raise ValueError(f"the floor of {template!r} must be 0 (off) or more")
    return value


class _Detector(_Model):
    """What every detector has: on or off, its own mode (None: the guard's) and what it
    does when it fires: "block" (403 for an escalating ban duration), "throttle" (429 with
    Retry-After for the same duration) or "challenge" (403 whose problem type asks for the
    app's own challenge; `Guard.challenge_passed()` lifts it)."""

    enabled: bool = True
    mode: Mode | None = None


class AccountTakeoverConfig(_Detector):
    """Login abuse, from the outcomes `@guard.login` / `guard.login_result` report.

    - one actor, many accounts: per client IP, principal, network (/24, /64) and client
      fingerprint, the distinct usernames that failed within `window` (`network_window`
      for a network) and were never logged in to from that actor in it (a typo its owner
      then got right does not count); the actor is blocked when at least
      `usernames_per_actor` (`usernames_per_network` for a network or a fingerprint, which
      many people share) did AND they are at least `failed_share` of the distinct
      usernames it tried (an office's people log most of theirs in);
    - many actors, one account: `account_failures` failures on one username within
      `window` put the account under protection for `account_protect_for` seconds
      (doubling while the failures go on): a client without that account's device cookie
      (set on each successful login) must pass a challenge; a known device never is;
    - distributed stuffing: when the login failure share over `population_window` is
      above `failure_share_floor` and `population_factor` times its own learned baseline,
      with at least `population_min_failures` failures, every client without a device
      cookie for the account it tries must pass a challenge until it calms down. Stuffing
      is many sources: one address adds at most `population_source_failures` failures a
      half window to that count, and there is no alarm before failures came from
      `population_min_sources` distinct networks (/24, /64) — which also holds before any
      baseline is learned (a fresh deployment), when the floor is all there is. Also
      when, over a half window, the distinct usernames that failed and were not logged in
      to in it are at least `unresolved_share_floor` and `population_factor` times their
      learned baseline share of the distinct usernames tried (people get their typos
      right; a stuffer's guesses stay failed, however few of the attempts they are).
    """

    action: Literal["block", "throttle"] = "block"
    window: float = Field(3600.0, gt=0, le=YEAR)
    usernames_per_actor: int = Field(8, ge=2)
    usernames_per_network: int = Field(25, ge=2)
    # a network's (/24, /64) usernames are counted over this longer window: stuffing spread
    # over a few networks, each kept under the floor an hour, still adds up
    network_window: float = Field(86_400.0, gt=0, le=YEAR)
    failed_share: float = Field(0.5, gt=0, le=1)
    account_failures: int = Field(8, ge=1, le=100)
    account_protect_for: float = Field(900.0, gt=0, le=YEAR)
    account_action: DetectorAction = "challenge"
    population_window: float = Field(1800.0, gt=0, le=YEAR)
    population_min_failures: int = Field(20, ge=1)
    population_source_failures: int = Field(3, ge=1)
    population_min_sources: int = Field(10, ge=1)
    failure_share_floor: float = Field(0.4, gt=0, le=1)
    unresolved_share_floor: float = Field(0.25, gt=0, le=1)
    population_factor: float = Field(2.0, ge=1)
    population_action: DetectorAction = "challenge"
    device_cookie: str = "apiguard_device"
    device_days: float = Field(90.0, gt=0, le=365)


class BolaConfig(_Detector):
    """Object-level enumeration (OWASP API1): per principal and route template, the
        distinct object identifiers touched within `window` (path parameters, and the query
        parameters named in `query_params`), compared with the population's own distribution
        on that route: flagged above `percentile` times `factor` once `min_principals` have
        been seen, never below `floor` nor above `ceiling` (a per-route floor in `routes` wins);
    before that, above `warmup_floor`. Also flagged: a
        sequential walk (`sequential_run` steps of one constant stride), at least
        `errors_floor` distinct objects of which `error_share` were answered 403/404, and a
        principal's walk sustained under the bar: `sustained_factor` times it within
        `sustained_window`."""

    action: Literal["block", "throttle"] = "block"
    # for a user the app vouched for (`identify()`): a person asked to pass the app's
    # challenge, who then gets four times the bar (a buyer reading all of their own
    # orders), and is blocked past that; a bot does not pass
    person_action: DetectorAction = "challenge"
    window: float = Field(600.0, gt=0, le=YEAR)
    warmup_floor: int = Field(40, ge=2)
    floor: int = Field(30, ge=2)
    percentile: float = Field(90.0, gt=0, le=100)
    factor: float = Field(4.0, ge=1)
    min_principals: int = Field(10, ge=1)
    ceiling: int = Field(300, ge=2)  # the learned threshold never exceeds it
    sequential_run: int = Field(15, ge=3)
    # an account born in a sign-up (see `apiguard.detectors.bola`) within `young_for` is
    # flagged past `young_floor` objects on a route (unless the route has its own floor)
    young_floor: int = Field(10, ge=1)
    young_for: float = Field(86_400.0, gt=0, le=YEAR)
    # once this many young accounts were flagged within `young_for` (as one process saw
    # them) and did not pass the challenge since, each new account gets `person_action`
    # at sign-up: held on object routes until it passes
    young_alarm: int = Field(1, ge=1, le=64)
    # while nobody has passed a challenge in this process (an app whose challenge flow
    # is missing or unused refuses the people it asks), a flag arms the alarm this long
    # only, not `young_for`
    young_alarm_for: float = Field(3600.0, gt=0, le=YEAR)
    # a harvest over fresh accounts each under the young floor: once the young accounts
    # that read 30% of `young_floor` more objects than they wrote read this many distinct
    # objects within an hour (and twice their usual number plus half this), each one
    # that reads is flagged and the alarm above armed (0: off)
    young_crowd: int = Field(50, ge=0)
    errors_floor: int = Field(15, ge=2)
    error_share: float = Field(0.5, gt=0, le=1)
    # a slow walk, under the bar in every `window`, sustained: a principal's distinct
    # objects on a route within `sustained_window`, flagged past `sustained_factor` times
    # the route's bar (counted from when its `window` holds a quarter of the bar, or 4
    # objects if that is fewer)
    sustained_window: float = Field(10_800.0, gt=0, le=YEAR)
    sustained_factor: float = Field(1.2, ge=1)
    query_params: tuple[str, ...] = ()
    # route template -> its own floor (an integration that reads every one of its own
    # invoices legitimately); 0 turns the detector off for that route
    routes: dict[str, int] = Field(default_factory=dict)

    @field_validator("routes")
    @classmethod
    def _route_floors(cls, value: dict[str, int]) -> dict[str, int]:
        return route_floors(value)


class RotationConfig(_Detector):
    """One principal (user, API key, bearer token; not an IP) seen from more distinct
    provider-sized networks (/16, /32) within `window` than the population does: above
    `percentile` times `factor` of the principals seen, never below `floor`, and from at
    least `fingerprints` distinct client shapes (a phone hopping across its carrier's NAT
    pool is one shape), or `lone` times that many networks with fewer shapes (a thief
    using a key while its owner is idle). A stolen key used from everywhere; requests from
    the principal's home (a /24 and client shape it used a quarter window apart) are not
    held by the ban."""

    action: Literal["block", "throttle"] = "block"
    window: float = Field(3600.0, gt=0, le=YEAR)
    floor: int = Field(12, ge=2)
    fingerprints: int = Field(2, ge=1)
    lone: float = Field(2.0, ge=1)
    # up to this many client shapes on a flagged principal, only the shape that rotated is
    # banned (the owner's software goes on); more, the principal is, but at its home
    per_shape: int = Field(3, ge=0)
    # a principal's first places (/24 + client shape) answered below 400 become its home
    # a quarter window after first seen: a ban on the whole principal does not hold there
    homes: int = Field(3, ge=0, le=16)
    # and only from at least this many regions (/8, IPv6 /20): a carrier's NAT pool spans
    # many /16s in a few of them; residential proxies are everywhere
    spread: int = Field(6, ge=1)
    percentile: float = Field(99.0, gt=0, le=100)
    factor: float = Field(3.0, ge=1)
    min_principals: int = Field(30, ge=1)
    ceiling: int = Field(40, ge=2)  # the learned threshold never exceeds it


class ReconConfig(_Detector):
    """Reconnaissance (OWASP API9): an actor (user, API key, else address) asking for
    `floor` distinct paths that no route serves (answered 404 or 405) within `window`: a
    client learning the API by probing (see `apiguard.detectors.recon`)."""

    action: Literal["block", "throttle"] = "block"
    person_action: DetectorAction = "challenge"
    # an hour: a scan that waits out its ban is judged again on what it probed before
    window: float = Field(3600.0, gt=0, le=YEAR)
    floor: int = Field(30, ge=2)


class FlowGroupsConfig(_Detector):
    """Many principals completing one flow from one client fingerprint or /24 network:
    flagged when at least `floor` did within `window`, and they are at least `min_share`
    of the group's active principals and `factor` times the population's share (see
    `apiguard.detectors.flow_groups`). The group is refused that flow. A surge of new
    accounts completing a flow (`surge_floor`) gets `surge_action` (a challenge)."""

    action: Literal["block", "throttle"] = "throttle"
    # what a flagged group's members get where people can pass a challenge (the app
    # declared `challenge_path`, or somebody passed one): "challenge", a member with a
    # pass that answers for it completes the flow (one pass, one account: a farm's
    # solved CAPTCHA lets one by); elsewhere, and with "throttle" / "block", `action`
    person_action: DetectorAction = "challenge"
    window: float = Field(3600.0, gt=0, le=YEAR)
    floor: int = Field(8, ge=2)
    min_share: float = Field(0.5, gt=0, le=1)
    factor: float = Field(3.0, ge=1)
    # how long an account born in a burst of sign-ups (`floor` in one network within
    # `window`) is refused a flow its burst was flagged for: a farm that waits out the
    # window before it redeems is still told by where its accounts were born
    young_for: float = Field(86_400.0, gt=0, le=YEAR)
    # flows (their `@guard.flow` names) this detector does not watch: a social action
    # (favorite, follow) that colleagues behind one office address all take is no farm
    ignore_flows: tuple[str, ...] = ()
    # a surge of new accounts completing a flow (a farm from rotating addresses and
    # client shapes): distinct accounts younger than `young_for` (a sign-up's newborn
    # too) completing it within `window`, at `surge_floor` on top of the flow's learned
    # level and `surge_factor` times it; while it lasts, new accounts and anonymous
    # clients must pass the app's challenge to complete it (0: off)
    surge_floor: int = Field(20, ge=0)
    surge_factor: float = Field(3.0, ge=1)
    # what the held clients get: "challenge" (only where people can pass one: the app
    # declared `challenge_path` or somebody passed; elsewhere the surge is reported
    # only), or "throttle" / "block" (a 429 / 403 until the surge ends, challenge route
    # or not: an app with no challenge flow stops a farm, and every newcomer with it)
    surge_action: DetectorAction = "challenge"
    # the surge's own window (counted over, learned once per): an hour, whatever
    # `window` the groups are judged over
    surge_window: float = Field(3600.0, gt=0, le=86_400.0)

    @field_validator("surge_floor")
    @classmethod
    def _surge_floor(cls, value: int) -> int:
        if 0 < value < 5:
            raise ValueError(
                "surge_floor must be 0 (off) or at least 5: a handful of new accounts "
                "an hour is any app's ordinary traffic"
            )
        return value


class ScrapingConfig(_Detector):
    """Anonymous reads of one route from new addresses, against the route's own learned
    level (see `apiguard.detectors.scraping`): a route is under a scraping surge when the
    reads (GET, HEAD) there within `window` by anonymous clients at addresses first
    answered less than `new_for` ago reach `floor` on top of the route's learned baseline
    and `factor` times it, and most of those addresses (`one_shot_share`) never came back. While it
    is, those reads must pass the app's challenge. `routes` sets a route's own floor
    (0: not watched)."""

    window: float = Field(1800.0, gt=0, le=YEAR)
    floor: int = Field(60, ge=2)
    factor: float = Field(3.0, ge=1)
    new_for: float = Field(1800.0, gt=0, le=YEAR)
    # and at least this share of the new addresses whose first request was such a read
    # did not come back within `settle` seconds (people browse on, log in, page further)
    one_shot_share: float = Field(0.8, gt=0, le=1)
    settle: float = Field(120.0, gt=0, le=86_400.0)
    # or, once a calm window taught the route its level, at `volume` times the threshold
    # whatever those addresses did next (a scraper reading a few pages from each address
    # browses on as people do); 0: only with the one-shot share
    volume: float = Field(1.5, ge=0)
    # distinct new addresses one pass may answer the surge's challenge from (a person's
    # phone changes a few; a solved CAPTCHA replayed by a botnet is everywhere)
    pass_addresses: int = Field(8, ge=1)
    routes: dict[str, int] = Field(default_factory=dict)
    # also count every watched route's new readers together (each address once, at its
    # first watched read), with the same floor, factor and one-shot share: a scraper that
    # deals its reads across templates (a listing, its pages, their authors' profiles) is
    # one site-wide surge, which holds new readers on every watched route
    site_wide: bool = True

    @field_validator("routes")
    @classmethod
    def _route_floors(cls, value: dict[str, int]) -> dict[str, int]:
        return route_floors(value)

    @field_validator("volume")
    @classmethod
    def _volume(cls, value: float) -> float:
        if 0 < value < 1:
            raise ValueError("volume is 0 (off) or a multiple of the threshold, at least 1")
        return value


class DetectionConfig(_Model):
    """The detectors (`apiguard.detectors`), each on by default in the guard's mode."""

    account_takeover: AccountTakeoverConfig = AccountTakeoverConfig()
    bola: BolaConfig = BolaConfig()
    rotation: RotationConfig = RotationConfig()
    flow_groups: FlowGroupsConfig = FlowGroupsConfig()
    scraping: ScrapingConfig = ScrapingConfig()
    recon: ReconConfig = ReconConfig()
    challenge_for: float = Field(3600.0, gt=0, le=YEAR)  # a passed challenge exempts this long
    # a detector's challenge (not the login's) holds until passed, at most this long: a bot
    # that waits out a shorter one would be let in again each time it ends
    challenge_hold: float = Field(86_400.0, gt=0, le=YEAR)
    # the status of a challenge: 403, or 428/429/401 for clients (a SPA that signs out on
    # any 403) that must tell it apart from a ban
    challenge_status: Literal[401, 403, 428, 429] = 403
    # the path of the app's own challenge route (where it calls `challenge_passed()`): a
    # challenged client always reaches it, even where a checkpoint runs before routing
    challenge_path: str | None = None

    @field_validator("challenge_status", mode="before")
    @classmethod
    def _challenge_status(cls, value: object) -> object:
        # (the environment gives "428": a status written as digits is that status)
        if isinstance(value, str) and value.strip().isdecimal():
            return int(value)
        return value

    @field_validator("challenge_path")
    @classmethod
    def _challenge_path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"{value!r} is not a path (e.g. '/challenge')")
        return value


class GuardConfig(_Model):
    """All of apiguard's settings: in code, from a dict, a TOML file or the environment."""

    mode: Mode = "enforce"
    secret: SecretStr | None = None
    limits: DefaultLimits = DefaultLimits()
    client_ip: ClientIPConfig = ClientIPConfig()
    identity: IdentityConfig = IdentityConfig()
    bans: BanConfig = BanConfig()
    store: StoreConfig = StoreConfig()
    detection: DetectionConfig = DetectionConfig()
    ratelimit_headers: bool = True
    success_statuses: tuple[int, int] = (200, 399)

    if not TYPE_CHECKING:  # type checkers keep the typed __init__ pydantic's plugin makes

        def __init__(self, **data: Any) -> None:
            # constructed directly (GuardConfig(mode="bogus")): the same ConfigurationError
            # as Guard(...) and the loaders, never pydantic's message (it echoes the input)
            try:
                super().__init__(**data)
            except ValidationError as exc:
                error = from_validation_error(exc)
            else:
                return
            raise error  # outside the except block: no chained error carries the input

        # Validation (model_validate, a nested section) must not run this __init__:
        # pydantic would wrap its ConfigurationError in a ValidationError echoing the whole
        # input. The same marker as pydantic's own BaseModel and RootModel __init__.
        __init__.__pydantic_base_init__ = True

    @field_validator("success_statuses", mode="before")
    @classmethod
    def _statuses_text(cls, value: object) -> object:
        if isinstance(value, str):  # "200,399" from the environment
            return tuple(p.strip() for p in value.split(","))
        return value

    @field_validator("success_statuses")
    @classmethod
    def _statuses(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if not 100 <= low <= high <= 599:
            raise ValueError("expected (low, high) HTTP statuses with 100 <= low <= high <= 599")
        return value

    @field_validator("secret")
    @classmethod
    def _secret_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 16:
            raise ValueError("secret must be at least 16 bytes")
        return value

    @model_validator(mode="after")
    def _key_headers_not_proxy_header(self) -> GuardConfig:
        proxy = self.client_ip.proxy_header
        if proxy in self.identity.api_key_headers:
            raise ValueError(f"identity.api_key_headers: {_not_a_key_header(proxy)}")
        return self

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Self:
        """pydantic's `model_validate`, raising `ConfigurationError` (see `load`)."""
        return cls.load(obj, "", **kwargs)

    @classmethod
    def load(cls, data: Any, source: str = "", **kwargs: Any) -> Self:
        """Validate `data` (a mapping of settings; `source` says where it came from).

        Errors are `ConfigurationError`s that name each setting; they never echo the
        `secret` (pydantic's messages never show the input; a check of apiguard's own may
        quote a value that is no secret: a rate, a network, a header name, a template).
        """
        try:
            return super().model_validate(data, **kwargs)
        except ValidationError as exc:
            error = from_validation_error(
                exc, f"invalid apiguard configuration{f' in {source}' if source else ''}"
            )
        raise error  # outside the except block: no chained ValidationError carries the input

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], table: str = "apiguard") -> GuardConfig:
        """Load `[apiguard]` (or `table`; "" for the whole file) from a TOML file."""
        try:  # tomllib from Python 3.11; the tomli package before
            toml = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")
        except ModuleNotFoundError:
            raise RuntimeError(
                "reading TOML on Python 3.10 needs the tomli package (pip install tomli)"
            ) from None
        where = os.fspath(path)
        with open(path, "rb") as handle:
            try:
                data: Any = toml.load(handle)
            except ValueError as exc:  # tomllib.TOMLDecodeError: position only, no content
                raise ConfigurationError(f"{where} is not valid TOML: {exc}") from None
        for part in table.split(".") if table else ():
            if not isinstance(data, dict) or part not in data:
                raise ConfigurationError(f"{where} has no [{table}] table")
            data = data[part]
        if not isinstance(data, dict):
            raise ConfigurationError(f"{where}: [{table}] is a value, not a table")
        return cls.load(data, where)

    @classmethod
    def from_env(
        cls, prefix: str = "APIGUARD_", environ: Mapping[str, str] | None = None
    ) -> GuardConfig:
        """Load settings from variables such as `APIGUARD_MODE=monitor`,
        `APIGUARD_LIMITS__PRINCIPAL=100/minute` (`__` nests) and
        `APIGUARD_CLIENT_IP__TRUSTED_PROXIES=10.0.0.0/8,192.168.0.0/16` (commas list).
        `none` or an empty value means None. Only the process environment is read, not a
        `.env` file: load that first (python-dotenv, or pydantic-settings) if the app
        keeps its settings there."""
        env = os.environ if environ is None else environ
        data: dict[str, Any] = {}
        for name, raw in env.items():
            if not name.upper().startswith(prefix.upper()):
                continue
            path = name[len(prefix) :].lower().split("__")
            node = data
            for part in path[:-1]:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise ConfigurationError(f"{name}: {part} is a value, not a section")
                node = child
            node[path[-1]] = None if raw.strip().lower() in ("", "none", "null") else raw
        return cls.load(data, f"the environment ({prefix}*)")


def _proxy_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A trusted proxy network, refused if it is too wide to be one and converted to IPv4
    if written IPv4-mapped (client addresses are compared after unmapping, so
    `::ffff:10.0.0.0/104` would never match: it means `10.0.0.0/8`)."""
    try:
        net = ipaddress.ip_network(text, strict=False)
        written = ipaddress.ip_interface(text).ip
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an IP network: {exc}") from None
    if isinstance(net, ipaddress.IPv6Network):
        mapped = getattr(written, "ipv4_mapped", None)
        if mapped is not None:
            if net.prefixlen < 96:
                raise ValueError(
                    f"{text!r}: an IPv4-mapped network needs a prefix of at least /96; "
                    "write the IPv4 network instead (e.g. '10.0.0.0/8')"
                )
            net = ipaddress.ip_network(f"{mapped}/{net.prefixlen - 96}", strict=False)
        elif net.prefixlen < 96 and net.overlaps(_MAPPED):
            raise ValueError(
                f"{text!r} covers the IPv4-mapped range ::ffff:0:0/96, which never matches "
                "(client addresses are compared as IPv4): list the IPv4 networks instead"
            )
    minimum = _MIN_V4_PREFIX if net.version == 4 else _MIN_V6_PREFIX
    if net.prefixlen < minimum:
        raise ValueError(
            f"{text!r} is too wide to be a set of proxies (prefix shorter than /{minimum}): "
            "any client could then write its own address, or a victim's, into the "
            "forwarding header; list your proxies' networks"
        )
    return net


def _not_a_key_header(name: str) -> str:
    return (
        f"{name!r} cannot hold an API key: apiguard reads it for something else, or proxies "
        "set it, or every client sends it (many callers would share one principal, or any "
        "caller could choose its own)"
    )
