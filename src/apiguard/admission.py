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
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from apiguard.decision import Policy
from apiguard.responses import ratelimit_state
from apiguard.rules import CredentialChurnRule, FlowRule, Rule, WindowRule
from apiguard.store.base import AdmittingStore, Hit, Op, Store
from apiguard.store.redis_cover import cover_tags
from apiguard.window import WindowSpec

if TYPE_CHECKING:
    from apiguard.request import RequestContext

# What each compiled rate is charged to.
_PRINCIPAL, _IP, _CHURN, _OTHER = range(4)

Admit = Callable[..., "tuple[list[tuple[int, float, int]], int] | None"]


class Admission:
    """Rules compiled for `admit`: the global rules, or the global rules followed by one
    endpoint's rules. Build it with `Admission.compile`."""

    def __init__(self, admit: Admit, advertise: bool) -> None:
        self._admit = admit
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
        `admit`. Rules compile when their subject and cost are known without calling the
        app's code (callables could see a request twice: once here, once on fall-back)
        and they charge when admitted (not a `completes=False` step).
        """
        if not isinstance(store, AdmittingStore):
            return None
        if not store.local and not getattr(store, "admits_without_io", False):
            return None  # (a remote store's `admit` would wait on the network)
        admit_owner = _defined_by(type(store), "admit")
        execute_owner = _defined_by(type(store), "execute")
        if admit_owner is None or execute_owner is None:
            return None
        if not issubclass(admit_owner, execute_owner):
            return None
        plan = cls(store.admit, advertise)
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
        if getattr(store, "covers", False):
            covers = cover_tags(plan.rates)
            if covers:  # (`RedisStore.admit`: covered windows are charged later)
                admit: Any = store.admit
                plan._admit = functools.partial(admit, covers=covers)
        return plan

    def try_admit(
        self, ctx: RequestContext, principal: str, ban_keys: tuple[str, ...], now: float
    ) -> bool:
        """Charge the rules of `ctx` (keyed on `principal`) if no key of `ban_keys` is
        banned and all fit (True); else change nothing (False)."""
        ip = ctx.ip_key
        ops: list[Op] = []
        churn: bool | None = None
        for kind, prefix, spec, cost, advertised, marker, rule, tag in self.rates:
            if kind == _PRINCIPAL:
                ops.append((prefix + principal, spec, cost, None, advertised, tag))
            elif kind == _IP:
                ops.append((prefix + ip, spec, cost, None, advertised, tag))
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
            else:
                found = rule.subject(ctx)  # type: ignore[attr-defined]
                if found is not None:
                    ops.append((prefix + found[0], spec, cost, None, advertised, tag))
        done = self._admit(ops, ban_keys, now)
        if done is None:
            return False
        results, best = done
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
        return True

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


def _defined_by(cls: type, name: str) -> type | None:
    """The class in `cls`'s MRO whose body defines `name`."""
    return next((c for c in cls.__mro__ if name in vars(c)), None)
