"""`apiguard attack`: run the campaigns against an app, in process or over HTTP.

In process (`apiguard attack module:app` or `path/to/app.py:app`): the module is imported
afresh for every run (each run gets a fresh app and fresh guard state), the app's `Guard`
is found in its middleware (`GuardMiddleware(guard=...)`) and moved onto a fake clock, so
a six-hour campaign runs in seconds. Each campaign is also run once with the guard in
monitor mode (nothing refused): what the attack gains against the unprotected app is the
yardstick of "curtailed" (see `apiguard.simulate.campaigns`).

Over HTTP (`--url`): against a running server, in real time, bounded in requests and
seconds; loopback addresses only unless `--allow-remote`. Every request then comes from
this machine: `--forwarded-for` sends each simulated client address in X-Forwarded-For,
which a server trusting this machine as its proxy uses as the client address. There is
no unprotected run over HTTP: "curtailed" falls back to the admitted share after the
first refusal.

A refusal is apiguard's, never the app's own 403 or 429 (a missing token, a foreign
object): in process, each refusal a guard renders for a request is seen
(`steps.REFUSALS`); over HTTP, apiguard's
default problem+json answers are recognised (an `on_block` hook that replaces them makes
them the app's own; the report then says how many 403/429 answers were not apiguard's).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import importlib.util
import ipaddress
import itertools
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from apiguard.errors import ConfigurationError
from apiguard.guard import Guard
from apiguard.responses import (
    BAN_DETAIL,
    CHALLENGE_REQUIRED,
    QUOTA_EXCEEDED,
    UNUSUAL_ACTIVITY,
)
from apiguard.simulate import campaigns as cp
from apiguard.simulate.clock import FakeClock
from apiguard.simulate.driver import (
    Actor,
    AsgiDriver,
    LifespanError,
    Record,
    Request,
    Response,
    answer_text,
    find_guard,
    lifespan,
    store_cookies,
)
from apiguard.simulate.population import token_of
from apiguard.simulate.target import Account, Target, default_target, read_toml

_counter = itertools.count()


class SelfTestError(Exception):
    """A problem with the app, its declaration or the options (exit status 2)."""


def load_module(spec: str) -> tuple[ModuleType, str]:
    """Import `module:attr` or `path.py:attr` afresh (a new module object every call)."""
    location, sep, attr = spec.rpartition(":")
    if not sep or not location or not attr:
        raise SelfTestError(f"expected MODULE:APP or PATH.py:APP, got {spec!r}")
    path = Path(location)
    by_name = not (location.endswith(".py") or path.is_file())
    if not by_name:
        file = path
    else:
        if str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))
        try:
            found = importlib.util.find_spec(location)
        except (ImportError, ValueError) as exc:
            raise SelfTestError(f"cannot import {location!r}: {exc}") from exc
        if found is None or found.origin is None:
            raise SelfTestError(f"no module named {location!r}")
        file = Path(found.origin)
    if not file.is_file():
        raise SelfTestError(f"no such file: {file}")
    name = f"apiguard_selftest_{file.stem}_{next(_counter)}"
    module_spec = importlib.util.spec_from_file_location(name, file)
    if module_spec is None or module_spec.loader is None:
        raise SelfTestError(f"cannot load {file}")
    module = importlib.util.module_from_spec(module_spec)
    if by_name and "." in location:  # (its relative imports resolve in its package)
        module.__package__ = location.rpartition(".")[0]
    sys.modules[name] = module  # pydantic and dataclasses resolve annotations through it
    folder = str(file.resolve().parent)
    added = folder not in sys.path
    if added:
        # a module named by its import path was found on sys.path: its own folder comes
        # last (a project's `config/django/` settings package must not hide Django)
        if by_name:
            sys.path.append(folder)
        else:
            sys.path.insert(0, folder)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise SelfTestError(f"importing {file} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if added:
            sys.path.remove(folder)
    if not hasattr(module, attr):
        raise SelfTestError(f"{file} has no attribute {attr!r}")
    return module, attr


def is_wsgi(app: Any) -> bool:
    """Whether `app` is a WSGI app (Flask, a WSGI callable) rather than an ASGI one."""
    import inspect

    call = getattr(app, "__call__", None)  # noqa: B004 - the method itself is inspected
    if inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(call):
        return False
    if hasattr(app, "wsgi_app"):
        return True
    try:
        params = inspect.signature(app).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) == 2


def retime(guard: Guard, clock: Callable[[], float]) -> None:
    """Move `guard` (and everything of apiguard's it holds) onto `clock`: every attribute
    that is the guard's current clock is replaced. Only before the first request."""
    old = guard.clock
    seen: set[int] = set()

    def visit(obj: Any, depth: int) -> None:
        if depth > 4 or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, dict):
            for value in list(obj.values())[:1000]:
                visit(value, depth + 1)
            return
        if isinstance(obj, list | tuple | set | frozenset):
            for value in list(obj)[:1000]:
                visit(value, depth + 1)
            return
        module = getattr(type(obj), "__module__", "") or ""
        if not module.startswith("apiguard"):
            return
        names: list[str] = list(getattr(obj, "__dict__", {}))
        for cls in type(obj).__mro__:
            slots = cls.__dict__.get("__slots__", ())
            names.extend([slots] if isinstance(slots, str) else slots)
        for name in names:
            try:
                value = getattr(obj, name)
            except AttributeError:
                continue
            if value is old:
                with contextlib.suppress(AttributeError, TypeError):
                    setattr(obj, name, clock)
            else:
                visit(value, depth + 1)

    visit(guard, 0)
    if guard.clock is not clock or guard.engine.clock is not clock:
        raise SelfTestError("could not move the app's guard onto the simulation clock")


def in_process_factory(spec: str, *, monitor: bool = False) -> Callable[[FakeClock], Any]:
    """A factory of fresh apps from `spec`, each guard on the given fake clock."""

    def factory(clock: FakeClock) -> Any:
        module, attr = load_module(spec)
        app = getattr(module, attr)
        guard = find_guard(app)
        if guard is None:
            if type(app).__module__.startswith("django."):
                raise SelfTestError(
                    f"{spec}: a Django app is not attacked in process (its guard comes from "
                    "settings.APIGUARD and Django is set up once per process): run it under "
                    "a server and use --url (with --forwarded-for if it trusts this machine "
                    "as its proxy)"
                )
            raise SelfTestError(
                f"{spec}: no apiguard Guard found in the app's middleware "
                "(app.add_middleware(GuardMiddleware, guard=guard))"
            )
        retime(guard, clock)
        # a guard created in a module that is not imported afresh (app.core.guard beside
        # app.main) is the same object in every run: each run starts it clean, in its mode
        try:
            guard.reset()
        except ConfigurationError as exc:
            raise SelfTestError(
                f"{spec}: the app's guard cannot start each run clean: {exc}"
            ) from exc
        guard.override_mode("monitor" if monitor else None)
        if is_wsgi(app):  # Flask or any WSGI app: no lifespan, served one request at a time
            from apiguard.simulate.frameworks import WsgiAsAsgi

            return WsgiAsAsgi(app)
        return app

    return factory


def absolute_spec(spec: str) -> str:
    """`path.py:app` with its path made absolute (an app's module may change the working
    directory when it is imported, and it is imported again for every run)."""
    location, sep, attr = spec.rpartition(":")
    if sep and location and (location.endswith(".py") or Path(location).is_file()):
        return f"{Path(location).absolute()}:{attr}"
    return spec


def target_for(spec: str | None, config: str | None, overrides: dict[str, Any]) -> Target:
    """The declaration: the shop's tables when the module has them, else the defaults;
    then the TOML file; then the flags. The file is read before the app's module is
    imported (a module may change the working directory). An app's declaration without
    `[challenge]` takes the guard's `detection.challenge_path`, if it has one."""
    document = None
    if config is not None:
        try:
            document = read_toml(config)
        except (OSError, ValueError) as exc:
            raise SelfTestError(f"{config}: {exc}") from exc
    target = default_target()
    challenge_path: str | None = None
    if spec is not None:
        module, attr = load_module(absolute_spec(spec))
        if all(hasattr(module, n) for n in ("BY_USERNAME", "ORDERS", "COUPONS")):
            target = Target.from_shop(module)  # (the example shops: FastAPI, Flask)
        guard = find_guard(getattr(module, attr))
        if guard is not None:
            challenge_path = guard.config.detection.challenge_path
    if document is not None:
        try:
            target = Target.from_document(document, target)
        except (OSError, ValueError) as exc:
            raise SelfTestError(f"{config}: {exc}") from exc
    if overrides:
        try:
            target = Target.from_mapping(overrides, target)
        except ValueError as exc:
            raise SelfTestError(str(exc)) from exc
    if target.declared and "challenge" not in target.declared and challenge_path:
        # (the app's own challenge route, from its guard: not the example shop's)
        declared = target.declared | {"challenge"}
        target = dataclasses.replace(target, challenge_path=challenge_path, declared=declared)
    return target


def run_in_process(
    spec: str,
    target: Target,
    campaigns: Sequence[cp.Campaign],
    *,
    seed: int,
    scale: float,
    solver: float = 0.0,
    reference: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[cp.Outcome]:
    """Every campaign against fresh copies of the app (and its unprotected twin);
    `progress` is told each campaign's result as it ends (`progress_line`)."""
    spec = absolute_spec(spec)
    factory = in_process_factory(spec)
    unprotected = in_process_factory(spec, monitor=True) if reference else None
    check_accounts(target, unprotected or factory)
    outcomes = []
    for camp in campaigns:
        try:
            outcome = cp.run(
                camp, target, factory, reference=unprotected, seed=seed, scale=scale, solver=solver
            )
        except LifespanError as exc:
            raise SelfTestError(f"{camp.name}: {exc}") from exc
        outcomes.append(outcome)
        if progress is not None:
            progress(progress_line(outcome, len(outcomes), len(campaigns)))
    return outcomes


def progress_line(outcome: cp.Outcome, done: int, total: int) -> str:
    """One campaign's result as it ends: `[3/12] BOLA walk: CAUGHT (41 s)`."""
    verdict = "skipped" if outcome.skipped else "CAUGHT" if outcome.caught else "not caught"
    return f"[{done}/{total}] {outcome.campaign}: {verdict} ({outcome.wall_seconds:.0f} s)"


def check_accounts(target: Target, factory: Callable[[FakeClock], Any]) -> None:
    """Log the first and the last declared accounts in, in monitor mode, inside the app's
    lifespan: if they cannot, or their answer carries no token where the declaration says,
    every account campaign would report nothing taken over and nobody refused, for
    nothing (the BOLA and flow campaigns log in with the last accounts). A clear error
    instead (a wrong login path, body fields, token field, or accounts)."""
    if not target.accounts:
        return
    checked = [("first", target.accounts[0])]
    if len(target.accounts) > 1:
        checked.append(("last", target.accounts[-1]))

    notes: list[str] = []

    async def go() -> list[tuple[str, Account, Response]]:
        app = factory(FakeClock(cp.START))
        try:
            async with lifespan(app, notes=notes) as state:
                driver = AsgiDriver(app, server_errors=True, state=state)
                answers = []
                for which, account in checked:
                    body, extra = target.login_request(account.username, account.password)
                    headers = (*extra, ("user-agent", "apiguard-attack/preflight"))
                    request = Request("POST", target.login_path, "198.51.100.250", headers, body)
                    answer = await driver.send(request)
                    if answer.status >= 500 and driver.last_error is not None:
                        error = driver.last_error
                        notes.append(f"the app raised {type(error).__name__}: {error}")
                    answers.append((which, account, answer))
                return answers
        except LifespanError as exc:
            raise SelfTestError(str(exc)) from exc

    for which, account, response in asyncio.run(go()):
        if not 200 <= response.status < 300:
            said = f" ({'; '.join(notes)})" if notes else ""
            raise SelfTestError(
                f"the {which} declared account ({account.username}) could not log in: "
                f"POST {target.login_path} answered {response.status} (in monitor mode)"
                f"{said}. Declare the app's login path, its body fields and real accounts "
                "(see the TOML format in apiguard/simulate/target.py), or every account "
                "campaign measures nothing"
            )
        if token_of(response, target) is None:
            where = (
                f"no cookie {target.token_cookie!r}"
                if target.token_cookie
                else f"no token at {target.token_field!r} of its JSON body"
            )
            raise SelfTestError(
                f"the {which} declared account ({account.username}) logged in "
                f"(POST {target.login_path} answered {response.status}) but the answer has "
                f"{where}: declare [login] token_field (a dotted name such as "
                '"user.token") or token_cookie, or no campaign is ever signed in'
            )


# -- over HTTP ----------------------------------------------------------------------------


def check_url(url: str, allow_remote: bool) -> str:
    """The base URL, refused unless it is a loopback address (or `allow_remote`)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SelfTestError(f"--url needs an http(s) URL, got {url!r}")
    host = parts.hostname
    loopback = host == "localhost" or host.endswith(".localhost")
    with contextlib.suppress(ValueError):
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    if not loopback and not allow_remote:
        raise SelfTestError(
            f"--url {url}: {host} is not a loopback address; the self-test sends attack "
            "traffic, so only your own machine is a target unless you pass --allow-remote"
        )
    return url.rstrip("/")


class HttpDriver:
    """Sends `Request`s to a running server (httpx), optionally with X-Forwarded-For."""

    def __init__(self, base: str, client: Any, forwarded_for: bool) -> None:
        self.base = base
        self.client = client
        self.forwarded_for = forwarded_for

    async def send(self, request: Request) -> Response:
        headers = list(request.headers)
        if self.forwarded_for:
            headers.append(("x-forwarded-for", request.ip))
        answer = await self.client.request(
            request.method, self.base + request.path, headers=headers, content=request.body or None
        )
        # each simulated client keeps its own cookies (`run_over_http`): the one HTTP
        # client's jar must carry none from one to another (a real-app trial: a walker's
        # requests carried other clients' cookies, not its own session)
        self.client.cookies.clear()
        raw = tuple(
            (k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers.multi_items()
        )
        response = Response(answer.status_code, raw, answer.content)
        return dataclasses.replace(response, guard_refused=is_guard_refusal(response))


_GUARD_TYPES = frozenset({CHALLENGE_REQUIRED, QUOTA_EXCEEDED, UNUSUAL_ACTIVITY})


def is_guard_refusal(response: Response) -> bool:
    """Whether an answer over HTTP is one of apiguard's default refusals (its problem
    types; a ban's `about:blank` problem by its detail), not the app's own 4xx."""
    if response.status < 400:
        return False
    kind = response.problem_type
    if kind in _GUARD_TYPES:
        return True
    if kind != "about:blank" or response.status != 403:
        return False
    data = response.json()
    detail = data.get("detail") if isinstance(data, dict) else None
    return isinstance(detail, str) and detail.startswith(BAN_DETAIL)


async def run_over_http(
    driver: HttpDriver,
    actors: Sequence[Actor],
    *,
    speed: float,
    max_requests: int,
    max_seconds: float,
) -> list[Record]:
    """`run_agents` in real time: a step at simulated `at` is sent at `at / speed` real
    seconds; stops after `max_requests` requests or `max_seconds` seconds."""
    began = time.monotonic()
    jars: list[dict[str, str]] = [{} for _ in actors]
    queue: list[tuple[float, int, int, Any]] = []
    seq = itertools.count()
    for index, actor in enumerate(actors):
        first = next(actor.agent, None)
        if first is not None:
            heapq.heappush(queue, (first.at, next(seq), index, first))
    records: list[Record] = []
    while queue and len(records) < max_requests:
        at, _, index, step = heapq.heappop(queue)
        delay = at / speed - (time.monotonic() - began)
        if at / speed > max_seconds:
            break
        if delay > 0:
            await asyncio.sleep(delay)
        actor = actors[index]
        req = step.request
        jar = jars[index]
        if actor.cookies and jar:
            cookie = "; ".join(f"{k}={v}" for k, v in jar.items())
            req = Request(
                req.method, req.path, req.ip, (*req.headers, ("cookie", cookie)), req.body
            )
        response = await driver.send(req)
        if actor.cookies:
            store_cookies(jar, response)
        records.append(
            Record(
                at,
                actor.scenario,
                actor.attack,
                step.kind,
                req.method,
                req.path,
                req.ip,
                response.status,
                index,
                None,
                step.target,
                response.problem_type if response.status >= 400 else None,
                response.guard_refused,
                answer_text(response) if step.keep_answer else None,
            )
        )
        try:
            following = actor.agent.send(response)
        except StopIteration:
            continue
        heapq.heappush(queue, (max(following.at, at), next(seq), index, following))
    return records


# seconds a scraping run over --url needs at least: the detector judges a reader that did
# not come back within `detection.scraping.settle` (120 s by default), and a surge on top
_SCRAPING_RUN = 300.0


_THROUGH_ENOUGH = 10  # attack requests let through that tell what the app answers itself


def url_reference(records: Sequence[Record]) -> Sequence[Record] | None:
    """What stands for the unprotected run over HTTP (there is none): a run that refused
    nothing, else the requests apiguard let through when there were `_THROUGH_ENOUGH`
    attack requests among them (what the app answers them tells whether it has the bug:
    a walk of foreign ids the app itself answers 404 until apiguard's first refusal is
    nothing caught), else None."""
    if not any(r.blocked for r in records if r.attack):
        return records
    through = [r for r in records if not (r.attack and r.blocked)]
    if sum(1 for r in through if r.attack and r.target is not None) < _THROUGH_ENOUGH:
        return None
    return through


def run_url(
    url: str,
    target: Target,
    campaigns: Sequence[cp.Campaign],
    *,
    seed: int,
    scale: float,
    max_requests: int,
    max_seconds: float,
    forwarded_for: bool,
    solver: float = 0.0,
    progress: Callable[[str], None] | None = None,
) -> list[cp.Outcome]:
    """Every campaign against the server at `url`, each within the bounds (`progress`:
    as `run_in_process`)."""
    try:
        import httpx
    except ImportError as exc:  # pragma: no cover - httpx comes with the demo extra
        raise SelfTestError("--url needs httpx: pip install 'apiguard-shield[demo]'") from exc

    async def go() -> list[cp.Outcome]:
        outcomes: list[cp.Outcome] = []

        def ended(outcome: cp.Outcome) -> None:
            outcomes.append(outcome)
            if progress is not None:
                progress(progress_line(outcome, len(outcomes), len(campaigns)))

        async with httpx.AsyncClient(timeout=10.0, follow_redirects=False) as client:
            driver = HttpDriver(url, client, forwarded_for)
            for camp in campaigns:
                missing = cp.undeclared(camp, target)
                if missing is None and camp.name == "scraping" and max_seconds < _SCRAPING_RUN:
                    missing = (
                        f"--max-seconds {max_seconds:g} is under what the scraping detector "
                        f"needs to judge a reader (its settle time, 120 s by default): run "
                        f"it with --max-seconds {_SCRAPING_RUN:g} or more"
                    )
                if missing is not None:
                    ended(cp.judge(camp, [], reference_gain=None, skipped=missing))
                    continue
                actors = cp.actors_for(camp, target, seed=seed, scale=scale, solver=solver)
                speed = max(1.0, camp.duration * scale / max_seconds)
                began = time.perf_counter()
                records = await run_over_http(
                    driver, actors, speed=speed, max_requests=max_requests, max_seconds=max_seconds
                )
                reference = url_reference(records)
                skipped = cp.skip_reason(
                    camp,
                    target,
                    records,
                    reference,
                    let_through=reference is not None and reference is not records,
                )
                ended(
                    cp.judge(
                        camp,
                        records,
                        reference_gain=None,
                        wall=time.perf_counter() - began,
                        skipped=skipped,
                    )
                )
        return outcomes

    try:
        return asyncio.run(go())
    except httpx.TransportError as exc:  # a server that is not up, or went away
        raise SelfTestError(
            f"{url} does not answer ({type(exc).__name__}: {exc}); is the server running?"
        ) from exc


# -- the report ---------------------------------------------------------------------------

COLUMNS = (
    "campaign",
    "attack req",
    "refused",
    "caught",
    "before 1st block",
    "admitted after",
    "gain (unprotected)",
    "benign refused",
    "challenged (passed)",
)


def row(o: cp.Outcome) -> tuple[str, ...]:
    ref = "?" if o.reference_gain is None else str(o.reference_gain)
    return (
        o.campaign,
        str(o.attack_requests),
        str(o.refused),
        "SKIPPED" if o.skipped is not None else "CAUGHT" if o.caught else "MISSED",
        str(o.admitted_before_first_block),
        f"{o.admitted_after_first_block}/{o.after_first_block}" if o.after_first_block else "-",
        f"{o.gain} {o.gain_kind} ({ref})",
        f"{o.benign_principals_refused}/{o.benign_principals} principals, {o.benign_refused} req",
        f"{o.benign_principals_challenged} ({o.challenges_passed})",
    )


def table(rows: Sequence[Sequence[str]], head: Sequence[str] = COLUMNS) -> str:
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]

    def line(r: Sequence[str]) -> str:
        return " | ".join(
            [r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))]
        )

    return "\n".join([line(head), "-+-".join("-" * w for w in widths), *(line(r) for r in rows)])


def report(outcomes: Sequence[cp.Outcome]) -> str:
    tried = [o for o in outcomes if o.skipped is None]
    missed = [o.campaign for o in tried if not o.caught]
    refused = sum(o.benign_principals_refused for o in outcomes)
    if not tried:
        verdict = "no campaign could be tried (see why above)"
    else:
        verdict = (
            f"every campaign {'tried ' if len(tried) < len(outcomes) else ''}caught, "
            "no benign principal refused"
            if not missed and not refused
            else "; ".join(
                p
                for p in (
                    f"missed: {', '.join(missed)}" if missed else "",
                    f"{refused} benign principal(s) refused" if refused else "",
                )
                if p
            )
        )
    skipped = "".join(
        f"\nskipped {o.campaign}: {o.skipped}" for o in outcomes if o.skipped is not None
    )
    skipped += "".join(f"\n{o.campaign}: {o.note}" for o in outcomes if o.note)
    pages = sum(o.benign_pages for o in outcomes)
    missing = sum(o.benign_pages_missing for o in outcomes)
    if missing >= 10 and missing >= 0.2 * pages:
        example = next(o.missing_page for o in outcomes if o.missing_page)
        skipped += (
            f"\n{missing} of the honest visitors' {pages} page views ([browse] paths) were "
            f"answered 404 (e.g. {example}): declare pages your app has ([browse] paths, and "
            "ids for pages addressed by slug). A shared address collecting those misses is "
            "taken for a prober of missing objects (bola.errors), and its people are counted "
            "among the benign principals refused"
        )
    if any(o.reference_gain is None for o in tried):
        skipped += (
            "\nno unprotected run to compare with (--url, or --no-reference): a campaign is "
            "caught when at least half of its requests after the first refusal were refused, "
            "however much it gained before; its gain is not weighed against the unprotected "
            "app's"
        )
    own = sum(o.app_refusals for o in outcomes)
    if own:
        skipped += (
            f"\n{own} answers 403 or 429 were the app's own, not apiguard's (a missing "
            "token, a foreign object, another limiter, or an on_block hook whose answers "
            "are not apiguard's problem types): counted as admitted, not refused"
        )
    text = table([row(o) for o in outcomes])
    return text + (f"\n{skipped}" if skipped else "") + f"\n\n{verdict}."


def exit_status(outcomes: Sequence[cp.Outcome]) -> int:
    """0 when every campaign tried was caught and no benign principal refused, else 1
    (1 also when no campaign could be tried: nothing was measured). A skipped campaign
    (see `campaigns.skip_reason`) is neither: the report says why it was skipped."""
    tried = [o for o in outcomes if o.skipped is None]
    ok = bool(tried) and all(o.caught for o in tried)
    ok = ok and all(o.benign_principals_refused == 0 for o in outcomes)
    return 0 if ok else 1
