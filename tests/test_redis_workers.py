"""Two real worker processes (`uvicorn --workers 2`, over HTTP) share one limit and a ban."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from redisproc import free_port

APP_DIR = Path(__file__).parent / "apps"


@pytest.fixture(params=[False, True], ids=["plain", "lease"])
def workers(redis_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """Two workers, without and with quota leases (`store.lease`)."""
    port = free_port()
    env = {**os.environ, "APIGUARD_TEST_REDIS": redis_url}
    if request.param:
        env["APIGUARD_TEST_LEASE"] = "1"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "uvicorn", "workers_app:app",
            "--app-dir", str(APP_DIR),
            "--host", "127.0.0.1", "--port", str(port),
            "--workers", "2", "--no-access-log", "--log-level", "warning",
        ],
        env=env,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/pid", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.1)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _get(base: str, path: str) -> httpx.Response:
    # a new connection per request: the two workers take turns accepting them
    with httpx.Client(base_url=base, headers={"connection": "close"}, timeout=5) as client:
        return client.get(path)


def test_two_workers_share_one_limit_and_a_ban(
    workers: str, request: pytest.FixtureRequest
) -> None:
    pids: set[str] = set()
    for _ in range(500):
        pids.add(_get(workers, "/pid").headers["x-pid"])
        if len(pids) == 2:
            break
    assert len(pids) == 2, "both workers must serve"
    # 40 requests, 8 at a time (so both workers accept some), against 20/minute
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: _get(workers, "/limited"), range(40)))
    statuses = [r.status_code for r in answers]
    # one budget across both workers, not one per worker (with leases, never more: a
    # refused request may see a few units still held by the other worker's lease)
    if "lease" in request.node.callspec.id:
        assert 15 <= statuses.count(200) <= 20, statuses
    else:
        assert statuses.count(200) == 20, statuses
    served_by = {r.headers["x-pid"] for r in answers}
    assert len(served_by) == 2, "both workers counted against the one budget"
    # 3 refusals ban the client (after=3): every later request is refused by both workers
    assert 403 in statuses
    refusers: set[str] = set()
    for _ in range(300):
        resp = _get(workers, "/pid")
        assert resp.status_code == 403
        refusers.add(resp.headers["x-pid"])
        if len(refusers) == 2:
            break
    assert len(refusers) == 2, "the ban earned on one worker is enforced by the other"
