"""Flow abuse spread over many accounts: one client shape or network completing a
sensitive flow for many principals (fresh accounts made for it, OWASP API6).

A per-principal flow limit cannot see a farm of fresh accounts that each complete the flow
once. This detector groups them by what they share: the client fingerprint and the /24
(/64) network. For each group it compares two shares, within `window`:
- the distinct principals that completed the flow in this group, against the distinct
  principals active in the group at all;
- the same share across the rest of the population (the group left out, so a farm's own
  accounts cannot raise it; with fewer than `floor` others, taken as 1).

A group is flagged when at least `floor` of its principals completed the flow, and its
share is at least `min_share`, and `factor` times the population's share. A browser version
millions use hides no farm and flags no one: its share is the population's. A farm whose
accounts exist only to complete the flow has a share near 1. A flagged group is refused
that flow (429, or the configured action) for a ban's duration; nothing else.

When `factor` times the population's share is 1 or more (a small or young app where
nearly everyone active completes the flow), no group can stand out by its share, and the
share alone flags no one. What still tells a farm then is where its accounts come from:
the group is flagged only if, besides the floor and `min_share`, at least `floor` accounts
were born in it (signed up from that client shape or network, see `born_accounts`)
within `window`: fresh accounts created in a burst. Colleagues of one office who each
complete the flow once, with accounts made elsewhere or earlier, are never flagged.

While a group's ban runs, its members' refused attempts renew it at the same level (the
flag holds while the farm keeps trying) but do not escalate it: members who each tried
once do not double it; a group flagged again after its ban ended is banned longer.

Activity is fed from every request whose principal is not an address, at most once per
quarter window per principal (a bounded in-process table remembers which were sent), so
the detector adds no store operation to most requests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from apiguard.detectors.base import SIGNUPS, Finding, Judge, Outcome, RecentlySent
from apiguard.store.base import Tally

if TYPE_CHECKING:
    from apiguard.config import FlowGroupsConfig
    from apiguard.request import RequestContext
    from apiguard.store.base import Observation

GROUP = "fg:"  # ban-table prefix of a (flow, group) refused that flow


def group_keys(flow: str, ctx: RequestContext) -> tuple[str, str]:
    """Ban-table keys of the request's fingerprint and network groups for `flow`."""
    return (f"{GROUP}{flow}:{ctx.fingerprint}", f"{GROUP}{flow}:{ctx.net_key}")


class FlowGroups:
    """The flow-group detector (see the module docstring)."""

    name = "flow_groups"
    watches = SIGNUPS  # (anonymous requests: sign-ups only)

    def __init__(self, config: FlowGroupsConfig, enforce: bool) -> None:
        self.config = config
        self.enforce = enforce
        self._active: RecentlySent[str] = RecentlySent(config.window / 4)

    def _activity(
        self, ctx: RequestContext, principal: str, ops: list[Observation]
    ) -> tuple[Tally, Tally, Tally]:
        window = self.config.window
        found = (
            Tally("fga:" + ctx.fingerprint, window, principal),
            Tally("fga:" + ctx.net_key, window, principal),
            Tally("fga:*", window, principal),
        )
        ops.extend(found)
        return found

    def plan(self, outcome: Outcome, ops: list[Observation]) -> Judge | None:
        ctx = outcome.ctx
        principal = outcome.principal
        if principal == ctx.ip_key:
            # an anonymous request: only a sign-up (an account born here) is recorded
            if (ctx.declared is None and not ctx.born) or not 200 <= outcome.status < 300:
                return None
            born = born_accounts(outcome)
            if born:
                window = self.config.window
                ops.append(Tally("fgb:" + ctx.fingerprint, window, born[0]))
                ops.append(Tally("fgb:" + ctx.net_key, window, born[0]))
            return None
        decision = ctx.decision
        refused = decision is not None and (decision.banned or "").startswith(GROUP)
        # a completion, or an attempt refused to its group (which still counts for it)
        flows = completed_flows(ctx) if 200 <= outcome.status < 300 or refused else ()
        now = outcome.now
        if not flows:
            if not self._active.due(principal, now):
                return None
            self._activity(ctx, principal, ops)
            return None
        fp_active, net_active, all_active = self._activity(ctx, principal, ops)
        window = self.config.window
        # accounts born in the groups (a sign-up here adds its account; others read)
        born = born_accounts(outcome)
        member = born[0] if born else None
        births = (
            Tally("fgb:" + ctx.fingerprint, window, member, amount=1 if born else 0),
            Tally("fgb:" + ctx.net_key, window, member, amount=1 if born else 0),
        )
        ops.extend(births)
        checks = []
        for flow in flows:
            fp = Tally(f"fgf:{flow}:{ctx.fingerprint}", window, principal)
            net = Tally(f"fgf:{flow}:{ctx.net_key}", window, principal)
            everyone = Tally(f"fgf:{flow}:*", window, principal)
            ops.extend((fp, net, everyone))
            checks.append((flow, fp, net, everyone))
        cfg = self.config

        def judge() -> list[Finding]:
            found: list[Finding] = []
            for flow, fp, net, everyone in checks:
                keys = group_keys(flow, ctx)
                for kind, done, active, key, born_here in (
                    ("fingerprint", fp, fp_active, keys[0], births[0]),
                    ("network", net, net_active, keys[1], births[1]),
                ):
                    share = done.count / max(active.count, 1.0)
                    if done.count < cfg.floor or share < cfg.min_share:
                        continue
                    # the population's share without this group (a farm's own accounts
                    # must not raise the bar it is judged against); with fewer than
                    # `floor` others there is nothing to compare with
                    others = all_active.count - active.count
                    if others >= cfg.floor:
                        base = min(max(everyone.count - done.count, 0.0) / others, 1.0)
                    else:
                        base = 1.0
                    reach = base * cfg.factor
                    # at 1 or more, the share cannot single a group out: accounts born in
                    # a burst in the group are the evidence left (see the module docstring)
                    by_share = reach < 1.0 and share >= reach
                    bar = max(cfg.min_share, min(1.0, reach))
                    if by_share or born_here.count >= cfg.floor:
                        found.append(
                            Finding(
                                f"{self.name}.{kind}",
                                key,
                                cfg.action,
                                self.enforce,
                                {
                                    "flow": flow,
                                    "principals": round(done.count),
                                    "active": round(active.count),
                                    "share": round(share, 3),
                                    "threshold": round(bar, 3),
                                    "baseline": round(base, 3),
                                    "born": round(born_here.count),
                                    "basis": "share" if by_share else "births",
                                },
                            )
                        )
            return found

        return judge


def completed_flows(ctx: RequestContext) -> tuple[str, ...]:
    """Names of the flows this request completed (a charged, completing flow step)."""
    from apiguard.rules import FlowRule

    ran = ctx.ran
    if not ran:
        return ()
    return tuple(
        rule.name
        for rules in ran
        for rule in rules
        if isinstance(rule, FlowRule) and rule.completes
    )


def born_accounts(outcome: Outcome) -> tuple[str, ...]:
    """The keys of the account this request created, answered 2xx: the one
    `guard.account_created()` named, else the one the app identified in a request that
    carried neither a credential nor a cookie on a route completing a flow (a sign-up that
    signs the user in), unless this process has seen that account answered before (a
    password reset, a magic link: not a new account)."""
    ctx = outcome.ctx
    if not 200 <= outcome.status < 300:
        return ()
    if ctx.born:  # guard.account_created()
        return ctx.born
    declared = ctx.declared
    if (
        declared is None
        or ctx.engine.accounts_declared
        or ctx.login is not None
        or ctx.credentials
        or ctx.has_cookie
        or not completed_flows(ctx)
        or ctx.engine.known_principal(declared)
    ):
        return ()
    return (declared,)
