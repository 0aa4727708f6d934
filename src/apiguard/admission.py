"""The fast admission path: the common checkpoint in one store call.

Almost every request that reaches a checkpoint fits. For those, the rules to run (the
global rules, and those of the endpoint when it has any) are compiled once into plain
tuples, the store charges every window in one `admit` call with no per-hit objects, and
the `Hit` verdicts are made only if something later asks for them (and at once for rules
that observe the outcome). Anything else (a ban, a window that does not fit, a monitor-
mode rule that would refuse, a custom rule or a callable `per=`/`cost=`, a
`completes=False` step, a store without `admit`) goes through the general path
(`Engine._plan` -> `Store.execute` -> `Engine._conclude`), which reports, refuses and
strikes; `admit` has then changed nothing. tests/test_fast_path.py checks that both
paths answer every request alike.

A remote store (Redis) cannot try first and change nothing: its one call per checkpoint
decides. For async callers it takes the same ops (`CallingStore.aadmit`), with each op's
strike subject, in that one call; the common admitted request ends as above, and any
other reply becomes the general path's hits and result, made from the ops, for
`Engine._conclude` (tests/test_fast_path_redis.py holds it to the general path).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from apiguard.config import BanConfig
from apiguard.decision import Policy
from apiguard.responses import ratelimit_state
from apiguard.rules import CredentialChurnRule, FlowRule, Rule, WindowRule
from apiguard.store.base import AdmittingStore, Batch, BatchResult, CallingStore, Hit, Op, Store
from apiguard.store.redis_cover import cover_tags
from apiguard.window import WindowSpec

if TYPE_CHECKING:
    from apiguard.request import RequestContext

# What each compiled rate is charged to.
_PRINCIPAL, _IP, _CHURN, _OTHER = range(4)

Admit = Callable[..., "tuple[list[tuple[int, float, int]], int] | None"]
Call = Callable[..., Awaitable["tuple[list[tuple[int, float, int]], int] | BatchResult"]]


class Admission:
    """Rules compiled for `admit`: the global rules, or the global rules followed by one
    endpoint's rules. Build it with `Admission.compile`."""

    def __init__(self, admit: Admit | None, advertise: bool, call: Call | None = None) -> None:
        self._admit = admit
        # a remote store's `aadmit` (async callers only; then `admit` is None)
        self.call = call
        self._advertise = advertise  # admitted responses carry the RateLimit fields
        # per rate, in rule order (the general path's verdict order):
        # (kind, window key prefix, spec, cost, advertised, `once` marker prefix, rule, tag)
        self.rates: list[tuple[int, str, WindowSpec, int, bool, str, Rule, int]] = []
        # tag (index in `rates`) -> (kind, rule, policy, enforced)
        self.meta: list[tuple[int, Rule, Policy, bool]] = []
        self.observed = False  # a rule observes outcomes (count="success" flows)

    @classmethod
    def compile(
        cls, rules: tuple[tuple[Rule, bool], ...], store: Store, *, advertise: bool = True
    ) -> Admission | None:
        """Compile (rule, enforced) pairs, or None when one needs the general path.

        Only for a local store whose `admit` is defined where its `execute` is, or in a
        subclass of that class: a subclass that changes `execute` (auditing, a deny list)
        must see every request, so it gets the general path until it brings its own
        `admit`; and for a remote store whose `aadmit` is so defined with respect to its
        `aexecute` (`call`: async checkpoints only, sync ones take the general path).
        Rules compile when their subject and cost are known without calling the app's
        code (callables could see a request twice: once here, once on fall-back) and
        they charge when admitted (not a `completes=False` step).
        """
        if store.local or getattr(store, "admits_without_io", False):
            if not isinstance(store, AdmittingStore) or not _owns(type(store), "admit", "execute"):
                return None
            plan = cls(store.admit, advertise)
        elif isinstance(store, CallingStore) and _owns(type(store), "aadmit", "aexecute"):
            # (a remote store's `admit` would wait on the network: `aadmit` is its call)
            plan = cls(None, advertise, store.aadmit)
        else:
            return None
        for rule, enforce in rules:
            if (
                type(rule) in (WindowRule, FlowRule)
                and isinstance(rule, WindowRule)
                and isinstance(rule.cost, int)
                and rule.consume
                and not callable(rule.per)
            ):
                kind = {"principal": _PRINCIPAL, "ip": _IP}.get(rule.per, _OTHER)
                plan.observed = plan.observed or rule.observes
                for prefix, spec, policy in zip(
                    rule.prefixes, rule.specs, rule.policies, strict=True
                ):
                    tag = len(plan.meta)
                    plan.meta.append((kind, rule, policy, enforce))
                    plan.rates.append((kind, prefix, spec, rule.cost, enforce, "", rule, tag))
            elif type(rule) is CredentialChurnRule:
                for prefix, marker, spec, policy in zip(
                    rule.prefixes, rule.marker_prefixes, rule.specs, rule.policies, strict=True
                ):
                    tag = len(plan.meta)
                    plan.meta.append((_CHURN, rule, policy, enforce))
                    plan.rates.append((_CHURN, prefix, spec, 1, enforce, marker, rule, tag))
            elif not getattr(rule, "plans_hits", True):
                continue  # a marker rule (`@guard.login`): nothing to charge
            else:
                return None
        if plan._admit is not None and getattr(store, "covers", False):
            covers = cover_tags(plan.rates)
            if covers:  # (`RedisStore.admit`: covered windows are charged later)
                admit: Any = plan._admit
                plan._admit = functools.partial(admit, covers=covers)
        return plan

    def _ops(
        self, ctx: RequestContext, principal: str, subjects: list[str | None] | None
    ) -> list[Op]:
        """The ops of `ctx`'s rates (keyed on `principal`); with `subjects`, each op's
        strike subject appended to it (what the rule's `plan` makes its hit's)."""
        ip = ctx.ip_key
        ops: list[Op] = []
        churn: bool | None = None
        for kind, prefix, spec, cost, advertised, marker, rule, tag in self.rates:
            if kind == _PRINCIPAL:
                ops.append((prefix + principal, spec, cost, None, advertised, tag))
                if subjects is not None:
                    subjects.append(principal)
            elif kind == _IP:
                ops.append((prefix + ip, spec, cost, None, advertised, tag))
                if subjects is not None:
                    subjects.append(ip if rule.strikes else None)  # type: ignore[attr-defined]
            elif kind == _CHURN:
                if churn is None:  # (`CredentialChurnRule.applies`, inlined)
                    credential = ctx.credential_key
                    churn = (
                        credential is not None
                        and not ctx.vouched
                        and ctx.principal == credential
                        and not ctx.engine.vouched_token(credential)
                    )
                if churn:
                    once = f"{marker}{ip}|{ctx.credential_key}"
                    ops.append((prefix + ip, spec, 1, once, advertised, tag))
                    if subjects is not None:  # (`CredentialChurnRule.plan`'s striker)
                        subjects.append(None if ctx.engine.shared_address(ip) else ip)
            else:
                found = rule.subject(ctx)  # type: ignore[attr-defined]
                if found is not None:
                    ops.append((prefix + found[0], spec, cost, None, advertised, tag))
                    if subjects is not None:
                        subjects.append(found[1])
        return ops

    def try_admit(
        self, ctx: RequestContext, principal: str, ban_keys: tuple[str, ...], now: float
    ) -> bool:
        """Charge the rules of `ctx` (keyed on `principal`) if no key of `ban_keys` is
        banned and all fit (True); else change nothing (False)."""
        ops = self._ops(ctx, principal, None)
        done = self._admit(ops, ban_keys, now)  # type: ignore[misc]
        if done is None:
            return False
        self._admitted(ctx, ops, *done)
        return True

    async def acheck(
        self,
        ctx: RequestContext,
        principal: str,
        ban_keys: tuple[str, ...],
        now: float,
        bans: BanConfig,
    ) -> tuple[Batch, BatchResult] | None:
        """The checkpoint of `ctx`'s rules (keyed on `principal`) in the remote store's one
        call (`call`): None when it admitted them all, fitting (as `try_admit`); else the
        general path's batch and the store's result for it, to conclude."""
        subjects: list[str | None] = []
        ops = self._ops(ctx, principal, subjects)

        def hits() -> list[Hit]:
            return self.hits(ops, subjects)

        done = await self.call(ops, subjects, ban_keys, now, bans, hits)  # type: ignore[misc]
        if isinstance(done, BatchResult):
            return Batch(done.hits, ban_keys), done
        self._admitted(ctx, ops, *done)
        return None

    def hits(self, ops: list[Op], subjects: list[str | None]) -> list[Hit]:
        """The general path's hits for `ops` (result fields unset)."""
        meta = self.meta
        out: list[Hit] = []
        for (key, spec, cost, once, _, tag), subject in zip(ops, subjects, strict=True):
            _, rule, policy, enforce = meta[tag]
            out.append(Hit(key, spec, cost, True, enforce, subject, rule, policy, once))
        return out

    def _admitted(
        self,
        ctx: RequestContext,
        ops: list[Op],
        results: list[tuple[int, float, int]],
        best: int,
    ) -> None:
        """Keep what the store admitted for `ctx` (its verdicts made only if asked for)."""
        fields = None
        if best >= 0 and self._advertise:
            policy = self.meta[ops[best][5]][2]
            remaining, reset, _ = results[best]
            fields = (policy.item_bytes, ratelimit_state(policy, remaining, reset))
        ctx.fast = (self, ops, results, fields)
        if self.observed:  # count="success" flows see the outcome, as on the general path
            charges = [h for h in self.verdicts(ctx) if h.rule.observes]
            if charges:
                ctx.charges = [*(ctx.charges or ()), *charges]

    def verdicts(self, ctx: RequestContext) -> list[Hit]:
        """What the general path would have recorded for the admitted rules."""
        if ctx.fast is None:
            return []
        _, ops, results, _ = ctx.fast
        verdicts: list[Hit] = []
        for (key, spec, cost, once, _, tag), (remaining, reset, bucket) in zip(
            ops, results, strict=True
        ):
            kind, rule, policy, enforce = self.meta[tag]
            if kind == _OTHER:
                found = rule.subject(ctx)  # type: ignore[attr-defined]
                striker = found[1] if found is not None else None
            else:
                striker = (
                    (ctx.ip_key if rule.strikes else None)  # type: ignore[attr-defined]
                    if kind == _IP
                    else ctx.ip_key
                    if kind == _CHURN
                    else ctx.principal
                )
            hit = Hit(key, spec, cost, True, enforce, striker, rule, policy, once)
            hit.fits = True
            hit.remaining = remaining
            hit.reset = reset
            hit.retry_after = 0.0
            hit.bucket = bucket
            verdicts.append(hit)
        return verdicts


def _owns(cls: type, fast: str, general: str) -> bool:
    """Whether `fast` is defined where `general` is, or in a subclass of that class: a
    subclass that changes `general` (auditing, a deny list) must see every request, so it
    gets the general path until it brings its own `fast`."""
    fast_owner = _defined_by(cls, fast)
    general_owner = _defined_by(cls, general)
    if fast_owner is None or general_owner is None:
        return False
    return issubclass(fast_owner, general_owner)


def _defined_by(cls: type, name: str) -> type | None:
    """The class in `cls`'s MRO whose body defines `name`."""
    return next((c for c in cls.__mro__ if name in vars(c)), None)
