"""`apiguard demo`: attacks on the example shop are stopped, benign customers never are."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from apiguard.cli import main
from apiguard.simulate import AsgiDriver, FakeClock, Request
from apiguard.simulate import scenarios as sc
from apiguard.simulate.demo import FLOW_BUDGET, DemoResult, format_table, run_demo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def result() -> DemoResult:
    return run_demo(seed=7)


def test_no_benign_request_is_blocked(result: DemoResult) -> None:
    benign = result.scenario(sc.BENIGN)
    assert benign.requests > 1000
    assert benign.attack_requests == 0
    assert benign.blocked_benign == 0
    assert all(s.blocked_benign == 0 for s in result.scenarios)
    assert not any(status in (403, 429) for status in result.benign_statuses)
    assert result.benign_coupons_redeemed > 0  # customers did redeem coupons
    assert result.benign_statuses.get(404, 0) > 0  # and made typos, never punished
    assert not [b for b in result.bans if b.scenario == sc.BENIGN]


def test_coupon_abuse_from_rotating_ips_stops_at_the_flow_budget(result: DemoResult) -> None:
    abuse = result.scenario(sc.COUPON_ABUSE)
    assert abuse.attack_requests == abuse.requests > 300
    # the flow budget holds; the rotation detector (one account, many networks and
    # client shapes) may ban the abuser before the budget is even spent
    assert 1 <= result.coupon_successes <= FLOW_BUDGET
    assert result.redeems_after_budget_blocked == result.redeems_after_budget
    assert abuse.attack_block_rate is not None and abuse.attack_block_rate > 0.8
    levels = [b.seconds for b in result.bans if b.scenario == sc.COUPON_ABUSE]
    assert levels and levels == sorted(levels)  # banned, escalating if it comes back


def test_per_principal_burst_is_throttled_then_banned(result: DemoResult) -> None:
    burst = result.scenario(sc.BURST)
    assert burst.requests > 1000
    assert result.burst_after_first_minute_blocked > 0.8 * result.burst_after_first_minute
    # throttled (429) by its limits or banned first by the BOLA detector (a sequential
    # walk of the catalogue), then banned (403)
    assert burst.statuses.get(403, 0) > 0
    assert burst.attack_block_rate is not None and burst.attack_block_rate > 0.8


def test_simulated_hour_runs_on_the_fake_clock(result: DemoResult) -> None:
    assert result.simulated_seconds > 3000
    assert result.wall_seconds < 120  # (a fake clock: an hour simulated, not waited)


def test_report_table(result: DemoResult) -> None:
    text = format_table(result)
    header = text.splitlines()[0]
    for column in ("scenario", "requests", "blocked attack", "blocked benign"):
        assert column in header
    for name in (sc.BENIGN, sc.COUPON_ABUSE, sc.BURST):
        assert f"\n{name}: " in text  # one explanation line per scenario


def test_cli_demo_prints_the_table(
    result: DemoResult, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seeds: list[int] = []

    def fake_run(seed: int, shop: str | None) -> DemoResult:
        seeds.append(seed)
        return result

    monkeypatch.setattr("apiguard.simulate.demo.run_demo", fake_run)
    assert main(["demo", "--seed", "5"]) == 0
    assert seeds == [5]
    assert capsys.readouterr().out.strip() == format_table(result)


def test_cli_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_help:
        main(["--help"])
    assert exit_help.value.code == 0
    assert "demo" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_unknown:
        main(["nonsense"])
    assert exit_unknown.value.code == 2
    with pytest.raises(SystemExit) as exit_missing:
        main([])
    assert exit_missing.value.code == 2


def test_python_dash_m_apiguard_demo_json_with_another_seed() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "apiguard", "demo", "--json", "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "banned" not in done.stderr  # ban log lines are summarised, not spilled
    data: dict[str, Any] = json.loads(done.stdout)
    rows = {row["name"]: row for row in data["scenarios"]}
    assert sum(row["blocked_benign"] for row in rows.values()) == 0
    assert rows[sc.COUPON_ABUSE]["attack_block_rate"] > 0.8
    assert 1 <= data["coupon_successes"] <= FLOW_BUDGET
    assert data["redeems_after_budget_blocked"] == data["redeems_after_budget"]
    assert data["burst_after_first_minute_blocked"] > 0.8 * data["burst_after_first_minute"]


def test_driver_sends_from_any_client_address() -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope["client"], scope["path"], scope["query_string"]))
        message = await receive()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": message["body"]})

    driver = AsgiDriver(app)
    response = asyncio.run(driver.send(Request("POST", "/x?a=1", "2001:db8::7", body=b"hi")))
    assert response.status == 201 and response.body == b"hi"
    assert seen == [(("2001:db8::7", 50_000), "/x", b"a=1")]


def test_fake_clock() -> None:
    clock = FakeClock(5.0)
    clock.advance(2.5)
    clock.advance_to(4.0)  # the past: ignored
    assert clock() == 7.5
    with pytest.raises(ValueError):
        clock.advance(-1)
