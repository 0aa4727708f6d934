"""The `apiguard` command line."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence

from apiguard import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apiguard",
        description="apiguard: in-app protection for HTTP APIs against automated abuse.",
    )
    parser.add_argument("--version", action="version", version=f"apiguard {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = commands.add_parser(
        "demo",
        help="attack the example shop for one simulated hour and show what was blocked",
        description=(
            "Run examples/shop.py in process on a fake clock: 30 benign users, coupon abuse "
            "from rotating IPs and a per-principal scraping burst, on the embedded store."
        ),
    )
    demo.add_argument("--seed", type=int, default=7, help="random seed (default: 7)")
    demo.add_argument("--json", action="store_true", help="print machine-readable results")
    demo.add_argument("--shop", metavar="PATH", help="path of examples/shop.py (default: found)")
    demo.add_argument(
        "--framework",
        choices=("fastapi", "flask", "django"),
        default="fastapi",
        help="the shop on FastAPI (examples/shop.py), Flask (examples/flask_shop.py) or "
        "Django (examples/django_shop); default: fastapi",
    )
    demo.add_argument(
        "-v", "--verbose", action="store_true", help="also print apiguard's log (bans) to stderr"
    )
    return parser


def _demo(args: argparse.Namespace) -> int:
    module, extra = {"fastapi": ("fastapi", "demo")}.get(args.framework, (args.framework,) * 2)
    try:
        importlib.import_module(module)
    except ImportError:
        print(
            f"apiguard demo --framework {args.framework} needs {module}: "
            f"pip install 'apiguard-shield[{extra}]'",
            file=sys.stderr,
        )
        return 1
    from apiguard.simulate.demo import format_table, run_demo

    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    else:  # bans are summarised in the report; keep their log lines out of it
        logging.getLogger("apiguard").setLevel(logging.ERROR)
    try:
        if args.framework == "fastapi":
            result = run_demo(args.seed, args.shop)
        else:
            result = run_demo(args.seed, args.shop, framework=args.framework)
    except FileNotFoundError as exc:
        print(f"apiguard demo: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(format_table(result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `apiguard` console script (and `python -m apiguard`)."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    return 2  # pragma: no cover - argparse rejects unknown commands
