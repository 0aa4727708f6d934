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

from typing import Any

from apiguard.rules import FlowRule, WindowRule
from apiguard.store.base import Hit
from apiguard.window import WindowSpec

_PRINCIPAL_KEY = "g.principal"  # the global per-principal rule (`Guard._global_rules`)
_PER = ("principal", "principal_route")


def _covering(rule: Any, enforce: bool, cost: int) -> bool:
    """Whether a charge of `rule` may cover others: the global per-principal rule's,
    enforced."""
    return (
        type(rule) is WindowRule
        and rule.key == _PRINCIPAL_KEY
        and rule.per == "principal"
        and enforce
        and cost > 0
    )


def _pair(rule: Any, spec: WindowSpec, cost: int, ds: WindowSpec, d_cost: int) -> bool:
    """Whether a plain charge of `cost` to `rule`'s window `spec` is covered by a
    covering charge of `d_cost` to `ds` (same principal)."""
    return (
        type(rule) in (WindowRule, FlowRule)
        and rule.key != _PRINCIPAL_KEY
        and rule.per in _PER
        and 0 < cost <= d_cost
        and spec.window == ds.window
        and spec.buckets == ds.buckets
        and spec.limit >= ds.limit
    )


def _covers(d: Hit) -> bool:
    return (
        _covering(d.rule, d.enforce, d.cost)
        and d.consume
        and d.once is None
        and d.subject is not None
    )


def _covered(w: Hit, d: Hit) -> bool:
    return (
        w.consume
        and w.once is None
        and w.subject == d.subject
        and _pair(w.rule, w.spec, w.cost, d.spec, d.cost)
    )


Rates = list[tuple[int, str, WindowSpec, int, bool, str, Any, int]]


def cover_tags(rates: Rates) -> dict[int, int]:
    """For the fast path's compiled rates (`apiguard.admission.Admission.rates`, all
    plain charges): covered rate's tag -> its covering rate's tag (the covering one
    first in the list; none when a window prefix repeats)."""
    out: dict[int, int] = {}
    if len({r[1] for r in rates}) != len(rates):
        return out
    ds = [r for r in rates if not r[5] and _covering(r[6], r[4], r[3])]
    for _, _, spec, cost, _, marker, rule, tag in rates:
        if marker:
            continue
        for d in ds:
            if d[7] < tag and _pair(rule, spec, cost, d[2], d[3]):
                out[tag] = d[7]
                break
    return out


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
