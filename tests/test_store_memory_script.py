"""benchmarks/store_memory.py (the README's memory figure) runs and fills what it says."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))  # (after redis)

import store_memory


@pytest.mark.parametrize("scenario", ["ipv4", "ipv6-proxy"])
def test_the_flood_fills_every_table_to_its_cap(scenario: str) -> None:
    m = store_memory.measure(scenario, 1_000)
    assert m["windows"] == m["markers"] == 1_000
    assert m["ip_keys"] == 999  # the client-address cache full, not just emptied
    if scenario == "ipv6-proxy":
        assert m["trust_cache"] >= 999 and m["group_cache"] == 999
    assert 300 < m["mb"] * 1e6 / m["windows"] < 5_000  # bytes per window: plausible
