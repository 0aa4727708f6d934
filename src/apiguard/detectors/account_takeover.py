"""Account takeover (OWASP API2; OAT-007 credential stuffing, OAT-008 cracking).

From the login outcomes the app reports (`@guard.login`, `guard.login_result`), three
detections, each catching on its own (see `AccountTakeoverConfig` for the numbers):

- **one actor, many accounts**: per client IP, non-IP principal (an API key), network,
  client fingerprint and challenge pass, the distinct usernames that failed in the window
  (a network's: `network_window`, a day) and were never logged in to from that actor (a
  typo its owner then got right does not count, and a stuffer cannot take a guess back),
  as a share of the distinct usernames it tried (an office NAT whose people log in
  dilutes the few who never do). Two sketches per actor, always touched together: the
  usernames tried and those logged in to; the difference is the unresolved failures.
  IPs and principals are banned; networks and fingerprints, which many people share, are
  challenged at the login route only;
- **many actors, one account**: failures on one username from clients without that
  account's device cookie put the account under protection: unknown clients must pass a
  challenge, a device that logged in to the account before never does;
- **distributed stuffing and spraying**: the population's login failure share against its
  own learned baseline, counted from many sources: one address adds at most
  `population_source_failures` failures a half window (its own per-address detection
  handles the rest: an office's typos are not a population's), and no alarm before
  failures came from `population_min_sources` distinct networks (/24, /64). Also, judged
  at the end of each half window, the share of the distinct usernames tried in it that
  failed and were not logged in to in it, against its own baseline: people get their
  typos right, a stuffer's guesses stay failed, so a stuffing kept under the failure
  share's floor (from the app's first minute, or padded with its own accounts' logins,
  which add one username each) still shows. While it is
  under attack, every login from a client without a device cookie for the account (or a
  passed challenge) must pass a challenge (or, with `population_action = "throttle"`, is
  refused).

An attacker cannot lock a victim out: the victim's own devices carry the device cookie,
and a person on a new device can pass the app's challenge.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from apiguard.detectors.base import LOGINS, Finding, Judge, LoginAttempt, Outcome
from apiguard.detectors.known_clients import KnownClients
from apiguard.store.base import Tally

if TYPE_CHECKING:
    from apiguard.config import AccountTakeoverConfig
    from apiguard.store.base import Observation

ACCOUNT = "acct:"
# statuses a login answers a wrong password with: 401 and 403, and 400 (FastAPI's own
# OAuth2 tutorial, and the apps built from it, answer "Incorrect username or password"
# with 400) and 404 (no such user); 422 (a malformed request), 429 and 5xx are not attempts
_FAILED = frozenset({400, 401, 403, 404})
DEVICE_FAILS = "devfail:"  # an account whose own devices failed too often (a copied cookie)
_DEVICE_FAILURES = 10  # failures from devices with the account's cookie before that
_PASS_FAILURES = 6  # failures on one account with one challenge pass before it stops helping
_SHARE_CEILING = 0.7  # the learned failure-share threshold never exceeds it
_SUCCEEDED_MAX = 65_536  # accounts remembered as logged in this period (population share)
_EWMA = 0.3  # weight of the newest calm period in the failure-share baseline
_AGAIN_AT = 2  # failures that hold an account held before again (at the least)
_CALM_ATTEMPTS = 10  # attempts a period needs to teach the baseline
_TEACHING_SHARE = 0.8  # a period teaches the baseline only under this part of the floor
# the unresolved usernames a half window needs to start an attack, as a part of
# `population_min_failures` (20: 6 a half window, 24 an hour); an attack ends only once a
# half window's unresolved share is under this part of its bar (people pass and resolve
# theirs: a stuffer going on keeps it up)
_UNRESOLVED_MIN = 0.3
_UNRESOLVED_CALM = 0.5
_TRIED = "ato:t:"  # per actor: the distinct usernames it tried (failed or not)
_LOGGED_IN = "ato:ok:"  # per actor: the distinct usernames it logged in to
# accounts logged in to from an address in the window that make it a shared one (an
# office's or a carrier's NAT): flagged, it is challenged at the login, not banned
_SHARED_LOGINS = 2
# failed usernames a challenge pass may carry, never logged in to with it, while it gets
# its holder past a standing challenge (a person there logs in to their own account; a
# stuffer's solved CAPTCHA would otherwise be worth `usernames_per_actor` guesses)
_GATED_PASS_USERNAMES = 2
# a network flagged on its day's unresolved usernames must still have them as at least
# `failed_share` of its usernames within the last `window` (one burst from a campus /24
# otherwise kept it challenged for hours)
_RECENT_TRIED = "ato:rt:"  # per network: the distinct usernames tried within `window`
_RECENT_LOGGED_IN = "ato:rok:"  # and logged in to
_FLAGGED_MAX = 65_536  # addresses remembered as flagged (`AccountTakeover._flagged`)


class LoginClimate:
    """The population's login failure share over a sliding window (two half-window
    generations, in process), its learned baseline, and whether it is under attack."""

    def __init__(self, config: AccountTakeoverConfig) -> None:
        self.half = config.population_window / 2.0
        self.min_failures = config.population_min_failures
        self.per_source = config.population_source_failures
        self.min_sources = config.population_min_sources
        self.floor = config.failure_share_floor
        self.unresolved_floor = config.unresolved_share_floor
        self.factor = config.population_factor
        self.start: float | None = None
        # attempts, failures, attempts on missing accounts
        self.now = [0, 0, 0]
        self.old = [0, 0, 0]
        # this half window's failures counted per address, and the failing networks
        # (bounded: past the bound a newcomer counts as new)
        self._by_source: dict[str, int] = {}
        # and per username: one account's failures past `per_source` a half window are
        # a brute force on it (the per-account detection's), not the population's (a
        # trial: a brute force on one account from 300 addresses raised the site-wide
        # alarm, and with `population_action = "throttle"` refused 61 of 73 people)
        self._by_user: dict[str, int] = {}
        # of those, the failures whose password was checked (not gated), per account and
        # address (their network, how many): a person's typos once the account logs in
        # from that address in the same half (`record`; a stuffer's failure on a real
        # account is not its owner's typo), whose network is then no failing source
        self._typos: dict[tuple[str, str], tuple[str, int]] = {}
        self._net_failures: dict[str, int] = {}  # this half's failures per failing network
        self._networks: set[str] = set()
        # the failing networks of the previous half, and this half's not among them: the
        # distinct failing networks are counted over both halves, each network once
        self._old_networks: set[str] = set()
        self._fresh = 0
        self.baseline: float | None = None
        self.attack_since: float | None = None
        # accounts that logged in this period: a success counts once per account, so an
        # attacker logging in to its own account again and again cannot pad the share
        self._succeeded: set[str] = set()
        # this half window's distinct usernames tried and failed (counted as failures are:
        # not a gated attempt, nor a source past its share), their learned baseline share
        # of unresolved ones, the last finished half's share, and the evidence of an
        # attack the last roll started (reported by the next attempt)
        self._tried: set[str] = set()
        self._failed: set[str] = set()
        self.unresolved_baseline: float | None = None
        self.unresolved_last = 0.0
        self._armed: dict[str, float | int] | None = None
        self._answerable = True

    def unresolved_threshold(self) -> float:
        """The share of unresolved usernames above which the population is under attack."""
        base = self.unresolved_baseline
        if base is None:
            return self.unresolved_floor
        return max(self.unresolved_floor, min(base * self.factor, _SHARE_CEILING))

    def _judge_unresolved(self, now: float) -> None:
        """The half window that just finished: its distinct usernames that failed and were
        not logged in to in it, as a share of those tried; an attack starts (evidence in
        `_armed`) when enough of them came from enough networks, else a calm half teaches
        the baseline (a half close to the bar teaches nothing, as for the failure share)."""
        tried = len(self._tried)
        unresolved = len(self._failed - self._succeeded)
        share = unresolved / tried if tried else 0.0
        self.unresolved_last = share
        if self.attack_since is not None or tried < _CALM_ATTEMPTS:
            return
        if not self._answerable:
            self.unresolved_last = 0.0  # (nor does it keep an attack on)
            return
        bar = self.unresolved_threshold()
        sources = len(self._old_networks) + self._fresh
        if (
            share >= bar
            and unresolved >= self.min_failures * _UNRESOLVED_MIN
            and sources >= self.min_sources
        ):
            self.attack_since = now
            self._armed = {
                "unresolved_usernames": unresolved,
                "usernames_tried": tried,
                "unresolved_share": round(share, 3),
                "threshold": round(bar, 3),
                "baseline": (
                    round(self.unresolved_baseline, 3)
                    if self.unresolved_baseline is not None
                    else -1
                ),
                "failing_networks": sources,
            }
        elif share < _TEACHING_SHARE * self.unresolved_floor:
            base = self.unresolved_baseline
            self.unresolved_baseline = share if base is None else (1 - _EWMA) * base + _EWMA * share

    def _roll(self, now: float) -> float:
        if self.start is None:
            self.start = now
        elapsed = now - self.start
        if elapsed >= self.half:
            self._judge_unresolved(now)
            self._tried.clear()
            self._failed.clear()
            finished = self.now
            if self.attack_since is None and finished[0] >= _CALM_ATTEMPTS:
                share = finished[1] / finished[0]
                # (a half window close to the floor teaches nothing: a stuffing that starts
                # with the app's traffic, under the floor, would teach the baseline itself
                # and lift the bar out of its own reach; nor can a slow ramp lift it step by
                # step, each step under the last bar)
                if share < _TEACHING_SHARE * self.floor:
                    self.baseline = (
                        share
                        if self.baseline is None
                        else (1 - _EWMA) * self.baseline + _EWMA * share
                    )
            self.old = finished if elapsed < 2 * self.half else [0, 0, 0]
            self.now = [0, 0, 0]
            self._succeeded.clear()
            self._by_source.clear()
            self._by_user.clear()
            self._typos.clear()
            self._net_failures.clear()
            self._old_networks = self._networks if elapsed < 2 * self.half else set()
            self._networks = set()
            self._fresh = 0
            self.start = now if elapsed >= 2 * self.half else self.start + self.half
            elapsed = now - self.start
        return 1.0 - elapsed / self.half

    def _resolved(self, network: str, typos: int) -> None:
        """`typos` failures from `network` were a person's, who then logged in: that
        network is no failing source for them (it still is for its other failures)."""
        left = self._net_failures.get(network, 0) - typos
        if left > 0:
            self._net_failures[network] = left
            return
        self._net_failures.pop(network, None)
        if network in self._networks:
            self._networks.discard(network)
            if network not in self._old_networks:
                self._fresh -= 1

    def threshold(self) -> float:
        """The failure share above which the population is under attack."""
        if self.baseline is None:
            return self.floor
        # (the learned part capped; a floor set higher stays the bar)
        return max(self.floor, min(self.baseline * self.factor, _SHARE_CEILING))

    def forgive(self, now: float) -> None:
        """A person passed a challenge: the refused attempt that asked for it was not a
        bot's, so it is not a failure (else people on new devices would keep the alarm
        on by being challenged)."""
        self._roll(now)
        if self.now[1] > 0:
            self.now[1] -= 1

    def record(
        self,
        now: float,
        failed: bool,
        missing: bool,
        user: str | None = None,
        source: str = "",
        network: str = "",
        gated: bool = False,
        answerable: bool = True,
        held: bool = False,
    ) -> dict[str, float | int] | None:
        """Count one attempt on username `user` (a keyed hash); evidence when this attempt
        starts an attack period (or the half window it ended did). A success counts once
        per account and period; a failure counts only while its address (`source`) added
        fewer than `population_source_failures` this half window (an address over that is
        one source, left to the per-address detection), and its `network` among the
        distinct failing ones. The unresolved share starts an attack only where the
        people it holds can pass (`answerable`: a challenge route declared, or a challenge
        passed in this process): it fires on stuffing far slower than the failure share
        does, and in an app without a challenge flow every person on a new device would
        be refused while it lasts. There a `gated` attempt (refused before the password
        was checked: `failed` too) is a username tried and failed (the person passes and
        logs in, resolving it; a stuffer's stays failed, keeping the attack on);
        elsewhere it is no username tried. An attempt `held` by its account's own hold is
        not counted at all."""
        self._answerable = answerable
        weight = self._roll(now)
        armed, self._armed = self._armed, None
        if held:
            # gated by its account's own hold: that account's protection at work (a
            # brute force on one account, its 3 failures a half window on top of honest
            # typos, raised the site-wide alarm in a held-out evaluation)
            return armed
        cur = self.now
        if not failed and user is not None:
            # its passwords checked and failed from this address this half were a
            # person's typos: still failures, but their network is no failing source (a
            # trial: ten people at home failing two or three times each, then logging in,
            # made ten of the alarm's eleven networks beside a brute force on one account,
            # and refused 15 of 46 people); refused attempts (gated) are no typos: a bot
            # that got past a challenge and then in did not type a password wrong
            typos = self._typos.pop((user, source), None)
            if typos is not None:
                self._resolved(*typos)
            if user in self._succeeded:
                return armed
            if len(self._succeeded) < _SUCCEEDED_MAX:
                self._succeeded.add(user)
                if len(self._tried) < _SUCCEEDED_MAX:
                    self._tried.add(user)
        if failed:
            by_source = self._by_source
            seen = by_source.get(source, 0)
            if seen >= self.per_source:
                return armed  # one source's failures past its share: not the population's
            if user is not None:
                by_user = self._by_user
                on_user = by_user.get(user, 0)
                if on_user >= self.per_source:
                    return armed  # one account's: the per-account detection's
                if len(by_user) < _SUCCEEDED_MAX:
                    by_user[user] = on_user + 1
                    if not gated:  # (from this address: its owner's stays the stuffer's)
                        key = (user, source)
                        typos = self._typos.get(key)
                        self._typos[key] = (network, typos[1] + 1 if typos else 1)
            if len(by_source) < _SUCCEEDED_MAX:
                by_source[source] = seen + 1
            if user is not None and (answerable or not gated) and len(self._tried) < _SUCCEEDED_MAX:
                self._tried.add(user)
                self._failed.add(user)
            networks = self._networks
            if network not in networks:
                if network not in self._old_networks:
                    self._fresh += 1
                if len(networks) < _SUCCEEDED_MAX:
                    networks.add(network)
            if network in networks:
                self._net_failures[network] = self._net_failures.get(network, 0) + 1
        cur[0] += 1
        cur[1] += failed
        cur[2] += missing
        attempts = cur[0] + self.old[0] * weight
        failures = cur[1] + self.old[1] * weight
        missing_n = cur[2] + self.old[2] * weight
        sources = len(self._old_networks) + self._fresh  # (distinct, over both halves)
        share = failures / attempts if attempts else 0.0
        limit = self.threshold()
        if self.attack_since is None:
            hot = (
                failures >= self.min_failures
                and sources >= self.min_sources
                and (share >= limit or missing_n >= self.min_failures)
            )
            if hot:
                self.attack_since = now
                return {
                    "failures": round(failures),
                    "attempts": round(attempts),
                    "failure_share": round(share, 3),
                    "threshold": round(limit, 3),
                    "baseline": round(self.baseline, 3) if self.baseline is not None else -1,
                    "missing_accounts": round(missing_n),
                    "failing_networks": round(sources),
                }
            return None
        calm = (
            failures < self.min_failures / 2 or share < limit * 0.7
        ) and self.unresolved_last < _UNRESOLVED_CALM * self.unresolved_threshold()
        if calm and now - self.attack_since >= 2 * self.half:
            self.attack_since = None
        return armed

    def under_attack(self, now: float) -> bool:
        """Whether logins without a device cookie must pass a challenge now."""
        if self.attack_since is None:
            return False
        self._roll(now)
        if self.now[0] + self.old[0] == 0:  # no login for a whole window: over
            self.attack_since = None
        return self.attack_since is not None


class AccountTakeover:
    """The account-takeover detector family (see the module docstring)."""

    name = "account_takeover"
    watches = LOGINS

    def __init__(self, config: AccountTakeoverConfig, enforce: bool) -> None:
        self.config = config
        self.enforce = enforce
        self.climate = LoginClimate(config)
        # clients that logged in to an account, remembered without a cookie: the
        # population alarm does not hold them (`known_clients`)
        self.known = KnownClients(config.device_days * 86400.0)
        # addresses flagged in this process, and when: flagged again within the window at
        # half the failed share (people logging in beside a stuffer at a NAT dilute its
        # share, which would otherwise let it through again each time its gate ends)
        self._flagged: dict[str, float] = {}

    def plan(self, outcome: Outcome, ops: list[Observation]) -> Judge | None:
        login = outcome.login
        if login is None:
            return None
        failed = _failed(login, outcome.status)
        if failed is None:
            return None  # neither success nor failure (a 422, a 500): not an attempt
        now = outcome.now
        ctx = outcome.ctx
        attack = self.climate.record(
            now,
            failed or login.gated,
            login.exists is False,
            login.user,
            ctx.ip_key,
            ctx.net_key,
            login.gated,
            self.config.population_action == "challenge"
            and (ctx.engine.challenges_answered or ctx.engine.challenge_path is not None),
            login.held,
        )
        if login.gated:
            return (lambda: [self._climate_finding(attack)]) if attack else None
        cfg = self.config
        window = cfg.window
        actors = self._actors(outcome)
        user = login.user
        # per actor, two sketches always touched together (so their half-window
        # generations stay aligned): the distinct usernames tried, and those logged in
        # to; the failed usernames never logged in to from the actor are the difference
        # (a network's over `network_window`, and over `window` too: it is flagged while
        # it is still at it, not for a day after one burst)
        if not failed:
            if not login.inferred and user != ctx.engine.unreadable_user:
                self.known.logged_in(login.device or user, ctx, now)
            for kind, key in actors:
                span = cfg.network_window if kind == "net" else window
                ops.append(Tally(_TRIED + key, span, user))
                ops.append(Tally(_LOGGED_IN + key, span, user))
                if kind == "net":
                    ops.append(Tally(_RECENT_TRIED + key, window, user))
                    ops.append(Tally(_RECENT_LOGGED_IN + key, window, user))
            return (lambda: [self._climate_finding(attack)]) if attack else None
        if login.known:
            self.known.failed(ctx, now)
        pairs = []
        for kind, key in actors:
            span = cfg.network_window if kind == "net" else window
            t = Tally(_TRIED + key, span, user)
            s = Tally(_LOGGED_IN + key, span, amount=0)  # a read
            ops.append(t)
            ops.append(s)
            recent: tuple[Tally, Tally] | None = None
            if kind == "net":
                recent = (
                    Tally(_RECENT_TRIED + key, window, user),
                    Tally(_RECENT_LOGGED_IN + key, window, amount=0),
                )
                ops.extend(recent)
            pairs.append((kind, key, t, s, recent))
        account: Tally | None = None
        devices: Tally | None = None
        passed: Tally | None = None
        # (the device's account as its cookie marks it: the name as sent, so failures at a
        # look-alike account, `Alice@` beside `alice@` on an app that tells them apart,
        # never end the real owner's device exemption)
        marked = login.device or user
        if ctx.device_ok:  # a failure from a device with the account's cookie
            devices = Tally(DEVICE_FAILS + marked, window)
            ops.append(devices)
        else:
            account = Tally(ACCOUNT + user, window)
            ops.append(account)
        if ctx.pass_key is not None:
            passed = Tally(f"ato:p:{ctx.pass_key}:{user}", window)
            ops.append(passed)

        flagged = self._flagged
        past_gate = login.past_gate

        def judge() -> list[Finding]:
            found: list[Finding] = []
            if attack:
                found.append(self._climate_finding(attack))
            for kind, key, t, s, recent in pairs:
                # (a pass that got its holder past a standing challenge: a count, which
                # logins to its own accounts cannot dilute, then asked to be earned again)
                gated_pass = kind == "pass" and past_gate
                floor = (
                    cfg.usernames_per_network
                    if kind in ("net", "fp")
                    else _GATED_PASS_USERNAMES
                    if gated_pass
                    else cfg.usernames_per_actor
                )
                # failed and never logged in to from here: a typo or a forgotten password
                # that its owner then got right is not counted, and an attacker cannot
                # take a guess back without the account's password
                tried = t.count
                unresolved = max(tried - s.count, 0.0)
                share = unresolved / tried if tried else 0.0
                bar = cfg.failed_share
                if kind == "ip":
                    since = flagged.get(key)
                    if since is not None and now - since < window:
                        bar *= 0.5
                if recent is not None and unresolved >= floor:
                    # (its day's count flags it while its last hour is still mostly
                    # unresolved usernames: not once its people's logins are all that
                    # comes from there, however slowly a stuffer goes on)
                    rt, rs = recent
                    fresh = rt.count - rs.count
                    if fresh < 1 or fresh < cfg.failed_share * rt.count:
                        continue
                if gated_pass:
                    bar = 0.0
                if unresolved >= floor and share >= bar:
                    # many people share a network or a client shape, and an address that
                    # people logged in from (a carrier's or an office's NAT): what the
                    # population gets (a challenge, or a throttle in apps without one),
                    # never a ban that would shut them out; a person's pass does not
                    # lift it for the others (`Engine.challenge_passed`)
                    # (a person unsure of their e-mail passes a challenge twice)
                    many = kind in ("net", "fp") or gated_pass
                    name = kind
                    if kind == "ip":
                        if len(flagged) >= _FLAGGED_MAX:
                            flagged.clear()
                        flagged[key] = now
                        if s.count >= _SHARED_LOGINS:
                            many, name = True, "shared_ip"
                    action = cfg.population_action if many else cfg.action
                    found.append(
                        Finding(
                            f"{self.name}.{name}",
                            key,
                            action,
                            self.enforce,
                            {
                                "usernames_failed": round(unresolved),
                                "logins_succeeded": round(s.count),
                                "threshold": floor,
                                "failed_share": round(share, 3),
                            },
                        )
                    )
            # an account held before (within `bans.memory`) is held again at a quarter of
            # the failures: its count forgets during a long hold, and a brute force resumed
            # after it got 8 more guesses checked each time (25 of 175 after the first hold
            # in a held-out trial)
            hold_at = cfg.account_failures
            if (
                account is not None
                and _AGAIN_AT < hold_at > account.count
                and ctx.engine.held_before(ACCOUNT + user, now)
            ):
                hold_at = max(_AGAIN_AT, hold_at // 4)
            if account is not None and account.count >= hold_at:
                found.append(
                    Finding(
                        f"{self.name}.account",
                        ACCOUNT + user,
                        cfg.account_action,
                        self.enforce,
                        {"failures": round(account.count), "threshold": hold_at},
                    )
                )
            if devices is not None and devices.count >= _DEVICE_FAILURES:
                found.append(
                    Finding(
                        f"{self.name}.devices",
                        DEVICE_FAILS + marked,
                        "challenge",
                        self.enforce,
                        {"failures": round(devices.count), "threshold": _DEVICE_FAILURES},
                    )
                )
            if passed is not None and passed.count >= _PASS_FAILURES:
                found.append(
                    Finding(
                        f"{self.name}.pass_account",
                        f"{ctx.pass_key}:{user}",
                        cfg.account_action,
                        self.enforce,
                        {"failures": round(passed.count), "threshold": _PASS_FAILURES},
                    )
                )
            return found

        return judge

    def _climate_finding(self, evidence: dict[str, float | int]) -> Finding:
        return Finding(
            f"{self.name}.population",
            "population",
            self.config.population_action,
            self.enforce,
            dict(evidence),
        )

    @staticmethod
    def _actors(outcome: Outcome) -> list[tuple[str, str]]:
        ctx = outcome.ctx
        actors = [("ip", ctx.ip_key), ("net", ctx.net_key), ("fp", ctx.fingerprint)]
        site = ctx.site_key  # an IPv6 client's /48: its /64s are one site's, or one actor's
        if site is not None:
            actors.append(("net", site))
        principal = outcome.principal
        if principal != ctx.ip_key and not ctx.vouched:
            actors.append(("principal", principal))
        if ctx.pass_key is not None:
            actors.append(("pass", ctx.pass_key))
        return actors


def _failed(login: LoginAttempt, status: int) -> bool | None:
    """True for a failed login, False for a success, None for neither."""
    if login.gated:
        return True
    if login.success is not None:
        return not login.success
    if 200 <= status < 300:
        # (none where the route's app reports its outcomes and reported none here, nor
        # for a page: a form shown again, or a dashboard shown after a good password)
        return False if login.status_succeeds() else None
    if status in _FAILED:
        return True
    return None
