"""HTTP answers: RFC 9457 problem+json bodies, Retry-After and the IETF RateLimit fields.

The RateLimit fields follow draft-ietf-httpapi-ratelimit-headers-11:
`RateLimit-Policy: "per-principal";q=600;w=60` and `RateLimit: "per-principal";r=12;t=5`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from apiguard.decision import Action, Decision, Policy
from apiguard.store.base import Hit as Verdict

QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"
# the problem type of a challenge: the app decides how a person proves themselves (CAPTCHA,
# e-mail code, WebAuthn) and calls `Guard.challenge_passed()` when they have
CHALLENGE_REQUIRED = "https://apiguard.dev/problems/challenge-required"
# the problem type of a detector's throttle (429 without a quota: `population_action`,
# `account_action`, ... = "throttle"); its `detector` member names the finding
# ("flow_groups.fingerprint", "account_takeover.population"), never a key or a username
UNUSUAL_ACTIVITY = "https://apiguard.dev/problems/unusual-activity"
# how a ban's `about:blank` problem begins its detail (the self-test recognises it by this)
BAN_DETAIL = "This client is temporarily blocked"


@dataclass(slots=True)
class BlockResponse:
    """A framework-neutral response; adapters turn it into their own type."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


BlockHook = Callable[[Decision, BlockResponse], BlockResponse]


def _seconds(value: float) -> int:
    return max(0, math.ceil(value - 1e-9))


def ratelimit_fields(verdicts: Sequence[Verdict]) -> list[tuple[str, str]]:
    """`RateLimit-Policy` and `RateLimit` header pairs for every enforced verdict."""
    policies: list[str] = []
    states: list[str] = []
    for v in verdicts:
        if v.enforced:
            policies.append(v.policy.item)
            states.append(_state(v, v.remaining).decode("latin-1"))
    if not policies:
        return []
    return [("ratelimit-policy", ", ".join(policies)), ("ratelimit", ", ".join(states))]


def _state(v: Verdict, remaining: int) -> bytes:
    """`v`'s encoded `RateLimit` item with `remaining` units left."""
    return ratelimit_state(v.policy, remaining, v.reset if v.fits else v.retry_after)


def ratelimit_state(policy: Policy, remaining: int, t: float) -> bytes:
    """The encoded `RateLimit` item of `policy` with `remaining` units, reset in `t` s."""
    seconds = int(t)
    if seconds < t:
        seconds += 1
    return policy.state_prefix_bytes + b"%d;t=%d" % (remaining if remaining > 0 else 0, seconds)


def tightest_ratelimit(
    verdicts: Sequence[Verdict], refunded: Sequence[Verdict] = ()
) -> tuple[bytes, bytes] | None:
    """Encoded (`RateLimit-Policy`, `RateLimit`) for the enforced policy closest to its
    limit (smallest remaining share of its quota): what an admitted response carries.
    `refunded`: charges this response gives back (a `count="success"` flow answered
    without success), counted as remaining."""
    back = {(v.key, v.policy): v.cost for v in refunded} if refunded else None
    best: Verdict | None = None
    best_share = 2.0
    best_remaining = 0
    for v in verdicts:
        if v.enforced:
            remaining = v.remaining
            if back:
                remaining = min(v.policy.quota, remaining + back.get((v.key, v.policy), 0))
            share = remaining / v.policy.quota
            if share < best_share:
                best, best_share, best_remaining = v, share, remaining
    if best is None:
        return None
    return best.policy.item_bytes, _state(best, best_remaining)


def block_response(
    decision: Decision, with_fields: bool = True, challenge_status: int = 403
) -> BlockResponse:
    """The default answer to a refused request: 429 for limits, 403 for bans, and
    `challenge_status` for a challenge."""
    retry = max(1, _seconds(decision.retry_after))
    plural = "s" if retry != 1 else ""
    if decision.action is Action.CHALLENGE:
        problem: dict[str, object] = {
            "type": CHALLENGE_REQUIRED,
            "title": "Challenge required",
            "status": challenge_status,
            "detail": (
                "Unusual activity was seen for this request; complete the challenge, then retry."
            ),
        }
        if decision.detector is not None:
            # the detector family that asked (a login alarm, BOLA...), never which of a
            # family's findings: at the login, whether one account is held or the whole
            # site is under attack is no bot's to learn
            problem["detector"] = decision.detector.split(".", 1)[0]
        status = challenge_status
    elif decision.action is Action.BLOCK:
        why = (
            "after unusual activity"
            if decision.detector is not None
            else "after repeatedly exceeding limits"
        )
        problem = {
            "type": "about:blank",
            "title": "Forbidden",
            "status": 403,
            "detail": (
                f"{BAN_DETAIL} {why}; retry after {retry} second{plural}."
            ),
        }
        if decision.detector is not None:
            problem["detector"] = decision.detector
        status = 403
    else:
        violated = decision.violated
        if not violated and decision.detector is not None:  # a detector's throttle
            detail = (
                "Too many started and not finished (unfinished); finish one to go on, or "
                if decision.detector == "unfinished"  # (holds left unfinished)
                else f"Unusual activity was seen ({decision.detector}); "
            )
            problem = {
                "type": UNUSUAL_ACTIVITY,
                "title": "Too many requests after unusual activity",
                "status": 429,
                "detail": f"{detail}retry after {retry} second{plural}.",
                "detector": decision.detector,
            }
        else:
            problem = {
                "type": QUOTA_EXCEEDED,
                "title": "Request cannot be satisfied as assigned quota has been exceeded",
                "status": 429,
                "detail": f"Retry after {retry} second{plural}.",
            }
            if violated:
                problem["violated-policies"] = violated
        status = 429
    headers = [
        ("content-type", "application/problem+json"),
        ("retry-after", str(retry)),
        ("cache-control", "no-store"),
    ]
    if with_fields and decision.action is Action.THROTTLE:  # a ban is not a quota
        headers.extend(ratelimit_fields(decision.verdicts))
    body = json.dumps(problem, separators=(",", ":")).encode()
    return BlockResponse(status, headers, body)
