"""`apiguard demo`: the example shop, one simulated hour, three scenarios, one table.

The shop is `examples/shop.py` (a FastAPI app; `create_app(guard)` and `demo_guard(clock)`).
It is loaded from a source checkout, from `./examples/shop.py`, or from `shop_path`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from apiguard.simulate import scenarios as sc
from apiguard.simulate.clock import FakeClock
from apiguard.simulate.driver import AsgiDriver, Record, run_agents

START = 10_000.0  # the fake clock's reading when the simulated hour begins
FLOW_BUDGET = 3  # the shop's "redeem-coupon" flow: 3 successes per account per hour

DESCRIPTIONS = {
    sc.BENIGN: (
        "30 customers at human pace (Poisson, a few requests a minute): log-ins, orders, "
        "1-2 coupons, typos (404); 8 share one office NAT IP, 6 mobile users change IP on "
        "every request; plus a /health probe every 15 s"
    ),
    sc.COUPON_ABUSE: (
        "one account tries coupon codes (some valid) every 0.3-2 s for 15 min, each request "
        "from a new random IP and User-Agent, between bouts of normal browsing"
    ),
    sc.BURST: (
        "one account scrapes GET /products/{id} at ~400 requests a minute for 6 min "
        "from 4 IP addresses"
    ),
}


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    """Counts for one scenario's requests."""

    name: str
    description: str
    requests: int
    attack_requests: int
    blocked_attack: int
    blocked_benign: int
    statuses: dict[int, int]

    @property
    def attack_block_rate(self) -> float | None:
        """Share of the attack requests apiguard refused (None without attack requests)."""
        return self.blocked_attack / self.attack_requests if self.attack_requests else None


@dataclass(frozen=True, slots=True)
class BanEvent:
    """A principal answered 403 after answers that were not: a ban began."""

    at: float  # simulated seconds from the start
    scenario: str
    seconds: float | None  # the ban's length, from Retry-After


@dataclass(frozen=True, slots=True)
class DemoResult:
    """The whole run: per-scenario counts and the facts the demo is about."""

    seed: int
    simulated_seconds: float
    wall_seconds: float
    scenarios: tuple[ScenarioResult, ...]
    # coupon abuse: coupons the attacker got, and what happened to later attempts
    coupon_successes: int = 0
    redeems_after_budget: int = 0
    redeems_after_budget_blocked: int = 0
    # burst: requests after its first minute, and how many were refused
    burst_after_first_minute: int = 0
    burst_after_first_minute_blocked: int = 0
    benign_statuses: dict[int, int] = field(default_factory=dict)
    benign_coupons_redeemed: int = 0
    bans: tuple[BanEvent, ...] = ()

    def scenario(self, name: str) -> ScenarioResult:
        """The result of the scenario called `name`."""
        for result in self.scenarios:
            if result.name == name:
                return result
        raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (block rates included)."""
        data = asdict(self)
        for entry, result in zip(data["scenarios"], self.scenarios, strict=True):
            entry["attack_block_rate"] = result.attack_block_rate
        return data


def find_shop(path: str | Path | None = None) -> Path:
    """Where examples/shop.py is: `path`, the source checkout, or the current directory."""
    if path is not None:
        candidates = [Path(path)]
    else:
        here = Path(__file__).resolve()
        checkout = here.parents[3]  # src/apiguard/simulate/demo.py
        candidates = [
            checkout / "examples" / "shop.py",
            here.parents[1] / "_examples" / "shop.py",  # a wheel ships a copy here
            Path.cwd() / "examples" / "shop.py",
        ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        "the demo shop examples/shop.py was not found (looked in "
        + ", ".join(str(c) for c in candidates)
        + "); run from a source checkout of apiguard or pass its path"
    )


def load_shop(path: str | Path | None = None) -> ModuleType:
    """Import the demo shop module from its file."""
    location = find_shop(path)
    name = "apiguard_demo_shop"
    spec = importlib.util.spec_from_file_location(name, location)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {location}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pydantic and dataclasses resolve annotations through it
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def world_of(shop: ModuleType) -> sc.World:
    """What clients know about the shop: accounts (with their orders), products, coupons."""
    orders: dict[int, list[int]] = {}
    for oid, order in shop.ORDERS.items():
        orders.setdefault(int(order["user_id"]), []).append(int(oid))
    accounts = tuple(
        sc.Account(int(u.id), str(u.username), str(u.password), tuple(orders.get(int(u.id), ())))
        for u in sorted(shop.USERS.values(), key=lambda u: int(u.id))
    )
    return sc.World(accounts, tuple(int(p) for p in shop.PRODUCTS), tuple(map(str, shop.COUPONS)))


def _count(statuses: Sequence[int]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return dict(sorted(counts.items()))


def summarise(records: Sequence[Record], seed: int, wall: float) -> DemoResult:
    """Per-scenario counts and the coupon/burst facts from the run's records."""
    results = []
    for name in (sc.BENIGN, sc.COUPON_ABUSE, sc.BURST):
        mine = [r for r in records if r.scenario == name]
        results.append(
            ScenarioResult(
                name,
                DESCRIPTIONS[name],
                len(mine),
                sum(r.attack for r in mine),
                sum(r.attack and r.blocked for r in mine),
                sum(not r.attack and r.blocked for r in mine),
                _count([r.status for r in mine]),
            )
        )
    redeems = [r for r in records if r.scenario == sc.COUPON_ABUSE and r.kind == "redeem"]
    successes = 0
    after: list[Record] = []
    for r in redeems:
        if successes >= FLOW_BUDGET:
            after.append(r)
        elif 200 <= r.status < 300:
            successes += 1
    successes += sum(200 <= r.status < 300 for r in after)
    scrapes = [
        r
        for r in records
        if r.scenario == sc.BURST and r.kind == "scrape" and r.at >= sc.BURST_START + 60.0
    ]
    bans: list[BanEvent] = []
    last: dict[int, int] = {}
    for r in records:
        if r.status == 403 and last.get(r.actor) != 403:
            bans.append(BanEvent(r.at, r.scenario, r.retry_after))
        last[r.actor] = r.status
    return DemoResult(
        seed=seed,
        simulated_seconds=max((r.at for r in records), default=0.0),
        wall_seconds=wall,
        scenarios=tuple(results),
        coupon_successes=successes,
        redeems_after_budget=len(after),
        redeems_after_budget_blocked=sum(r.blocked for r in after),
        burst_after_first_minute=len(scrapes),
        burst_after_first_minute_blocked=sum(r.blocked for r in scrapes),
        benign_statuses=results[0].statuses,
        benign_coupons_redeemed=sum(
            r.scenario == sc.BENIGN and r.kind == "redeem" and 200 <= r.status < 300
            for r in records
        ),
        bans=tuple(bans),
    )


async def arun_demo(
    seed: int = 7, shop_path: str | Path | None = None, framework: str = "fastapi"
) -> DemoResult:
    """Run the demo hour inside the running event loop (the shop on `framework`)."""
    clock = FakeClock(START)
    if framework == "fastapi":
        shop = load_shop(shop_path)
        app = shop.create_app(shop.demo_guard(clock))
    else:  # examples/flask_shop.py or examples/django_shop: same users, routes, policy
        from apiguard.simulate.frameworks import shop_app

        shop, app = shop_app(framework, clock, shop_path)
    actors = sc.build_actors(world_of(shop), seed)
    began = time.perf_counter()
    records = await run_agents(AsgiDriver(app), clock, actors, origin=START)
    return summarise(records, seed, time.perf_counter() - began)


def run_demo(
    seed: int = 7, shop_path: str | Path | None = None, framework: str = "fastapi"
) -> DemoResult:
    """Run the demo hour (its own event loop) and return the counts."""
    return asyncio.run(arun_demo(seed, shop_path, framework))


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _bans(result: DemoResult, scenario: str) -> str:
    lengths = [b.seconds for b in result.bans if b.scenario == scenario]
    if not lengths:
        return "no ban"
    shown = ", ".join("?" if s is None else f"{s:.0f}s" for s in lengths)
    return f"{len(lengths)} escalating 403 bans ({shown})"


def format_table(result: DemoResult) -> str:
    """The human-readable report: the table, then one line per scenario."""
    head = ("scenario", "requests", "blocked attack", "blocked benign", "attack block rate")
    rows = [
        (
            s.name,
            str(s.requests),
            str(s.blocked_attack) if s.attack_requests else "-",
            str(s.blocked_benign),
            _rate(s.attack_block_rate),
        )
        for s in result.scenarios
    ]
    total = (
        "total",
        str(sum(s.requests for s in result.scenarios)),
        str(sum(s.blocked_attack for s in result.scenarios)),
        str(sum(s.blocked_benign for s in result.scenarios)),
        _rate(
            sum(s.blocked_attack for s in result.scenarios)
            / max(1, sum(s.attack_requests for s in result.scenarios))
        ),
    )
    widths = [max(len(row[i]) for row in (head, *rows, total)) for i in range(len(head))]

    def line(row: Sequence[str]) -> str:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        return " | ".join(cells)

    rule = "-+-".join("-" * w for w in widths)
    out = [line(head), rule, *(line(r) for r in rows), rule, line(total), ""]
    out += [f"{s.name}: {s.description}." for s in result.scenarios]
    burst_rate = result.burst_after_first_minute_blocked / max(1, result.burst_after_first_minute)
    benign = result.scenario(sc.BENIGN)
    statuses = ", ".join(f"{k}: {v}" for k, v in result.benign_statuses.items())
    if result.redeems_after_budget:
        after = (
            f"then {result.redeems_after_budget_blocked} of {result.redeems_after_budget} "
            "redemption attempts blocked although every request came from a new IP"
        )
    else:  # the rotation detector banned the account before it spent its budget
        after = "the account was banned for rotating addresses before it spent its budget"
    out += [
        "",
        f"coupon abuse: {result.coupon_successes} coupons redeemed (flow budget {FLOW_BUDGET}/hour "
        f"per account), {after}; {_bans(result, sc.COUPON_ABUSE)}.",
        f"per-principal burst: {result.burst_after_first_minute_blocked} of "
        f"{result.burst_after_first_minute} requests after its first minute blocked "
        f"({burst_rate:.1%}): 429 beyond 120/minute, then {_bans(result, sc.BURST)}.",
        f"benign users: {benign.blocked_benign} of {benign.requests} requests blocked; "
        f"{result.benign_coupons_redeemed} coupons redeemed; statuses {statuses} "
        "(404s are the shop's own answers to typos).",
        f"simulated {result.simulated_seconds / 60:.0f} minutes in {result.wall_seconds:.2f} s "
        f"of real time (seed {result.seed}).",
    ]
    return "\n".join(out)
