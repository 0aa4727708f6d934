"""`apiguard audit`: every route of a FastAPI, Flask or Django app with its own rules, the
detectors watching it, and what looks left out, read from the route tree."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from apiguard.cli import main

ROOT = Path(__file__).resolve().parent.parent

FASTAPI_APP = """
from fastapi import APIRouter, Depends, FastAPI, WebSocket
from pydantic import BaseModel
from starlette.routing import Mount

from apiguard import Guard
from apiguard.asgi import GuardMiddleware

guard = Guard({GUARD_CONFIG})
app = FastAPI()
app.add_middleware(GuardMiddleware, guard=guard)


class Creds(BaseModel):
    username: str
    password: str


@app.post("/login")
@guard.login(username=lambda creds: creds.username)
async def login(creds: Creds) -> dict[str, str]:
    return {{}}


@app.post("/auth/token")
async def token(creds: Creds) -> dict[str, str]:
    return {{}}


@app.post("/signup")
async def signup() -> dict[str, str]:
    return {{}}


inner = APIRouter(prefix="/shop")


@inner.post("/coupons/{{code}}/redeem")
@guard.flow("redeem", "3/hour")
def redeem(code: str) -> dict[str, str]:
    return {{}}


@inner.get("/orders/{{order_id}}")
async def order(order_id: int) -> dict[str, int]:
    return {{"id": order_id}}


outer = APIRouter(prefix="/api/v1")
outer.include_router(inner)
app.include_router(outer)

sub = FastAPI()


@sub.post("/password/reset")
@guard.flow("reset", "3/hour", key="email")
async def reset(email: str) -> dict[str, str]:
    return {{}}


app.mount("/accounts", sub)


@guard.flow("invite", "5/hour")
async def invite_flow() -> None:
    pass


@app.post("/team/invites", dependencies=[Depends(invite_flow)])
async def invite() -> dict[str, str]:
    return {{}}


@app.get("/newsletter")
async def newsletter_page() -> dict[str, str]:
    return {{}}


@app.post("/newsletter")
@guard.flow("newsletter-signup", "5/hour")
async def newsletter_join() -> dict[str, str]:
    return {{}}


class Mailer:
    @guard.flow("newsletter", "1/day")
    async def send(self) -> None:
        pass


@app.websocket("/live")
async def live(socket: WebSocket) -> None:
    await socket.accept()
"""

MISORDERED = """
from fastapi import FastAPI

from apiguard import Guard
from apiguard.asgi import GuardMiddleware

guard = Guard()
app = FastAPI()
app.add_middleware(GuardMiddleware, guard=guard)


@guard.flow("signup", "3/hour")
@app.post("/signup")
async def signup() -> dict[str, str]:
    return {}
"""

FLASK_APP = """
from flask import Blueprint, Flask, request

from apiguard import Guard
from apiguard.flask import init_app

guard = Guard()
app = Flask(__name__)
outer = Blueprint("outer", __name__, url_prefix="/api")
inner = Blueprint("inner", __name__, url_prefix="/v1")


@inner.post("/checkout")
@guard.flow("checkout", "5/hour")
def checkout():
    return {}


@inner.get("/orders/<int:order_id>")
def order(order_id):
    return {"id": order_id}


@inner.post("/register")
def register():
    return {}


@inner.route("/login", methods=["GET", "POST"])
@guard.login(username=lambda: request.form.get("username"))
def login():
    guard.login_result(request.form.get("username"), False)
    return "<form>"


@inner.route("/signin", methods=["GET", "POST"])
@guard.login(username=lambda: request.form.get("username"), reports=True)
def signin():
    guard.login_result(request.form.get("username"), False)
    return "<form>"


@inner.route("/enter", methods=["GET", "POST"])
@guard.login(username=lambda: request.form.get("username"))
def enter():
    return "<form>"


outer.register_blueprint(inner)
app.register_blueprint(outer)
init_app(app, guard)
"""


def _app(tmp_path: Path, source: str, name: str = "audited_app") -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return f"{path}:app"


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(["audit", *args])
    out = capsys.readouterr()
    return status, out.out, out.err


def _routes(report: dict[str, object]) -> dict[str, dict[str, object]]:
    rows = report["routes"]
    assert isinstance(rows, list)
    return {row["template"]: row for row in rows}


def test_fastapi_routes_nested_mounted_with_rules_detectors_and_notes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _app(tmp_path, FASTAPI_APP.format(GUARD_CONFIG=""))
    status, out, _ = _run([spec, "--json"], capsys)
    assert status == 0
    report = json.loads(out)
    routes = _routes(report)
    login = routes["/login"]
    assert login["rules"] == ["@guard.login"]
    assert login["detectors"] == ["account_takeover"]
    assert login["notes"] == []
    # two routers deep: its flow and the detectors of an object route
    redeem = routes["/api/v1/shop/coupons/{code}/redeem"]
    assert redeem["rules"] == ["flow redeem 3/hour"]
    assert redeem["detectors"] == ["bola", "flow_groups"]
    assert routes["/api/v1/shop/orders/{order_id}"]["detectors"] == ["bola", "scraping"]
    # a mounted FastAPI app's route, with its keyed flow
    reset = routes["/accounts/password/reset"]
    assert reset["rules"] == ["flow reset 3/hour per key=email"]
    assert reset["notes"] == []
    # what looks left out
    assert "looks like a login" in routes["/auth/token"]["notes"][0]
    assert "sensitive flow" in routes["/signup"]["notes"][0]
    assert "websocket" in routes["/live"]["notes"][0]
    # a flow on a dependency protects the route it runs for; a method no route serves is
    # listed apart
    assert routes["/team/invites"]["rules"] == ["flow invite 5/hour"]
    assert routes["/team/invites"]["notes"] == []
    # one path, two views: the rule is the POST view's only
    assert routes["/newsletter"]["methods"] == ["GET", "POST"]
    assert routes["/newsletter"]["rules"] == ["flow newsletter-signup 5/hour (POST only)"]
    assert report["helpers"] == [{"function": "Mailer.send", "rules": ["flow newsletter 1/day"]}]
    assert report["problems"] == []
    assert any("no trusted proxies" in w for w in report["warnings"])
    assert any("detection.flow_groups.surge_action" in w for w in report["warnings"])
    # --strict fails on the notes; the table names every route
    status, text, _ = _run([spec, "--strict"], capsys)
    assert status == 1
    assert "| POST /api/v1/shop/coupons/{code}/redeem | flow redeem 3/hour |" in text
    assert "- POST /signup: looks like a sensitive flow" in text
    assert "- Mailer.send [flow newsletter 1/day]" in text
    # --exclude leaves a subtree out
    status, out, _ = _run([spec, "--json", "--exclude", "/api/", "--exclude", "/accounts"], capsys)
    templates = set(_routes(json.loads(out)))
    assert "/login" in templates
    assert not any(t.startswith(("/api/", "/accounts")) for t in templates)


def test_settings_that_turn_a_route_off_are_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = (
        '{"detection": {"bola": {"routes": {"/api/v1/shop/orders/{order_id}": 0}}, '
        '"challenge_path": "/challenge"}, "client_ip": {"trusted_proxies": ["10.0.0.0/8"]}}'
    )
    spec = _app(tmp_path, FASTAPI_APP.format(GUARD_CONFIG=config), "audited_off")
    status, out, _ = _run([spec, "--json"], capsys)
    assert status == 0
    report = json.loads(out)
    order = _routes(report)["/api/v1/shop/orders/{order_id}"]
    assert order["detectors"] == ["scraping"]
    assert order["notes"] == ["BOLA detection turned off here (detection.bola.routes)"]
    assert not any("no trusted proxies" in w for w in report["warnings"])
    assert not any("challenge route" in w for w in report["warnings"])


def test_a_decorator_above_the_route_is_a_problem_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _app(tmp_path, MISORDERED, "audited_misordered")
    status, out, _ = _run([spec], capsys)
    assert status == 1
    assert "Problems (the app refuses to start with these):" in out
    assert "/signup" in out.split("Problems")[1]


def test_flask_nested_blueprints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _app(tmp_path, FLASK_APP, "audited_flask")
    status, out, _ = _run([spec, "--json"], capsys)
    assert status == 0
    routes = _routes(json.loads(out))
    checkout = routes["/api/v1/checkout"]
    assert checkout["methods"] == ["POST"]
    assert checkout["rules"] == ["flow checkout 5/hour"]
    assert routes["/api/v1/orders/<int:order_id>"]["detectors"] == ["bola", "scraping"]
    assert "sensitive flow" in routes["/api/v1/register"]["notes"][0]
    # a login view reporting its outcomes without saying how: named (a fresh process
    # would count its unreported 2xx as successes until the first report)
    assert "reports=True" in " ".join(routes["/api/v1/login"]["notes"])
    assert routes["/api/v1/signin"]["notes"] == []
    assert "login_result()" in " ".join(routes["/api/v1/enter"]["notes"])  # a blind form
    # static files are no object of anyone's: neither detector watches them (as at run time)
    assert routes["/static/<path:filename>"]["detectors"] == []


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bare = tmp_path / "bare_app.py"
    bare.write_text("from fastapi import FastAPI\napp = FastAPI()\n")
    status, _, err = _run([f"{bare}:app"], capsys)
    assert status == 2
    assert "no apiguard Guard found" in err
    status, _, err = _run([], capsys)
    assert status == 2
    assert "one of them" in err
    status, _, err = _run([f"{tmp_path / 'missing.py'}:app"], capsys)
    assert status == 2


def test_django_project_from_its_settings() -> None:
    # (a process of its own: Django is set up once per process)
    done = subprocess.run(
        [sys.executable, "-m", "apiguard", "audit", "--django", "shop.settings", "--json"],
        cwd=ROOT / "examples" / "django_shop",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    routes = _routes(json.loads(done.stdout))
    assert routes["/coupons/<str:code>/redeem"]["rules"] == ["flow redeem-coupon 3/hour"]
    assert "bola" in routes["/api/v1/orders/<int:order_id>"]["detectors"]
    # (no django.contrib.auth: its logins are the app's, reported with login_result())
    warnings = json.loads(done.stdout)["warnings"]
    assert not any("django.contrib.auth" in w for w in warnings), warnings


def test_an_app_whose_routes_cannot_be_listed_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = tmp_path / "plain_wsgi.py"
    plain.write_text(
        textwrap.dedent(
            """
            from apiguard import Guard
            from apiguard.wsgi import GuardMiddleware

            guard = Guard()

            def inner(environ, start_response):
                start_response("200 OK", [("content-type", "text/plain")])
                return [b"ok"]

            app = GuardMiddleware(inner, guard=guard)
            """
        )
    )
    status, out, _ = _run([f"{plain}:app", "--json"], capsys)
    report = json.loads(out)
    assert status == 0
    assert report["routes"] == []
    assert report["warnings"][0].startswith("no route could be listed")


QUERY_ID_APP = """
from fastapi import Depends, FastAPI, Query
from apiguard import Guard
from apiguard.asgi import GuardMiddleware

guard = Guard({GUARD_CONFIG})
app = FastAPI()
app.add_middleware(GuardMiddleware, guard=guard)

def tenant(tenantId: int = 0) -> int:
    return tenantId

@app.get("/receipt")
def receipt(invoice_id: int, page: int = 1, t: int = Depends(tenant)) -> dict[str, int]:
    return {{}}

@app.get("/search")
def search(q: str = "", grid: str = "", paid: bool = False,
           doc: str = Query("", alias="doc_uuid")) -> dict[str, int]:
    return {{}}
"""


def test_object_ids_in_the_query_string_that_bola_does_not_count_are_noted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _app(tmp_path, QUERY_ID_APP.format(GUARD_CONFIG=""), "query_ids_app")
    routes = _routes(json.loads(_run([spec, "--json"], capsys)[1]))
    (note,) = routes["/receipt"]["notes"]
    assert "(invoice_id, tenantId)" in note and "detection.bola.query_params" in note
    (note,) = routes["/search"]["notes"]  # an alias, as the client sends it; not grid, paid
    assert "(doc_uuid)" in note
    watched = '{"detection": {"bola": {"query_params": ["invoice_id", "tenantId", "doc_uuid"]}}}'
    spec = _app(tmp_path, QUERY_ID_APP.format(GUARD_CONFIG=watched), "query_ids_watched")
    routes = _routes(json.loads(_run([spec, "--json"], capsys)[1]))
    assert routes["/receipt"]["notes"] == [] and routes["/search"]["notes"] == []
    assert routes["/receipt"]["detectors"] == ["bola", "scraping"]


def test_without_a_challenge_route_the_audit_says_who_is_refused_and_what_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real-app trial: the audit said the account, BOLA and recon challenges were
    reported only without a challenge route, while they refused (403) everyone asked."""
    spec = _app(tmp_path, QUERY_ID_APP.format(GUARD_CONFIG=""), "no_challenge_app")
    warnings = json.loads(_run([spec, "--json"], capsys)[1])["warnings"]
    (held,) = [w for w in warnings if "is refused" in w]
    assert "detection.bola.person_action" in held
    assert "detection.account_takeover.account_action" in held
    assert "reported only" not in held
    (surges,) = [w for w in warnings if "surges are reported only" in w]
    assert "detection.flow_groups.surge_action" in surges and "detection.scraping" in surges


LIBRARY_ROUTER_APP = """
from typing import Annotated

from fastapi import APIRouter, Body, Depends, FastAPI
from pydantic import BaseModel

from apiguard import Guard
from apiguard.asgi import GuardMiddleware

guard = Guard()
app = FastAPI()
app.add_middleware(GuardMiddleware, guard=guard)


@guard.flow("password-reset", "3/hour", key="email")
async def reset_flow(email: Annotated[str, Body(embed=True)]) -> None:
    pass


def library_router() -> APIRouter:  # (a library's router: its routes are not the app's)
    lib = APIRouter()

    @lib.post("/forgot-password")
    async def forgot(email: str = Body(..., embed=True)) -> None:
        return None

    return lib


app.include_router(library_router(), prefix="/a", dependencies=[Depends(reset_flow)])
outer = APIRouter(prefix="/c")
outer.include_router(library_router(), dependencies=[Depends(reset_flow)])
app.include_router(outer)
both = APIRouter(prefix="/d", dependencies=[Depends(reset_flow)])
both.include_router(library_router())
app.include_router(both)


@guard.flow("verify-request", "3/hour", key="email")
async def verify_flow(email: str) -> None:
    pass


async def maybe_verify(email: Annotated[str | None, Body(embed=True)] = None) -> None:
    if email is not None:  # (the README's shape: the router's other route has no e-mail)
        await verify_flow(email)


app.include_router(library_router(), prefix="/e", dependencies=[Depends(maybe_verify)])


class Creds(BaseModel):
    username: str
    password: str


class Manager:
    @guard.login(username="credentials.username")
    async def authenticate(self, credentials: Creds) -> None: ...

    @guard.flow("signup", "50/hour", per="ip", count="success")
    async def create(self, user: Creds) -> None: ...


def manager() -> Manager:
    return Manager()


users = APIRouter()


@users.post("/login")
async def login(m: Manager = Depends(manager)) -> None:
    return None


@users.post("/register")
async def register(m: Manager = Depends(manager)) -> None:
    return None


app.include_router(users, prefix="/users")
"""


def test_rules_on_router_dependencies_and_on_functions_a_library_route_calls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real-app trial (fastapi-users): a flow on `include_router(...,
    dependencies=[...])`, the README's shape, was shown on no route (FastAPI 0.165's
    included routes carry their routers' dependencies on the effective route only), and
    the login and sign-up that call the app's decorated `UserManager` methods were
    noted as unprotected with no word of those methods."""
    spec = _app(tmp_path, LIBRARY_ROUTER_APP, "library_router_app")
    report = json.loads(_run([spec, "--json"], capsys)[1])
    routes = _routes(report)
    for prefix in ("/a", "/c", "/d"):
        row = routes[prefix + "/forgot-password"]
        assert row["rules"] == ["flow password-reset 3/hour per key=email"], prefix
        assert row["notes"] == [], prefix
    # a dependency that calls a decorated helper by name: its rules, said so
    row = routes["/e/forgot-password"]
    assert row["rules"] == ["flow verify-request 3/hour per key=email (when it calls verify_flow)"]
    assert row["notes"] == []
    assert [h["function"] for h in report["helpers"]] == ["Manager.authenticate", "Manager.create"]
    (note,) = routes["/users/login"]["notes"]
    assert "looks like a login" in note and "unless it calls Manager.authenticate" in note
    (note,) = routes["/users/register"]["notes"]
    assert "unless it calls Manager.create" in note and "authenticate" not in note


CLEAN_APP = """
from fastapi import FastAPI
from pydantic import BaseModel

from apiguard import Guard
from apiguard.asgi import GuardMiddleware

guard = Guard({
    "client_ip": {"trusted_proxies": ["10.0.0.0/8"]},
    "detection": {"challenge_path": "/challenge"},
})
app = FastAPI()
app.add_middleware(GuardMiddleware, guard=guard)


class Creds(BaseModel):
    username: str
    password: str


@app.post("/login")
@guard.login(username="creds.username")
async def login(creds: Creds) -> dict[str, str]:
    return {}


@app.post("/challenge")
async def challenge() -> dict[str, bool]:
    guard.challenge_passed()
    return {"passed": True}
"""


def test_strict_passes_a_clean_app_on_the_in_process_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trial: `--strict` failed every app on the default store, whose line (each worker
    counts alone) is right for one worker; it is shown, and fails nothing."""
    spec = _app(tmp_path, CLEAN_APP, "clean_app")
    status, out, _ = _run([spec, "--strict"], capsys)
    assert "in-process store: each worker process counts alone" in out
    assert status == 0, out
    report = json.loads(_run([spec, "--json"], capsys)[1])
    assert report["warnings"] == [] and len(report["info"]) == 1
