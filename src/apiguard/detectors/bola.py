"""BOLA enumeration (OWASP API1): a principal touching more objects than people do.

Per principal and route template, within the window: the distinct object identifiers
touched (the route's path parameters, and configured query parameters; a linear-counting
sketch in the store, never a list of ids), how many of them were answered 403/404, and the
run of constant-stride steps between integer ids. Flagged (see `BolaConfig`):
- more distinct objects than the route's population (a high percentile of the principals
  seen there, times a factor; a floor before enough principals are seen, and always);
- a sequential walk (`sequential_run` steps of one constant stride);
- a walk mostly answered 403/404 (never required: on the route that is really vulnerable
  every answer is 200);
- a young account over `young_floor` objects: an account born in a sign-up (a request
  with neither credential nor cookie, answered 2xx by a route completing a flow, in which
  the app identified the user) within `young_for` owns next to nothing yet, so a harvest
  spread over fresh accounts, each under the population's bar, is caught per account.

Every answer counts as an object touched, server errors too (5xx, or a handler that
raised): an app that answers a foreign id with 500 is walked all the same. A 5xx is not a
403/404 in the error share, and a retry of one object adds no distinct object.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from apiguard.detectors.base import EVERY_REQUEST, Finding, Judge, Outcome, shared_factor
from apiguard.detectors.flow_groups import born_accounts as _born
from apiguard.detectors.population import Population, Populations
from apiguard.detectors.young_crowd import YoungCrowd
from apiguard.picking import read_integer
from apiguard.routes import serves_files
from apiguard.store.base import Objects, Tally

if TYPE_CHECKING:
    from apiguard.config import BolaConfig
    from apiguard.store.base import Observation


class Bola:
    """The BOLA enumeration detector (see the module docstring)."""

    name = "bola"
    watches = EVERY_REQUEST

    def __init__(self, config: BolaConfig, enforce: bool) -> None:
        self.config = config
        self.enforce = enforce
        self.populations = Populations(
            config.warmup_floor,
            config.floor,
            config.percentile,
            config.factor,
            config.min_principals,
            config.ceiling,
        )
        self._query = frozenset(config.query_params)
        # young accounts flagged lately -> when (in process, the latest `_YOUNG_KEPT`)
        self._young_flags: OrderedDict[str, float] = OrderedDict()
        # accounts a judge found young -> until when (in process, the latest
        # `_YOUNG_SEEN_KEPT`): a young account another detector flags (rotation: one
        # account from a dozen networks) arms the alarm too (`young_flagged`)
        self._young_seen: OrderedDict[str, float] = OrderedDict()
        # a harvest over fresh accounts each under the young floor (`young_crowd`)
        self.crowd = YoungCrowd(
            config.young_crowd,
            max(2, math.ceil(config.young_floor * _CROWD_OWN)),
            config.young_for,
        )
        self._routes: dict[str, _Route] = {}  # route template -> its keys and floor
        # a run shorter than this is no walk, whatever the scale (at least half the bar)
        self._no_walk = config.sequential_run * 0.5
        self._window = config.window
        self._sustained_for = config.sustained_window
        # young accounts are watched only where a person can answer (`_principal_judge`)
        self._young_watch = config.person_action == "challenge"
        # an in-process store's `run_objects`, bound by the engine: an object is counted
        # at once, in `plan` (no batch, and no judge unless there is a finding)
        self.run_now: Callable[[Objects, float], None] | None = None
        # and its `run_walk` (an integer id answered without an error: no `Objects`)
        self.walk_now: Callable[[str, float, str, int, float], tuple[float, int, int]] | None = (
            None
        )

    def _young_found(self, subject: str, now: float) -> None:
        flags = self._young_flags
        flags.pop(subject, None)
        if len(flags) >= _YOUNG_KEPT:
            flags.popitem(last=False)
        flags[subject] = now

    def _birth(self, born: tuple[str, ...], outcome: Outcome) -> Judge | None:
        """At a sign-up while young accounts are being flagged (`young_alarm` flagged
        within `young_for`, or `young_alarm_for` while nobody has passed a challenge in
        this process, that did not pass the challenge since, as this process saw
        them): the new account must pass the challenge before it reads any object (a
        harvest over fresh accounts gets nothing more; a person passes). It is asked
        under each key it may be known by later (`born`: as `identify()` names it and as
        a principal resolver, e.g. Django's user, does)."""
        cfg = self.config
        now = outcome.now
        if len(self._young_flags) < cfg.young_alarm or cfg.person_action != "challenge":
            return None  # (an app without a challenge is never refused at sign-up)
        engine = outcome.ctx.engine
        # an app where nobody passed a challenge yet may have no challenge flow: there
        # the alarm refuses every newcomer, so a flag arms it for `young_alarm_for` only
        # (an attacker keeping it on needs a flagged account that often, not once a day)
        armed_for = cfg.young_for if engine.challenges_answered else cfg.young_alarm_for
        unanswered = [
            at
            for subject, at in self._young_flags.items()
            if now - at <= armed_for and not engine.passed(subject, now)
        ]
        if len(unanswered) < cfg.young_alarm:
            return None
        evidence: dict[str, float | int | str] = {
            "young_flagged": len(unanswered),
            "since": round(now - min(unanswered), 1),
        }

        def judge() -> list[Finding]:
            return [
                Finding(YOUNG_ALARM, key, cfg.person_action, self.enforce, evidence)
                for key in born
            ]

        return judge

    def _object(self, scope: Mapping[str, Any]) -> tuple[str, int | None] | None:
        """The object the request touched (a text naming it) and its integer id, if any:
        with several integer ids (`/tenants/{tenant_id}/orders/{order_id}`), one number
        of them all (`_combined`), so a walk over any of them, or over several at once in
        any directions, is a run of one stride. Every
        value counts, whatever its length or shape (a `{key:path}` value, a padded id):
        an id written as digits is normalised (`0042` is `42`), and query names are
        decoded as the framework decodes them."""
        params = scope.get("path_params")
        parts: list[str] = []
        number: int | None = None
        if params:
            for name, value in params.items():
                text, found = _normalised(value, None)
                if found is not None:
                    number = found if number is None else _combined(number, found)
                parts.append(f"{name}={text}")
        if self._query:
            for name, value in _query_ids(scope, self._query):
                text, found = _normalised(value, None)
                if found is not None:
                    number = found if number is None else _combined(number, found)
                parts.append(f"{name}={text}")
        if not parts:
            return None
        return "&".join(parts), number

    def _route(self, template: str, scope: Mapping[str, Any]) -> _Route:
        """What the detector needs of `template` (served in `scope`), worked out once
        (bounded). A route serving static files is not watched (a file name is no
        object of anyone's)."""
        routes = self._routes
        if len(routes) >= _ROUTES_MAX:
            routes.clear()
        own = self.config.routes.get(template) if self.config.routes else None
        if own is None and serves_files(scope):
            own = 0
        route = routes[template] = _Route(template, own, self.populations.get(template))
        return route

    def plan(self, outcome: Outcome, ops: list[Observation]) -> Judge | None:
        ctx = outcome.ctx
        scope = ctx.scope
        params = scope.get("path_params")
        if params and len(params) == 1 and not self._query and ctx.objects is None:
            # (the usual case, without `_object`'s list: one path parameter)
            for name, value in params.items():  # noqa: B007 (the one item)
                break
            number: int | None
            if type(value) is int:
                text, number = str(value), value
            elif type(value) is str and value.isdecimal() and value[0] != "0" and len(value) < 19:
                text, number = value, int(value)
            else:
                text, number = _normalised(value, None)
        elif ctx.objects:
            return self._declared(outcome, ops, ctx.objects)
        else:
            found = self._object(scope)
            if found is None:
                born = _born(outcome)
                if not born:
                    if (
                        200 <= outcome.status < 300
                        and ctx.vouched
                        and ctx.login is None
                        and _upper(ctx.scope.get("method")) in CREATES
                    ):
                        self.crowd.wrote(outcome.principal)  # (a newcomer made its own)
                    return None
                for key in born:
                    self.crowd.born(key, outcome.now)
                ops.extend(Tally(YOUNG + key, self.config.young_for) for key in born)
                return self._birth(born, outcome)
            text, number = found
            name = ""
        return self._touch(outcome, ops, text, number, name)

    def _declared(
        self, outcome: Outcome, ops: list[Observation], declared: list[tuple[str, object]]
    ) -> Judge | None:
        """A request whose app declared the object ids it touched (a body's ids, a batch
        read): each is an object of the route, beside its path and query object if any.
        A batch of ids makes no walk for a principal (a walk is a sequence of requests,
        and a batch of an owner's consecutive ids is not one: its distinct objects are
        counted); for an anonymous address, which owns nothing and is judged on walks,
        the batch's ids in ascending order are one (its order is the client's choice)."""
        ctx = outcome.ctx
        found = self._object(ctx.scope)
        items = [found] if found is not None else []
        walks = len(declared) == 1 or (
            not ctx.vouched and not ctx.has_cookie and outcome.principal == ctx.ip_key
        )
        batch = []
        for name, value in declared:
            text, number = _normalised(value, None)
            batch.append((f"{name}={text}", number if walks else None))
        if walks and len(batch) > 1:
            batch.sort(key=lambda item: (item[1] is None, item[1] or 0))
        items += batch
        judges: list[Judge] = []
        for text, number in items:
            judge = self._touch(outcome, ops, text, number, "")
            if judge is not None:
                judges.append(judge)
        if not judges:
            return None
        if not walks or len(judges) == 1:
            return judges[-1]  # (the last one's results are the request's: its count)

        # an anonymous batch: the longest run it reached anywhere (a far id appended
        # after a run of consecutive ids breaks the run at the last one)
        def judge_walks(judges: list[Judge] = judges) -> list[Finding]:
            for one in judges:
                found = one()
                if found:
                    return found
            return []

        return judge_walks

    def _touch(
        self, outcome: Outcome, ops: list[Observation], text: str, number: int | None, name: str
    ) -> Judge | None:
        """Count one object (`text`, its integer `number`, its path parameter's `name`)
        touched on the request's route; the judge of the principal's results."""
        status = outcome.status
        ctx = outcome.ctx
        template = outcome.route
        if template is None:
            return None
        route = self._routes.get(template)
        if route is None:
            route = self._route(template, ctx.scope)
        if route.floor == 0:
            return None
        # the item names its route and parameter (only its sketch slot is kept, never
        # the text)
        if name == route.name:
            item = route.named + text
        elif name:
            item = route.item + name + "=" + text
            route.name, route.named = name, route.item + name + "="
        else:
            item = route.item + text
        # judged on an error answer only; a server error (5xx, or a handler that raised)
        # counts as an object touched (distinct, in a walk) but not as a 403/404: a walk
        # the app answers 500 is still a walk, and a retry of one object during an outage
        # adds no distinct object
        error = 403 <= status <= 404
        if (
            number is not None
            and number > route.highest
            and 200 <= status < 300
            and _upper(ctx.method) == "GET"
            # (a leap past twice the highest plus `_LEAP` is no new object: an app that
            # answers 200 for any id must not let one read raise every newcomer's mark)
            and (route.highest < 0 or number <= 2 * route.highest + _LEAP)
        ):  # (the young crowd's marks of what existed)
            route.highest = number
            self.crowd.highest(template, number, outcome.now)
        if number is not None and not error and status < 300 and ctx.method in CHANGES:
            # a change answered 2xx extends no walk ("clear completed", "mark all as
            # read": a person's own objects changed in id order); still an object counted
            number = None
        principal = outcome.principal
        if not ctx.vouched and principal == ctx.ip_key and (not ctx.has_cookie or route.public):
            # an anonymous address: counted, and flagged for a walk or its errors, or for
            # the objects the app let it change (`_anonymous_write`); on a public
            # catalogue, one with a cookie but no credential too (a consent banner's
            # cookie makes no session the app knows)
            wrote = None
            if 200 <= status < 400:
                method = ctx.scope.get("method")
                if method != "GET":
                    method = _upper(method)
                if method == "GET":
                    if not route.public and status < 300:
                        route.answered_anonymously(principal, item)
                elif method in WRITES:
                    wrote = self._anonymous_write(outcome, ops, route, item)
            found = self._address_read(outcome, ops, route, item, number, error)
            if wrote is None or found is None:
                return wrote or found
            return _either(found, wrote)
        if route.public and not ctx.vouched and ctx.engine.token_owner(ctx) is not None:
            # a signed-in person's token sent to a public catalogue that identifies nobody
            # (a single-page app's interceptor sends it everywhere): judged as an
            # anonymous reader is there (a walk, its errors), under the token
            return self._address_read(outcome, ops, route, item, number, error)
        if ctx.vouched or not ctx.has_cookie:
            # (the usual principal, without `_subject`: a user the app vouched for, or a
            # credential without a cookie, is counted under itself, and only there)
            return self._principal_touch(
                outcome, ops, template, route, item, number, error, principal, principal
            )
        subject, _, banned = _subject(outcome)
        found = self._principal_touch(
            outcome, ops, template, route, item, number, error, subject, banned
        )
        if principal == ctx.ip_key:
            # a cookie and no credential: a session, counted as one above, and its
            # address's reads and writes as an anonymous address's (a cookie made up per
            # request, such as Django's CSRF cookie or a junk one, which any client may
            # set, makes a session per request)
            if 200 <= status < 400 and _upper(ctx.method) in WRITES:
                also = self._anonymous_write(outcome, ops, route, item)
            else:
                also = self._address_read(outcome, ops, route, item, number, error)
            if also is not None:
                found = also if found is None else _either(found, also)
        if subject != principal and principal != ctx.ip_key and not ctx.vouched:
            # a credential the app did not vouch for, beside a cookie: counted for the
            # address and cookie (made-up keys rotated beside one session) and for the
            # credential too (one token's walk rotated over addresses, or over the
            # cookies a client sends: apiguard's own device cookie is one)
            also = self._principal_touch(
                outcome, ops, template, route, item, number, error, principal, principal
            )
            if found is None or also is None:
                return found or also
            return lambda: found() + also()
        return found

    def _address_read(
        self,
        outcome: Outcome,
        ops: list[Observation],
        route: _Route,
        item: str,
        number: int | None,
        error: bool,
    ) -> Judge | None:
        """Count one object an anonymous address touched; the judge of a walk or its
        errors."""
        key = f"bola:{outcome.principal}{route.key}"
        walk_now = self.walk_now
        if walk_now is not None and number is not None and not error:
            # (an in-process store, an integer id, no error: the run's length is all
            # that can flag it, and no `Objects` is made unless it does)
            count, length, stride = walk_now(key, self._window, item, number, outcome.now)
            if length < self._no_walk:
                return None
            op = _walked(key, self._window, item, number, count, length, stride)
            findings = self._address_found(op, outcome, route.public)
            return (lambda: findings) if findings else None
        # (an `Objects` operation: an error answer, an id that is no integer, or a store
        # that is not in process)
        op = Objects(key, self._window, item, number, error)
        run_now = self.run_now
        if run_now is not None:
            run_now(op, outcome.now)
            if not error and (number is None or op.length < self._no_walk):
                return None
            findings = self._address_found(op, outcome, route.public)
            return (lambda: findings) if findings else None
        ops.append(op)
        if number is None and not error:
            return None  # nothing an address can be flagged for was seen
        public = route.public

        # (bound as defaults, not closed over: no cell objects per request)
        def judge(
            op: Objects = op,
            outcome: Outcome = outcome,
            bola: Bola = self,
            public: bool = public,
        ) -> list[Finding]:
            if not op.error and op.length < bola._no_walk:
                return []
            return bola._address_found(op, outcome, public)

        return judge

    def _anonymous_write(
        self, outcome: Outcome, ops: list[Observation], route: _Route, item: str
    ) -> Judge | None:
        """An unvouched address's write the app accepted (answered 2xx or 3xx: a form's
        redirect) on an object route, without a credential: the distinct objects it
        changed are counted apart from its reads, and flagged past the route's own floor
        (`routes`), else `floor`, in any order. Not judged on a publicly written route
        (`_Route.wrote_many`: a view counter, a public vote); an address people log in
        from (an office's NAT) gets a bar scaled by them and is challenged, not blocked."""
        if route.publicly_written:
            return None
        address = outcome.principal
        ctx = outcome.ctx
        op = Objects(WRITES_KEY + address + route.key, self._window, item, None, False)
        network = ctx.site_key or ctx.net_key  # (where it wrote from: a /24, an IPv6 /48)
        cfg = self.config
        bar: float = cfg.floor if route.floor is None else route.floor
        action: str = cfg.action
        people = ctx.engine.people_at(address)
        if people > 1:  # (challenged, not banned: `shared_factor` times the floor)
            bar *= shared_factor(people)
            action = "challenge"
        if outcome.prior:
            bar *= 0.5
        run_now = self.run_now
        if run_now is not None:
            run_now(op, outcome.now)
            if op.count >= PUBLIC_WRITES and route.wrote_many(network):
                return None
            if op.count < bar:
                return None
        else:
            ops.append(op)
        template = outcome.route or ""

        def judge() -> list[Finding]:
            if op.count >= PUBLIC_WRITES and route.wrote_many(network):
                return []
            if op.count < bar:
                return []
            found = self._found(op, template, address, action, 1.0, bar, route.population)
            for finding in found:
                finding.evidence["anonymous_writes"] = 1
                finding.evidence["people"] = people
            return found

        return judge

    def _principal_touch(
        self,
        outcome: Outcome,
        ops: list[Observation],
        template: str,
        route: _Route,
        item: str,
        number: int | None,
        error: bool,
        subject: str,
        banned: str,
    ) -> Judge | None:
        """Count one object for `subject` on `route`; the judge of its results."""
        key = "bola:" + subject + route.key
        walk_now = self.walk_now
        if walk_now is not None and number is not None and not error:
            # (an in-process store, an integer id, no error: judged at once, and no
            # `Objects` made unless the results may make a finding)
            window = self._window
            count, length, stride = walk_now(key, window, item, number, outcome.now)
            learned = route.population.update(subject, count)
            floor = route.floor
            if floor is not None:
                if learned < floor:
                    learned = floor
                young = False
            else:  # (a young account's floor may apply: `_principal_judge`)
                young = self._young_watch and outcome.ctx.vouched
            # a slow walk's objects over `sustained_window`, counted once this window
            # holds a quarter of the bar (a person reading a few objects costs nothing)
            long = None
            watch = young
            if count >= self._sustained_from(route):
                long = self._sustained(subject, route, item, outcome.now, ops)
                watch = watch or long.count >= learned * self.config.sustained_factor * 0.5
            # below every bar a finding may use (half of each, for a repeat offender)
            if count < learned * 0.5 and length < self._no_walk and not watch:
                return None
            op = _walked(key, window, item, number, count, length, stride)
            return self._principal_judge(
                op, outcome, template, route, subject, banned, ops, learned, long
            )
        op = Objects(key, self._window, item, number, error)
        run_now = self.run_now
        long = None
        if run_now is not None:
            run_now(op, outcome.now)  # (its results read by the judge)
            # (an error answer always: a slow guesser of codes tries one every few
            # minutes, under any count a window needs)
            if error or op.count >= self._sustained_from(route):
                long = self._sustained(subject, route, item, outcome.now, ops, error)
        else:  # (a shared store: in the request's one batch)
            ops.append(op)
            long = self._sustained(subject, route, item, outcome.now, ops, error)
        return self._principal_judge(
            op, outcome, template, route, subject, banned, ops, None, long
        )

    def _known_young(self, subject: str, now: float) -> bool:
        """Whether a judge found `subject` young (and it still is)."""
        until = self._young_seen.get(subject)
        if until is None:
            return False
        if until < now:
            del self._young_seen[subject]
            return False
        return True

    def young_flagged(self, subject: str, now: float) -> None:
        """Another detector flagged `subject` (a rotation ban): if a judge found it young,
        it counts as a flagged young account for the alarm (a harvest over throwaway
        accounts at one read a minute or two, from a new address each, stays under the
        young floor in every window, and each account is banned by rotation first)."""
        if self._known_young(subject, now):
            self._young_found(subject, now)

    def _seen_young(self, subject: str, now: float) -> None:
        seen = self._young_seen
        if subject in seen:
            return
        if len(seen) >= _YOUNG_SEEN_KEPT:
            seen.popitem(last=False)
        seen[subject] = now + self.config.young_for

    def _sustained_from(self, route: _Route) -> float:
        """The objects in `window` from which a principal's objects on `route` count for
        its sustained walk: a quarter of the route's own floor, else of `floor`, and at
        most `_SUSTAINED_MIN` (a walk of 7 objects every 10 minutes is 1,000 a day) (a
        fixed bar, so that every path to the store makes the same operations)."""
        floor = route.floor if route.floor is not None else self.config.floor
        return min(floor * _SUSTAINED_FROM, _SUSTAINED_MIN)

    def _sustained(
        self,
        subject: str,
        route: _Route,
        item: str,
        now: float,
        ops: list[Observation],
        error: bool = False,
    ) -> Objects:
        """Count `item` among `subject`'s distinct objects on `route` over
        `sustained_window` (a slow walk: see `BolaConfig`), and among those answered
        403/404 when `error` (a slow guesser of codes)."""
        op = Objects(SUSTAINED + subject + route.key, self._sustained_for, item, None, error)
        run_now = self.run_now
        if run_now is not None:
            run_now(op, now)
        else:
            ops.append(op)
        return op

    def _address_found(self, op: Objects, outcome: Outcome, public: bool) -> list[Finding]:
        """An anonymous address's finding on `op`'s results: a walk or a 403/404 share. On
        a public route (`_Route.public`) a walk must be `PUBLIC_WALK` times as long: a
        reader pressing "next" through a catalogue walks its ids too."""
        scale = 0.5 if outcome.prior else 1.0
        if public and not op.error:
            scale *= PUBLIC_WALK
        template = outcome.route or ""
        return self._found(op, template, outcome.principal, self.config.action, scale, math.inf)

    def _principal_judge(
        self,
        op: Objects,
        outcome: Outcome,
        template: str,
        route: _Route,
        subject: str,
        banned: str,
        ops: list[Observation],
        learned_now: float | None = None,
        long: Objects | None = None,
    ) -> Judge:
        """The judge of a principal's object: more objects than the route's population
        does (or than a young account may), a walk, a 403/404 share, or more objects
        over `sustained_window` than `sustained_factor` times the bar (`long`, if
        counted) (`learned_now`: the population's bar, already updated with this
        object's count)."""
        cfg = self.config
        ctx = outcome.ctx
        population = route.population
        own_floor = route.floor
        young: Tally | None = None
        # young accounts only where a person can answer (person_action "challenge")
        if own_floor is None and ctx.vouched and self._young_watch:
            young = Tally(YOUNG + subject, cfg.young_for, amount=0)  # (a read)
            ops.append(young)
        person = ctx.vouched
        action = cfg.person_action if person else cfg.action

        def judge() -> list[Finding]:
            # the route's population is its principals: an office browsing a catalogue
            # (an anonymous address) must not raise it
            learned = learned_now
            if learned is None:
                learned = population.update(subject, op.count)
                if own_floor is not None:
                    learned = max(learned, own_floor)
            # a principal banned for enumeration before is judged on half the evidence
            # (the objects it walked before the ban still count, and its walk restarts
            # elsewhere); a person who passed the challenge a finding asked for is judged
            # on four times the evidence, and blocked if it goes on past that
            scale = 0.5 if outcome.prior else 1.0
            passed = person and ctx.engine.passed(subject, outcome.now)
            if passed:
                scale = 4.0
            # a young account is held to the young floor until it passes the challenge
            # (then it is a person: the population's bar, four times over)
            # (a newcomer may browse a public catalogue: four times the floor there)
            young_floor = cfg.young_floor * (PUBLIC_YOUNG if route.public else 1)
            is_young = (
                not passed
                and young is not None
                and young.count > 0
                and young_floor < learned
            )
            if is_young:
                learned = young_floor
                self._seen_young(subject, outcome.now)
            findings = self._found(op, template, banned, action, scale, learned, population)
            if is_young and findings and findings[0].detector == _DISTINCT:
                findings[0].evidence["young"] = 1
                self._young_found(subject, outcome.now)
            if not findings and long is not None:
                evidence: dict[str, float | int | str] = {
                    "route": template,
                    "objects": round(long.count),
                    "window": cfg.sustained_window,
                }
                long_scale = scale
                if (
                    scale < 4.0
                    and person
                    and ctx.engine.passed_within(subject, outcome.now, cfg.sustained_window)
                ):
                    # (a person who passed a challenge within the long window: the
                    # objects that asked it are in the count, and were answered)
                    long_scale = 4.0
                bar = learned * cfg.sustained_factor * long_scale
                if long.count < bar:
                    bar = 0.0
                    if long.error:
                        # a slow guesser (gift codes, invitation or reset tokens): mostly
                        # 403/404 over the long window, under the errors bar of each
                        # window (and in this window too: in process an object answered
                        # 200 counts for the long window only past a few in one window,
                        # so a reader's share there is of its errors alone)
                        errors = long.errors
                        guessed = cfg.errors_floor * cfg.sustained_factor * scale
                        if (
                            errors >= guessed
                            and errors / max(long.count, errors) >= cfg.error_share
                            and op.errors / max(op.count, op.errors) >= cfg.error_share
                        ):
                            bar = guessed
                            evidence["errors"] = round(errors)
                if bar:
                    evidence["threshold"] = round(bar, 1)
                    fire = "block" if long_scale > 1 else action
                    findings = [Finding(_SUSTAINED, banned, fire, self.enforce, evidence)]
                    if is_young:  # (a slow harvest over fresh accounts arms the alarm)
                        evidence["young"] = 1
                        self._young_found(subject, outcome.now)
            if is_young and not findings and not route.public:
                at_bar = self.crowd.read(subject, op.item, outcome.now, template, op.value)
                if at_bar is not None:  # (a member of a crowd at its bar)
                    objects, crowd_bar = at_bar
                    level = self.crowd.level.level
                    evidence = {
                        "route": template,
                        "objects": round(op.count),
                        "young_objects": objects,
                        "threshold": round(crowd_bar, 1),
                        "baseline": round(level, 1) if level is not None else -1,
                        "young": 1,
                    }
                    self._young_found(subject, outcome.now)
                    findings = [Finding(_CROWD, banned, action, self.enforce, evidence)]
            return findings

        return judge

    def _found(
        self,
        op: Objects,
        template: str,
        banned: str,
        action: str,
        scale: float,
        learned: float,
        population: Population | None = None,
    ) -> list[Finding]:
        """The finding (at most one) on `op`'s results, with `scale` times the bars: more
        objects than `learned` (never for an anonymous address: `learned` is infinite), a
        walk, or a 403/404 share."""
        cfg = self.config
        count = op.count
        bar = learned * scale
        walk = cfg.sequential_run
        if learned != math.inf:
            # a principal on a route given its own floor (`routes`): an integration reading
            # its thousands of objects there reads them in id order too, so its walk is
            # judged at that floor (an anonymous address, which owns nothing, is not)
            route = self._routes.get(template)
            if route is not None and route.floor is not None and route.floor > walk:
                walk = route.floor
        if count >= bar:
            kind, threshold = _DISTINCT, bar
        elif op.value is not None and op.length >= walk * scale:
            kind, threshold = f"{self.name}.sequential", walk * scale
        elif (
            op.error
            and op.errors >= cfg.errors_floor * scale
            and op.errors / max(count, op.errors) >= cfg.error_share
        ):
            kind, threshold = f"{self.name}.errors", cfg.errors_floor * scale
        else:
            return []
        evidence: dict[str, float | int | str] = {
            "route": template,
            "objects": round(count),
            "threshold": round(threshold, 1),
        }
        if kind == _DISTINCT:
            learned_at = population.learned if population is not None else None
            evidence["baseline"] = round(learned_at, 1) if learned_at is not None else -1
            evidence["young"] = 0
        elif op.error and kind == f"{self.name}.errors":
            evidence["errors"] = round(op.errors)
        else:
            evidence.update(run=op.length, stride=op.stride)
        fire = "block" if scale > 1 else action  # past the bar a pass raised: blocked
        return [Finding(kind, banned, fire, self.enforce, evidence)]


class _Route:
    """What the detector needs of one route template: the suffix of its keys, the prefix
    of its items (and with its parameter's name, when it has one), and its own floor
    (None: the population's; 0: not watched)."""

    __slots__ = (
        "_seen",
        "_writers",
        "floor",
        "highest",
        "item",
        "key",
        "name",
        "named",
        "population",
        "public",
        "publicly_written",
    )

    def __init__(self, template: str, floor: int | None, population: Population) -> None:
        self.key = ":" + template
        self.population = population  # (its principals' objects: the learned bar)
        self.item = template + "\n"
        self.name = ""  # the route's one path parameter, once seen
        self.named = self.item
        self.floor = floor
        self.highest = -1  # the highest integer id a GET was answered 2xx for
        # it answered anonymous GETs for `PUBLIC_AFTER` distinct objects from as many
        # distinct addresses 2xx: its objects are public (a catalogue), so reading many
        # is no sign of a harvest of what others own
        self.public = False
        self._seen: tuple[set[str], set[str]] = (set(), set())
        # anonymous writes from `PUBLIC_WRITERS` networks of `PUBLIC_WRITES` objects each
        # (a view counter, a public vote): objects anyone may change, so changing many is
        # no sign of a harvest
        self.publicly_written = False
        self._writers: set[str] = set()

    def answered_anonymously(self, address: str, item: str) -> None:
        """An anonymous GET for object `item` from `address` was answered 2xx."""
        addresses, items = self._seen
        if len(addresses) < PUBLIC_AFTER:
            addresses.add(address)
        if len(items) < PUBLIC_AFTER:
            items.add(item)
        if len(addresses) >= PUBLIC_AFTER and len(items) >= PUBLIC_AFTER:
            self.public = True
            self._seen = (set(), set())

    def wrote_many(self, network: str) -> bool:
        """Addresses of `network` changed `PUBLIC_WRITES` objects or more here without a
        credential; whether the route is publicly written now (`PUBLIC_WRITERS` networks
        did: readers of many articles each pinging a view counter; guests changing their
        own cart each do not, nor does a harvest from a few addresses)."""
        if self.publicly_written:
            return True
        writers = self._writers
        writers.add(network)
        if len(writers) >= PUBLIC_WRITERS:
            self.publicly_written = True
            self._writers = set()
        return self.publicly_written


def _upper(method: object) -> object:
    """A request method upper-cased (a WSGI server may pass it as the client wrote it)."""
    return method.upper() if isinstance(method, str) else method


def _either(first: Judge, second: Judge) -> Judge:
    """A judge of `first`'s findings, else `second`'s (one finding per object at most)."""
    return lambda: first() or second()


def _walked(
    key: str, window: float, item: str, number: int, count: float, length: int, stride: int
) -> Objects:
    """The `Objects` operation `Bola.walk_now` ran, with its results (a finding's input)."""
    op = Objects(key, window, item, number, False)
    op.count, op.length, op.stride = count, length, stride
    return op


_ROUTES_MAX = 1024  # route templates remembered (they are code-defined)
PUBLIC_WALK = 4.0  # times the walk an anonymous address may take on a public route
PUBLIC_AFTER = 3  # distinct anonymous addresses and objects answered that make a route public
PUBLIC_YOUNG = 4  # times the young floor on a public route
_DISTINCT = "bola.distinct"
_SUSTAINED = "bola.sustained"
SUSTAINED = "bolas:"  # detector-table prefix of a principal's objects over `sustained_window`
_SUSTAINED_FROM = 0.25  # of the bar in `window`: from there on, objects count for it too
_SUSTAINED_MIN = 4.0  # (and from this many at most)
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})  # methods that change an object
CREATES = frozenset({"POST", "PUT", "PATCH"})  # (and those that may make one)
CHANGES = WRITES - {"POST"}  # (methods that change an object named)
WRITES_KEY = "bolaw:"  # detector-table prefix of an anonymous address's writes
PUBLIC_WRITERS = 10  # networks writing `PUBLIC_WRITES` objects each that make a route public
PUBLIC_WRITES = 3


def names_object(scope: Mapping[str, Any], query_names: frozenset[str]) -> bool:
    """Whether a request names an object the detector counts (read as `Bola` reads it):
    a path parameter, or a non-empty query parameter in `query_names`."""
    if scope.get("path_params"):
        return True
    return bool(query_names) and any(True for _ in _query_ids(scope, query_names))


def _query_ids(scope: Mapping[str, Any], names: frozenset[str]) -> Iterator[tuple[str, str]]:
    query = scope.get("query_string") or b""
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=False):
        if name in names:
            yield name, value


YOUNG = "young:"  # detector-table prefix of an account born in a sign-up
_YOUNG_KEPT = 64  # flagged young accounts remembered for the alarm
_YOUNG_SEEN_KEPT = 65_536  # accounts remembered as young (`Bola._young_seen`, the latest)
# a young account reading this share of `young_floor` more objects than it wrote (at
# least 2) is a member of the crowd (`apiguard.detectors.young_crowd`)
_CROWD_OWN = 0.3
_CROWD = "bola.young_crowd"
_LEAP = 100_000  # a route's highest id read rises at most to twice itself plus this
YOUNG_ALARM = "bola.young"  # a newcomer's finding at sign-up while the alarm is armed


def _subject(outcome: Outcome) -> tuple[str, bool, str]:
    """Whose objects these are: (the key BOLA counts under, whether it is an anonymous
    address, the key a finding bans).

    - a principal the app vouched for: itself;
    - a request with a cookie but no vouched user (a cookie-session app that does not
      call `identify()`): the keyed hash of its address and cookie header, one session
      per person behind an office NAT, and made-up API keys beside the session cookie
      change nothing; a finding bans the address (what such an app's requests share);
    - an unvouched credential without a cookie (an API key): the credential;
    - else an anonymous address: its reads are of what anyone may read, so only a
      sequential walk or a 403/404 share flags it (an office NAT browsing a public
      catalogue reads many objects), never the number of objects alone.
    """
    ctx = outcome.ctx
    principal = outcome.principal
    if ctx.vouched:
        return principal, False, principal
    if ctx.has_cookie:
        session = ctx.engine.hasher("ck", ctx.ip_key + (ctx.header("cookie") or ""))
        return session, False, ctx.ip_key
    if principal != ctx.ip_key:
        return principal, False, principal
    return principal, True, principal


_SHIFT = 1 << 24  # `_combined`: each further id's place
_EXACT = 1 << 53  # integers a Lua number (a Redis script's) holds exactly


def _combined(number: int, found: int) -> int:
    """Two integer ids of one request as one number: `number` shifted by 2^24 plus
    `found`, so a walk over either, or over both in any directions, is a constant stride
    (ids under 2^24, the usual); past what a Redis script's number holds exactly, their
    sum (a walk over one of them, the others fixed, is still a run)."""
    if 0 <= found < _SHIFT and abs(number) < _EXACT // _SHIFT:
        return number * _SHIFT + found
    return number + found


def _normalised(value: object, number: int | None) -> tuple[str, int | None]:
    """A parameter's text as an object id, and the integer it is (else `number`): an int,
    an integral float (`5001.0`, a JSON body's number), or text `int()` would read
    (`picking.read_integer`: ` 5001`, `+5001`, `5_001`, `5001.0`)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value), value
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e18:
        whole = int(value)
        return str(whole), whole
    text = str(value)
    found = read_integer(text)
    if found is not None:
        return str(found), found
    return text.strip(), number
