"""Windows a checkpoint need not ask Redis about: those the batch's principal window covers.

With quota leases (`RedisStore(lease=True)`) on an event loop, a hit on window W is
*covered* by the hit on the global per-principal window D of the same batch when
- W's rule is a plain limit or flow keyed on the principal (`per="principal"` or
  `"principal_route"`): every request that charges W charges D (the global rules run
  in each request's first checkpoint, with the same principal), and
- W counts like D (same window and buckets), its limit is at least D's, and a request
  costs it no more than D (D: enforced, a plain charge; W: a plain charge).

W's charge is then made after the response (one 'C' operation among the batched writes,
`apiguard.store.redis_after`) into the bucket D was charged in for that request, so
bucket by bucket W counts at most what D counts, and D fitting (its limit at most W's)
means W fits: W's check could never refuse, so it is skipped, and the batch needs Redis
only for D and the others (D itself is usually leased). The one exception: a request
whose global rules ran at an earlier checkpoint (`identify()` from a sync dependency)
charges W in its own checkpoint, checked in Redis as usual, in that checkpoint's bucket;
where a bucket boundary falls between its two checkpoints, W can count that request
one bucket longer than D, so W admits at most its limit plus the number of such
requests in flight at one boundary, and only if its limit is that close to D's.
"""

from __future__ import annotations

from apiguard.rules import FlowRule, WindowRule
from apiguard.store.base import Hit

_PRINCIPAL_KEY = "g.principal"  # the global per-principal rule (`Guard._global_rules`)
_PER = ("principal", "principal_route")


def _covers(d: Hit) -> bool:
    """Whether `d` may cover other hits: the global per-principal rule's enforced charge."""
    rule = d.rule
    return (
        type(rule) is WindowRule
        and rule.key == _PRINCIPAL_KEY
        and rule.per == "principal"
        and d.enforce
        and d.consume
        and d.once is None
        and d.cost > 0
        and d.subject is not None
    )


def _covered(w: Hit, d: Hit) -> bool:
    rule = w.rule
    ws = w.spec
    ds = d.spec
    return (
        type(rule) in (WindowRule, FlowRule)
        and rule.key != _PRINCIPAL_KEY
        and rule.per in _PER
        and w.consume
        and w.once is None
        and 0 < w.cost <= d.cost
        and w.subject == d.subject
        and ws.window == ds.window
        and ws.buckets == ds.buckets
        and ws.limit >= ds.limit
    )


def covered(hits: list[Hit]) -> list[tuple[int, int]] | None:
    """(index of a covered hit, index of the hit covering it) for `hits`, or None (also
    for a batch naming one window twice: each charge of W must pair with one of D)."""
    found: list[tuple[int, int]] | None = None
    ds = [i for i, h in enumerate(hits) if _covers(h)]
    if not ds or len({h.key for h in hits}) != len(hits):
        return None
    for i, w in enumerate(hits):
        if i in ds:
            continue
        for j in ds:
            if _covered(w, hits[j]):
                if found is None:
                    found = []
                found.append((i, j))
                break
    return found
