"""The `apiguard` command line."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

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
    attack = commands.add_parser(
        "attack",
        help="self-test: run attack campaigns beside honest users against your app",
        description=(
            "Run the self-test's campaigns (credential stuffing, spraying, brute force, BOLA "
            "walks, flow abuse, scraping, a stolen API key), each beside an awkward benign "
            "population, against APP (module:app or path.py:app, in process on a fake clock: "
            "hours in seconds) or a running server (--url, real time, bounded). Exit status "
            "1 when a campaign is missed or an honest principal refused; 2 on usage errors."
        ),
    )
    attack.add_argument("app", nargs="?", help="the ASGI app: module:app or path/to/file.py:app")
    attack.add_argument("--url", help="attack a running server instead (loopback only by default)")
    attack.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --url")
    attack.add_argument(
        "--forwarded-for",
        action="store_true",
        help="with --url: send each simulated client address in X-Forwarded-For",
    )
    attack.add_argument("--max-requests", type=int, default=5000, help="--url: per campaign")
    attack.add_argument("--max-seconds", type=float, default=60.0, help="--url: per campaign")
    attack.add_argument(
        "--campaign",
        action="append",
        metavar="NAME",
        help=(
            "run only this campaign (repeatable; a unique prefix or part of its name, "
            "such as 'brute' or 'bola walk')"
        ),
    )
    attack.add_argument("--list", action="store_true", help="list the campaigns and exit")
    attack.add_argument("--seed", type=int, default=7, help="random seed (default: 7)")
    attack.add_argument(
        "--scale", type=float, default=0.25, help="campaign length and size, 1.0 = full (0.25)"
    )
    attack.add_argument("--solver", type=float, default=0.0, help="bots' CAPTCHA-solving rate")
    attack.add_argument(
        "--no-reference", action="store_true", help="skip the unprotected (monitor-mode) runs"
    )
    attack.add_argument("--config", metavar="TOML", help="declaration of routes and accounts")
    attack.add_argument("--login", metavar="PATH", help="the login route (POST)")
    attack.add_argument(
        "--login-format",
        choices=("json", "form", "basic"),
        help="login body format (basic: HTTP Basic, no body)",
    )
    attack.add_argument(
        "--object",
        metavar="PATH",
        help="an object route, e.g. /orders/{id} ({id} is replaced by object ids, on any "
        "framework)",
    )
    attack.add_argument("--flow", metavar="PATH", help="a flow route, e.g. /coupons/{code}/redeem")
    attack.add_argument("--json", action="store_true", help="print machine-readable results")
    audit = commands.add_parser(
        "audit",
        help="list your app's routes: the rules and detectors on each, and what looks left out",
        description=(
            "Read APP's route tree (module:app or path/to/file.py:app: FastAPI, Starlette, "
            "Flask; or a Django project with --django) and its apiguard decorators: every "
            "route with its own rules and the detectors watching it, routes that look like "
            "a login or a sensitive flow without protection of their own, and app-wide "
            "settings worth a look. Nothing is sent to the app. Exit status 1 when the "
            "start-up check fails (or, with --strict, when anything is noted); 2 on usage "
            "errors."
        ),
    )
    audit.add_argument("app", nargs="?", help="the app: module:app or path/to/file.py:app")
    audit.add_argument(
        "--django",
        metavar="SETTINGS",
        help="audit a Django project: its settings module (e.g. mysite.settings), run from "
        "the project's root",
    )
    audit.add_argument("--urlconf", help="with --django: the URLconf (default ROOT_URLCONF)")
    audit.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PREFIX",
        help="leave out routes whose template starts with PREFIX (repeatable; e.g. /admin/)",
    )
    audit.add_argument("--json", action="store_true", help="print machine-readable results")
    audit.add_argument(
        "--strict",
        action="store_true",
        help="exit status 1 when any route or setting is noted (the in-process store's "
        "line aside: right for one worker)",
    )
    return parser


def _audit(args: argparse.Namespace) -> int:
    from apiguard.audit import audit_app, audit_django, format_audit
    from apiguard.errors import ConfigurationError
    from apiguard.simulate import selftest as st
    from apiguard.simulate.driver import find_guard

    logging.getLogger("apiguard").setLevel(logging.ERROR)  # (the start-up summary line)
    try:
        if (args.app is None) == (args.django is None):
            raise st.SelfTestError("give the app (module:app) or --django SETTINGS, one of them")
        if args.django is not None:
            audit = _django_audit(args.django, args.urlconf, audit_django, tuple(args.exclude))
        else:
            module, attr = st.load_module(st.absolute_spec(args.app))
            app = getattr(module, attr)
            guard = find_guard(app)
            if guard is None:
                raise st.SelfTestError(
                    f"{args.app}: no apiguard Guard found in the app's middleware "
                    "(app.add_middleware(GuardMiddleware, guard=guard), or "
                    "apiguard.flask.init_app(app, guard)); for Django use --django SETTINGS"
                )
            audit = audit_app(app, guard, args.app, tuple(args.exclude))
    except (st.SelfTestError, ConfigurationError) as exc:
        print(f"apiguard audit: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(audit.as_dict(), indent=2))
    else:
        print(format_audit(audit))
    if audit.problems:
        return 1
    return 1 if args.strict and (audit.noted or audit.warnings) else 0


def _django_audit(
    settings: str, urlconf: str | None, audit_django: Any, exclude: tuple[str, ...]
) -> Any:
    """Set Django up from `settings` (the current directory importable) and audit it."""
    import os
    from pathlib import Path

    from apiguard.simulate.selftest import SelfTestError

    try:
        import django
    except ImportError as exc:
        raise SelfTestError("--django needs Django installed") from exc
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    os.environ["DJANGO_SETTINGS_MODULE"] = settings
    try:
        django.setup()
    except Exception as exc:  # an import error, a bad setting: the user's to fix
        raise SelfTestError(
            f"setting Django up from {settings!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    from django.conf import settings as django_settings

    if "apiguard.django.GuardMiddleware" not in [str(m) for m in django_settings.MIDDLEWARE]:
        raise SelfTestError(
            f"{settings}: 'apiguard.django.GuardMiddleware' is not in MIDDLEWARE, so "
            "apiguard protects nothing"
        )
    return audit_django(urlconf, settings, exclude)


def _progress(line: str) -> None:
    """A campaign ended: said on stderr (a run can take minutes; the report and --json
    go to stdout)."""
    print(f"apiguard attack: {line}", file=sys.stderr, flush=True)


def _attack(args: argparse.Namespace) -> int:
    from apiguard.simulate import campaigns as cp
    from apiguard.simulate import selftest as st

    logging.getLogger("apiguard").setLevel(logging.CRITICAL)
    if args.list:
        for camp in cp.CAMPAIGNS:
            print(f"{camp.name}: {camp.description}")
        return 0
    try:
        if (args.app is None) == (args.url is None):
            raise st.SelfTestError("give the app (module:app) or --url, one of them")
        if not 0.0 < args.scale <= 10.0:
            raise st.SelfTestError("--scale must be in (0, 10]")
        if not 0.0 <= args.solver <= 1.0:
            raise st.SelfTestError("--solver is a rate between 0 and 1")
        chosen = [cp.campaign(n) for n in args.campaign] if args.campaign else list(cp.CAMPAIGNS)
        # (before the app's module, which may change the working directory, is imported;
        # the --config file is read before it too: `target_for`)
        app: str | None = None if args.app is None else st.absolute_spec(args.app)
        overrides: dict[str, dict[str, object]] = {}
        if args.login:
            overrides.setdefault("login", {})["path"] = args.login
        if args.login_format:
            overrides.setdefault("login", {})["format"] = args.login_format
        if args.object:
            overrides["objects"] = {"path": args.object}
        if args.flow:
            overrides["flow"] = {"path": args.flow}
        target = st.target_for(app, args.config, overrides)
        if args.url is not None:
            base = st.check_url(args.url, args.allow_remote)
            outcomes = st.run_url(
                base,
                target,
                chosen,
                seed=args.seed,
                scale=args.scale,
                max_requests=max(1, args.max_requests),
                max_seconds=max(1.0, args.max_seconds),
                forwarded_for=args.forwarded_for,
                solver=args.solver,
                progress=_progress,
            )
        else:
            assert app is not None
            outcomes = st.run_in_process(
                app,
                target,
                chosen,
                seed=args.seed,
                scale=args.scale,
                solver=args.solver,
                reference=not args.no_reference,
                progress=_progress,
            )
    except (st.SelfTestError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"apiguard attack: {message}", file=sys.stderr)
        return 2
    if args.json:
        data = {
            "seed": args.seed,
            "scale": args.scale,
            "campaigns": [o.as_dict() for o in outcomes],
            "exit_status": st.exit_status(outcomes),
        }
        print(json.dumps(data, indent=2))
    else:
        print(st.report(outcomes))
    return st.exit_status(outcomes)


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
    if args.command == "attack":
        return _attack(args)
    if args.command == "audit":
        return _audit(args)
    return 2  # pragma: no cover - argparse rejects unknown commands
