"""The self-test's campaigns against apiguard and against what a team would pick instead.

Every campaign of `apiguard.simulate.campaigns` (each beside the same benign population,
same seed) runs against the example shop (examples/shop.py) protected by:

- apiguard: its defaults, plus what the shop declares (`@guard.login`, its flows, its
  20/minute login limit per address, its challenge route);
- slowapi: per-address limits as its docs set them up (5/minute on the login route, a
  default limit of 100/minute on every route), apiguard in monitor mode;
- axes-like: django-axes' lockout by address or by username (3 failures, 1-hour
  cool-off), apiguard in monitor mode (see benchmarks/baselines.py).

The unprotected shop (apiguard in monitor mode, nothing else) is run too: what each
campaign gains there is the yardstick of "curtailed". The definitions of caught, admitted
before the first block, admitted after, gain and benign refusals are in the docstring of
`apiguard.simulate.campaigns`.

    python benchmarks/detection.py                 # full scale (~2-4 min)
    python benchmarks/detection.py --scale 0.25    # quicker
    python benchmarks/detection.py --campaign stuffing --campaign bola --json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import baselines

from apiguard.simulate import campaigns as cp
from apiguard.simulate.demo import load_shop
from apiguard.simulate.selftest import table
from apiguard.simulate.target import Target

TOOLS = ("apiguard", "slowapi", "axes-like")
HEAD = (
    "campaign",
    "tool",
    "caught",
    "attack req",
    "admitted",
    "before 1st block",
    "admitted after",
    "gain (unprotected)",
    "benign req refused",
    "benign principals refused",
    "challenged",
)


def factories(shop: Any) -> dict[str, Any]:
    return {
        "apiguard": baselines.apiguard_shop(shop),
        "slowapi": baselines.slowapi_shop(shop),
        "axes-like": baselines.axes_shop(shop),
    }


def measure(
    campaigns: list[cp.Campaign], tools: list[str], *, seed: int, scale: float
) -> list[tuple[str, cp.Outcome]]:
    shop = load_shop()
    target = Target.from_shop(shop)
    made = factories(shop)
    unprotected = baselines.unprotected_shop(shop)
    results = []
    try:
        for camp in campaigns:
            ref = cp.reference_gain(camp, target, unprotected, seed=seed, scale=scale)
            for tool in tools:
                outcome = cp.run(
                    camp,
                    target,
                    made[tool],
                    reference=ref,
                    seed=seed,
                    scale=scale,
                    by_status=tool != "apiguard",  # (a baseline refuses; apiguard watches)
                )
                results.append((tool, outcome))
                print(
                    f"  {camp.name} / {tool}: {'caught' if outcome.caught else 'missed'} "
                    f"({outcome.wall_seconds:.1f} s)",
                    file=sys.stderr,
                )
    finally:
        baselines.restore_clock()
    return results


def rows(results: list[tuple[str, cp.Outcome]]) -> list[tuple[str, ...]]:
    out = []
    for tool, o in results:
        out.append(
            (
                o.campaign,
                tool,
                "CAUGHT" if o.caught else "missed",
                str(o.attack_requests),
                str(o.admitted),
                str(o.admitted_before_first_block),
                f"{o.admitted_after_first_block}/{o.after_first_block}"
                if o.after_first_block
                else "-",
                f"{o.gain} {o.gain_kind} ({o.reference_gain})",
                f"{o.benign_refused}/{o.benign_requests}",
                f"{o.benign_principals_refused}/{o.benign_principals}",
                f"{o.benign_principals_challenged} ({o.challenges_passed} passed)",
            )
        )
    return out


def summary(results: list[tuple[str, cp.Outcome]], tools: list[str]) -> str:
    lines = []
    for tool in tools:
        mine = [o for t, o in results if t == tool]
        caught = sum(o.caught for o in mine)
        meets = sum(cp.meets_targets(o, cp.campaign(o.campaign)) for o in mine)
        refused = sum(o.benign_principals_refused for o in mine)
        lines.append(
            f"{tool}: {caught} of {len(mine)} campaigns caught, {meets} meet every target; "
            f"{refused} benign principals refused in all"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--campaign", action="append", help="only these (prefixes)")
    parser.add_argument("--tool", action="append", choices=TOOLS, help="only these tools")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.getLogger("apiguard").setLevel(logging.CRITICAL)
    campaigns = [cp.campaign(n) for n in args.campaign] if args.campaign else list(cp.CAMPAIGNS)
    tools = list(args.tool or TOOLS)
    began = time.perf_counter()
    results = measure(campaigns, tools, seed=args.seed, scale=args.scale)
    if args.json:
        print(json.dumps([{"tool": t, **o.as_dict()} for t, o in results], indent=2))
    else:
        print(table(rows(results), HEAD))
        print()
        print(summary(results, tools))
        print(f"\nseed {args.seed}, scale {args.scale}, {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
