"""The fast admission path: the global rules of the common request in one store call.

Most requests reach the checkpoint with only the global rules to run (no decorator on
the endpoint), and almost all of them fit. For those, the global rules are compiled once
into plain tuples, the store charges every window in one `admit` call with no per-hit
objects, and the `Hit` verdicts are made only if something later asks for them. Anything
else (a ban, a window that does not fit, a monitor-mode rule that would refuse, rules of
the endpoint, a custom rule among the globals, a store without `admit`) goes through the
general path (`Engine._plan` -> `Store.execute` -> `Engine._conclude`), which reports,
refuses and strikes; `admit` has then changed nothing. tests/test_fast_path.py checks
that both paths answer every request alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from apiguard.decision import Policy
from apiguard.responses import ratelimit_state
from apiguard.rules import CredentialChurnRule, Rule, WindowRule
from apiguard.store.base import AdmittingStore, Hit, Op, Store
from apiguard.window import WindowSpec

if TYPE_CHECKING:
    from apiguard.request import RequestContext

# What each compiled rate is charged to.
_PRINCIPAL, _IP, _CHURN, _OTHER = range(4)

Admit = Callable[..., "tuple[list[tuple[int, float, int]], int] | None"]


class GlobalAdmission:
    """The global rules compiled for `admit`; build it with `GlobalAdmission.compile`."""

    def __init__(self, admit: Admit, advertise: bool) -> None:
        self._admit = admit
        self._advertise = advertise  # admitted responses carry the RateLimit fields
        # (window key prefix, spec, cost, advertised, tag) per rate, by subject kind
        self.by_principal: list[tuple[str, WindowSpec, int, bool, int]] = []
        self.by_ip: list[tuple[str, WindowSpec, int, bool, int]] = []
        # (window key prefix, marker prefix, spec, advertised, tag)
        self.by_churn: list[tuple[str, str, WindowSpec, bool, int]] = []
        # (rule, window key prefix, spec, cost, advertised, tag)
        self.by_other: list[tuple[WindowRule, str, WindowSpec, int, bool, int]] = []
        # tag -> (kind, rule, policy, enforced), in the order of the global rules
        self.meta: list[tuple[int, Rule, Policy, bool]] = []

    @classmethod
    def compile(
        cls, rules: tuple[tuple[Rule, bool], ...], store: Store, *, advertise: bool = True
    ) -> GlobalAdmission | None:
        """Compile (rule, enforced) pairs, or None when one needs the general path.

        Only for a local store whose `admit` is defined where its `execute` is, or in a
        subclass of that class: a subclass that changes `execute` (auditing, a deny list)
        must see every request, so it gets the general path until it brings its own
        `admit`.
        """
        if not isinstance(store, AdmittingStore) or not store.local:
            return None
        admit_owner = _defined_by(type(store), "admit")
        execute_owner = _defined_by(type(store), "execute")
        if admit_owner is None or execute_owner is None:
            return None
        if not issubclass(admit_owner, execute_owner):
            return None
        plan = cls(store.admit, advertise)
        for rule, enforce in rules:
            if type(rule) is WindowRule and isinstance(rule.cost, int) and rule.consume:
                if callable(rule.per):
                    return None
                kind = {"principal": _PRINCIPAL, "ip": _IP}.get(rule.per, _OTHER)
                for prefix, spec, policy in zip(
                    rule.prefixes, rule.specs, rule.policies, strict=True
                ):
                    tag = len(plan.meta)
                    plan.meta.append((kind, rule, policy, enforce))
                    if kind == _PRINCIPAL:
                        plan.by_principal.append((prefix, spec, rule.cost, enforce, tag))
                    elif kind == _IP:
                        plan.by_ip.append((prefix, spec, rule.cost, enforce, tag))
                    else:
                        plan.by_other.append((rule, prefix, spec, rule.cost, enforce, tag))
            elif type(rule) is CredentialChurnRule:
                for prefix, marker, spec, policy in zip(
                    rule.prefixes, rule.marker_prefixes, rule.specs, rule.policies, strict=True
                ):
                    tag = len(plan.meta)
                    plan.meta.append((_CHURN, rule, policy, enforce))
                    plan.by_churn.append((prefix, marker, spec, enforce, tag))
            else:
                return None
        return plan

    def try_admit(
        self, ctx: RequestContext, principal: str, ban_keys: tuple[str, ...], now: float
    ) -> bool:
        """Charge the global rules of `ctx` (keyed on `principal`) if no key of `ban_keys`
        is banned and all fit (True); else change nothing (False)."""
        ip = ctx.ip_key
        ops: list[Op] = []
        for prefix, spec, cost, advertised, tag in self.by_principal:
            ops.append((prefix + principal, spec, cost, None, advertised, tag))
        for prefix, spec, cost, advertised, tag in self.by_ip:
            ops.append((prefix + ip, spec, cost, None, advertised, tag))
        if self.by_churn and CredentialChurnRule.applies(ctx):
            for prefix, marker, spec, advertised, tag in self.by_churn:
                once = f"{marker}{ip}|{ctx.credential_key}"
                ops.append((prefix + ip, spec, 1, once, advertised, tag))
        for rule, prefix, spec, cost, advertised, tag in self.by_other:
            found = rule.subject(ctx)
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
        ctx.fast = (ops, results, fields)
        return True

    def verdicts(self, ctx: RequestContext) -> list[Hit]:
        """What the general path would have recorded for the admitted global rules."""
        if ctx.fast is None:
            return []
        ops, results, _ = ctx.fast
        verdicts: list[Hit] = []
        for (key, spec, cost, once, _, tag), (remaining, reset, bucket) in sorted(
            zip(ops, results, strict=True), key=lambda pair: pair[0][5]
        ):
            kind, rule, policy, enforce = self.meta[tag]
            if kind == _OTHER:
                found = rule.subject(ctx)  # type: ignore[attr-defined]
                striker = found[1] if found is not None else None
            else:
                striker = ctx.ip_key if kind == _IP else None if kind == _CHURN else ctx.principal
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
