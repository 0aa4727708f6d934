"""The README's quickstart runs as written and does what it says."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs_and_limits() -> None:
    text = README.read_text()
    block = re.search(r"## Quickstart\n.*?```python\n(.*?)```", text, re.S)
    assert block is not None
    namespace: dict[str, Any] = {}
    exec(compile(block.group(1), "README-quickstart", "exec"), namespace)
    client = TestClient(namespace["app"])
    alice = {"authorization": "Bearer tok-alice"}
    redeems = [client.post(f"/coupons/C{i}/redeem", headers=alice).status_code for i in range(5)]
    assert redeems == [200, 200, 200, 429, 429]
    assert client.post("/coupons/X/redeem").status_code == 422  # no token: the app's own answer
    assert client.get("/reports/1", headers=alice).status_code == 200


def test_flask_setup_runs_and_limits() -> None:
    text = README.read_text()
    block = re.search(r"## Flask\n.*?```python\n(.*?)```", text, re.S)
    assert block is not None
    namespace: dict[str, Any] = {"__name__": "readme_flask"}
    exec(compile(block.group(1), "README-flask", "exec"), namespace)
    client = namespace["app"].test_client()
    alice = {"Authorization": "Bearer tok-alice"}
    statuses = [
        client.post(f"/orders/{i}/refund", headers=alice, environ_base={"REMOTE_ADDR": ip})
        for i, ip in enumerate(["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"], 1)
    ]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429]  # per user, any IP
    assert statuses[0].get_json() == {"refunded": 1, "by": "alice"}
    assert client.post("/orders/9/refund").status_code == 200  # anonymous: its own budget
