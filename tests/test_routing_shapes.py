"""Every rule fires on every routing shape, and benign traffic beside it passes.

The matrix crosses routing shapes (FastAPI, Starlette, mounts, hosts, streaming...) with
rule kinds (`@guard.limit`, `@guard.flow`, and the three global defaults). For each pair the
same principal calls the target route with changing concrete paths: the first BUDGET calls
pass, the next is refused with the rule's policy, and three probes show who else is (not)
affected: another API key from the same IP, the same key from another IP, and a sibling
route.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Header
from fastapi.responses import StreamingResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route, Router
from starlette.websockets import WebSocket

import apiguard
from apiguard import Guard
from conftest import IP_A, IP_B, assert_quota_exceeded

BUDGET = 3
RATE = f"{BUDGET}/minute"
ALICE = {"x-api-key": "alice"}
BOB = {"x-api-key": "bob"}

Deco = Callable[[Callable[..., Any]], Callable[..., Any]]


def same(fn: Callable[..., Any]) -> Callable[..., Any]:
    return fn


# -- rule kinds ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    name: str
    limits: dict[str, str]
    decorator: Callable[[Guard], Deco] | None  # None: a global default, handlers undecorated
    policy: str
    # expected status of the probes once the main principal's budget is spent
    other_key: int  # same IP, another API key, target route
    other_ip: int  # same API key, another IP, target route
    sibling: int  # same principal, another route
    unknown: int  # same principal, a path no route matches (404 unless refused)


KINDS = [
    Kind("limit", {}, lambda g: g.limit(RATE), "limit:target", 200, 429, 200, 404),
    Kind("flow", {}, lambda g: g.flow("shape-flow", RATE), "shape-flow", 200, 429, 200, 404),
    Kind("principal", {"principal": RATE}, None, "per-principal", 200, 429, 429, 429),
    Kind("route", {"route": RATE}, None, "per-route", 200, 429, 200, 404),
    Kind("ip", {"ip": RATE}, None, "per-ip", 429, 200, 429, 429),
]


# -- routing shapes --------------------------------------------------------------------------


@dataclass
class Shape:
    app: Any
    targets: list[tuple[str, str]]  # (method, concrete path), cycled
    sibling: tuple[str, str]
    template: str  # the route template apiguard must see for the target
    body: bytes | None = None  # exact body of an admitted target response, when known
    base_url: str = "http://testserver"
    sibling_same_template: bool = False
    calls: list[int] = field(default_factory=list)  # one entry per run of the target's body


def _get(paths: list[str]) -> list[tuple[str, str]]:
    return [("GET", p) for p in paths]


ITEMS = [f"/items/{i}" for i in range(1, 9)]


def fa_direct_async(deco: Deco) -> Shape:
    app, calls = FastAPI(), []

    @app.get("/health")
    async def sibling() -> dict[str, str]:
        return {"who": "sibling"}

    @app.get("/items/{item_id}")
    @deco
    async def target(item_id: int) -> dict[str, Any]:
        calls.append(item_id)
        return {"who": "target", "id": item_id}

    return Shape(app, _get(ITEMS), ("GET", "/health"), "/items/{item_id}", calls=calls)


def fa_direct_sync(deco: Deco) -> Shape:
    app, calls = FastAPI(), []

    @app.get("/health")
    def sibling() -> dict[str, str]:
        return {"who": "sibling"}

    @app.get("/items/{item_id}")
    @deco
    def target(item_id: int) -> dict[str, Any]:
        calls.append(item_id)
        return {"who": "target", "id": item_id}

    return Shape(app, _get(ITEMS), ("GET", "/health"), "/items/{item_id}", calls=calls)


def fa_nested2(deco: Deco) -> Shape:
    app, calls = FastAPI(), []
    inner = APIRouter(prefix="/v1")

    @inner.get("/status")
    async def sibling() -> dict[str, str]:
        return {"who": "sibling"}

    @inner.get("/items/{item_id}")
    @deco
    async def target(item_id: int) -> dict[str, Any]:
        calls.append(item_id)
        return {"who": "target"}

    outer = APIRouter(prefix="/api")
    outer.include_router(inner)
    app.include_router(outer)
    paths = [f"/api/v1{p}" for p in ITEMS]
    return Shape(
        app, _get(paths), ("GET", "/api/v1/status"), "/api/v1/items/{item_id}", calls=calls
    )


def fa_nested3(deco: Deco) -> Shape:
    app, calls = FastAPI(), []
    users = APIRouter(prefix="/users")

    @users.get("/me")
    def sibling() -> dict[str, str]:
        return {"who": "sibling"}

    @users.get("/{user_id}")
    @deco
    def target(user_id: int) -> dict[str, Any]:
        calls.append(user_id)
        return {"who": "target"}

    v2 = APIRouter(prefix="/v2", tags=["v2"])
    v2.include_router(users)
    api = APIRouter(prefix="/api")
    api.include_router(v2)
    app.include_router(api, prefix="/edge")
    paths = [f"/edge/api/v2/users/{i}" for i in range(1, 9)]
    return Shape(
        app,
        _get(paths),
        ("GET", "/edge/api/v2/users/me"),
        "/edge/api/v2/users/{user_id}",
        calls=calls,
    )


def fa_included_twice(deco: Deco) -> Shape:
    app, calls = FastAPI(), []
    router = APIRouter()

    @router.get("/items/{item_id}")
    @deco
    async def target(item_id: int) -> dict[str, Any]:
        calls.append(item_id)
        return {"who": "target"}

    @router.get("/status")
    async def sibling() -> dict[str, str]:
        return {"who": "sibling"}

    app.include_router(router, prefix="/a")
    app.include_router(router, prefix="/b")
    paths = [f"/a{p}" for p in ITEMS]
    return Shape(app, _get(paths), ("GET", "/a/status"), "/a/items/{item_id}", calls=calls)


def fa_path_str(deco: Deco) -> Shape:
    app, calls = FastAPI(), []

    @app.get("/health")
    async def sibling() -> dict[str, str]:
        return {"who": "sibling"}

    @app.get("/users/{name}")
    @deco
    async def target(name: str) -> dict[str, Any]:
        calls.append(1)
        return {"who": "target", "name": name}

    paths = ["/users/ann", "/users/bo", "/users/cy", "/users/dee", "/users/eve", "/users/fay"]
    return Shape(app, _get(paths), ("GET", "/health"), "/users/{name}", calls=calls)


def fa_path_convertor(deco: Deco) -> Shape:
    app, calls = FastAPI(), []

    @app.get("/health")
    async def sibling() -> dict[str, str]:
        return {"who": "sibling"}

    @app.get("/files/{file_path:path}")
    @deco
    async def target(file_path: str) -> dict[str, Any]:
        calls.append(1)
        return {"who": "target", "file": file_path}

    paths = ["/files/a.txt", "/files/b/c.txt", "/files/d/e/f", "/files/g", "/files/h/i", "/files/j"]
    return Shape(app, _get(paths), ("GET", "/health"), "/files/{file_path}", calls=calls)


def fa_methods_split(deco: Deco) -> Shape:
    """GET and POST on one path, different handlers; the POST one is the target."""
    app, calls = FastAPI(), []

    @app.get("/things")
    async def sibling() -> dict[str, str]:
        return {"who": "sibling"}

    @app.post("/things")
    @deco
    async def target() -> dict[str, str]:
        calls.append(1)
        return {"who": "target"}

    return Shape(
        app,
        [("POST", "/things")],
        ("GET", "/things"),
        "/things",
        sibling_same_template=True,
        calls=calls,
    )


def fa_methods_shared(deco: Deco) -> Shape:
    """One handler serving GET and POST: both methods draw on one budget."""
    app, calls = FastAPI(), []

    @app.get("/health")
    def sibling() -> dict[str, str]:
        return {"who": "sibling"}

    @app.api_route("/both/{n}", methods=["GET", "POST"])
    @deco
    def target(n: int) -> dict[str, str]:
        calls.append(n)
        return {"who": "target"}

    targets = [("GET", "/both/1"), ("POST", "/both/2"), ("GET", "/both/3"), ("POST", "/both/4")]
    return Shape(app, targets, ("GET", "/health"), "/both/{n}", calls=calls)


STREAM_CHUNKS = [b"tar", b"get-", b"str", b"eam"]


def fa_streaming_response(deco: Deco) -> Shape:
    app, calls = FastAPI(), []

    @app.get("/health")
    async def sibling() -> dict[str, str]:
        return {"who": "sibling"}

    async def chunks() -> AsyncIterator[bytes]:
        for chunk in STREAM_CHUNKS:
            yield chunk

    @app.get("/stream/{n}")
    @deco
    async def target(n: int) -> StreamingResponse:
        calls.append(n)
        return StreamingResponse(chunks(), media_type="text/plain")

    return Shape(
        app,
        _get([f"/stream/{i}" for i in range(1, 9)]),
        ("GET", "/health"),
        "/stream/{n}",
        body=b"".join(STREAM_CHUNKS),
        calls=calls,
    )


def fa_async_gen_endpoint(deco: Deco) -> Shape:
    """An `async def ... yield` endpoint: FastAPI streams it as JSON lines."""
    app, calls = FastAPI(), []

    @app.get("/health")
    async def sibling() -> dict[str, str]:
        return {"who": "sibling"}

    @app.get("/events/{n}")
    @deco
    async def target(n: int) -> AsyncIterator[dict[str, Any]]:
        calls.append(n)
        yield {"who": "target"}
        yield {"part": 2}

    return Shape(
        app,
        _get([f"/events/{i}" for i in range(1, 9)]),
        ("GET", "/health"),
        "/events/{n}",
        body=b'{"who":"target"}\n{"part":2}\n',
        calls=calls,
    )


def fa_sync_gen_endpoint(deco: Deco) -> Shape:
    """A plain `def ... yield` endpoint (iterated in the threadpool)."""
    app, calls = FastAPI(), []

    @app.get("/health")
    def sibling() -> dict[str, str]:
        return {"who": "sibling"}

    @app.get("/lines/{n}")
    @deco
    def target(n: int) -> Iterator[dict[str, Any]]:
        calls.append(n)
        yield {"who": "target"}
        yield {"part": 2}

    return Shape(
        app,
        _get([f"/lines/{i}" for i in range(1, 9)]),
        ("GET", "/health"),
        "/lines/{n}",
        body=b'{"who":"target"}\n{"part":2}\n',
        calls=calls,
    )


def fa_mounted_fastapi(deco: Deco) -> Shape:
    app, sub, calls = FastAPI(), FastAPI(), []

    @sub.get("/items/{item_id}")
    @deco
    async def target(item_id: int) -> dict[str, str]:
        calls.append(item_id)
        return {"who": "target"}

    @sub.get("/status")
    async def sibling() -> dict[str, str]:
        return {"who": "sibling"}

    app.mount("/sub", sub)
    paths = [f"/sub{p}" for p in ITEMS]
    return Shape(app, _get(paths), ("GET", "/sub/status"), "/sub/items/{item_id}", calls=calls)


def fa_mounted_starlette(deco: Deco) -> Shape:
    calls: list[int] = []

    @deco
    async def target(request: Request) -> PlainTextResponse:
        calls.append(request.path_params["item_id"])
        return PlainTextResponse("target")

    def sibling(request: Request) -> PlainTextResponse:
        return PlainTextResponse("sibling")

    star = Starlette(
        routes=[Route("/items/{item_id:int}", target), Route("/status", sibling)],
    )
    app = FastAPI()
    app.mount("/star", star)
    paths = [f"/star{p}" for p in ITEMS]
    return Shape(
        app,
        _get(paths),
        ("GET", "/star/status"),
        "/star/items/{item_id}",
        body=b"target",
        calls=calls,
    )


def fa_add_route(deco: Deco) -> Shape:
    """A plain Starlette endpoint added to a FastAPI app with `app.add_route`."""
    app, calls = FastAPI(), []

    @deco
    async def target(request: Request) -> PlainTextResponse:
        calls.append(request.path_params["item_id"])
        return PlainTextResponse("target")

    @app.get("/health")
    async def sibling() -> dict[str, str]:
        return {"who": "sibling"}

    app.add_route("/legacy/{item_id:int}", target, methods=["GET"])
    paths = [f"/legacy/{i}" for i in range(1, 9)]
    return Shape(app, _get(paths), ("GET", "/health"), "/legacy/{item_id}", b"target", calls=calls)


def fa_host(deco: Deco) -> Shape:
    app, api, calls = FastAPI(), FastAPI(), []

    @app.get("/health")
    async def sibling() -> dict[str, str]:
        return {"who": "sibling"}

    @api.get("/items/{item_id}")
    @deco
    async def target(item_id: int) -> dict[str, str]:
        calls.append(item_id)
        return {"who": "target"}

    app.host("api.example.com", api)
    return Shape(
        app,
        _get(ITEMS),
        ("GET", "/health"),
        "/items/{item_id}",
        base_url="http://api.example.com",
        calls=calls,
    )


def st_routes_async(deco: Deco) -> Shape:
    calls: list[int] = []

    @deco
    async def target(request: Request) -> PlainTextResponse:
        calls.append(request.path_params["item_id"])
        return PlainTextResponse("target")

    async def sibling(request: Request) -> PlainTextResponse:
        return PlainTextResponse("sibling")

    app = Starlette(routes=[Route("/items/{item_id:int}", target), Route("/health", sibling)])
    return Shape(app, _get(ITEMS), ("GET", "/health"), "/items/{item_id}", b"target", calls=calls)


def st_routes_sync(deco: Deco) -> Shape:
    calls: list[int] = []

    @deco
    def target(request: Request) -> PlainTextResponse:
        calls.append(request.path_params["item_id"])
        return PlainTextResponse("target")

    def sibling(request: Request) -> PlainTextResponse:
        return PlainTextResponse("sibling")

    app = Starlette(
        routes=[
            Route("/items/{item_id:int}", target, methods=["GET", "POST"]),
            Route("/health", sibling),
        ]
    )
    targets = [("GET", "/items/1"), ("POST", "/items/2"), ("GET", "/items/3"), ("POST", "/items/4")]
    return Shape(app, targets, ("GET", "/health"), "/items/{item_id}", b"target", calls=calls)


def st_nested_mount(deco: Deco) -> Shape:
    calls: list[int] = []

    @deco
    async def target(request: Request) -> PlainTextResponse:
        calls.append(request.path_params["item_id"])
        return PlainTextResponse("target")

    async def sibling(request: Request) -> PlainTextResponse:
        return PlainTextResponse("sibling")

    v1 = Router(routes=[Route("/items/{item_id:int}", target), Route("/status", sibling)])
    app = Starlette(routes=[Mount("/api", routes=[Mount("/v1", app=v1)])])
    paths = [f"/api/v1{p}" for p in ITEMS]
    return Shape(
        app,
        _get(paths),
        ("GET", "/api/v1/status"),
        "/api/v1/items/{item_id}",
        b"target",
        calls=calls,
    )


def fa_raw_asgi_mount(deco: Deco) -> Shape:
    """An opaque ASGI app: nothing to decorate, global limits must still fire."""

    async def raw(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"raw target"})

    app = FastAPI()

    @app.get("/health")
    async def sibling() -> dict[str, str]:
        return {"who": "sibling"}

    app.mount("/raw", raw)
    paths = ["/raw/a", "/raw/b/c", "/raw/", "/raw/d.txt", "/raw/e", "/raw/f/g/h"]
    return Shape(app, _get(paths), ("GET", "/health"), "/raw/{path}", b"raw target")


SHAPES = {
    f.__name__: f
    for f in (
        fa_direct_async,
        fa_direct_sync,
        fa_nested2,
        fa_nested3,
        fa_included_twice,
        fa_path_str,
        fa_path_convertor,
        fa_methods_split,
        fa_methods_shared,
        fa_streaming_response,
        fa_async_gen_endpoint,
        fa_sync_gen_endpoint,
        fa_mounted_fastapi,
        fa_mounted_starlette,
        fa_add_route,
        fa_host,
        st_routes_async,
        st_routes_sync,
        st_nested_mount,
        fa_raw_asgi_mount,
    )
}

MATRIX = [
    pytest.param(shape, kind, id=f"{shape}-{kind.name}")
    for shape in SHAPES
    for kind in KINDS
    if not (shape == "fa_raw_asgi_mount" and kind.decorator is not None)
]


def _expected_sibling(shape: Shape, kind: Kind) -> int:
    # limits.route is per (principal, method, route TEMPLATE): GET and POST handlers of
    # one path are two operations with a budget each (README, configuration reference).
    del shape
    return kind.sibling


@pytest.mark.parametrize(("shape_name", "kind"), MATRIX)
def test_rule_fires_and_benign_traffic_passes(shape_name, kind, make_guard, serve):
    guard = make_guard(kind.limits)
    deco = kind.decorator(guard) if kind.decorator else same
    shape = SHAPES[shape_name](deco)
    main = serve(shape.app, guard, base_url=shape.base_url)
    targets = shape.targets
    if kind.name == "route":  # per (principal, method, template): stay on one method
        targets = [t for t in targets if t[0] == targets[0][0]]
    elif kind.name == "flow" and any(t[0] == "POST" for t in targets):
        # a GET of a route that also takes a write spends no flow (a form's page):
        # the flow is charged by its writes
        targets = [t for t in targets if t[0] != "GET"]
    targets = targets * (BUDGET + 1)

    for i in range(BUDGET):
        method, path = targets[i]
        resp = main.request(method, path, headers=ALICE)
        assert resp.status_code == 200, (method, path, resp.status_code, resp.text)
        if shape.body is not None:
            assert resp.content == shape.body
        else:
            assert b"target" in resp.content
        assert "ratelimit-policy" in resp.headers
        assert f'"{kind.policy}";q={BUDGET};w=60' in resp.headers["ratelimit-policy"]

    method, path = targets[BUDGET]
    refused = main.request(method, path, headers=ALICE)
    assert_quota_exceeded(refused, kind.policy)
    if kind.decorator is not None:  # a decorated handler never runs once refused
        assert len(shape.calls) == BUDGET, shape.calls

    probe = main.request(method, path, headers=BOB)
    assert probe.status_code == kind.other_key, ("other key", probe.status_code)
    other_ip = serve(shape.app, ip=IP_B, base_url=shape.base_url)
    probe = other_ip.request(method, path, headers=ALICE)
    assert probe.status_code == kind.other_ip, ("other ip", probe.status_code)
    s_method, s_path = shape.sibling
    probe = main.request(s_method, s_path, headers=ALICE)
    assert probe.status_code == _expected_sibling(shape, kind), ("sibling", probe.status_code)
    if probe.status_code == 200:
        assert b"sibling" in probe.content
    probe = main.get("/no/such/route", headers=ALICE)
    assert probe.status_code == kind.unknown, ("unknown path", probe.status_code)

    # the main principal is still refused afterwards
    assert main.request(method, path, headers=ALICE).status_code == 429


@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_route_template_seen_by_rules(shape_name, make_guard, serve):
    """ctx.route is the template (mount prefixes included), whatever the concrete path."""
    seen: list[str | None] = []

    def resolver(ctx: apiguard.RequestContext) -> None:
        seen.append(ctx.route)

    guard = make_guard({"principal": "100/minute"}, principal_resolver=resolver)
    shape = SHAPES[shape_name](same)
    client = serve(shape.app, guard, base_url=shape.base_url)
    for method, path in shape.targets[:4]:
        assert client.request(method, path).status_code == 200
    assert seen == [shape.template] * len(shape.targets[:4])


# -- per-route buckets are keyed on the TEMPLATE ------------------------------------------------


def test_route_budget_keyed_on_template_not_concrete_path(make_guard, serve):
    guard = make_guard({"route": "3/minute"})
    app = FastAPI()

    @app.get("/users/{user_id}")
    async def user(user_id: int) -> dict[str, int]:
        return {"id": user_id}

    @app.get("/orders/{order_id}")
    async def order(order_id: int) -> dict[str, int]:
        return {"id": order_id}

    client = serve(app, guard)
    assert [client.get(f"/users/{i}").status_code for i in (1, 2, 3, 4)] == [200, 200, 200, 429]
    assert_quota_exceeded(client.get("/users/99"), "per-route")
    assert [client.get(f"/orders/{i}").status_code for i in (1, 2, 3, 4)] == [200, 200, 200, 429]


def test_mounted_raw_app_has_its_own_route_budget(make_guard, serve):
    """Requests served by a mounted ASGI app are one route ("/raw/{path}"), not "unmatched"."""
    guard = make_guard({"route": "3/minute"})

    async def raw(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"raw"})

    app = FastAPI()
    app.mount("/raw", raw)
    client = serve(app, guard)
    assert [client.get(p).status_code for p in ("/raw/a", "/raw/b", "/raw/c")] == [200] * 3
    assert_quota_exceeded(client.get("/raw/d"), "per-route")
    # unknown paths are a different "route": their budget is untouched
    assert [client.get(f"/nope/{i}").status_code for i in range(3)] == [404] * 3
    assert_quota_exceeded(client.get("/nope/4"), "per-route")


def test_router_included_twice_has_one_template_per_prefix(make_guard, serve):
    guard = make_guard({"route": "2/minute"})
    app, router = FastAPI(), APIRouter()

    @router.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    app.include_router(router, prefix="/a")
    app.include_router(router, prefix="/b")
    client = serve(app, guard)
    assert [client.get(f"/a/items/{i}").status_code for i in (1, 2, 3)] == [200, 200, 429]
    assert [client.get(f"/b/items/{i}").status_code for i in (1, 2, 3)] == [200, 200, 429]


def test_decorated_handler_included_twice_shares_its_budget(make_guard, serve):
    guard = make_guard()
    app, router = FastAPI(), APIRouter()

    @router.get("/items/{item_id}")
    @guard.limit("3/minute")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    app.include_router(router, prefix="/a")
    app.include_router(router, prefix="/b")
    client = serve(app, guard)
    codes = [client.get(p).status_code for p in ("/a/items/1", "/b/items/2", "/a/items/3")]
    assert codes == [200, 200, 200]
    assert_quota_exceeded(client.get("/b/items/4"), "limit:item")
    assert_quota_exceeded(client.get("/a/items/5"), "limit:item")


# -- principals ------------------------------------------------------------------------------


def test_api_keys_have_independent_budgets_across_ips(make_guard, serve):
    guard = make_guard({"principal": "2/minute"})
    app = FastAPI()

    @app.get("/data")
    async def data() -> dict[str, bool]:
        return {"ok": True}

    from_a = serve(app, guard)
    from_b = serve(app, ip=IP_B)
    assert from_a.get("/data", headers=ALICE).status_code == 200
    assert from_b.get("/data", headers=ALICE).status_code == 200  # same key, other IP
    assert_quota_exceeded(from_a.get("/data", headers=ALICE), "per-principal")
    assert_quota_exceeded(from_b.get("/data", headers=ALICE), "per-principal")
    assert [from_a.get("/data", headers=BOB).status_code for _ in range(3)] == [200, 200, 429]
    # bearer tokens are principals too, distinct from both keys
    bearer = {"authorization": "Bearer tok-123"}
    assert [from_a.get("/data", headers=bearer).status_code for _ in range(3)] == [200, 200, 429]
    # anonymous callers count per IP: IP_A's anonymous budget is untouched so far
    assert [from_a.get("/data").status_code for _ in range(3)] == [200, 200, 429]


def _identified_app(guard: Guard, sync_dependency: bool) -> FastAPI:
    app = FastAPI()

    if sync_dependency:

        def current_user(x_user: str = Header()) -> str:
            apiguard.identify(x_user)
            return x_user

    else:

        async def current_user(x_user: str = Header()) -> str:
            apiguard.identify(x_user)
            return x_user

    @app.get("/me")
    async def me(user: str = Depends(current_user)) -> dict[str, str]:
        return {"user": user}

    @app.post("/orders")
    @guard.limit("2/minute")
    async def order(user: str = Depends(current_user)) -> dict[str, str]:
        return {"user": user}

    return app


@pytest.mark.parametrize("sync_dependency", [False, True], ids=["async-dep", "sync-dep"])
def test_identified_users_have_independent_budgets(sync_dependency, make_guard, serve):
    guard = make_guard({"principal": "4/minute"})
    app = _identified_app(guard, sync_dependency)
    client = serve(app, guard)
    ann, ben = {"x-user": "ann"}, {"x-user": "ben"}
    assert [client.get("/me", headers=ann).status_code for _ in range(4)] == [200] * 4
    assert_quota_exceeded(client.get("/me", headers=ann), "per-principal")
    assert client.get("/me", headers=ben).json() == {"user": "ben"}
    # a decorated route: ben's own limit (2/minute), independent of ann's spent budget
    assert [client.post("/orders", headers=ben).status_code for _ in range(2)] == [200, 200]
    assert_quota_exceeded(client.post("/orders", headers=ben), "limit:order")
    assert_quota_exceeded(client.post("/orders", headers=ann), "per-principal")
    assert client.post("/orders", headers={"x-user": "cat"}).status_code == 200


def test_identified_user_rotating_ips_shares_one_budget(make_guard, serve):
    guard = make_guard({"principal": "3/minute"})
    app = _identified_app(guard, sync_dependency=False)
    serve(app, guard)
    ips = ["192.0.2.1", "192.0.2.2", "2001:db8:1::1", "2001:db8:2::1", "192.0.2.99"]
    codes = [serve(app, ip=ip).get("/me", headers={"x-user": "ann"}).status_code for ip in ips]
    assert codes == [200, 200, 200, 429, 429]
    # the same IPs without identify() would each be their own principal
    codes = [serve(app, ip=ip).get("/docs").status_code for ip in ips]
    assert codes == [200] * len(ips)


def test_api_key_rotating_ips_shares_one_budget_but_anonymous_does_not(make_guard, serve):
    guard = make_guard({"principal": "2/minute"})
    app = FastAPI()

    @app.get("/data")
    @guard.flow("export", "2/minute")
    def data() -> dict[str, bool]:
        return {"ok": True}

    serve(app, guard)
    ips = ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    codes = [serve(app, ip=ip).get("/data", headers=ALICE).status_code for ip in ips]
    assert codes == [200, 200, 429]
    assert [serve(app, ip=ip).get("/data").status_code for ip in ips] == [200, 200, 200]


# -- unmatched requests count ------------------------------------------------------------------


def test_enumeration_of_unknown_paths_is_throttled(make_guard, serve):
    guard = make_guard({"principal": "5/minute"})
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    bot = serve(app, guard)
    codes = [bot.get(f"/admin/backup-{i}.zip").status_code for i in range(8)]
    assert codes == [404] * 5 + [429] * 3
    assert_quota_exceeded(bot.get("/.env"), "per-principal")
    assert_quota_exceeded(bot.get("/health"), "per-principal")  # the budget is global
    assert serve(app, ip=IP_B).get("/nope").status_code == 404  # another client is unaffected


def test_wrong_methods_count_against_global_rules(make_guard, serve):
    guard = make_guard({"ip": "4/minute"})
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    bot = serve(app, guard)
    codes = [bot.delete(f"/items/{i}").status_code for i in range(6)]
    assert codes == [405] * 4 + [429] * 2
    assert_quota_exceeded(bot.get("/items/1"), "per-ip")


def test_unmatched_requests_count_on_starlette_and_mounted_apps(make_guard, serve):
    guard = make_guard({"principal": "3/minute"})
    sub = Starlette(routes=[Route("/x", PlainTextResponse("x"))])
    app = Starlette(routes=[Mount("/sub", app=sub)])
    bot = serve(app, guard)
    codes = [bot.get(p).status_code for p in ("/sub/nope", "/nope", "/sub/x/y", "/sub/z")]
    assert codes == [404, 404, 404, 429]


# -- streaming --------------------------------------------------------------------------------


@pytest.mark.parametrize("decorated", [True, False], ids=["limit", "global"])
def test_streaming_response_is_not_buffered(decorated, make_guard):
    """Chunk 2 is produced only after chunk 1 reached the server: nothing is held back."""
    import anyio

    guard = make_guard({} if decorated else {"principal": "5/minute"})
    deco = guard.limit("5/minute") if decorated else same
    app = FastAPI()
    delivered = anyio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        yield b"first;"
        with anyio.fail_after(2):
            await delivered.wait()  # deadlocks (then fails) if the first chunk was buffered
        yield b"second"

    @app.get("/stream")
    @deco
    async def stream() -> StreamingResponse:
        return StreamingResponse(chunks(), media_type="text/plain")

    from apiguard.asgi import GuardMiddleware

    app.add_middleware(GuardMiddleware, guard=guard)
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)
        if message.get("body") == b"first;":
            delivered.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/stream",
        "raw_path": b"/stream",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "client": (IP_A, 1234),
        "server": ("testserver", 80),
    }

    async def main() -> None:
        with anyio.fail_after(5):
            await app(scope, receive, send)

    anyio.run(main)
    start = messages[0]
    assert start["type"] == "http.response.start" and start["status"] == 200
    headers = dict(start["headers"])
    assert headers[b"ratelimit-policy"].startswith(b'"')
    bodies = [m.get("body", b"") for m in messages[1:]]
    assert b"".join(bodies) == b"first;second"
    assert bodies.index(b"first;") < bodies.index(b"second")


# -- websocket and lifespan pass through ---------------------------------------------------------


def test_websocket_and_lifespan_pass_through(make_guard, serve):
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, str]]:
        events.append("startup")
        yield {"greeting": "hello"}
        events.append("shutdown")

    guard = make_guard({"principal": "1/minute", "ip": "1/minute"})
    app = FastAPI(lifespan=lifespan)

    @app.websocket("/ws/{room}")
    async def ws(websocket: WebSocket, room: str) -> None:
        await websocket.accept()
        text = await websocket.receive_text()
        await websocket.send_text(f"{room}:{text}:{websocket.state.greeting}")
        await websocket.close()

    @app.get("/ping")
    async def ping(request: Request) -> dict[str, str]:
        return {"greeting": request.state.greeting}

    with serve(app, guard) as client:
        assert events == ["startup"]
        for i in range(3):  # websockets are not counted by the 1/minute limits
            with client.websocket_connect(f"/ws/r{i}", headers=ALICE) as sock:
                sock.send_text("hi")
                assert sock.receive_text() == f"r{i}:hi:hello"
        assert client.get("/ping", headers=ALICE).json() == {"greeting": "hello"}
        assert_quota_exceeded(client.get("/ping", headers=ALICE), "per-principal", "per-ip")
        with client.websocket_connect("/ws/after", headers=ALICE) as sock:
            sock.send_text("still")
            assert sock.receive_text() == "after:still:hello"
    assert events == ["startup", "shutdown"]
