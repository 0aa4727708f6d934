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

The official app of a ride-hailing service books most rides, every hour, at several
times the browsers' share: a group's share may be high for honest reasons. Where people
can pass a challenge, a flagged group gets `person_action` (a challenge: each member with
a pass cookie that answers for its account completes the flow, `group_held`); where they
cannot, the group is refused (`action`). (A group's own learned share raised its bar in
one version: a farm taught its own shape the share it farmed at, 0 -> 195 of 195
redemptions through, `tests/test_review_s21.py`.)

When `factor` times the population's share is 1 or more (a small or young app where
nearly everyone active completes the flow), no group can stand out by its share, and the
share alone flags no one. What still tells a farm then is where its accounts were born:
a network (/24, /64) in which at least `floor` accounts were born (signed up, see
`born_accounts`) within `window` (a burst), and at least `floor` accounts born there
completed the flow within `young_for`, is flagged by its births, whatever the app's age.
It is refused the flow only to the accounts born in it during the burst (as this process
saw their sign-ups: `BirthPlaces`), wherever they come from next and for `young_for`
after their birth (a farm may wait out the window before it redeems), not to everyone in
it: colleagues of one office, with accounts made elsewhere or earlier, go on. Births are
not judged per client shape: organic sign-ups through the official app (or one browser
build) share one shape from every network, and a burst of them is what a launch looks
like.

While a group's ban runs, its members' refused attempts renew it at the same level (the
flag holds while the farm keeps trying) but do not escalate it: members who each tried
once do not double it; a group flagged again after its ban ended is banned longer.

Activity is fed from every request whose principal is not an address, at most once per
quarter window per principal (a bounded in-process table remembers which were sent), so
the detector adds no store operation to most requests; and only once the app declared a
flow (`guard.flow(...)` called, at import for decorators; an app without a flow has
nothing to judge against it).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, OrderedDict, deque
from typing import TYPE_CHECKING, TypeVar

from apiguard.detectors.base import SIGNUPS, Finding, Judge, Outcome, RecentlySent
from apiguard.picking import ArgumentKey
from apiguard.rules import FlowRule
from apiguard.store.base import Tally

if TYPE_CHECKING:
    from apiguard.config import FlowGroupsConfig
    from apiguard.request import RequestContext
    from apiguard.store.base import Observation

GROUP = "fg:"  # ban-table prefix of a (flow, group) refused that flow
YOUNG = GROUP + "~"  # ... refused that flow only to the accounts born in the group
BORN = "fgm:"  # ban-table prefix of an account born in a burst ("pass": refuses nothing)
# why a surge asking for a challenge is reported only (the detection log's words)
_NO_CHALLENGE_ROUTE = (
    "reported only: the app has no challenge route (set detection.challenge_path, or "
    "detection.flow_groups.surge_action to 'throttle' or 'block' to refuse new accounts "
    "during a surge)"
)
SURGE = "fgs:"  # detector- and ban-table prefix of a flow's surge of new accounts
_LEARN_BELOW = 0.8  # a window teaches a flow's level only under this share of its floor
_EWMA = 0.3  # weight of a calm window's count in a flow's learned level
_LEVELS_MAX = 1024  # flows whose level is learned (flow names are code-defined)
_REFUSED_KEPT = 4096  # clients refused in a flow's surge, or people, remembered (latest)
# an address completing a keyed flow anonymously (a reset per e-mail) counts as one more
# of the flow's new clients per this many distinct keys (one address sweeping e-mails is
# many clients; one person retrying theirs, or a few people at one office address, few)
_KEYS_PER_CLIENT = 2
_SWEEPS_KEPT = 16_384  # (flow, address) pairs whose distinct keys are counted (latest)
_SWEEP_KEYS_MAX = 512  # distinct keys counted per pair (beyond: no more clients)
BIRTHS_KEPT = 131_072  # accounts `BirthPlaces` remembers (the latest)
BURSTS_KEPT = 16_384  # networks whose latest births it remembers
_V = TypeVar("_V")


def group_keys(flow: str, ctx: RequestContext) -> tuple[str, str]:
    """Ban-table keys of the request's fingerprint and network groups for `flow`."""
    return (f"{GROUP}{flow}:{ctx.fingerprint}", f"{GROUP}{flow}:{ctx.net_key}")


def young_key(flow: str, network: str) -> str:
    """Ban-table key of the accounts born in `network` refused `flow` (the network was
    flagged by its births, see the module docstring)."""
    return f"{YOUNG}{flow}:{network}"


def surge_key(flow: str) -> str:
    """Ban-table key of a surge of new accounts completing `flow` (a challenge to new
    accounts and anonymous clients there while it lasts)."""
    return f"{SURGE}{flow}"


class _Level:
    """A flow's usual number of new accounts completing it per window: an EWMA of the
    counts seen once a window (in process), learned only from windows under
    `_LEARN_BELOW` of the floor, and from the people who passed a surge's challenge, so a
    farm under the bar cannot teach it to accept more."""

    __slots__ = ("baseline", "sampled")

    def __init__(self, now: float) -> None:
        self.baseline: float | None = None
        self.sampled = now

    def bar(self, floor: int, factor: float) -> float:
        """The count of new accounts within a window that is a surge."""
        if self.baseline is None:
            return float(floor)
        return max(floor + self.baseline, self.baseline * factor)

    def sample(
        self, count: float, people: float, floor: int, window: float, now: float
    ) -> None:
        """Learn from the window's `count`, once a window; from a window at the bar, only
        its `people` (new accounts that completed with a pass: a popular app's organic
        sign-ups, once they pass, teach the flow that they are its usual level)."""
        if now - self.sampled < window:
            return
        self.sampled = now
        # (under 0.8 of the floor, not of the bar: a farm pacing itself under the bar
        # window after window must not raise it; only people raise it past the floor)
        calm = count < _LEARN_BELOW * floor
        level = count if calm else people
        if level or calm:
            base = self.baseline
            self.baseline = level if base is None else (1 - _EWMA) * base + _EWMA * level


class BirthPlaces:
    """Where accounts were born lately, and which of them were born in a burst (bounded
    LRU tables, in process: the latest `BIRTHS_KEPT` births, kept `young_for` seconds,
    and the latest `floor` births of `BURSTS_KEPT` networks).

    A burst is `floor` births in one network within `window`. Of those, an account is
    *burst-born* only if its birth shares its address or its client shape with at least
    half of the network's latest births (a farm signs up from one address, or with one
    script; people who happen to sign up on the same carrier or hotel /24 around it
    mostly share neither). Once burst-born, always (for `young_for`): a second burst in
    the network later clears no one."""

    def __init__(self, window: float, young_for: float, floor: int) -> None:
        self.window = window
        self.young_for = young_for
        self.floor = floor
        # principal key -> (network, when, burst-born)
        self._born: OrderedDict[str, tuple[str, float, bool]] = OrderedDict()
        # network -> its latest `floor` births: (principal keys, when, address, shape)
        self._latest: OrderedDict[str, deque[_Birth]] = OrderedDict()

    def note(self, keys: tuple[str, ...], ctx: RequestContext, now: float) -> None:
        """An account (its principal `keys`: see `born_accounts`) was born in the request
        `ctx`'s network."""
        network = ctx.net_key
        for key in keys:
            _remember(self._born, key, (network, now, False), BIRTHS_KEPT)
        latest = self._latest.get(network)
        if latest is None:
            latest = deque(maxlen=self.floor)
            _remember(self._latest, network, latest, BURSTS_KEPT)
        latest.append((keys, now, ctx.ip_key, ctx.fingerprint))

    def burst(self, network: str, now: float) -> list[tuple[str, float]]:
        """`network`'s births within `window` reached the floor now: mark its recent
        births that are burst-born (see the class docstring); the keys newly marked."""
        recent = [b for b in self._latest.get(network) or () if now - b[1] <= self.window]
        half = max(2, (len(recent) + 1) // 2)
        addresses = Counter(b[2] for b in recent)
        shapes = Counter(b[3] for b in recent)
        marked: list[tuple[str, float]] = []
        born = self._born
        for keys, at, address, shape in recent:
            if addresses[address] < half and shapes[shape] < half:
                continue
            for key in keys:
                found = born.get(key)
                if found is not None and not found[2]:
                    born[key] = (found[0], found[1], True)
                    marked.append((key, at))
        return marked

    def place(self, account: str, now: float) -> tuple[str, float, bool] | None:
        """Where `account` was born, when, and whether burst-born, if within
        `young_for` (as this process saw it)."""
        found = self._born.get(account)
        if found is None or now - found[1] > self.young_for:
            return None
        return found


_Birth = tuple[tuple[str, ...], float, str, str]


def _remember(table: OrderedDict[str, _V], key: str, value: _V, most: int) -> None:
    if key not in table and len(table) >= most:
        table.popitem(last=False)
    table[key] = value
    table.move_to_end(key)


class FlowGroups:
    """The flow-group detector (see the module docstring)."""

    name = "flow_groups"
    watches = SIGNUPS  # (anonymous requests: sign-ups only)

    def __init__(self, config: FlowGroupsConfig, enforce: bool) -> None:
        self.config = config
        self.enforce = enforce
        self._active: RecentlySent[str] = RecentlySent(config.window / 4)
        # whether a flow is declared (`Engine.declare_flow`): until then no principal's
        # activity is recorded (nothing would ever be judged against it)
        self.activity = False
        self.births = BirthPlaces(config.window, config.young_for, config.floor)
        # accounts born in a burst, for the engine to publish to other workers (a
        # shared store only: see `birth_of`)
        self.born_in_bursts: list[tuple[str, str, float]] = []
        self._levels: dict[str, _Level] = {}  # flow -> its usual count of new accounts
        # flow -> clients refused in its surge, and people who passed its challenge and
        # completed it -> when first (oldest first, bounded)
        self._refused: dict[str, OrderedDict[str, float]] = {}
        # (flow, address) -> (since, the keys' hashes it completed the flow for)
        self._sweeps: OrderedDict[tuple[str, str], tuple[float, set[int]]] = OrderedDict()
        self._people: dict[str, OrderedDict[str, float]] = {}

    @staticmethod
    def group_held(
        flow: str, principal: str, ctx: RequestContext, now: float
    ) -> tuple[str, ...]:
        """The ban keys of the request's groups for `flow` (checked in the batch),
        but a group's challenge known here where the request carries a pass cookie that
        answers for `principal` (looked at, and taken for it, only then; not a cookieless
        pass: a farm of the app's shape would take the ones people's solves leave)."""
        keys = group_keys(flow, ctx)
        engine = ctx.engine
        store = engine.store
        held = []
        for key in keys:
            ban = store.active_ban(key, now)
            if (
                ban is not None
                and ban.action == "challenge"
                and engine.pass_for(ctx, principal, now, cookieless=False)
            ):
                continue
            held.append(key)
        return tuple(held)

    def young_held(
        self, flow: str, principal: str, ctx: RequestContext, now: float
    ) -> tuple[str, ...]:
        """The ban key that may refuse `principal` `flow` for where it was born: the
        young-account key of its birth network, if it was born there in a burst."""
        birth = self.birth_of(principal, ctx, now)
        keys = () if birth is None or not birth[2] else (young_key(flow, birth[0]),)
        cfg = self.config
        if (
            cfg.surge_floor
            and (birth is not None or not ctx.vouched)
            and flow not in cfg.ignore_flows
        ):
            # a new account, or a client the app vouched for no one on (a sign-up; a
            # made-up credential is no exemption): held while the flow's
            # surge lasts, unless it carries a pass that answers for it (looked at, and
            # taken for this client, only then)
            key = surge_key(flow)
            engine = ctx.engine
            if engine.store.active_ban(key, now) is not None and not engine.pass_for(
                ctx, principal, now
            ):
                keys = (*keys, key)
        return keys

    def _surge(
        self, flow: str, account: str, person: bool, now: float, ops: list[Observation]
    ) -> tuple[Tally, int]:
        """Count `account`, a new account, among those completing `flow` lately (in the
        store), and among the people who did (`person`: with a pass that answers for
        it; in process): the count's operation, and the people within `surge_window`."""
        window = self.config.surge_window
        op = Tally(surge_key(flow), window, account)
        ops.append(op)
        people, _ = self._recent(self._people, flow, account if person else None, now)
        return op, len(people)

    def _recent(
        self, table: dict[str, OrderedDict[str, float]], flow: str, who: str | None, now: float
    ) -> tuple[OrderedDict[str, float], bool]:
        """Note `who` (unless None) in `flow`'s table of clients within `surge_window`
        (when first, oldest first, bounded): the table, and whether `who` is new to it."""
        firsts = table.get(flow)
        if firsts is None:
            if len(table) >= _LEVELS_MAX:
                table.clear()
            firsts = table[flow] = OrderedDict()
        window = self.config.surge_window
        while firsts and now - next(iter(firsts.values())) >= window:
            firsts.popitem(last=False)
        if who is None or who in firsts:
            return firsts, False
        if len(firsts) >= _REFUSED_KEPT:
            firsts.popitem(last=False)
        firsts[who] = now
        return firsts, True

    def _level(self, flow: str, now: float) -> _Level:
        level = self._levels.get(flow)
        if level is None:
            if len(self._levels) >= _LEVELS_MAX:
                self._levels.clear()
            level = self._levels[flow] = _Level(now)
        return level

    def _surge_found(
        self, flow: str, ops: tuple[Tally, int], ctx: RequestContext, now: float
    ) -> Finding | None:
        """The surge finding when the new accounts completing `flow` reach its bar."""
        cfg = self.config
        level = self._level(flow, now)
        bar = level.bar(cfg.surge_floor, cfg.surge_factor)
        count, people = ops[0].count, ops[1]
        level.sample(count, people, cfg.surge_floor, cfg.surge_window, now)
        # (the people who passed were each held first: they keep no surge on)
        if count - people < bar:
            return None
        engine = ctx.engine
        evidence: dict[str, float | int | str] = {
            "flow": flow,
            "new_accounts": round(count),
            "threshold": round(bar, 1),
            "baseline": round(level.baseline, 1) if level.baseline is not None else -1,
        }
        action = cfg.surge_action
        # a challenge only where people can pass one: elsewhere every new account and
        # sign-up would be refused while it lasts (reported, not enforced, unless the
        # app chose to throttle or block them)
        unanswerable = (
            self.enforce
            and action == "challenge"
            and not engine.challenges_answered
            and engine.challenge_path is None
        )
        return Finding(
            f"{self.name}.surge",
            surge_key(flow),
            action,
            self.enforce and not unanswerable,
            evidence,
            unenforced=_NO_CHALLENGE_ROUTE if unanswerable else "",
        )

    def birth_of(
        self, principal: str, ctx: RequestContext, now: float
    ) -> tuple[str, float, bool] | None:
        """Where and when `principal` was born within `young_for`, and whether in a
        burst: as this process saw its sign-up, or (born in a burst through another
        worker) as that worker published it in the shared ban table."""
        found = self.births.place(principal, now)
        if found is not None and found[2]:
            return found
        mark = ctx.engine.store.active_ban(BORN + principal, now)  # (born in a burst
        if mark is None or mark.owner is None:  # that another worker saw)
            return found
        return mark.owner, mark.until - self.births.young_for, True

    def _birth(
        self, keys: tuple[str, ...], ctx: RequestContext, now: float, ops: list[Observation]
    ) -> Judge:
        """An account born in this request (its principal `keys`): where, and whether
        its network's births within `window` reach the floor (a burst: `BirthPlaces`)."""
        network = ctx.net_key
        self.births.note(keys, ctx, now)
        births = Tally("fgb:" + network, self.config.window, keys[0])
        ops.append(births)

        def judge() -> list[Finding]:
            if births.count >= self.config.floor:
                shared = not ctx.engine.store.local
                for born, at in self.births.burst(network, now):
                    if shared:
                        self.born_in_bursts.append((born, network, at))
            return []

        return judge

    def _surges_of(
        self,
        flows: tuple[str, ...],
        account: str,
        ctx: RequestContext,
        now: float,
        ops: list[Observation],
        born: bool = False,
    ) -> list[tuple[str, tuple[Tally, int]]]:
        """Count new `account` among those completing each of `flows` (watched ones);
        `born`: in this request (a sign-up, held at its checkpoint as its address)."""
        cfg = self.config
        flows = tuple(f for f in flows if f not in cfg.ignore_flows) if cfg.surge_floor else ()
        if not flows:
            return []
        # a person: one that passed the challenge of a surge on one of them
        engine = ctx.engine
        gated_as = ctx.ip_key if born else ctx.principal or ctx.ip_key
        person = any(
            engine.store.active_ban(surge_key(flow), now) is not None for flow in flows
        ) and engine.pass_for(ctx, gated_as, now)
        if person and born:
            # the pass let one sign-up by: it answers for the newborn from now on, not
            # for its address (one solved challenge is one account)
            engine.pass_for(ctx, account, now, rebind=True)
        return [(flow, self._surge(flow, account, person, now, ops)) for flow in flows]

    def _anonymous_completion(
        self, ctx: RequestContext, now: float, ops: list[Observation]
    ) -> Judge | None:
        """An anonymous client (no account, no credential the app vouched for) completed
        flows: its address counts among each flow's new clients, as a new account does
        (a password-reset sweep or a code-sending flood from rotating addresses is a
        surge of them; the people of one office address count once, and an address
        completing a keyed flow for many keys, one per `_KEYS_PER_CLIENT` of them). Only
        where the surge asks for a challenge (`surge_action`): a busy anonymous flow's
        people (forty resets an hour) are a surge by these counts until the ones who pass
        teach the flow its level, and where the surge throttles or blocks nobody passes
        (a trial: 20 of 40 honest resets in an hour refused, and so on every hour)."""
        if self.config.surge_action != "challenge" or not ctx.ran:
            return None
        surges: list[tuple[str, tuple[Tally, int]]] = []
        for rules in ctx.ran:
            for rule in rules:
                if isinstance(rule, FlowRule) and rule.completes:
                    client = self._sweeper(rule, ctx, now)
                    surges += self._surges_of((rule.name,), client, ctx, now, ops)
        if not surges:
            return None
        return self._surge_judge(surges, ctx, now, None)

    def _sweeper(self, rule: FlowRule, ctx: RequestContext, now: float) -> str:
        """The client an anonymous completion of `rule`'s flow counts as: its address,
        and one more per `_KEYS_PER_CLIENT` distinct keys (`key=`) it completed the flow
        for within `surge_window`."""
        address = ctx.ip_key
        per = rule.per
        picked = ctx.picked
        if not isinstance(per, ArgumentKey) or picked is None:
            return address
        value = picked.get(id(per))
        if value is None:
            return address
        sweeps = self._sweeps
        pair = (rule.name, address)
        found = sweeps.get(pair)
        if found is None or now - found[0] >= self.config.surge_window:
            if found is None and len(sweeps) >= _SWEEPS_KEPT:
                sweeps.popitem(last=False)
            found = sweeps[pair] = (now, set())
        sweeps.move_to_end(pair)
        keys = found[1]
        if len(keys) < _SWEEP_KEYS_MAX:
            keys.add(hash(value))  # (in process only; never the key's text)
        extra = (len(keys) - 1) // _KEYS_PER_CLIENT
        return address if not extra else f"{address}#{extra}"

    def _surge_judge(
        self,
        surges: list[tuple[str, tuple[Tally, int]]],
        ctx: RequestContext,
        now: float,
        then: Judge | None,
    ) -> Judge:
        """The judge of `surges` (and of `then`, another judge of the request's)."""

        def judge() -> list[Finding]:
            found = then() if then is not None else []
            return found + self._surge_findings(surges, ctx, now)

        return judge

    def _surge_findings(
        self, surges: list[tuple[str, tuple[Tally, int]]], ctx: RequestContext, now: float
    ) -> list[Finding]:
        """The surge findings of `surges` (`_surge_found` of each)."""
        found = (self._surge_found(flow, op, ctx, now) for flow, op in surges)
        return [f for f in found if f is not None]

    def _activity(
        self, ctx: RequestContext, principal: str, ops: list[Observation]
    ) -> tuple[Tally, Tally, Tally]:
        window = self.config.window
        found = (
            Tally("fga:" + ctx.fingerprint, window, principal, aligned=True),
            Tally("fga:" + ctx.net_key, window, principal, aligned=True),
            Tally("fga:*", window, principal, aligned=True),
        )
        ops.extend(found)
        return found

    def _held(self, flow: str, principal: str, now: float) -> Judge | None:
        """A new account or anonymous client refused `flow` in its surge: the surge is
        renewed while clients refused for the first time (within `surge_window`) keep
        coming at the bar's pace, a quarter of it within a quarter window (a farm
        refused must not look like a farm that stopped; a person now and then, asked
        before passing, or a few accounts retrying, do not keep it on). In process.
        Only a challenge is renewed so: where the surge throttles or blocks, nobody can
        pass, and the people refused would keep it on with the farm's probes (a few
        sign-up attempts an hour held every newcomer out for as long as they came); it
        lasts its ban, and new accounts completing the flow find it again."""
        cfg = self.config
        if cfg.surge_action != "challenge":
            return None
        firsts, new = self._recent(self._refused, flow, principal, now)
        if not new:
            return None  # (refused before: a retry renews nothing)
        level = self._level(flow, now)
        need = math.ceil(level.bar(cfg.surge_floor, cfg.surge_factor) / 4)
        if len(firsts) < need:
            return None
        # the `need`-th newest first refusal, within a quarter window
        oldest = next(itertools.islice(reversed(firsts.values()), need - 1, None))
        if now - oldest >= cfg.window / 4:
            return None
        evidence: dict[str, float | int | str] = {
            "flow": flow,
            "refused_first_time": need,
            "within": round(cfg.window / 4),
        }
        key = surge_key(flow)
        finding = Finding(f"{self.name}.surge", key, cfg.surge_action, self.enforce, evidence)
        return lambda: [finding]

    def plan(self, outcome: Outcome, ops: list[Observation]) -> Judge | None:
        ctx = outcome.ctx
        principal = outcome.principal
        decision = ctx.decision
        banned = decision.banned if decision is not None else None
        if banned and banned.startswith(SURGE):
            return self._held(banned[len(SURGE) :], principal, outcome.now)
        if principal == ctx.ip_key:
            # an anonymous request: a sign-up (an account born here) is recorded, and a
            # flow completed anonymously (a password reset, a one-time code sent) counts
            # its address among the flow's new clients
            if not ctx.engine.succeeded(outcome.status):
                return None
            newborn = born_accounts(outcome)
            if not newborn:
                return self._anonymous_completion(ctx, outcome.now, ops)
            births = self._birth(newborn, ctx, outcome.now, ops)
            flows = completed_flows(ctx)
            signups = self._surges_of(flows, newborn[0], ctx, outcome.now, ops, born=True)
            if not signups:
                return births
            return self._surge_judge(signups, ctx, outcome.now, births)
        refused = banned is not None and banned.startswith(GROUP)
        # a completion, or an attempt refused to its group (which still counts for it)
        succeeded = ctx.engine.succeeded(outcome.status)
        flows = completed_flows(ctx) if succeeded or refused else ()
        if flows and self.config.ignore_flows:
            flows = tuple(f for f in flows if f not in self.config.ignore_flows)
        now = outcome.now
        if not flows:
            # (a path no route serves names no one: the app never vouched for its
            # principal, a bare token's key beside the account it belongs to, and a farm
            # asking one per account would count each account twice among the active)
            if ctx.route is None and outcome.status in (404, 405):
                return None
            if not self.activity or not self._active.due(principal, now):
                return None
            self._activity(ctx, principal, ops)
            return None
        fp_active, net_active, all_active = self._activity(ctx, principal, ops)
        window = self.config.window
        # an account born here (a sign-up that completes a flow and signs the user in)
        born = born_accounts(outcome)
        at_birth = self._birth(born, ctx, now, ops) if born else None
        birth = self.birth_of(principal, ctx, now)
        birthplace = None if birth is None else birth[0]
        cfg = self.config
        checks = []
        for flow in flows:
            # (aligned with the activity counts: a share of two counts over one span)
            fp = Tally(f"fgf:{flow}:{ctx.fingerprint}", window, principal, aligned=True)
            net = Tally(f"fgf:{flow}:{ctx.net_key}", window, principal, aligned=True)
            everyone = Tally(f"fgf:{flow}:*", window, principal, aligned=True)
            ops.extend((fp, net, everyone))
            # the accounts born in the principal's birth network that completed the flow
            # (within `young_for`: a farm may wait before it redeems)
            native = None
            if birthplace is not None:
                native = Tally(f"fgbf:{flow}:{birthplace}", cfg.young_for, principal)
                ops.append(native)
            checks.append((flow, fp, net, everyone, native))
        # a new account completing them (born here, or within `young_for`)
        young = born[0] if born else principal if birth is not None else None
        if young is not None:
            surges = self._surges_of(flows, young, ctx, now, ops, bool(born))
        elif not ctx.vouched and succeeded:
            # a credential the app vouched for no one on (a made-up bearer token or API
            # key) is no account: counted as an anonymous completion, at its address
            judged = self._anonymous_completion(ctx, now, ops)
            surges = []
            if judged is not None:
                at_birth = judged if at_birth is None else _both(at_birth, judged)
        else:
            surges = []

        # (a group's members are people where they can pass a challenge: each passes
        # for its own account, `group_held`; a farm's scripts cannot)
        engine = ctx.engine
        answerable = engine.challenges_answered or engine.challenge_path is not None
        action = cfg.person_action if answerable else cfg.action

        def judge() -> list[Finding]:
            found: list[Finding] = at_birth() if at_birth is not None else []
            found += self._surge_findings(surges, ctx, now)
            for flow, fp, net, everyone, native in checks:
                if (
                    native is not None
                    and birth is not None
                    and native.count >= cfg.floor
                    and birth[2]  # (born in a burst)
                ):
                    found.append(
                        Finding(
                            f"{self.name}.births",
                            young_key(flow, birth[0]),
                            cfg.action,
                            self.enforce,
                            {
                                "flow": flow,
                                "completed": round(native.count),
                                "threshold": cfg.floor,
                                "basis": "births",
                            },
                        )
                    )
                keys = group_keys(flow, ctx)
                for kind, done, active, key in (
                    ("fingerprint", fp, fp_active, keys[0]),
                    ("network", net, net_active, keys[1]),
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
                    # at 1 or more, the share cannot single a group out (births can: above)
                    if reach >= 1.0 or share < reach:
                        continue
                    bar = max(cfg.min_share, reach)
                    found.append(
                        Finding(
                            f"{self.name}.{kind}",
                            key,
                            action,
                            self.enforce,
                            {
                                "flow": flow,
                                "principals": round(done.count),
                                "active": round(active.count),
                                "share": round(share, 3),
                                "threshold": round(bar, 3),
                                "baseline": round(base, 3),
                                "basis": "share",
                            },
                        )
                    )
            return found

        return judge


def _both(first: Judge, second: Judge) -> Judge:
    """A judge of both judges' findings."""
    return lambda: first() + second()


def completed_flows(ctx: RequestContext) -> tuple[str, ...]:
    """Names of the flows this request completed (a charged, completing flow step)."""
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
    """The keys of the account this request created, answered with a success status
    (`success_statuses`: 2xx, or a form's redirect): the one
    `guard.account_created()` named, else the one the app identified in a request that
    carried no credential on a route completing a flow (a sign-up that signs the user
    in), unless this process has seen that account answered before (a password reset, a
    magic link, an old user's session: not a new account). A cookie changes nothing: any
    client may send one (a farm's junk cookie kept its accounts from being young)."""
    ctx = outcome.ctx
    if not ctx.engine.succeeded(outcome.status):
        return ()
    if ctx.born:  # guard.account_created()
        return ctx.born
    declared = ctx.declared
    if (
        declared is None
        or ctx.engine.accounts_declared
        or ctx.login is not None
        or ctx.credentials
        or not completed_flows(ctx)
        or ctx.engine.known_principal(declared)
    ):
        return ()
    return (declared,)
