"""The self-test: campaigns and the benign population, the baselines, `apiguard attack`.

Runs are short (scale 0.1: a tenth of the benchmark's length and attempts, a tenth of
its population) to keep the suite fast; benchmarks/detection.py runs them in full.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from apiguard import Guard
from apiguard.asgi import GuardMiddleware
from apiguard.cli import main
from apiguard.simulate import AsgiDriver, FakeClock, Request
from apiguard.simulate import campaigns as cp
from apiguard.simulate import selftest as st
from apiguard.simulate.demo import load_shop
from apiguard.simulate.driver import Record, run_agents
from apiguard.simulate.population import OFFICE_IP
from apiguard.simulate.target import Target
from apiguard.store.base import Ban

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "benchmarks"))  # last: benchmarks/redis.py must not shadow redis

import baselines  # noqa: E402

SCALE = 0.1
SHOP_SPEC = f"{ROOT / 'examples' / 'shop.py'}:app"


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    logger = logging.getLogger("apiguard")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)
    baselines.restore_clock()


@pytest.fixture(scope="module")
def shop() -> Any:
    return load_shop()


@pytest.fixture(scope="module")
def target(shop: Any) -> Target:
    return Target.from_shop(shop)


def records_of(
    camp: cp.Campaign, target: Target, factory: Callable[[FakeClock], Any], seed: int = 7
) -> list[Record]:
    records, _ = asyncio.run(cp.arun(camp, target, factory, seed=seed, scale=SCALE))
    return records


# -- determinism and shape ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["credential stuffing", "BOLA random", "stolen API key"])
def test_a_run_is_deterministic_per_seed(name: str, shop: Any, target: Target) -> None:
    camp = cp.campaign(name)
    factory = baselines.unprotected_shop(shop)

    def key(records: list[Record]) -> list[tuple[Any, ...]]:
        return [(r.at, r.actor, r.method, r.path, r.ip, r.status, r.target) for r in records]

    first = key(records_of(camp, target, factory))
    assert first == key(records_of(camp, target, factory))
    assert first != key(records_of(camp, target, factory, seed=8))


def test_every_campaign_gains_against_the_unprotected_shop(shop: Any, target: Target) -> None:
    factory = baselines.unprotected_shop(shop)
    for camp in cp.CAMPAIGNS:
        outcome = cp.judge(camp, records_of(camp, target, factory), reference_gain=None)
        assert outcome.attack_requests >= 9, camp.name
        assert outcome.refused == 0 and not outcome.caught, camp.name
        assert outcome.gain > 0, camp.name  # the shop's bugs are real: each attack pays
        assert outcome.benign_principals_refused == 0, camp.name


def test_distributed_campaigns_use_one_address_per_visit(shop: Any, target: Target) -> None:
    records = records_of(
        cp.campaign("credential stuffing"), target, baselines.unprotected_shop(shop)
    )
    logins = [r for r in records if r.attack and r.kind == "stuff"]
    assert len(logins) > 150
    per_ip = Counter(r.ip for r in logins)
    assert max(per_ip.values()) <= 2  # a refused guess is retried once, elsewhere
    names = {r.target for r in logins}
    assert len(names) > 0.9 * len(logins)
    hits = [r for r in logins if r.status == 200]
    assert 0 < len(hits) < 0.05 * len(logins)  # mostly misses, a few hits


def test_benign_population_is_awkward(shop: Any, target: Target) -> None:
    records = records_of(cp.campaign("BOLA walk"), target, baselines.unprotected_shop(shop))
    benign = [r for r in records if not r.attack]
    office = {r.actor for r in benign if r.ip == OFFICE_IP}
    assert len(office) >= 15  # many people behind one NAT address
    kinds = Counter(r.kind for r in benign)
    assert kinds["typo"] > 0 and kinds["forgot"] >= 3  # wrong passwords, honestly
    by_actor: dict[int, list[Record]] = {}
    for r in benign:
        by_actor.setdefault(r.actor, []).append(r)
    mobile = [rs for rs in by_actor.values() if len({r.ip for r in rs}) >= 4]
    assert mobile  # addresses change every few requests
    orders = [
        [r.path for r in rs if r.path.startswith("/orders/") and r.status == 200]
        for rs in by_actor.values()
    ]
    assert max(len(set(o)) for o in orders) >= 50  # a buyer reads 55 of their own orders
    api = [r for r in benign if r.path.startswith("/api/v1/reports")]
    assert len(api) > 100 and all(r.status == 200 for r in api)


def test_campaign_lookup() -> None:
    assert cp.campaign("bola walk").name == "BOLA walk"
    assert cp.campaign("stolen").name == "stolen API key"
    assert cp.campaign("flow-abuse-fresh-acc").name == "flow abuse, fresh accounts"
    assert cp.campaign("bola many").name == "BOLA, many accounts"
    with pytest.raises(KeyError):
        cp.campaign("bola")  # ambiguous
    # the examples `apiguard attack --help` gives for --campaign each name one campaign
    # (it offered 'bola', which is refused as ambiguous, and 'stuffing', which picks the
    # CAPTCHA-solver campaign, not credential stuffing)
    import contextlib
    import io
    import re

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["attack", "--help"])
    help_text = " ".join(out.getvalue().split()).split("--campaign NAME", 2)[-1]
    examples = re.findall(r"'([^']+)'", help_text.split("--list", 1)[0])
    assert len(examples) == 2
    for example in examples:
        assert cp.campaign(example).name.lower().startswith(example)
    with pytest.raises(KeyError):
        cp.campaign("nothing")


def test_judge_definitions(target: Target) -> None:
    camp = cp.campaign("BOLA walk")

    def rec(status: int, attack: bool = True, actor: int = 0, problem: str | None = None) -> Record:
        return Record(
            0.0,
            "x",
            attack,
            "walk",
            "GET",
            "/orders/1",
            "1.2.3.4",
            status,
            actor,
            None,
            f"t{status}{actor}" if attack else None,
            problem,
        )

    challenge = "https://apiguard.dev/problems/challenge-required"
    records = [
        rec(200),
        rec(200),
        rec(404),
        rec(429),
        rec(200),
        rec(403),
        rec(403),
        rec(200, attack=False, actor=1),
        rec(403, attack=False, actor=1, problem=challenge),
        Record(0.0, "x", False, "challenge", "POST", "/challenge", "1.2.3.4", 200, 1),
        rec(429, attack=False, actor=2),
    ]
    outcome = cp.judge(camp, records, reference_gain=10)
    assert outcome.attack_requests == 7 and outcome.refused == 3
    assert outcome.admitted_before_first_block == 3
    assert (outcome.admitted_after_first_block, outcome.after_first_block) == (1, 3)
    assert outcome.gain == 1 and outcome.caught  # 1 of 10 foreign objects: curtailed
    assert outcome.benign_principals == 2
    assert outcome.benign_principals_refused == 1  # the challenged one passed: not refused
    assert outcome.benign_principals_challenged == 1
    assert not cp.judge(camp, records, reference_gain=1).caught  # 1 of 1: not curtailed
    assert not cp.judge(camp, [r for r in records if not r.blocked], reference_gain=10).caught


# -- the baselines are wired as documented --------------------------------------------------


def _send_all(app: Any, clock: FakeClock, requests: list[tuple[float, Request]]) -> list[int]:
    driver = AsgiDriver(app)

    async def go() -> list[int]:
        statuses = []
        for at, request in requests:
            clock.advance_to(cp.START + at)
            statuses.append((await driver.send(request)).status)
        return statuses

    return asyncio.run(go())


def _login(ip: str, username: str, password: str) -> Request:
    body = json.dumps({"username": username, "password": password}).encode()
    return Request("POST", "/login", ip, (("content-type", "application/json"),), body)


def test_slowapi_refuses_a_per_ip_login_burst_on_the_fake_clock(shop: Any) -> None:
    clock = FakeClock(cp.START)
    app = baselines.slowapi_shop(shop)(clock)
    burst = [(float(i), _login("203.0.113.9", "user5", "password5")) for i in range(7)]
    assert _send_all(app, clock, burst) == [200] * 5 + [429, 429]
    # another address has its own budget; a minute later (fake clock) the first is back
    later = [
        (8.0, _login("203.0.113.10", "user5", "password5")),
        (70.0, _login("203.0.113.9", "user5", "password5")),
    ]
    assert _send_all(app, clock, later) == [200, 200]


def test_slowapi_default_limit_applies_to_every_route(shop: Any) -> None:
    clock = FakeClock(cp.START)
    app = baselines.slowapi_shop(shop, default="3/minute")(clock)
    gets = [(i * 0.5, Request("GET", "/products/1", "198.51.100.77")) for i in range(4)]
    assert _send_all(app, clock, gets) == [200, 200, 200, 429]


def test_axes_like_locks_by_username_and_by_address(shop: Any) -> None:
    clock = FakeClock(cp.START)
    app = baselines.axes_shop(shop)(clock)
    # three failures on one username from three addresses lock the username...
    wrong = [(i * 10.0, _login(f"203.0.113.{i}", "user7", "nope")) for i in range(3)]
    assert _send_all(app, clock, wrong) == [401, 401, 401]
    right = [(40.0, _login("192.0.2.55", "user7", "password7"))]
    assert _send_all(app, clock, right) == [429]  # even with the right password
    # ...and three failures from one address lock the address for every username
    spray = [(50.0 + i, _login("203.0.113.99", f"user{20 + i}", "nope")) for i in range(3)]
    assert _send_all(app, clock, spray) == [401, 401, 401]
    assert _send_all(app, clock, [(60.0, _login("203.0.113.99", "user8", "password8"))]) == [429]
    # the cool-off (1 hour) ends the lock; other routes are never guarded
    assert _send_all(app, clock, [(3700.0, _login("192.0.2.55", "user7", "password7"))]) == [200]
    assert _send_all(app, clock, [(3701.0, Request("GET", "/health", "203.0.113.99"))]) == [200]


# -- apiguard catches each campaign, and refuses no honest principal ------------------------


# campaigns too short at SCALE to tell "curtailed" from chance (the flow-group detector
# lets about 15 coupons through whatever the length: half of the 30 a tenth-scale farm gets)
# at 0.1 a random walk reads 26 foreign orders in 12 minutes: under the detector's floor
# of 30 distinct objects, which no honest population this small can raise or lower
# the CAPTCHA-solver botnet at 0.1 sends about 77 guesses, so one more admitted after the
# first block moves its share by 1.3 points: 0.107 in 1 of 12 processes (each with its own
# random secret), 0.069 in the rest; at 0.25, 0.08 in 6 of 6
# a reconnaissance scan at 0.1 is 30 probes: the floor itself
TEST_SCALE = {
    "flow abuse, fresh accounts": 0.25,
    "flow abuse, fresh shapes": 0.5,
    "BOLA random": 0.25,
    "stuffing, CAPTCHA solver": 0.25,
    "recon": 0.25,
}


@functools.cache
def apiguard_outcome(name: str) -> cp.Outcome:
    """One run of the campaign against apiguard's defaults (shared by both tests)."""
    shop = load_shop()
    return cp.run(
        cp.campaign(name),
        Target.from_shop(shop),
        baselines.apiguard_shop(shop),
        reference=baselines.unprotected_shop(shop),
        scale=TEST_SCALE.get(name, SCALE),
    )


def known(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=False, reason=reason)


CATCH = [
    pytest.param("credential stuffing"),
    # (was a known miss: the solved challenge's pass is a bearer cookie the botnet replays
    # from every address, 8 of 58 attempts after the first block admitted at test scale;
    # a pass past a standing challenge now carries at most 2 failed usernames)
    pytest.param("stuffing, CAPTCHA solver"),
    pytest.param("password spraying"),
    pytest.param("brute force"),
    pytest.param("BOLA walk"),
    pytest.param("BOLA random"),
    pytest.param("BOLA, many accounts"),
    pytest.param("flow abuse, rotating IPs"),
    pytest.param("flow abuse, fresh accounts"),
    pytest.param("flow abuse, fresh shapes"),
    pytest.param("scraping"),
    pytest.param("stolen API key"),
    pytest.param("recon"),
]


@pytest.mark.parametrize("name", CATCH)
def test_apiguard_catches_the_campaign(name: str) -> None:
    camp = cp.campaign(name)
    outcome = apiguard_outcome(name)
    assert outcome.caught, outcome
    if camp.first_block_target:
        assert outcome.admitted_before_first_loss < 50, outcome
    assert outcome.admitted_after_share <= 0.10, outcome
    if camp.gain == "takeovers":
        assert outcome.gain == 0, outcome


@pytest.mark.parametrize("name", [c.name for c in cp.CAMPAIGNS])
def test_no_honest_principal_is_refused_beside_the_campaign(name: str) -> None:
    outcome = apiguard_outcome(name)
    assert outcome.benign_principals_refused == 0, outcome


# -- apiguard attack --------------------------------------------------------------------------


def test_find_guard_and_retime() -> None:
    from starlette.applications import Starlette

    guard = Guard()
    app = Starlette()
    app.add_middleware(GuardMiddleware, guard=guard)
    assert st.find_guard(app) is guard
    assert st.find_guard(GuardMiddleware(Starlette(), guard=guard)) is guard
    assert st.find_guard(Starlette()) is None
    clock = FakeClock(123.0)
    st.retime(guard, clock)
    assert guard.clock is clock and guard.engine.clock is clock


def test_in_process_factory_gives_fresh_apps_on_the_fake_clock() -> None:
    factory = st.in_process_factory(SHOP_SPEC)
    clock = FakeClock(cp.START)
    first, second = factory(clock), factory(clock)
    assert first is not second
    guard = st.find_guard(first)
    assert guard is not None and guard.clock is clock


def test_cli_attack_json_and_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        [
            "attack",
            SHOP_SPEC,
            "--campaign",
            "flow abuse, rotating",
            "--campaign",
            "stolen",
            "--scale",
            "0.1",
            "--json",
        ]
    )
    data = json.loads(capsys.readouterr().out)
    assert data["scale"] == 0.1 and data["seed"] == 7
    rows = {c["campaign"]: c for c in data["campaigns"]}
    assert set(rows) == {"flow abuse, rotating IPs", "stolen API key"}
    for row in rows.values():
        for key in (
            "attack_requests",
            "refused",
            "caught",
            "admitted_before_first_block",
            "admitted_after_first_block",
            "gain",
            "reference_gain",
            "benign_principals_refused",
            "benign_refused",
            "challenges_passed",
        ):
            assert key in row
    assert rows["flow abuse, rotating IPs"]["caught"] is True
    expected = (
        0 if all(r["caught"] and not r["benign_principals_refused"] for r in rows.values()) else 1
    )
    assert status == data["exit_status"] == expected


def test_cli_attack_table(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["attack", SHOP_SPEC, "--campaign", "flow abuse, rotating", "--scale", "0.1"])
    out = capsys.readouterr().out
    assert out.splitlines()[0].split(" | ")[0].strip() == "campaign"
    assert "flow abuse, rotating IPs" in out and "CAUGHT" in out
    verdict = out.strip().splitlines()[-1]
    if status == 0:
        assert verdict == "every campaign caught, no benign principal refused."
    else:
        assert status == 1 and ("missed" in verdict or "benign principal(s) refused" in verdict)


def test_exit_status() -> None:
    camp = cp.campaign("BOLA walk")
    base = cp.judge(camp, [], reference_gain=None)
    fields = base.as_dict()
    for key in ("admitted_after_share", "admitted_before_first_loss"):
        fields.pop(key)
    good = cp.Outcome(**{**fields, "caught": True})
    assert st.exit_status([good]) == 0
    assert st.exit_status([good, cp.Outcome(**{**fields, "caught": False})]) == 1
    refused = cp.Outcome(**{**fields, "caught": True, "benign_principals_refused": 1})
    assert st.exit_status([good, refused]) == 1


def test_cli_attack_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["attack", "--url", "http://93.184.216.34:8000"]) == 2
    assert "not a loopback address" in capsys.readouterr().err
    assert main(["attack", "--url", "http://10.1.2.3"]) == 2  # private is not loopback
    assert main(["attack"]) == 2
    assert main(["attack", SHOP_SPEC, "--url", "http://127.0.0.1:1"]) == 2
    assert main(["attack", SHOP_SPEC, "--campaign", "nothing"]) == 2
    assert main(["attack", "no_such_module_xyz:app"]) == 2
    assert main(["attack", str(ROOT / "examples" / "shop.py") + ":nope"]) == 2
    assert main(["attack", "--list"]) == 0
    assert "credential stuffing" in capsys.readouterr().out


def test_check_url() -> None:
    assert st.check_url("http://127.0.0.1:8000/", False) == "http://127.0.0.1:8000"
    assert st.check_url("http://localhost:8000", False) == "http://localhost:8000"
    assert st.check_url("http://[::1]:8000", False) == "http://[::1]:8000"
    with pytest.raises(st.SelfTestError):
        st.check_url("http://example.com", False)
    assert st.check_url("http://example.com", True) == "http://example.com"
    with pytest.raises(st.SelfTestError):
        st.check_url("ftp://127.0.0.1", False)


def test_over_http_driver_is_bounded_and_forwards_addresses(shop: Any, target: Target) -> None:
    import httpx

    seen: list[str] = []
    inner = shop.create_app(Guard({"client_ip": {"trusted_proxies": ["127.0.0.0/8"]}}))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope["client"] = ("127.0.0.1", 5000)
            seen.append(dict(scope["headers"]).get(b"x-forwarded-for", b"").decode())
        await inner(scope, receive, send)

    camp = cp.campaign("stolen")
    actors = cp.actors_for(camp, target, seed=3, scale=SCALE)

    async def go() -> list[Record]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport) as client:
            driver = st.HttpDriver("http://testserver", client, forwarded_for=True)
            return await st.run_over_http(
                driver, actors, speed=1e9, max_requests=40, max_seconds=5.0
            )

    records = asyncio.run(go())
    assert len(records) == 40
    assert len(set(seen)) > 10 and all(seen)
    assert any(r.attack for r in records)


def test_target_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "attack.toml"
    path.write_text(
        '[login]\npath = "/token"\nformat = "form"\n'
        '[accounts]\nusername = "u{n}@x.io"\npassword = "pw-{n}"\ncount = 30\n'
        '[objects]\npath = "/invoices/{id}"\nper_account = 3\n'
        '[flow]\npath = "/gift/{code}"\ncodes = ["A", "B"]\nsignup = ""\n'
    )
    target = Target.from_toml(path)
    assert target.login_path == "/token" and target.login_format == "form"
    assert len(target.accounts) == 30 and target.accounts[1].username == "u2@x.io"
    assert target.accounts[1].objects == (2, 32, 62) and len(target.object_ids) == 90
    assert target.flow_codes == ("A", "B") and target.signup_path == ""
    body, ctype = target.login_body("a b", "c")
    assert ctype == "application/x-www-form-urlencoded" and body == b"username=a+b&password=c"
    path.write_text("[nonsense]\n")
    with pytest.raises(ValueError):
        Target.from_toml(path)


def test_cookie_jar_is_kept_per_actor() -> None:
    from apiguard.simulate.driver import Actor, Response, Step

    seen: list[str | None] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        cookie = dict(scope["headers"]).get(b"cookie")
        seen.append(cookie.decode() if cookie else None)
        headers = (
            [(b"set-cookie", b"device=abc; Path=/; HttpOnly")] if scope["path"] == "/in" else []
        )
        if scope["path"] == "/out":
            headers = [(b"set-cookie", b"device=; Max-Age=0")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    def agent() -> Any:
        _: Response = yield Step(0.0, Request("GET", "/in", "192.0.2.1"))
        yield Step(1.0, Request("GET", "/x", "192.0.2.2"))
        yield Step(2.0, Request("GET", "/out", "192.0.2.3"))
        yield Step(3.0, Request("GET", "/y", "192.0.2.4"))

    def other() -> Any:
        yield Step(1.5, Request("GET", "/z", "192.0.2.9"))

    clock = FakeClock()
    asyncio.run(
        run_agents(AsgiDriver(app), clock, [Actor("a", False, agent()), Actor("b", False, other())])
    )
    assert seen == [None, "device=abc", None, "device=abc", None]


def test_people_pass_the_challenges_apiguard_asks_for() -> None:
    """Beside distributed stuffing, people without a device cookie are challenged at the
    login; each passes at the shop's /challenge (guard.challenge_passed()) and goes on."""
    outcome = apiguard_outcome("credential stuffing")
    assert outcome.bot_challenges > 0  # the bots were challenged and never passed
    assert outcome.benign_principals_challenged > 0
    assert outcome.challenges_passed >= outcome.benign_principals_challenged


@pytest.mark.parametrize("status", [403, 429, 401, 428])
def test_challenges_are_recognised_whatever_their_status(status: int) -> None:
    """`detection.challenge_status` may answer challenges 401/428/429: the self-test still
    counts them as challenges (a refusal for bots, passed by people)."""
    from apiguard.simulate.driver import CHALLENGE_TYPE, Response

    body = json.dumps({"type": CHALLENGE_TYPE, "status": status}).encode()
    response = Response(status, ((b"content-type", b"application/problem+json"),), body)
    assert response.challenged
    record = Record(0.0, "x", True, "k", "GET", "/", "192.0.2.1", status, problem=CHALLENGE_TYPE)
    assert record.blocked and record.challenged
    plain = Record(0.0, "x", True, "k", "GET", "/", "192.0.2.1", 401)
    assert not plain.blocked and not plain.challenged


def test_a_guard_in_a_module_beside_the_app_starts_each_run_clean(tmp_path: Path) -> None:
    """An app laid out like most (the Guard in app/core/guard.py, the app in app/main.py)
    keeps one guard across runs, since only the app's module is imported afresh: the
    reference run's monitor mode and its state must not leak into the protected run."""
    (tmp_path / "trial_guard_mod.py").write_text("from apiguard import Guard\nguard = Guard()\n")
    (tmp_path / "trial_app_mod.py").write_text(
        "from starlette.applications import Starlette\n"
        "from apiguard.asgi import GuardMiddleware\n"
        "from trial_guard_mod import guard\n"
        "app = Starlette()\n"
        "app.add_middleware(GuardMiddleware, guard=guard)\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        spec = f"{tmp_path / 'trial_app_mod.py'}:app"
        reference = st.in_process_factory(spec, monitor=True)(FakeClock(1000.0))
        ref_guard = st.find_guard(reference)
        assert ref_guard is not None and ref_guard.mode_override == "monitor"
        ref_guard.store.impose(Ban("k", 5000.0, 1), 1000.0)
        protected = st.in_process_factory(spec)(FakeClock(1000.0))
        guard = st.find_guard(protected)
        assert guard is ref_guard  # (the same object: the point of this test)
        assert guard.mode_override is None
        assert guard.store.active_ban("k", 1001.0) is None
    finally:
        sys.path.remove(str(tmp_path))
        for name in ("trial_guard_mod", "trial_app_mod"):
            sys.modules.pop(name, None)


def test_the_self_test_counts_an_app_that_raises_as_a_500() -> None:
    """An app route that raises (a mount of a missing folder, a bug) is answered 500 in
    the self-test, as a server would, instead of ending the run with a traceback."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    async def broken(request: Any) -> Any:
        raise RuntimeError("the app's own bug")

    app = Starlette(routes=[Route("/broken", broken)])
    app.add_middleware(GuardMiddleware, guard=Guard())
    lenient = AsgiDriver(app, server_errors=True)
    assert asyncio.run(lenient.send(Request("GET", "/broken", "198.51.100.3", ()))).status == 500
    with pytest.raises(RuntimeError, match="own bug"):
        asyncio.run(AsgiDriver(app).send(Request("GET", "/broken", "198.51.100.3", ())))


def test_cli_attack_refuses_to_measure_with_accounts_that_cannot_log_in(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A wrong login declaration (here its path) is an error that says so, exit status
    2, instead of every account campaign reporting '0 takeovers (0)' and missed."""
    status = main(["attack", SHOP_SPEC, "--login", "/signin", "--campaign", "brute force"])
    assert status == 2
    err = capsys.readouterr().err
    assert "could not log in" in err and "/signin" in err


UUID_APP = """
import uuid
from typing import Annotated, Any
from fastapi import Depends, FastAPI, Header, HTTPException
from pydantic import BaseModel
from apiguard import Guard, identify
from apiguard.asgi import GuardMiddleware

guard = Guard({"detection": {"challenge_path": "/challenge"}})
app = FastAPI()
app.add_middleware(GuardMiddleware, guard=guard)
USERS = {f"member{n}": f"secret-{n}" for n in range(1, 301)}
# each member owns 4 orders with random UUIDs (a BOLA bug: anyone reads any order)
ORDERS = {str(uuid.UUID(int=n * 1000 + k)): f"member{n}" for n in range(1, 301) for k in range(4)}


class Login(BaseModel):
    username: str
    password: str


def member(authorization: Annotated[str | None, Header()] = None) -> str:
    name = (authorization or "").removeprefix("Bearer tok-")
    if name not in USERS:
        raise HTTPException(401)
    identify(name)
    return name


@app.post("/login")
@guard.login(username="body.username")
async def login(body: Login) -> dict[str, str]:
    if USERS.get(body.username) != body.password:
        raise HTTPException(401)
    return {"access_token": "tok-" + body.username}


@app.get("/orders/{order_id}")
async def order(order_id: str, who: Annotated[str, Depends(member)]) -> dict[str, Any]:
    if order_id not in ORDERS:
        raise HTTPException(404)
    return {"id": order_id, "owner": ORDERS[order_id]}


@app.post("/challenge")
async def challenge() -> dict[str, bool]:
    guard.challenge_passed()
    return {"ok": True}
"""


def test_the_self_test_walks_object_ids_declared_in_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An app whose objects are UUIDs: `[objects] file` lists who owns which id, and the
    BOLA campaigns read foreign ones (the gain is counted in those ids)."""
    import uuid

    (tmp_path / "uuid_shop_app.py").write_text(UUID_APP)
    rows = [f"{n},{uuid.UUID(int=n * 1000 + k)}" for n in range(1, 301) for k in range(4)]
    (tmp_path / "orders.csv").write_text("# account,order id\n" + "\n".join(rows) + "\n")
    (tmp_path / "attack.toml").write_text(
        '[accounts]\nusername = "member{n}"\npassword = "secret-{n}"\ncount = 300\n'
        '[objects]\npath = "/orders/{id}"\nfile = "orders.csv"\n'
    )
    target = Target.from_toml(tmp_path / "attack.toml")
    assert target.accounts[1].objects == tuple(str(uuid.UUID(int=2000 + k)) for k in range(4))
    assert len(target.object_ids) == 1200
    sys.path.insert(0, str(tmp_path))
    try:
        status = main(
            [
                "attack",
                f"{tmp_path / 'uuid_shop_app.py'}:app",
                "--config",
                str(tmp_path / "attack.toml"),
                "--campaign",
                "BOLA random",
                "--scale",
                "0.5",
                "--json",
            ]
        )
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("uuid_shop_app", None)
    data = json.loads(capsys.readouterr().out)
    row = data["campaigns"][0]
    assert row["reference_gain"] >= 150  # unprotected, the walk reads foreign UUIDs
    assert row["caught"] is True and row["benign_principals_refused"] == 0
    assert status == 0


def test_an_objects_file_that_names_no_declared_account_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "orders.csv").write_text("1,a\nnobody,b\n")
    (tmp_path / "attack.toml").write_text('[accounts]\ncount = 5\n[objects]\nfile = "orders.csv"\n')
    with pytest.raises(ValueError, match=r"orders.csv:2: 'nobody' is no declared account"):
        Target.from_toml(tmp_path / "attack.toml")
    # the numbering the error names (a trial wrote 0 for the first account)
    (tmp_path / "orders.csv").write_text("0,a\n")
    with pytest.raises(ValueError, match=r"number, 1 to 5 \(1 is 'user1'\)"):
        Target.from_toml(tmp_path / "attack.toml")
    (tmp_path / "attack.toml").write_text('[objects]\nfile = "missing.csv"\n')
    with pytest.raises(ValueError, match="cannot read"):
        Target.from_toml(tmp_path / "attack.toml")


def test_a_person_challenged_who_never_passes_is_refused() -> None:
    """Django trial F6: an app without a challenge route the self-test knows left people
    asked for a challenge they could not pass, and the self-test printed "0 benign
    refused". A person asked who never passed one is refused; one who passed is not."""
    from apiguard.simulate.driver import CHALLENGE_TYPE

    def rec(actor: int, kind: str, status: int, problem: str | None = None) -> Record:
        return Record(0.0, "x", False, kind, "POST", "/login", "192.0.2.1", status, actor, None,
                      None, problem)  # fmt: skip

    camp = cp.campaign("credential stuffing")
    records = [
        rec(1, "login", 403, CHALLENGE_TYPE),  # asked, never passed
        rec(2, "login", 403, CHALLENGE_TYPE),  # asked, passed, went on
        rec(2, "challenge", 200),
        rec(2, "login", 200),
        rec(3, "login", 200),
    ]
    outcome = cp.judge(camp, records, reference_gain=None)
    assert outcome.benign_principals_challenged == 2
    assert outcome.benign_principals_refused == 1
    assert outcome.benign_refused == 1


def test_a_baselines_refusals_are_counted_by_status(shop: Any, target: Target) -> None:
    """The baselines keep the shop's apiguard in monitor mode beside their own limiter: their
    refusals are theirs, counted by status (`by_status`); taken for the app's own answers
    (apiguard's count only), the lockout would refuse nothing (the full detection run
    printed 0 refused for both baselines before this)."""
    camp = cp.campaign("brute force")
    factory = baselines.axes_shop(shop)
    by_status = cp.run(camp, target, factory, reference=0, scale=SCALE, by_status=True)
    by_guard = cp.run(camp, target, factory, reference=0, scale=SCALE)
    assert by_status.refused > 0
    assert by_guard.refused == 0 and by_guard.app_refusals > 0


def test_over_http_each_client_sends_only_its_own_cookies() -> None:
    """A real-app trial: one httpx client's cookie jar carried every simulated client's
    cookies to the others (a walker's requests carried other accounts' device cookies,
    not its own session). Over HTTP, each actor sends only what its own jar holds."""
    import httpx

    from apiguard.simulate.driver import Actor, Request, Step

    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("cookie", ""))
        who = request.url.path.strip("/")
        return httpx.Response(200, headers={"set-cookie": f"session={who}; Path=/"})

    def agent(name: str) -> Iterator[Step]:
        for k in range(3):
            yield Step(float(k), Request("GET", f"/{name}", "127.0.0.1", ()), "read")

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            driver = st.HttpDriver("http://testserver", client, forwarded_for=False)
            actors = [
                Actor("a", False, agent("alice"), cookies=True),
                Actor("b", False, agent("bob"), cookies=True),
                Actor("c", False, agent("carol"), cookies=False),
            ]
            await st.run_over_http(driver, actors, speed=1e9, max_requests=9, max_seconds=5.0)

    asyncio.run(go())
    assert sorted(seen) == sorted(
        ["", "", "", "session=alice", "session=alice", "session=bob", "session=bob", "", ""]
    )


def test_a_module_named_by_its_import_path_is_loaded_beside_its_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real-app trial: `apiguard attack config.wsgi:application` put `config/` first on
    the import path, and the project's `config/django/` settings package hid Django. A
    module named by its import path keeps the import path as it is (its own folder last)
    and its relative imports."""
    (tmp_path / "config" / "starlette").mkdir(parents=True)
    (tmp_path / "config" / "__init__.py").write_text("")
    (tmp_path / "config" / "starlette" / "__init__.py").write_text("raise ImportError('shadow')\n")
    (tmp_path / "config" / "settings.py").write_text("NAME = 'shop'\n")
    (tmp_path / "config" / "asgi.py").write_text(
        "from starlette.applications import Starlette\n"
        "from .settings import NAME\n"
        "app = Starlette()\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    module, attr = st.load_module("config.asgi:app")
    assert attr == "app" and module.NAME == "shop"
    assert str(tmp_path / "config") not in sys.path[:2]
