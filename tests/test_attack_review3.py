"""Third review: the spill sketch of a full window table (store/spill.py). Each test
asserts the right behaviour; each failed before its fix."""

from __future__ import annotations

import logging

import pytest

from apiguard.config import BanConfig
from apiguard.rules import FlowRule
from apiguard.store.base import Batch, Hit
from apiguard.store.memory import MemoryStore
from apiguard.window import WindowSpec

NO_BANS = BanConfig(enabled=False)
RULES = 64  # rule prefixes: the spill sketches were once capped at 64 of them


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="apiguard")


def hit(store: MemoryStore, key: str, spec: WindowSpec, now: float) -> bool:
    return store.execute(Batch([Hit(key, spec)]), now, NO_BANS).admitted


def test_an_honest_subject_spilled_between_requests_gets_its_whole_budget() -> None:
    store = MemoryStore(max_keys=2)
    flow = WindowSpec(3, 3600.0)
    got = []
    for i in range(3):
        got.append(hit(store, "flow:signup.0|alice", flow, 10.0 + i))
        for j in range(2):  # a flood pushes alice's window out between her requests
            hit(store, f"flow:signup.0|bot{i}.{j}", flow, 10.0 + i + 0.5)
    assert got == [True, True, True]  # was [True, True, False] (1 -> 3 -> 7 ...)


def test_a_600_per_minute_subject_spilled_between_requests_is_not_refused_early() -> None:
    store = MemoryStore(max_keys=2)
    spec = WindowSpec(600, 60.0)
    served = 0
    for i in range(100):
        served += hit(store, "g.ip.0|alice", spec, 1.0 + i * 0.05)
        for j in range(2):
            hit(store, f"g.ip.0|bot{i}.{j}", spec, 1.0 + i * 0.05)
    assert served == 100  # was 10


def test_a_65th_rule_never_loses_a_live_window() -> None:
    store = MemoryStore(max_keys=1)
    lim = WindowSpec(5, 3600.0)
    for p in range(RULES):  # 64 rule prefixes each spill once: 64 sketches
        hit(store, f"r{p}.0|x", lim, 1.0)
    admitted = 0
    for rnd in range(4):
        for _ in range(5):
            admitted += hit(store, "r64.0|mallory", lim, 2.0 + rnd)
        hit(store, f"r0.0|y{rnd}", lim, 2.0 + rnd)  # pushes mallory's window out
    assert admitted <= 5  # was 20 in 4 seconds


def test_forgotten_specs_never_drop_a_live_window() -> None:
    store = MemoryStore(max_keys=RULES)
    lim = WindowSpec(5, 3600.0)
    for p in range(1, RULES):
        hit(store, f"r{p}.0|x", lim, 1.0)
    admitted = sum(hit(store, "r0.0|mallory", lim, 1.0) for _ in range(5))  # 64 specs noted
    for i in range(RULES):  # the 65th prefix clears the specs, then its newcomers
        hit(store, f"r{RULES}.0|n{i}", lim, 1.0)  # push out r1..r63 and mallory
    admitted += sum(hit(store, "r0.0|mallory", lim, 2.0) for _ in range(5))
    assert admitted <= 5  # was 10


def test_a_flow_name_with_a_bar_keeps_its_stacked_rates_apart() -> None:
    rule = FlowRule("signup|guest", "3/hour;10/day")  # accepted: printable ASCII
    hour, day = rule.specs
    k_hour, k_day = (p + "eve" for p in rule.prefixes)
    store = MemoryStore(max_keys=2)
    t = 100_000.0
    admitted = 0
    for i in range(10):
        admitted += store.execute(
            Batch([Hit(k_day, day), Hit(k_hour, hour)]), t + i, NO_BANS
        ).admitted
        for j in range(3):  # newcomers of the same flow push eve's windows out
            hit(store, f"{rule.prefixes[1]}n{i}.{j}", day, t + i)
    assert admitted <= 3  # was 10 within 10 s at 3/hour


def test_a_batch_of_more_new_windows_than_max_keys_does_not_crash() -> None:
    store = MemoryStore(max_keys=1)
    a, b = WindowSpec(3, 3600.0), WindowSpec(10, 86400.0)
    assert store.execute(Batch([Hit("f.0|eve", a), Hit("f.1|eve", b)]), 1.0, NO_BANS).admitted
