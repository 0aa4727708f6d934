"""The oldest Flask the `flask` extra allows (2.2, with Werkzeug 2.2): the Flask tests and
the shared suite's Flask cases run again in a subprocess against it (the newest Flask is
what the rest of the suite runs on). Flask 2.2 is installed once into a folder inside the
virtual environment (pip, a few seconds) and put first on the subprocess's path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import apiguard

OLDEST = ("flask==2.2.5", "werkzeug==2.2.3")
TESTS = Path(__file__).parent
ROOT = TESTS.parent
# the apiguard under test (this suite's own, not whatever the environment installed)
SOURCE = Path(apiguard.__file__).resolve().parents[1]
VERSIONS = "import flask, werkzeug as w; print(flask.__version__, w.__version__)"


def oldest_flask() -> Path:
    target = Path(sys.prefix) / "apiguard-flask-2.2"
    if not (target / "flask" / "__init__.py").exists():
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target"]
        subprocess.run([*pip, str(target), *OLDEST], check=True, timeout=300)
    return target


def test_flask_2_2_runs_the_flask_suite() -> None:
    target = oldest_flask()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(TESTS), str(SOURCE)])}
    version = subprocess.run(
        [sys.executable, "-c", VERSIONS],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert version == ["2.2.5", "2.2.3"]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-o",
            "addopts=",
            "-q",
            "-p",
            "no:cacheprovider",
            str(TESTS / "test_flask.py"),
            str(TESTS / "test_frameworks_shared.py"),
            "-k",
            "flask",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    summary = run.stdout.strip().splitlines()[-1]
    passed = int(summary.split(" passed")[0].split()[-1])
    assert passed >= 20, summary  # the Flask tests and the shared suite's Flask cases
