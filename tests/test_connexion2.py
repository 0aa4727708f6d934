"""connexion 2 (a Flask app generated from an OpenAPI file, `connexion.FlaskApp(...).app`,
protected with `apiguard.flask.init_app`), in a subprocess: connexion 2 needs Flask 2.2,
installed once into a folder inside the virtual environment (pip, a few seconds) and put
first on the subprocess's path, as in test_flask_oldest.py. Skipped when pip cannot get
them (no network, no index); CI runs it (it installs them the same way)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PINS = ("connexion==2.14.2", "flask==2.2.5", "werkzeug==2.2.3")
ROOT = Path(__file__).parent.parent

SPEC = """
openapi: 3.0.0
info: {title: shop, version: "1"}
paths:
  /orders/{order_id}:
    get:
      operationId: cx2_views.get_order
      parameters:
        - {name: order_id, in: path, required: true, schema: {type: integer}}
      responses:
        "200": {description: ok}
  /health:
    get:
      operationId: cx2_views.health
      responses:
        "200": {description: ok}
"""

APP = """
import sys
from pathlib import Path

import connexion

from apiguard import Guard
from apiguard.flask import init_app

assert connexion.__version__.startswith("2."), connexion.__version__
guard = Guard({"limits": {"ip": "100/minute"}})
views = type(sys)("cx2_views")


@guard.limit("2/minute")
def get_order(order_id):
    return {"order": order_id}


def health():
    return {"status": "ok"}


views.get_order, views.health = get_order, health
sys.modules["cx2_views"] = views
app = connexion.FlaskApp(__name__, specification_dir=sys.argv[1])
app.add_api("api.yaml")
init_app(app.app, guard)
client = app.app.test_client()
orders = [client.get(f"/orders/{i}") for i in range(3)]
print([r.status_code for r in orders])  # one budget for the operation, any order id
print(orders[2].headers["content-type"], orders[2].get_json()["type"])
print(orders[0].get_json(), orders[0].headers.get("RateLimit") is not None)
health = client.get("/health")
print(health.status_code, health.get_json())
"""


def connexion_2() -> Path:
    target = Path(sys.prefix) / "apiguard-connexion-2"
    if not (target / "connexion" / "__init__.py").exists():
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target"]
        try:
            subprocess.run([*pip, str(target), *PINS], check=True, timeout=300)
        except (subprocess.SubprocessError, OSError) as exc:
            pytest.skip(f"connexion 2 could not be installed with pip ({exc}); CI installs it")
    return target


def test_connexion_2_flask_app_limits_operations(tmp_path: Path) -> None:
    target = connexion_2()
    (tmp_path / "api.yaml").write_text(SPEC)
    (tmp_path / "cx2_app.py").write_text(APP)
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = subprocess.run(
        [sys.executable, str(tmp_path / "cx2_app.py"), str(tmp_path)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    lines = run.stdout.strip().splitlines()
    assert lines == [
        "[200, 200, 429]",
        "application/problem+json https://iana.org/assignments/http-problem-types#quota-exceeded",
        "{'order': 0} True",
        "200 {'status': 'ok'}",
    ]
