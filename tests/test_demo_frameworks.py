"""`apiguard demo --framework flask|django`: the same simulated hour against the Flask and
Django shops (the same shop, built twice) gives the same outcome, request for request, with
no honest request refused and the attacks stopped.

(The FastAPI shop grew into the self-test's target, with a login declared to the
detectors, a BOLA bug and partner keys: its hour differs, so the Flask and Django shops
are held to each other.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def outcome(data: dict[str, Any]) -> dict[str, Any]:
    """Everything but the wall time, as JSON has it."""
    plain = json.loads(json.dumps(data))
    return {k: v for k, v in plain.items() if k != "wall_seconds"}


def demo_hour(framework: str) -> dict[str, Any]:
    """The demo hour of `framework`, in a subprocess with a fixed hash seed: the
    in-process store places object ids in its distinct sketches by `hash()`, salted per
    process (so an attacker cannot pick ids that share a slot), and two runs compare
    request for request only with the same salt."""
    done = subprocess.run(
        [sys.executable, "-m", "apiguard", "demo", "--framework", framework, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
        env={**os.environ, "PYTHONHASHSEED": "7"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return outcome(json.loads(done.stdout))


@pytest.fixture(scope="module")
def flask_hour() -> dict[str, Any]:
    return demo_hour("flask")


def test_flask_demo_stops_the_attacks_and_no_honest_request(flask_hour: dict[str, Any]) -> None:
    rows = {row["name"]: row for row in flask_hour["scenarios"]}
    assert sum(row["blocked_benign"] for row in rows.values()) == 0
    assert sum(row["blocked_attack"] for row in rows.values()) > 1000  # the attacks are stopped


def test_django_demo_matches_the_flask_shop(flask_hour: dict[str, Any]) -> None:
    """The Django shop runs with its own settings module (a subprocess, as Flask's)."""
    assert demo_hour("django") == flask_hour
