"""Typed outcomes of a check: what each rule found and what the request gets."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from apiguard.store.base import Hit as Verdict


class Action(str, enum.Enum):
    """What apiguard does with a request, from mildest to strongest."""

    ALLOW = "allow"
    MONITOR = "monitor"  # a rule would have refused it; mode="monitor" let it through
    THROTTLE = "throttle"  # 429: a limit is spent; retry after the window moves
    BLOCK = "block"  # 403: the principal is banned for a while (escalating)
    CHALLENGE = "challenge"  # 403: pass the app's own challenge first (a detector asked)


# the members as plain globals: `Action.THROTTLE` is a lookup through the enum's metaclass
# (about 150 ns here), and `refused` is asked on every request
_THROTTLE, _BLOCK, _CHALLENGE = Action.THROTTLE, Action.BLOCK, Action.CHALLENGE


@dataclass(frozen=True, slots=True)
class Policy:
    """One advertised quota policy (IETF RateLimit-Policy item)."""

    name: str
    quota: int
    window: float
    item: str = field(init=False, repr=False, compare=False)
    item_bytes: bytes = field(init=False, repr=False, compare=False)
    state_prefix_bytes: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        window = max(1, math.ceil(self.window))
        object.__setattr__(self, "item", f'"{self.name}";q={self.quota};w={window}')
        object.__setattr__(self, "item_bytes", self.item.encode("latin-1"))
        object.__setattr__(self, "state_prefix_bytes", f'"{self.name}";r='.encode("latin-1"))


@dataclass(slots=True)
class Decision:
    """The request's outcome: the action, the deciding rule, and every finding."""

    action: Action
    rule: str | None = None
    retry_after: float = 0.0
    verdicts: list[Verdict] = field(default_factory=list)  # the request's evaluated hits
    ban_level: int = 0
    new_ban: bool = False
    banned: str | None = None  # keyed hash of what the ban is on (principal, credential, IP)
    detector: str | None = None  # the detector whose finding refused it

    @property
    def refused(self) -> bool:
        """True when the request must not reach (or leave) the handler."""
        action = self.action
        return action is _THROTTLE or action is _BLOCK or action is _CHALLENGE

    @property
    def violated(self) -> list[str]:
        """Names of the enforced policies that refused the request."""
        return [v.policy.name for v in self.verdicts if not v.fits and v.enforced]


ALLOWED = Decision(Action.ALLOW)
