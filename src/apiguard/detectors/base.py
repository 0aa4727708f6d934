"""What detectors see and what they conclude.

A detector looks at a request's `Outcome` after its response, adds the `Tally` / `Run`
operations it needs to the request's one observation batch (run by the store in one call,
off the response's critical path), and from their results returns `Finding`s. The engine
turns an enforced finding into a ban with the detector's action (checked by the
checkpoints that already run: no detector adds a store call to the request path), and
reports every finding, enforced or monitored, as telemetry with its evidence.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from apiguard.request import RequestContext
    from apiguard.store.base import Observation


@dataclass(slots=True)
class LoginAttempt:
    """A login the app reported: the keyed hash of the username, and its outcome (None
    until known: then the response status decides)."""

    user: str
    success: bool | None = None
    exists: bool | None = None
    gated: bool = False  # refused before the handler by the login gate (a challenge)
    held: bool = False  # gated by its account's own hold (not the population's alarm)
    # let through by a challenge pass past a challenge that stood at the login (a shared
    # address's, a network's, a fingerprint's, the population alarm's)
    past_gate: bool = False
    # let past the population alarm as a known client (`known_clients`): its failure
    # counts against its client shape and place
    known: bool = False
    in_flight: bool = False  # counted among its address's unanswered attempts
    device: str = ""  # `login.device_key` of the name as sent (its device cookie's entry)
    html: bool = False  # answered with an HTML page (`login.html_answer`)
    # checked by the framework's authentication, which reports failures only (Django's
    # `authenticate()` through `apiguard.django.LoginGate`): answered under 500 with no
    # failure reported, it succeeded
    checking: bool = False
    # its success was so inferred, not reported: counted, but no device cookie (a backend
    # error the view swallowed, answered 200, reports no failure either)
    inferred: bool = False
    # the `@guard.login` rule that recorded it (None: `login_result()` alone): whether
    # its route reports its outcomes (`LoginRule.reported`), so that a 2xx it did not
    # report is no success (a form re-rendered 200 for a missing CSRF token is no login)
    rule: Any = None

    def status_succeeds(self) -> bool:
        """Whether a 2xx answer is this attempt's success: the app reported no outcome,
        its login route does not report them, and (unless declared `reports=False`) the
        answer is no HTML page (a form's failed login shows the form again, 200)."""
        if self.success is not None:
            return False
        rule = self.rule
        if rule is None:
            return not self.html
        if rule.reported:
            return False
        return not (self.html and rule.reports is None)


@dataclass(slots=True)
class Outcome:
    """One finished request, as the detectors see it."""

    ctx: RequestContext
    status: int
    principal: str
    now: float
    login: LoginAttempt | None = None
    # the template of the route that served the request (`RequestContext.route`, read
    # once for every detector: routing is over)
    route: str | None = None

    @property
    def prior(self) -> int:
        """The escalation level of a detector ban on the principal that ended less than
        `bans.memory` ago (0: none): a repeat offender is judged on less evidence."""
        return self.ctx.engine.prior(self.principal, self.now)


@dataclass(slots=True)
class Finding:
    """A detection: who (`subject`, a keyed hash), what to do, and the evidence (counts
    and the threshold that fired, never a raw value)."""

    detector: str
    subject: str
    action: str
    enforce: bool
    evidence: dict[str, float | int | str] = field(default_factory=dict)
    owner: str | None = None  # the principal a subject that is not one belongs to
    # why a finding of an enforced detector is reported only (the detection log says so
    # instead of "monitor mode")
    unenforced: str = ""


Judge = Callable[[], "list[Finding]"]

_K = TypeVar("_K", bound=Hashable)
RECENT_MAX = 131_072  # entries a `RecentlySent` table remembers


class RecentlySent(Generic[_K]):
    """What a detector sent to the store lately (bounded LRU, in process): a key sent
    less than `fresh` seconds ago is not sent again, so a principal that stays where it
    was costs no store operation."""

    def __init__(self, fresh: float) -> None:
        self.fresh = fresh
        self._sent: OrderedDict[_K, float] = OrderedDict()

    def due(self, key: _K, now: float) -> bool:
        """Whether `key` is to be sent now (then it counts as sent)."""
        sent = self._sent
        last = sent.get(key)
        if last is not None and now - last < self.fresh:
            return False
        if last is None and len(sent) >= RECENT_MAX:
            sent.popitem(last=False)
        sent[key] = now
        sent.move_to_end(key)
        return True


# what a detector's `plan` looks at (the engine does not call it for other requests):
EVERY_REQUEST = "every request"
PRINCIPALS = "principals"  # requests whose principal is not the client address
LOGINS = "logins"  # requests that reported a login (`Outcome.login` set)
# PRINCIPALS, and anonymous requests that named an account (`identify()` after the
# checkpoint, or `account_created()`): a possible sign-up
SIGNUPS = "signups"
MISSES = "misses"  # requests answered 404 or 405 (a path or method no route serves)

# times the floor at an address people log in from (an office's NAT): half their number,
# at most this (2 or 3 people: 1x, 8 or more: 4x; two throwaway logins buy nothing)
SHARED_FACTOR = 4


def shared_factor(people: int) -> int:
    """The factor of a floor at an address where the app vouched for `people` users."""
    return min(SHARED_FACTOR, people // 2) if people > 1 else 1


class Detector(Protocol):
    """A detector family (one module of `apiguard.detectors`)."""

    name: str
    enforce: bool
    # EVERY_REQUEST, PRINCIPALS, SIGNUPS, LOGINS or MISSES: `plan` returns None for the rest
    watches: str

    def plan(self, outcome: Outcome, ops: list[Observation]) -> Judge | None:
        """Add this request's operations to `ops`; return what judges their results
        (None: nothing to observe for this request)."""
        ...
