"""How detection is configured, declared and reported: bad settings fail naming the key,
`@guard.login` fails at decoration when it cannot read the username, works on every
routing shape, and every finding is a metric and a span event with its evidence (never
a raw username or id)."""

from __future__ import annotations

import json
import random
from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException
from fastapi.security import OAuth2PasswordRequestForm
from starlette.routing import Mount

from apiguard import ConfigurationError, Guard
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock
from apiguard.simulate.driver import AsgiDriver, Request
from conftest import Otel
from detection_support import (
    BROWSERS,
    Client,
    build_app,
    is_challenge,
    public_ip,
    run,
    username,
)

START = 4_000_000.0


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"detection": {"bola": {"floor": 1}}}, "detection.bola.floor"),
        ({"detection": {"bola": {"action": "challenge"}}}, "detection.bola.action"),
        ({"detection": {"bola": {"routes": {"orders": 5}}}}, "detection.bola.routes"),
        (
            {"detection": {"account_takeover": {"account_failures": 500}}},
            "detection.account_takeover.account_failures",
        ),
        ({"detection": {"rotation": {"mode": "off"}}}, "detection.rotation.mode"),
        ({"detection": {"bogus": {}}}, "detection.bogus"),
    ],
)
def test_bad_detection_settings_fail_naming_the_key(config: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        Guard(config)
    assert named in str(err.value)


def test_detection_settings_from_the_environment() -> None:
    from apiguard.config import GuardConfig

    cfg = GuardConfig.from_env(
        environ={
            "APIGUARD_DETECTION__BOLA__FLOOR": "50",
            "APIGUARD_DETECTION__ROTATION__ENABLED": "false",
        }
    )
    assert cfg.detection.bola.floor == 50
    assert not cfg.detection.rotation.enabled
    guard = Guard(cfg)
    assert [d.name for d in guard.engine.detectors] == [
        "account_takeover",
        "bola",
        "flow_groups",
        "scraping",
        "recon",
    ]
    assert "detectors: account_takeover, bola, flow_groups" in guard.summary()


def test_login_decorator_refuses_a_username_it_cannot_read() -> None:
    guard = Guard()
    with pytest.raises(ConfigurationError, match="username= reads creds"):

        @guard.login(username=lambda creds: creds.username)
        async def login(form_data: dict[str, str]) -> None: ...

    with pytest.raises(ConfigurationError, match="dotted path"):
        guard.login(username="form data.username")
    with pytest.raises(ConfigurationError, match="callable or a dotted name"):
        guard.login(username=42)  # type: ignore[arg-type]


def _oauth_app(guard: Guard, shape: str) -> tuple[FastAPI, str]:
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    async def check(form_data: OAuth2PasswordRequestForm) -> dict[str, str]:
        if form_data.password != "right":
            raise HTTPException(401)
        return {"access_token": "t"}

    if shape == "nested":
        inner = APIRouter(prefix="/auth")

        @inner.post("/token")
        @guard.login(username="form_data.username")
        async def token(form_data: Annotated[OAuth2PasswordRequestForm, Depends()]) -> Any:
            return await check(form_data)

        outer = APIRouter(prefix="/v1")
        outer.include_router(inner)
        app.include_router(outer)
        return app, "/v1/auth/token"
    if shape == "mounted":
        sub = FastAPI()

        @sub.post("/token")
        @guard.login(username=lambda username: username)
        def token_sync(username: Annotated[str, Form()], password: Annotated[str, Form()]) -> Any:
            if password != "right":
                raise HTTPException(401)
            return {"access_token": "t"}

        app.router.routes.append(Mount("/auth", app=sub))
        return app, "/auth/token"
    raise AssertionError(shape)


@pytest.mark.parametrize("shape", ["nested", "mounted"])
def test_login_is_detected_on_every_routing_shape(shape: str) -> None:
    clock = FakeClock(START)
    guard = Guard({"detection": {"account_takeover": {"account_failures": 5}}}, clock=clock)
    app, path = _oauth_app(guard, shape)
    driver = AsgiDriver(app)
    rng = random.Random(1)

    async def scenario() -> list[int]:
        out = []
        for i in range(12):
            clock.advance(3)
            body = f"username=victim&password=guess{i}".encode()
            req = Request(
                "POST",
                path,
                public_ip(rng),
                (
                    ("user-agent", BROWSERS[i % 4] + str(i)),
                    ("content-type", "application/x-www-form-urlencoded"),
                ),
                body,
            )
            out.append((await driver.send(req)).status)
        return out

    statuses = run(scenario())
    assert statuses[:5] == [401] * 5
    assert set(statuses[6:]) == {403}


def test_findings_are_metrics_and_span_events_without_raw_values() -> None:
    otel = Otel()
    clock = FakeClock(START)
    guard = Guard(clock=clock, meter_provider=otel.meter_provider)
    app = build_app(
        guard,
        telemetry={"tracer_provider": otel.tracer_provider, "meter_provider": otel.meter_provider},
    )
    driver = AsgiDriver(app)

    async def scenario() -> None:
        c = Client(driver, BROWSERS[0], "192.0.2.8")
        await c.login(4)
        for order in range(1, 80):
            clock.advance(1)
            await c.send("GET", f"/orders/{order}")

    run(scenario())
    points = list(otel._points("apiguard.detections"))
    assert any(p.attributes["apiguard.detector"].startswith("bola.") for p in points)
    events = [e for s in otel.server_spans() for e in s.events if e.name == "apiguard.finding"]
    assert events, "no detection event on the server span"
    attrs = dict(events[0].attributes or {})
    assert attrs["apiguard.detector"].startswith("bola.")
    assert attrs["apiguard.enforced"] is True
    assert "apiguard.evidence.objects" in attrs and "apiguard.evidence.threshold" in attrs
    text = repr([dict(e.attributes or {}) for e in events])
    assert "/orders/1" not in text and "tok-" not in text and username(4) not in text


def test_route_floor_override_and_off() -> None:
    clock = FakeClock(START)
    guard = Guard({"detection": {"bola": {"routes": {"/orders/{order_id}": 0}}}}, clock=clock)
    driver = AsgiDriver(build_app(guard))

    async def scenario() -> set[int]:
        c = Client(driver, BROWSERS[0], "192.0.2.8")
        await c.login(4)
        out = set()
        for order in range(1, 300):
            clock.advance(1)
            out.add((await c.send("GET", f"/orders/{order}")).status)
        return out

    assert run(scenario()) == {200}


def test_a_challenged_login_is_not_told_whether_the_password_was_right() -> None:
    clock = FakeClock(START)
    guard = Guard({"detection": {"account_takeover": {"account_failures": 3}}}, clock=clock)
    driver = AsgiDriver(build_app(guard))
    rng = random.Random(2)

    async def scenario() -> None:
        for i in range(4):
            clock.advance(2)
            bot = Client(driver, "bot", public_ip(rng), jar=None)
            await bot.send("POST", "/login", {"username": username(2), "password": f"x{i}"})
        bot = Client(driver, "bot", public_ip(rng), jar=None)
        wrong = await bot.send("POST", "/login", {"username": username(2), "password": "no"})
        right = await bot.login(2)
        assert is_challenge(wrong) and is_challenge(right)
        assert wrong.body == right.body

    run(scenario())


def test_an_untrusted_proxy_is_reported_never_banned_and_challenge_status_is_configurable(
    caplog: Any,
) -> None:
    """Behind a proxy apiguard was not told about, every client shares the proxy's
    address: one stuffer must not get the proxy (everyone's login) banned. And a SPA that
    signs out on any 403 can have challenges answered 428."""
    clock = FakeClock(START)
    guard = Guard({"detection": {"challenge_status": 428}}, clock=clock)
    driver = AsgiDriver(build_app(guard))
    proxy = "10.0.0.2"

    async def scenario() -> tuple[list[int], int, int]:
        for user in range(20, 30):  # the proxy's people log in through it (the evidence)
            clock.advance(5)
            assert (await Client(driver, BROWSERS[2], proxy).login(user)).status == 200
        bot = Client(driver, BROWSERS[0], proxy, jar=None)
        statuses = []
        for i in range(30):  # one actor, many accounts, through the proxy
            clock.advance(5)
            resp = await bot.send(
                "POST", "/login", {"username": username(100 + i), "password": "x"}
            )
            statuses.append(resp.status)
        honest = Client(driver, BROWSERS[1], proxy)
        ok = (await honest.human_login(3))[0].status  # may meet a challenge: it passes
        # a challenge elsewhere: brute force on one account from real addresses
        rng = random.Random(5)
        for i in range(10):
            clock.advance(5)
            await Client(driver, "x", public_ip(rng), jar=None).send(
                "POST", "/login", {"username": username(9), "password": f"g{i}"}
            )
        challenged = await Client(driver, "x", public_ip(rng), jar=None).send(
            "POST", "/login", {"username": username(9), "password": "g"}
        )
        return statuses, ok, challenged.status

    import logging

    caplog.set_level(logging.WARNING, logger="apiguard")
    real_send = driver.send

    async def via_proxy(req: Request) -> Any:  # the proxy adds its header
        if req.ip == proxy:
            req = Request(
                req.method,
                req.path,
                req.ip,
                (*req.headers, ("x-forwarded-for", "198.51.100.7")),
                req.body,
            )
        return await real_send(req)

    driver.send = via_proxy  # type: ignore[method-assign]
    statuses, ok, challenged = run(scenario())
    assert 403 not in statuses  # challenged (428) or answered, never banned
    assert ok == 200
    assert challenged == 428
    assert any("never banned" in r.getMessage() for r in caplog.records)


def test_a_client_adding_a_made_up_forwarding_header_is_banned_like_any_other() -> None:
    """No proxy is trusted: a bot that adds an X-Forwarded-For of its own (a new made-up
    value each time) is not taken for a proxy, and is banned after as many accounts as
    without it; people logging in from their own addresses meanwhile are not refused."""
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    driver = AsgiDriver(build_app(guard))
    rng = random.Random(4)
    bot_ip = "100.64.5.5"

    async def scenario(forged: bool) -> tuple[list[int], list[int]]:
        guard.reset()
        bot = Client(driver, "python-requests/2.31", bot_ip, jar=None)
        statuses: list[int] = []
        people: list[int] = []
        for k in range(30):
            clock.advance(5)
            people.append((await Client(driver, BROWSERS[k % 4], public_ip(rng)).login(k)).status)
            extra = (("x-forwarded-for", f"10.{k}.0.1"),) if forged else ()
            resp = await driver.send(
                Request(
                    "POST",
                    "/login",
                    bot_ip,
                    (*bot.headers(extra), ("content-type", "application/json")),
                    json.dumps({"username": username(100 + k), "password": "x"}).encode(),
                )
            )
            statuses.append(resp.status)
        return statuses, people

    plain, people_plain = run(scenario(False))
    forged, people_forged = run(scenario(True))
    assert people_plain == people_forged == [200] * 30
    assert 403 in plain and 403 in forged
    assert forged.index(403) == plain.index(403) <= 9
    assert forged.count(403) == plain.count(403)
