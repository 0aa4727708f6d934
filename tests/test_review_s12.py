"""Review s12: the detectors' cheaper key path holds the same behaviour.

- the reconnaissance detector is planned only for requests answered 404 or 405 (the
  engine's `MISSES` watch), every other detector still for all of them;
- the rotation detector sends a principal's place at most once per quarter window, from
  its first places (kept in its homes) and from any other place alike, and a refused
  answer at a home place is still sent;
- the flow-group detector records principals' activity only once a flow is declared,
  and `Guard.reset()` leaves the engine holding the detectors it runs;
- BOLA's principals keep their own population bar after the route table is rebuilt.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from fastapi import FastAPI, Header, HTTPException

from apiguard import Guard
from apiguard.asgi import GuardMiddleware
from apiguard.detectors.flow_groups import FlowGroups
from apiguard.simulate.clock import FakeClock
from apiguard.simulate.driver import AsgiDriver, Request
from detection_support import keys_sent, run

START = 5_000_000.0


def _app(guard: Guard, flow: bool = False) -> FastAPI:
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.get("/v1/items/{item_id}")
    async def item(item_id: int, x_api_key: str | None = Header(None)) -> dict[str, int]:
        if x_api_key == "denied":
            raise HTTPException(401)
        return {"id": item_id}

    @app.post("/v1/items/{item_id}")
    async def change(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    if flow:

        @app.post("/v1/redeem")
        @guard.flow("redeem", "5/hour")
        async def redeem() -> dict[str, bool]:
            return {"ok": True}

    return app


def _spy_plans(guard: Guard) -> Counter[str]:
    """Count each detector's `plan` calls (the engine calls `detector.plan`)."""
    calls: Counter[str] = Counter()
    for detector in guard.engine.detectors:
        original = detector.plan

        def counted(
            outcome: Any, ops: Any, original: Any = original, name: str = detector.name
        ) -> Any:
            calls[name] += 1
            return original(outcome, ops)

        detector.plan = counted  # type: ignore[method-assign]
    return calls


def test_recon_is_planned_only_for_misses_and_the_others_for_every_request() -> None:
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    driver = AsgiDriver(_app(guard))
    calls = _spy_plans(guard)

    async def scenario() -> list[int]:
        statuses = []
        for path, method in [
            ("/v1/items/1", "GET"),
            ("/v1/items/2", "GET"),
            ("/v1/nothing-here", "GET"),  # 404
            ("/v1/items/3", "DELETE"),  # 405
            ("/v1/items/4", "POST"),
            ("/v1/items/x", "GET"),  # 422
        ]:
            clock.advance(1)
            statuses.append((await driver.send(Request(method, path, "198.51.100.7"))).status)
        return statuses

    assert run(scenario()) == [200, 200, 404, 405, 200, 422]
    assert calls["recon"] == 2
    assert calls["bola"] == 6 and calls["scraping"] == 6


def test_recon_still_bans_a_probe_sweep_and_not_the_reader_beside_it() -> None:
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    driver = AsgiDriver(_app(guard))

    async def scenario() -> tuple[list[int], list[int]]:
        prober, reader = [], []
        for n in range(80):
            clock.advance(2)
            path = f"/v1/{['admin', 'internal', 'debug', 'backup'][n % 4]}-{n}"
            prober.append((await driver.send(Request("GET", path, "203.0.113.9"))).status)
            got = await driver.send(Request("GET", f"/v1/items/{n % 5 + 1}", "198.51.100.20"))
            reader.append(got.status)
        return prober, reader

    prober, reader = run(scenario())
    assert set(prober[:20]) == {404}
    assert 403 in prober or 429 in prober, prober
    assert set(reader) == {200}


def test_a_key_at_its_home_is_sent_once_per_quarter_window_and_a_refusal_there_too() -> None:
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    driver = AsgiDriver(_app(guard))
    sent = keys_sent(guard, "rot:")
    quarter = guard.config.detection.rotation.window / 4

    async def call(key: str, ip: str) -> int:
        req = Request("GET", "/v1/items/1", ip, (("user-agent", "sync/1"), ("x-api-key", key)))
        return (await driver.send(req)).status

    async def scenario() -> list[int]:
        statuses = []
        for _ in range(30):  # one key, one place, every 10 s: one send
            clock.advance(10)
            statuses.append(await call("key-a", "203.0.113.10"))
        first = len(sent)
        statuses.append(await call("denied", "203.0.113.10"))  # a 401: sent on its own
        statuses.append(await call("denied", "203.0.113.10"))  # (not again)
        after_refusal = len(sent)
        clock.advance(quarter)  # a quarter window later: sent again, once
        for _ in range(5):
            clock.advance(1)
            statuses.append(await call("key-a", "203.0.113.10"))
        sent_counts.extend([first, after_refusal, len(sent)])
        return statuses

    sent_counts: list[int] = []
    statuses = run(scenario())
    assert statuses.count(401) == 2 and statuses.count(200) == 35
    first, after_refusal, total = sent_counts
    assert first == 4  # the place's four tallies, once
    assert after_refusal == 8  # the refused key's place, once
    assert total == 12  # the home place again after a quarter window, once


def test_places_past_the_first_few_are_still_sent_once_each_per_quarter_window() -> None:
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    driver = AsgiDriver(_app(guard))
    sent = keys_sent(guard, "rot:")
    homes = guard.config.detection.rotation.homes

    async def scenario() -> None:
        for rep in range(3):
            for n in range(homes + 4):  # past the homes kept
                clock.advance(5)
                req = Request(
                    "GET",
                    "/v1/items/1",
                    f"198.{n}.7.10",
                    (("user-agent", "sync/1"), ("x-api-key", "key-b")),
                )
                assert (await driver.send(req)).status == 200, (rep, n)

    run(scenario())
    assert len(sent) == 4 * (homes + 4)  # each place once: the repeats within the quarter are not


def test_flow_activity_is_recorded_only_once_a_flow_is_declared() -> None:
    for flow in (False, True):
        clock = FakeClock(START)
        guard = Guard(clock=clock)
        driver = AsgiDriver(_app(guard, flow=flow))
        groups = guard.engine._flow_groups
        assert groups is not None and groups.activity is flow
        seen = keys_sent(guard, "fga:")

        async def scenario(driver: AsgiDriver = driver, clock: FakeClock = clock) -> None:
            for n in range(5):
                clock.advance(3)
                headers = (("x-api-key", f"key-{n}"),)
                await driver.send(Request("GET", "/v1/items/1", "203.0.113.50", headers))

        run(scenario())
        assert (len(seen) == 15) is flow, (flow, seen)


def test_a_flow_rule_checked_without_guard_flow_turns_activity_on() -> None:
    guard = Guard(clock=FakeClock(START))
    engine = guard.engine
    groups = engine._flow_groups
    assert groups is not None and not groups.activity
    from apiguard.rules import FlowRule

    rule = FlowRule("custom", "3/hour")

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/redeem",
        "headers": [(b"x-api-key", b"key-1")],
        "client": ("203.0.113.5", 40000),
        "query_string": b"",
    }
    ctx = engine.begin(scope)
    ctx.principal = ctx.ip_key
    keys = engine._with_groups((), ctx, (rule,))
    assert keys  # (the flow's group keys: the checkpoint went through)
    assert groups.activity and engine.flows_declared


def test_reset_leaves_the_engine_holding_the_detectors_it_runs() -> None:
    guard = Guard(clock=FakeClock(START))
    _app(guard, flow=True)
    guard.reset()
    engine = guard.engine
    groups = [d for d in engine.detectors if isinstance(d, FlowGroups)]
    assert groups and engine._flow_groups is groups[0]
    assert groups[0].activity  # (the flow declared before the reset is still declared)
