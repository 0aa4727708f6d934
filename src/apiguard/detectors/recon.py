"""Reconnaissance (OWASP API9; OAT-018 footprinting): one actor asking for many paths no
route serves.

A client that learns an API by probing (a wordlist of `/admin`, `/api/v2/users`,
`/.env`, `/internal/...`, old versions, shadow endpoints) is answered 404 or 405 by the
router again and again; a person mistypes a path now and then, an app's own client
calls the routes it was built for. Per actor (the principal: a user the app vouched
for, an API key, else the client address), within `window`, the distinct paths that no
route matched (answered 404 or 405; the path only, never its query, an id-like segment
as one `{id}`, as a sketch: no path is kept) are counted; an actor at `floor` of them is
flagged: an address or an unvouched credential gets `action` (a ban), a user the app
vouched for `person_action`; a repeat offender at half the floor. An address people log
in from (an office's NAT, as this process saw it) is held only at four times the floor,
and challenged, never banned.

Only unmatched requests are looked at: the requests routes serve cost nothing here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from apiguard.detectors.base import EVERY_REQUEST, Finding, Judge, Outcome
from apiguard.store.base import Tally

if TYPE_CHECKING:
    from apiguard.config import ReconConfig
    from apiguard.store.base import Observation

_PATH_MAX = 256  # characters of a probed path counted (a longer one is its first 256)
_SHARED_FACTOR = 4  # times the floor at an address people log in from
UNROUTED = "recon:"  # detector-table prefix: an actor's distinct unmatched paths


_HEX = frozenset("0123456789abcdefABCDEF-")


def _shape(path: str) -> str:
    """A path as the detector counts it: an id-like segment (digits, a UUID, 16 hex
    digits or more) is one `{id}`, so an old client calling a removed
    `/v1/orders/{id}` for many ids is one path, not one per order; a trailing slash
    aside."""
    parts = path.rstrip("/").split("/")
    for i, part in enumerate(parts):
        if part and (part.isdecimal() or (len(part) >= 16 and _HEX.issuperset(part))):
            parts[i] = "{id}"
    return "/".join(parts)


class Recon:
    """The reconnaissance detector (see the module docstring)."""

    name = "recon"
    watches = EVERY_REQUEST

    def __init__(self, config: ReconConfig, enforce: bool) -> None:
        self.config = config
        self.enforce = enforce

    def plan(self, outcome: Outcome, ops: list[Observation]) -> Judge | None:
        status = outcome.status
        if (status != 404 and status != 405) or outcome.route is not None:
            return None  # (a routed request, or an answer of a route: not a probe)
        ctx = outcome.ctx
        path = ctx.scope.get("path")
        if not isinstance(path, str) or not path:
            return None
        principal = outcome.principal
        op = Tally(UNROUTED + principal, self.config.window, _shape(path[:_PATH_MAX]))
        ops.append(op)
        cfg = self.config
        shared = principal == ctx.ip_key and ctx.engine.shared_address(principal)
        floor = cfg.floor * (_SHARED_FACTOR if shared else 1)
        if outcome.prior:  # a repeat offender is judged on half the evidence
            floor = max(2, floor // 2)
        action = (
            cfg.person_action if ctx.vouched else "challenge" if shared else cfg.action
        )
        name = self.name

        def judge(op: Tally = op) -> list[Finding]:
            if op.count < floor:
                return []
            evidence: dict[str, float | int | str] = {
                "unmatched_paths": round(op.count),
                "threshold": floor,
            }
            return [Finding(f"{name}.probing", principal, action, self.enforce, evidence)]

        return judge
