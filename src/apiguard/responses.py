"""HTTP answers: RFC 9457 problem+json bodies, Retry-After and the IETF RateLimit fields.

The RateLimit fields follow draft-ietf-httpapi-ratelimit-headers-11:
`RateLimit-Policy: "per-principal";q=600;w=60` and `RateLimit: "per-principal";r=12;t=5`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from apiguard.decision import Action, Decision
from apiguard.store.base import Hit as Verdict

QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"


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
    """`RateLimit-Policy` and `RateLimit` header pairs for the enforced verdicts."""
    found = ratelimit_values(verdicts)
    if found is None:
        return []
    return [("ratelimit-policy", found[0].decode()), ("ratelimit", found[1].decode())]


def ratelimit_values(verdicts: Sequence[Verdict]) -> tuple[bytes, bytes] | None:
    """Encoded (`RateLimit-Policy`, `RateLimit`) values for the enforced verdicts."""
    policies: list[str] = []
    states: list[str] = []
    for v in verdicts:
        if v.enforced:
            p = v.policy
            policies.append(p.item)
            t = v.reset if v.fits else v.retry_after
            seconds = int(t)
            if seconds < t:
                seconds += 1
            states.append(f"{p.state_prefix}{v.remaining if v.remaining > 0 else 0};t={seconds}")
    if not policies:
        return None
    return ", ".join(policies).encode("latin-1"), ", ".join(states).encode("latin-1")


def block_response(decision: Decision, with_fields: bool = True) -> BlockResponse:
    """The default answer to a refused request: 429 for limits, 403 for bans."""
    retry = max(1, _seconds(decision.retry_after))
    if decision.action is Action.BLOCK:
        problem: dict[str, object] = {
            "type": "about:blank",
            "title": "Forbidden",
            "status": 403,
            "detail": (
                "This client is temporarily blocked after repeatedly exceeding limits; "
                f"retry after {retry} seconds."
            ),
        }
        status = 403
    else:
        violated = decision.violated
        problem = {
            "type": QUOTA_EXCEEDED,
            "title": "Request cannot be satisfied as assigned quota has been exceeded",
            "status": 429,
            "detail": f"Retry after {retry} seconds.",
            "violated-policies": violated,
        }
        status = 429
    headers = [
        ("content-type", "application/problem+json"),
        ("retry-after", str(retry)),
        ("cache-control", "no-store"),
    ]
    if with_fields:
        headers.extend(ratelimit_fields(decision.verdicts))
    body = json.dumps(problem, separators=(",", ":")).encode()
    return BlockResponse(status, headers, body)
