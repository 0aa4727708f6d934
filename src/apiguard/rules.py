"""Rules are plugins: each adds hits to the request's batch and may observe the outcome.

`WindowRule` (global defaults and `@guard.limit`) and `FlowRule` (`@guard.flow`) are the
first plugins; detectors of later issues implement the same `Rule` interface.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from apiguard.config import Mode
from apiguard.decision import Policy
from apiguard.rates import Rate, parse_rates
from apiguard.request import callable_failed, identity_text
from apiguard.store.base import Hit
from apiguard.window import WindowSpec

if TYPE_CHECKING:
    from uuid import UUID

    from apiguard.request import RequestContext

PerName = Literal["principal", "ip", "route", "principal_route"]
Per = PerName | Callable[["RequestContext"], "str | int | UUID | None"]
Cost = int | Callable[["RequestContext"], int]

_ids = itertools.count(1)

_KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "QUERY"}
)
UNMATCHED = "<unmatched>"  # the route of requests no route matched: one bucket, not one per path


class Rule:
    """Plugin interface. `plan` adds hits; `observe` sees the outcome of charged hits.

    A rule with `observes = True` has `observe(hit, success, ctx)` called after the
    response for each of its hits that was charged.
    """

    name: str
    mode: Mode | None
    policies: tuple[Policy, ...] = ()
    observes: bool = False
    # while a shared store is unavailable: "closed" refuses, "open" admits, None: the
    # store's default (`store.on_failure`)
    on_store_failure: str | None = None

    def plan(self, ctx: RequestContext, hits: list[Hit], enforce: bool) -> int:
        """Append this rule's hits for `ctx`; return how many were added."""
        raise NotImplementedError

    def observe(self, hit: Hit, success: bool, ctx: RequestContext) -> None:
        """Called after the response for each charged hit of a rule with `observes = True`."""


def _windows(
    name: str, rates: tuple[Rate, ...], buckets: int
) -> tuple[tuple[WindowSpec, ...], tuple[Policy, ...]]:
    """A window spec and an advertised policy per rate (policy "name.60s" when several)."""
    many = len(rates) > 1
    specs = tuple(WindowSpec(r.amount, r.window, buckets) for r in rates)
    policies = tuple(
        Policy(f"{name}.{r.label}" if many else name, r.amount, r.window) for r in rates
    )
    return specs, policies


def _validate_name(name: str) -> str:
    if (
        not name
        or len(name) > 64
        or any(c in name for c in '"\\')
        or not all(" " <= c <= "~" for c in name)
    ):
        raise ValueError(f"rule name {name!r}: 1-64 printable ASCII characters, no quotes or '\\'")
    return name


class WindowRule(Rule):
    """`rates` per subject, where the subject is chosen by `per`."""

    def __init__(
        self,
        name: str,
        rates: str,
        *,
        per: Per = "principal",
        cost: Cost = 1,
        mode: Mode | None = None,
        consume: bool = True,
        buckets: int = 10,
        key: str | None = None,
        strikes: bool = True,
    ) -> None:
        self.name = _validate_name(name)
        self.rates: tuple[Rate, ...] = parse_rates(rates)
        if not callable(per) and per not in ("principal", "ip", "route", "principal_route"):
            raise ValueError(
                f"per={per!r}: use 'principal', 'ip', 'route', 'principal_route' or a callable"
            )
        if isinstance(cost, bool) or not (callable(cost) or (isinstance(cost, int) and cost >= 0)):
            raise ValueError(f"cost={cost!r}: a non-negative integer or a callable")
        if isinstance(cost, int):
            too_big = [r.text for r in self.rates if cost > r.amount]
            if too_big:
                raise ValueError(f"cost={cost} exceeds the whole budget of {too_big}")
        if mode not in (None, "monitor", "enforce"):
            raise ValueError(f"mode={mode!r}: use 'monitor' or 'enforce'")
        self.per = per
        self.cost = cost
        self.mode = mode
        self.consume = consume
        # whether refusals strike the subject (escalating to a ban); a per-IP limit on one
        # route does not: an office NAT shares the address (the global per-IP rule does)
        self.strikes = strikes
        self.specs, self.policies = _windows(self.name, self.rates, buckets)
        self.key = key or f"r{next(_ids)}"
        self.prefixes = tuple(f"{self.key}.{i}|" for i in range(len(self.specs)))

    def subject(self, ctx: RequestContext) -> tuple[str, str | None] | None:
        """(bucket subject, strike subject) for per= other than principal and ip (which
        the callers resolve inline), or None to skip the rule."""
        per = self.per
        if per == "route":
            return "*", None
        if per == "principal_route":
            p = ctx.principal or ctx.ip_key
            method = ctx.method
            if method not in _KNOWN_METHODS:
                method = "OTHER"  # client-chosen strings must not mint new buckets
            elif method == "HEAD":
                method = "GET"  # HEAD is a GET without the body
            return f"{p}@{method} {ctx.route or UNMATCHED}", p
        if not callable(per):  # "principal" and "ip" never reach here
            raise AssertionError(f"per={per!r} is resolved by the caller")
        try:
            value = per(ctx)
        except Exception as exc:  # counted against the caller's principal, never skipped
            callable_failed(ctx.engine, f"per= of rule {self.name!r}", exc)
            return ctx.principal or ctx.ip_key, None
        if value is None:
            return None
        key = identity_text(value, ctx.engine, f"per= of rule {self.name!r}")
        if key is None:  # not a key (reported once): the principal's budget, not a fresh one
            return ctx.principal or ctx.ip_key, None
        return ctx.engine.hasher("c", key), None

    def plan(self, ctx: RequestContext, hits: list[Hit], enforce: bool) -> int:
        """One hit per rate, keyed on this rule and the subject."""
        per = self.per
        subject: str
        striker: str | None
        if per == "principal":
            subject = striker = ctx.principal or ctx.ip_key
        elif per == "ip":
            subject = ctx.ip_key
            striker = subject if self.strikes else None
        else:
            found = self.subject(ctx)
            if found is None:
                return 0
            subject, striker = found
        cost = self.cost
        if not isinstance(cost, int):
            try:
                cost = cost(ctx)
            except Exception as exc:  # the request still costs one unit
                callable_failed(ctx.engine, f"cost= of rule {self.name!r}", exc)
                cost = 1
            if isinstance(cost, bool) or not isinstance(cost, int) or cost < 0:
                callable_failed(
                    ctx.engine,
                    f"cost= of rule {self.name!r}",
                    ValueError(f"returned a {type(cost).__name__}, not a non-negative int"),
                )
                cost = 1
        consume = self.consume
        if len(self.prefixes) == 1:  # the common case without zip(): ~0.2 µs a rule, measured
            hits.append(
                Hit(
                    self.prefixes[0] + subject,
                    self.specs[0],
                    cost,
                    consume,
                    enforce,
                    striker,
                    self,
                    self.policies[0],
                )
            )
            return 1
        for prefix, spec, policy in zip(self.prefixes, self.specs, self.policies, strict=True):
            hits.append(Hit(prefix + subject, spec, cost, consume, enforce, striker, self, policy))
        return len(self.specs)


class FlowRule(WindowRule):
    """A sensitive business flow: `rates` completed flows per subject.

    `count="attempt"` charges every call; `count="success"` reserves one unit before the
    handler runs (so N concurrent calls at limit-1 admit one) and gives it back when the
    response is not a success. A step with `completes=False` only requires budget to be
    left and charges nothing, so a two-endpoint sign-up counts once per completed flow.
    """

    def __init__(
        self,
        name: str,
        rates: str,
        *,
        per: Per = "principal",
        count: Literal["attempt", "success"] = "attempt",
        completes: bool = True,
        mode: Mode | None = None,
        buckets: int = 10,
        strikes: bool = True,
    ) -> None:
        if count not in ("attempt", "success"):
            raise ValueError(f"count={count!r}: use 'attempt' or 'success'")
        super().__init__(
            name,
            rates,
            per=per,
            cost=1,
            mode=mode,
            consume=completes,
            buckets=buckets,
            key=f"flow:{name}",
            strikes=strikes,
        )
        self.count = count
        self.completes = completes
        self.observes = count == "success" and completes
        # a read (GET, HEAD, OPTIONS) of a route that also takes a write counts too
        # (`@guard.flow(count_reads=True)`); else such a read spends none (a form's page)
        self.count_reads = False
        # the flows whose completion finishes this one, and how many may be left
        # unfinished (`@guard.flow(finished_by=..., unfinished=...)`, `detectors.unfinished`)
        self.finished_by: tuple[str, ...] = ()
        self.unfinished = 0
        self.longest = max(spec.window for spec in self.specs)  # (its longest window)

    def observe(self, hit: Hit, success: bool, ctx: RequestContext) -> None:
        """Refund the reservation of a flow that did not succeed."""
        if not success and hit.consume and hit.fits:
            ctx.engine.store.refund(hit.key, hit.spec, hit.bucket, hit.cost)


class CredentialChurnRule(Rule):
    """New API keys / bearer tokens one IP may introduce, while the app has not vouched.

    An API key or token the app never confirmed (no `identify()`, no resolver) is only a
    string the client chose: one made up per request would be a fresh principal with a
    fresh budget every time. Each IP may therefore introduce at most `rates` distinct
    unvouched credentials per window (a credential counts once per window, the first time
    that IP shows it). Past that, requests with new unvouched credentials are refused, and
    each refusal is a strike against the IP: a flood of made-up credentials ends in a ban
    of its source, while an office NAT of honest API-key users, below the limit, is never
    refused. Credentials the app vouched for never count.
    """

    def __init__(self, rates: str, *, mode: Mode | None = None, buckets: int = 10) -> None:
        self.name = "new-credentials-per-ip"
        self.mode = mode
        self.rates = parse_rates(rates)
        self.specs, self.policies = _windows(self.name, self.rates, buckets)
        # window key = prefix + IP key; `once` marker = marker prefix + IP key + "|" + credential
        self.prefixes = tuple(f"g.newcred.{i}|" for i in range(len(self.specs)))
        self.marker_prefixes = tuple(f"seen.{i}|" for i in range(len(self.specs)))

    @staticmethod
    def applies(ctx: RequestContext) -> bool:
        """Whether the request is keyed on a credential the app has not vouched for (on
        this request, nor on an earlier one that carried it as its bearer token)."""
        credential = ctx.credential_key
        return (
            credential is not None
            and not ctx.vouched
            and ctx.principal == credential
            and not ctx.engine.vouched_token(credential)
        )

    def plan(self, ctx: RequestContext, hits: list[Hit], enforce: bool) -> int:
        """One distinct-counting hit per rate, for requests keyed on an unvouched credential."""
        if not self.applies(ctx):
            return 0
        ip = ctx.ip_key
        # (an address people log in from, an office's NAT after a restart with everyone's
        # stale token: refused past the limit, never banned for it)
        striker = None if ctx.engine.shared_address(ip) else ip
        for prefix, marker, spec, policy in zip(
            self.prefixes, self.marker_prefixes, self.specs, self.policies, strict=True
        ):
            hits.append(
                Hit(
                    prefix + ip,
                    spec,
                    1,
                    True,
                    enforce,
                    striker,  # refusals strike the IP: a flood of made-up keys ends in its ban
                    self,
                    policy,
                    f"{marker}{ip}|{ctx.credential_key}",
                )
            )
        return len(self.specs)
