"""An app's own test suite: `Guard.reset()` between tests, and the mode override.

The README's "Testing your app" conftest runs, as written there, in a pytest session of
its own (pytester) against a FastAPI app with a limited login: without it the suite's
later login tests are refused 429; with it every test passes, and the limit's own test,
which asks for `enforced`, still sees the limit.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import MutableMapping, MutableSequence, MutableSet
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Header
from starlette.testclient import TestClient

from apiguard import ConfigurationError, Guard, identify
from apiguard.asgi import GuardMiddleware
from apiguard.simulate.clock import FakeClock
from apiguard.store.memory import MemoryStore

pytest_plugins = ["pytester"]

README = Path(__file__).resolve().parents[1] / "README.md"

APP = """
from fastapi import FastAPI
from pydantic import BaseModel

from apiguard import Guard
from apiguard.asgi import GuardMiddleware

guard = Guard({"limits": {"principal": "5/minute"}})
app = FastAPI()
app.add_middleware(GuardMiddleware, guard=guard)


class Credentials(BaseModel):
    username: str
    password: str


@app.post("/login")
@guard.flow("login", "3/minute", per="ip")
@guard.login(username="creds.username")
async def login(creds: Credentials):
    return {"token": "t-" + creds.username}


@app.get("/profile")
async def profile():
    return {"name": "alice"}
"""

TESTS = """
from fastapi.testclient import TestClient

from myapp.main import app

client = TestClient(app)
ALICE = {"username": "alice", "password": "pw"}


def test_login():
    assert client.post("/login", json=ALICE).status_code == 200


def test_login_twice():
    for _ in range(2):
        assert client.post("/login", json=ALICE).status_code == 200


def test_profile_browsing():
    for _ in range(6):
        assert client.get("/profile").status_code == 200


def test_login_after_browsing():
    assert client.post("/login", json=ALICE).status_code == 200


def test_login_answer_is_the_apps_own():
    # (apiguard's device cookie is not added under override_mode("monitor"): a trial
    # app's test asserting a token login sets no cookie failed)
    assert "set-cookie" not in client.post("/login", json=ALICE).headers
"""

LIMIT_TEST = """
from fastapi.testclient import TestClient

from myapp.main import app

client = TestClient(app)


def test_login_is_limited(enforced):
    creds = {"username": "mallory", "password": "guess"}
    statuses = [client.post("/login", json=creds).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
"""


def readme_conftest() -> str:
    text = README.read_text()
    section = re.search(r"## Testing your app\n(.*?)\n## ", text, re.S)
    assert section is not None, "README: no 'Testing your app' section"
    block = re.search(r"```python\n(.*?)```", section.group(1), re.S)
    assert block is not None
    return block.group(1)


def make_app_project(pytester: pytest.Pytester, conftest: str) -> None:
    pytester.mkpydir("myapp")
    pytester.path.joinpath("myapp", "main.py").write_text(textwrap.dedent(APP))
    pytester.makeconftest(conftest)
    pytester.makepyfile(test_app=TESTS)


def test_readme_conftest_makes_the_suite_pass(pytester: pytest.Pytester) -> None:
    make_app_project(pytester, readme_conftest())
    pytester.makepyfile(test_limits=LIMIT_TEST)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)


def test_without_it_the_login_tests_get_429(pytester: pytest.Pytester) -> None:
    make_app_project(pytester, "")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) >= 2, outcomes  # 429 from the login flow or the limit
    result.stdout.fnmatch_lines(["*429*"])


# -- reset() -----------------------------------------------------------------------------------


def build(**config: Any) -> tuple[Guard, FastAPI]:
    guard = Guard(
        {
            "limits": {"principal": "3/minute", "ip": None},
            "bans": {"after": 2, "within": 60},
            **config,
        },
        clock=FakeClock(1_000.0),
    )
    app = FastAPI()
    app.add_middleware(GuardMiddleware, guard=guard)

    def auth(x_user: str | None = Header(None)) -> None:
        identify(x_user)

    @app.get("/items")
    async def items() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/redeem")
    @guard.flow("redeem", "1/hour", per="ip", mode="enforce")
    def redeem() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/watched")
    @guard.limit("1/hour", per="ip", mode="monitor", name="watched")
    async def watched() -> dict[str, bool]:
        return {"ok": True}

    return guard, app


def test_reset_clears_a_ban_and_a_spent_flow() -> None:
    guard, app = build()
    client = TestClient(app, client=("203.0.113.7", 1))
    key = {"x-api-key": "k-1"}
    statuses = [client.get("/items", headers=key).status_code for _ in range(6)]
    assert statuses == [200, 200, 200, 429, 403, 403]  # banned after two refusals
    assert client.post("/redeem").status_code == 200
    assert client.post("/redeem").status_code == 429  # the flow is spent
    guard.reset()
    assert client.get("/items", headers=key).status_code == 200  # no ban, a full budget
    assert client.post("/redeem").status_code == 200  # the flow is available again
    # and the escalation starts over: the next ban is level 1 (60 s), not level 2
    statuses = [client.get("/items", headers=key).status_code for _ in range(5)]
    assert statuses == [200, 200, 429, 403, 403]


def test_reset_clears_new_credential_marks_and_client_caches() -> None:
    guard, app = build(identity={"new_credentials_per_ip": "2/hour"})
    client = TestClient(app, client=("203.0.113.8", 1))
    statuses = [client.get("/items", headers={"x-api-key": f"k{n}"}).status_code for n in range(3)]
    assert statuses == [200, 200, 429]
    assert guard.engine._ip_keys  # the client address was cached
    guard.reset()
    assert not guard.engine._ip_keys
    assert client.get("/items", headers={"x-api-key": "k9"}).status_code == 200


def test_memory_store_reset_empties_every_table() -> None:
    """Every table of the store (any mutable collection attribute, including ones added
    later) is empty after reset(); `local_bans` is still the live ban table."""
    guard, app = build()
    store = guard.store
    assert isinstance(store, MemoryStore)
    client = TestClient(app, client=("203.0.113.9", 1))
    for _ in range(6):
        client.get("/items", headers={"x-api-key": "key-1"})
    TestClient(app, client=("203.0.113.10", 1)).post("/redeem")
    tables = {
        name: value
        for name, value in vars(store).items()
        if isinstance(value, MutableMapping | MutableSet | MutableSequence)
    }
    assert sum(len(t) for t in tables.values()) > 0
    assert store.local_bans  # a ban was earned
    store.reset()
    assert {name: len(t) for name, t in tables.items()} == dict.fromkeys(tables, 0)
    assert store.local_bans is store._bans
    assert len(store) == 0


def test_reset_needs_a_store_that_can() -> None:
    class NoReset(MemoryStore):
        reset = None  # type: ignore[assignment]

    guard = Guard(store=NoReset())
    with pytest.raises(ConfigurationError, match=r"NoReset has no reset\(\)"):
        guard.reset()


# -- override_mode() ---------------------------------------------------------------------------


def test_monitor_override_refuses_nothing_and_bans_nobody() -> None:
    guard, app = build(limits={"principal": None, "ip": "5/minute"})
    one, two, three = (TestClient(app, client=(f"203.0.113.{n}", 1)) for n in (1, 2, 3))
    guard.override_mode("monitor")
    assert guard.mode_override == "monitor"
    assert [one.get("/items").status_code for _ in range(30)] == [200] * 30
    assert [two.post("/redeem").status_code for _ in range(2)] == [200] * 2  # mode="enforce"
    assert not guard.store.local_bans  # type: ignore[attr-defined]
    guard.override_mode(None)  # every rule has its own mode again
    assert one.get("/items").json()["violated-policies"] == ["per-ip"]
    refused = two.post("/redeem")  # the flow's own mode is enforce
    assert refused.json()["violated-policies"] == ["redeem"]
    assert three.post("/watched").status_code == 200  # declared monitor: still monitor
    assert three.post("/watched").status_code == 200


def test_enforce_override_forces_monitor_rules() -> None:
    guard, app = build(mode="monitor", limits={"principal": None, "ip": "3/minute"})
    one, two = (TestClient(app, client=(f"203.0.113.{n}", 1)) for n in (1, 2))
    assert [one.get("/items").status_code for _ in range(5)] == [200] * 5  # guard: monitor
    with guard.overridden("enforce"):
        assert one.get("/items").status_code == 429  # the global rule is enforced now
        assert two.post("/watched").status_code == 200
        assert two.post("/watched").status_code == 429  # declared monitor, enforced now
    assert guard.mode_override is None
    assert two.post("/watched").status_code == 200  # its own mode again
    assert one.get("/items").status_code == 200


def test_overrides_nest_and_restore() -> None:
    guard, _ = build()
    with guard.overridden("monitor"):
        with guard.overridden("enforce"):
            assert guard.mode_override == "enforce"
        assert guard.mode_override == "monitor"
        with pytest.raises(RuntimeError), guard.overridden(None):
            assert guard.mode_override is None
            raise RuntimeError
        assert guard.mode_override == "monitor"
    assert guard.mode_override is None


@pytest.mark.parametrize("mode", ["Monitor", "off", 1, True])
def test_override_mode_rejects_unknown_modes(mode: Any) -> None:
    with pytest.raises(ConfigurationError):
        Guard().override_mode(mode)


def test_monitor_override_still_reports_decisions() -> None:
    guard, app = build()
    client = TestClient(app, client=("203.0.113.7", 1))
    seen: list[str] = []
    with guard.overridden("monitor"):

        @app.get("/probe")
        @guard.limit("100/minute")  # checked at entry: the handler sees the decision
        async def probe() -> dict[str, str]:
            from apiguard import current_request

            ctx = current_request()
            assert ctx is not None
            return {"decision": ctx.decision.action.value if ctx.decision else "none"}

        for _ in range(5):
            seen.append(client.get("/probe", headers={"x-api-key": "k"}).json()["decision"])
    assert seen == ["allow", "allow", "allow", "monitor", "monitor"]
