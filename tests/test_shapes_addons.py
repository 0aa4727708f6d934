"""Routing shapes of popular add-ons (Flask-RESTX, Flask-RESTful, flask-smorest, Django
REST Framework routers, django-ninja, Django's `method_decorator` and `re_path`): on each,
a `@guard.limit("2/minute")` refuses the 3rd request, the BOLA detector sees the path
parameter (an anonymous sequential walk is refused after about `sequential_run` ids), and
an apiguard decorator written where the framework would route the bare function is a
`ConfigurationError`, never a silently unprotected route."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from itertools import count
from typing import Any

import pytest

from apiguard import ConfigurationError, Guard
from harness import Client, close_django, configure_django, django_client, flask_client

_names = count(1)
WALKER = "192.0.2.66"


@pytest.fixture
def guard(make_guard: Callable[..., Guard]) -> Guard:
    return make_guard(bans={"enabled": True})


@pytest.fixture(autouse=True)
def _django_closed() -> Iterator[None]:
    yield
    close_django()


def refuses_third(call: Client, path: str, method: str = "GET") -> None:
    statuses = [call(method, path).status for _ in range(3)]
    assert statuses == [200, 200, 429], statuses


def walk_is_refused(guard: Guard, call: Client, fmt: str) -> None:
    """An anonymous address walking ids one by one is refused after 10 to 20 of them."""
    rng = random.Random(6)
    statuses = []
    for n in range(500, 540):
        guard.clock.advance(rng.uniform(0.5, 3.0))  # type: ignore[attr-defined]
        statuses.append(call("GET", fmt.format(n), ip=WALKER).status)
    first = next((i for i, s in enumerate(statuses) if s != 200), None)
    assert first is not None and 10 <= first <= 20, statuses
    assert set(statuses[first:]) <= {403, 429}, statuses


# -- Flask add-ons ------------------------------------------------------------------------
def flask_app() -> Any:
    from flask import Flask

    return Flask(f"shapes{next(_names)}")


def restx(guard: Guard, *, class_decorators: bool = False) -> Client:
    from flask_restx import Api, Resource

    from apiguard.flask import init_app

    app = flask_app()
    init_app(app, guard)
    api = Api(app)

    @api.route("/items/<int:item_id>")
    class Item(Resource):  # type: ignore[misc]
        @guard.limit("2/minute")
        def get(self, item_id: int) -> dict[str, int]:
            return {"item": item_id}

    @api.route("/orders/<int:order_id>")
    class Order(Resource):  # type: ignore[misc]
        def get(self, order_id: int) -> dict[str, int]:
            return {"order": order_id}

    return flask_client(guard, app)


def restx_method_decorators(guard: Guard) -> Client:
    """`method_decorators` wrap the bound method anew on every request."""
    from flask_restx import Api, Resource

    from apiguard.flask import init_app

    app = flask_app()
    init_app(app, guard)
    api = Api(app)

    @api.route("/items/<int:item_id>")
    class Item(Resource):  # type: ignore[misc]
        method_decorators = [guard.limit("2/minute")]

        def get(self, item_id: int) -> dict[str, int]:
            return {"item": item_id}

    @api.route("/orders/<int:order_id>")
    class Order(Resource):  # type: ignore[misc]
        def get(self, order_id: int) -> dict[str, int]:
            return {"order": order_id}

    return flask_client(guard, app)


def restful(guard: Guard, *, per_request: bool = False) -> Client:
    from flask_restful import Api, Resource

    from apiguard.flask import init_app

    app = flask_app()
    init_app(app, guard)
    api = Api(app)

    if per_request:

        class Item(Resource):  # type: ignore[misc]
            method_decorators = [guard.limit("2/minute")]

            def get(self, item_id: int) -> dict[str, int]:
                return {"item": item_id}

    else:

        class Item(Resource):  # type: ignore[misc,no-redef]
            @guard.limit("2/minute")
            def get(self, item_id: int) -> dict[str, int]:
                return {"item": item_id}

    class Order(Resource):  # type: ignore[misc]
        def get(self, order_id: int) -> dict[str, int]:
            return {"order": order_id}

    api.add_resource(Item, "/items/<int:item_id>")
    api.add_resource(Order, "/orders/<int:order_id>")
    return flask_client(guard, app)


def smorest(guard: Guard) -> Client:
    from flask.views import MethodView
    from flask_smorest import Api, Blueprint

    from apiguard.flask import init_app

    app = flask_app()
    app.config.update(API_TITLE="shop", API_VERSION="1", OPENAPI_VERSION="3.0.2")
    init_app(app, guard)
    api = Api(app)
    blp = Blueprint(f"shop{next(_names)}", __name__, url_prefix="/api")

    @blp.route("/items/<int:item_id>")
    class Item(MethodView):
        @blp.response(200)
        @guard.limit("2/minute")
        def get(self, item_id: int) -> dict[str, int]:
            return {"item": item_id}

    @blp.route("/orders/<int:order_id>")
    class Order(MethodView):
        @blp.response(200)
        def get(self, order_id: int) -> dict[str, int]:
            return {"order": order_id}

    api.register_blueprint(blp)
    return flask_client(guard, app)


def classful(guard: Guard) -> Client:
    """Flask-Classful routes a function wrapping a bound method of the view."""
    from flask_classful import FlaskView

    from apiguard.flask import init_app

    app = flask_app()
    init_app(app, guard)

    class ItemsView(FlaskView):  # type: ignore[misc]
        @guard.limit("2/minute")
        def get(self, id: str) -> dict[str, str]:
            return {"item": id}

    class OrdersView(FlaskView):  # type: ignore[misc]
        def get(self, id: str) -> dict[str, str]:
            return {"order": id}

    ItemsView.register(app, route_base="/items")
    OrdersView.register(app, route_base="/orders")
    return flask_client(guard, app)


FLASK = {
    "classful": (classful, ""),
    "restx": (restx, ""),
    "restx-method_decorators": (restx_method_decorators, ""),
    "restful": (restful, ""),
    "restful-method_decorators": (lambda g: restful(g, per_request=True), ""),
    "smorest": (smorest, "/api"),
}


@pytest.mark.parametrize("shape", FLASK)
def test_flask_addon_limit_refuses_the_third(shape: str, guard: Guard) -> None:
    build, prefix = FLASK[shape]
    call = build(guard)
    path = f"{prefix}/items/1" + ("/" if shape == "classful" else "")
    refuses_third(call, path)
    assert call("GET", path, ip="198.51.100.9").status == 200


@pytest.mark.parametrize("shape", FLASK)
def test_flask_addon_bola_walk_is_refused(shape: str, guard: Guard) -> None:
    build, prefix = FLASK[shape]
    slash = "/" if shape == "classful" else ""
    walk_is_refused(guard, build(guard), prefix + "/orders/{}" + slash)


def test_per_request_method_decorators_make_one_rule(guard: Guard) -> None:
    """A decorator applied to a fresh bound method on every request keeps one window and
    one policy name (a fresh rule per request would never refuse, and grow without
    bound)."""
    call = restx_method_decorators(guard)
    for _ in range(50):
        call("GET", "/items/1", ip=f"198.51.100.{next(_names) % 250}")
    assert [p for p in guard._policy_owners if p.startswith("limit:")] == ["limit:get"]
    assert not any("Item" in getattr(k, "__qualname__", "") for k in guard._decorated)


def test_stacked_per_request_decorators_keep_their_rules(guard: Guard) -> None:
    """`method_decorators = [limit, flow, objects]` (each applied to a fresh bound method,
    or to the wrapper of one, on every request): the same rules every request, so the
    limit refuses the 3rd and the fast path compiles one plan, not one per request."""
    from flask import request
    from flask_restful import Api, Resource

    from apiguard.flask import init_app

    app = flask_app()
    init_app(app, guard)
    api = Api(app)

    class Item(Resource):  # type: ignore[misc]
        method_decorators = [
            guard.limit("2/minute"),
            guard.flow("look", "50/minute"),
            guard.objects(ids=lambda: request.args.get("id")),
        ]

        def get(self) -> dict[str, str]:
            return {"item": "x"}

    api.add_resource(Item, "/items")
    call = flask_client(guard, app)
    for n in range(30):
        ip = f"198.51.100.{n}"
        assert [call("GET", f"/items?id={n}", ip=ip).status for _ in range(3)] == [200, 200, 429]
    assert len(guard.engine._fast_with) == 1
    assert [p for p in guard._policy_owners if p.startswith("limit:")] == ["limit:get"]


def test_apiguard_decorator_on_a_resource_class_is_refused(guard: Guard) -> None:
    """Above `@api.route` on a Resource class, the class stays routed bare: refused (below
    it, the class would no longer be a class)."""
    from flask_restx import Api, Resource

    from apiguard.flask import init_app

    app = flask_app()
    init_app(app, guard)
    api = Api(app)
    with pytest.raises(ConfigurationError, match="not the class"):

        @guard.limit("2/minute")
        @api.route("/items/<int:item_id>")
        class Item(Resource):  # type: ignore[misc]
            def get(self, item_id: int) -> dict[str, int]:
                return {"item": item_id}

    from flask.views import MethodView

    with pytest.raises(ConfigurationError, match="not the class"):

        @guard.flow("f", "2/minute")
        class View(MethodView):
            def get(self) -> str:
                return "ok"


# -- Django add-ons -----------------------------------------------------------------------
def drf_router(guard: Guard) -> list[Any]:
    from django.urls import include, path
    from rest_framework import routers, viewsets
    from rest_framework.decorators import action
    from rest_framework.response import Response

    class ItemViewSet(viewsets.ViewSet):  # type: ignore[misc]
        authentication_classes: list[Any] = []
        permission_classes: list[Any] = []

        @guard.limit("2/minute")
        def retrieve(self, request: Any, pk: str) -> Response:
            return Response({"item": pk})

        @action(detail=True, methods=["get"])
        @guard.limit("2/minute")
        def extra(self, request: Any, pk: str) -> Response:
            return Response({"extra": pk})

        @guard.limit("2/minute")  # above @action: it copies the action's marks, and works
        @action(detail=True, methods=["get"])
        def other(self, request: Any, pk: str) -> Response:
            return Response({"other": pk})

    class OrderViewSet(viewsets.ViewSet):  # type: ignore[misc]
        authentication_classes: list[Any] = []
        permission_classes: list[Any] = []

        def retrieve(self, request: Any, pk: str) -> Response:
            return Response({"order": pk})

        @action(detail=True)
        def history(self, request: Any, pk: str) -> Response:
            return Response({"history": pk})

    router = routers.DefaultRouter()
    router.register("items", ItemViewSet, basename="item")
    router.register("orders", OrderViewSet, basename="order")
    return [path("api/", include(router.urls))]


def method_decorator_views(guard: Guard) -> list[Any]:
    """Django's `method_decorator` applies the decorator to a fresh partial of the bound
    method on every call."""
    from django.http import JsonResponse
    from django.urls import path
    from django.utils.decorators import method_decorator
    from django.views import View

    @method_decorator(guard.limit("2/minute"), name="get")
    class Item(View):
        def get(self, request: Any, pk: int) -> JsonResponse:
            return JsonResponse({"item": pk})

    class Thing(View):
        @method_decorator(guard.limit("2/minute"))
        def dispatch(self, request: Any, *args: Any, **kwargs: Any) -> Any:
            return super().dispatch(request, *args, **kwargs)

        def get(self, request: Any, pk: int) -> JsonResponse:
            return JsonResponse({"thing": pk})

    class Direct(View):  # on `dispatch` itself (as_view() copies its attributes)
        @guard.limit("2/minute")
        def dispatch(self, request: Any, *args: Any, **kwargs: Any) -> Any:
            return super().dispatch(request, *args, **kwargs)

        def get(self, request: Any, pk: int) -> JsonResponse:
            return JsonResponse({"direct": pk})

    class Order(View):
        def get(self, request: Any, pk: int) -> JsonResponse:
            return JsonResponse({"order": pk})

    return [
        path("items/<int:pk>", Item.as_view()),
        path("things/<int:pk>", Thing.as_view()),
        path("direct/<int:pk>", Direct.as_view()),
        path("orders/<int:pk>", Order.as_view()),
    ]


def re_paths(guard: Guard) -> list[Any]:
    """`re_path` with named groups under two namespaced `include()`s, and with unnamed
    groups (passed positionally)."""
    from django.http import JsonResponse
    from django.urls import include, path, re_path

    @guard.limit("2/minute")
    def item(request: Any, pk: str) -> JsonResponse:
        return JsonResponse({"item": pk})

    def order(request: Any, pk: str) -> JsonResponse:
        return JsonResponse({"order": pk})

    @guard.limit("2/minute")
    def thing(request: Any, pk: str) -> JsonResponse:
        return JsonResponse({"thing": pk})

    def invoice(request: Any, year: str, pk: str) -> JsonResponse:
        return JsonResponse({"invoice": pk})

    inner = (
        [
            re_path(r"^items/(?P<pk>[0-9]+)/$", item, name="item"),
            re_path(r"^orders/(?P<pk>[0-9]+)/$", order, name="order"),
        ],
        "shop",
    )
    return [
        path("v1/", include(inner, namespace="v1")),
        path("v2/", include(inner, namespace="v2")),
        re_path(r"^things/([0-9]+)/$", thing),
        re_path(r"^invoices/(2026)/([0-9]+)/$", invoice),
    ]


def ninja(guard: Guard) -> list[Any]:
    from django.urls import path
    from ninja import NinjaAPI, Router

    api = NinjaAPI(urls_namespace=f"ninja{next(_names)}")
    router = Router()

    @api.get("/items/{item_id}")
    @guard.limit("2/minute")
    def item(request: Any, item_id: int) -> dict[str, int]:
        return {"item": item_id}

    @api.get("/orders/{order_id}")
    def order(request: Any, order_id: int) -> dict[str, int]:
        return {"order": order_id}

    @router.get("/items/{item_id}")
    @guard.limit("2/minute")
    async def shop_item(request: Any, item_id: int) -> dict[str, int]:
        return {"item": item_id}

    @router.get("/orders/{order_id}")
    async def shop_order(request: Any, order_id: int) -> dict[str, int]:
        return {"order": order_id}

    api.add_router("/shop", router)
    return [path("api/", api.urls)]


def drf_nested_router(guard: Guard) -> list[Any]:
    from django.urls import include, path
    from rest_framework import viewsets
    from rest_framework.response import Response
    from rest_framework_nested import routers

    class ShopViewSet(viewsets.ViewSet):  # type: ignore[misc]
        authentication_classes: list[Any] = []
        permission_classes: list[Any] = []

        def retrieve(self, request: Any, pk: str) -> Response:
            return Response({"shop": pk})

    class OrderViewSet(viewsets.ViewSet):  # type: ignore[misc]
        authentication_classes: list[Any] = []
        permission_classes: list[Any] = []

        @guard.limit("2/minute")
        def list(self, request: Any, shop_pk: str) -> Response:
            return Response([])

        def retrieve(self, request: Any, pk: str, shop_pk: str) -> Response:
            return Response({"order": pk})

    router = routers.SimpleRouter()
    router.register("shops", ShopViewSet, basename="shop")
    nested = routers.NestedSimpleRouter(router, "shops", lookup="shop")
    nested.register("orders", OrderViewSet, basename="shop-order")
    return [path("api/", include(router.urls)), path("api/", include(nested.urls))]


DJANGO = {
    "drf-nested-router": (drf_nested_router, "/api/shops/1/orders/", "/api/shops/7/orders/{}/"),
    "drf-router-retrieve": (drf_router, "/api/items/1/", "/api/orders/{}/"),
    "drf-router-action": (drf_router, "/api/items/1/extra/", "/api/orders/{}/history/"),
    "drf-router-action-above": (drf_router, "/api/items/1/other/", "/api/orders/{}/"),
    "method_decorator-get": (method_decorator_views, "/items/1", "/orders/{}"),
    "method_decorator-dispatch": (method_decorator_views, "/things/1", "/orders/{}"),
    "dispatch-decorated": (method_decorator_views, "/direct/1", "/orders/{}"),
    "re_path-include-namespaces": (re_paths, "/v2/items/1/", "/v2/orders/{}/"),
    "re_path-unnamed-groups": (re_paths, "/things/1/", "/invoices/2026/{}/"),
    "ninja": (ninja, "/api/items/1", "/api/orders/{}"),
    "ninja-router-async": (ninja, "/api/shop/items/1", "/api/shop/orders/{}"),
}
ASGI = (False, True)


@pytest.mark.parametrize("asgi", ASGI, ids=("wsgi", "asgi"))
@pytest.mark.parametrize("shape", DJANGO)
def test_django_shape_limit_refuses_the_third(shape: str, asgi: bool, guard: Guard) -> None:
    patterns, limited, _ = DJANGO[shape]
    configure_django()
    call = django_client(guard, asgi=asgi, patterns=patterns(guard))
    refuses_third(call, limited)
    assert call("GET", limited, ip="198.51.100.9").status == 200


@pytest.mark.parametrize("asgi", ASGI, ids=("wsgi", "asgi"))
@pytest.mark.parametrize("shape", DJANGO)
def test_django_shape_bola_walk_is_refused(shape: str, asgi: bool, guard: Guard) -> None:
    patterns, _, walk = DJANGO[shape]
    configure_django()
    walk_is_refused(guard, django_client(guard, asgi=asgi, patterns=patterns(guard)), walk)


def test_ninja_decorator_above_the_route_decorator_is_refused(guard: Guard) -> None:
    """`@guard.limit` above `@api.get`: ninja registered the bare function."""
    configure_django()
    from django.urls import path
    from ninja import NinjaAPI

    api = NinjaAPI(urls_namespace=f"ninja{next(_names)}")

    @guard.limit("2/minute")
    @api.get("/items/{item_id}")
    def item(request: Any, item_id: int) -> dict[str, int]:
        return {"item": item_id}

    call = django_client(guard, patterns=[path("api/", api.urls)])
    with pytest.raises(ConfigurationError, match="/api/items/<item_id>"):
        call("GET", "/api/items/1")


@pytest.mark.parametrize("shape", ["restx", "restful"])
def test_flask_addon_refusal_is_not_logged_as_a_server_error(
    shape: str, guard: Guard, caplog: pytest.LogCaptureFixture
) -> None:
    """Flask-RESTX's and Flask-RESTful's `Api.handle_error` see a view's exceptions before
    Flask's error handlers: a refusal must be answered before (it was logged as 'ERROR in
    app: Exception on /items/1 [GET]' with a traceback, and sent on
    `got_request_exception`, so error trackers reported every refusal)."""
    from flask import got_request_exception

    build, _ = FLASK[shape]
    call = build(guard)
    signalled: list[object] = []

    def record(sender: object, exception: BaseException, **extra: object) -> None:
        signalled.append(exception)

    got_request_exception.connect(record)
    try:
        with caplog.at_level("ERROR"):
            refuses_third(call, "/items/1")
    finally:
        got_request_exception.disconnect(record)
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []
    assert signalled == []


@pytest.mark.parametrize("asgi", ASGI, ids=("wsgi", "asgi"))
def test_objects_through_method_decorator_read_the_request(asgi: bool, guard: Guard) -> None:
    """`method_decorator(guard.objects(ids=lambda request: ...))`: the partial Django
    builds claims (through `__wrapped__`) the method's `self, request` signature, but is
    called without `self`; the ids come from the request all the same, and a walk over
    them is refused."""
    import json

    from django.http import JsonResponse
    from django.urls import path
    from django.utils.decorators import method_decorator
    from django.views import View
    from django.views.decorators.csrf import csrf_exempt

    configure_django()
    ids = guard.objects(ids=lambda request: json.loads(request.body)["order_id"], name="order_id")

    @method_decorator(csrf_exempt, name="dispatch")
    @method_decorator(ids, name="post")
    class Lookup(View):
        def post(self, request: Any) -> JsonResponse:
            return JsonResponse({"ok": True})

    call = django_client(guard, asgi=asgi, patterns=[path("lookup", Lookup.as_view())])
    rng = random.Random(6)
    statuses = []
    for n in range(500, 540):
        guard.clock.advance(rng.uniform(0.5, 3.0))  # type: ignore[attr-defined]
        statuses.append(call("POST", "/lookup", ip=WALKER, json={"order_id": n}).status)
    first = next((i for i, s in enumerate(statuses) if s != 200), None)
    assert first is not None and 10 <= first <= 20, statuses


def test_refusal_in_before_request_under_an_api_is_not_logged(
    make_guard: Callable[..., Guard], caplog: pytest.LogCaptureFixture
) -> None:
    """`identify()` in `before_request` refusing on a Flask-RESTful route: the refusal,
    not logged as a server error."""
    from flask import request
    from flask_restful import Api, Resource

    from apiguard import identify
    from apiguard.flask import init_app

    guard = make_guard({"principal": "2/minute"})
    app = flask_app()
    init_app(app, guard)
    api = Api(app)

    @app.before_request
    def authenticate() -> None:
        identify(request.headers.get("x-user"))

    class Me(Resource):  # type: ignore[misc]
        def get(self) -> dict[str, str]:
            return {"me": "ok"}

    api.add_resource(Me, "/me")
    call = flask_client(guard, app)
    with caplog.at_level("ERROR"):
        statuses = [call("GET", "/me", headers={"x-user": "alice"}) for _ in range(3)]
    assert [r.status for r in statuses] == [200, 200, 429]
    assert statuses[2].headers["content-type"] == "application/problem+json"
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []


@pytest.mark.parametrize("asgi", ASGI, ids=("wsgi", "asgi"))
def test_method_decorator_with_a_policy_name(asgi: bool, guard: Guard) -> None:
    """`method_decorator(guard.limit(..., name="items"))`: Django tries the decorator on a
    dummy at class creation; that claimed the name, and every request then failed (500,
    'the policy name is already used')."""
    from django.http import JsonResponse
    from django.urls import path
    from django.utils.decorators import method_decorator
    from django.views import View

    configure_django()

    @method_decorator(guard.limit("2/minute", name="items"), name="get")
    class Items(View):
        def get(self, request: Any) -> JsonResponse:
            return JsonResponse({})

    call = django_client(guard, asgi=asgi, patterns=[path("items", Items.as_view())])
    refuses_third(call, "/items")
    assert call("GET", "/items").json()["violated-policies"] == ["items"]


class _HeaderAuth:
    """A DRF authentication class: the user named by the x-user header."""

    def authenticate(self, request: Any) -> Any:
        name = request.META.get("HTTP_X_USER")
        if not name:
            return None
        user = type("User", (), {"is_authenticated": True, "pk": name})()
        return user, None

    def authenticate_header(self, request: Any) -> str:
        return "x-user"


def test_drf_method_decorator_on_the_handler_keys_on_the_user(guard: Guard) -> None:
    """`method_decorator(guard.limit(...), name="get")` on an APIView: checked after DRF
    authenticated, per user (two users behind one address each get their budget)."""
    from django.urls import path
    from django.utils.decorators import method_decorator
    from rest_framework.response import Response
    from rest_framework.views import APIView

    configure_django()

    @method_decorator(guard.limit("2/minute"), name="get")
    class Items(APIView):  # type: ignore[misc]
        authentication_classes = [_HeaderAuth]
        permission_classes: list[Any] = []

        def get(self, request: Any) -> Response:
            return Response({"user": request.user.pk})

    call = django_client(guard, patterns=[path("items", Items.as_view())])
    alice = [call("GET", "/items", headers={"x-user": "alice"}).status for _ in range(3)]
    bob = [call("GET", "/items", headers={"x-user": "bob"}).status for _ in range(2)]
    assert (alice, bob) == ([200, 200, 429], [200, 200])


@pytest.mark.parametrize("directly", [False, True], ids=("method_decorator", "on-def"))
def test_drf_dispatch_decorated_is_refused_at_start_up(directly: bool, guard: Guard) -> None:
    """On a DRF view's `dispatch`, the check runs before DRF authenticates: a user's limit
    would be keyed on the address (measured: alice's 2 requests refused bob's from the
    same address). A `ConfigurationError` when the URLconf is walked."""
    from django.urls import path
    from django.utils.decorators import method_decorator
    from rest_framework.response import Response
    from rest_framework.views import APIView

    import apiguard.django as adapter
    from harness import DjangoSite

    configure_django()

    class Items(APIView):  # type: ignore[misc]
        authentication_classes = [_HeaderAuth]
        permission_classes: list[Any] = []

        def get(self, request: Any) -> Response:
            return Response({})

    if directly:

        class Guarded(Items):
            @guard.limit("2/minute")
            def dispatch(self, request: Any, *args: Any, **kwargs: Any) -> Any:
                return super().dispatch(request, *args, **kwargs)

    else:

        @method_decorator(guard.limit("2/minute"), name="dispatch")
        class Guarded(Items):  # type: ignore[no-redef]
            pass

    site = DjangoSite(guard, [path("items", Guarded.as_view()), path("open", Items.as_view())])
    try:
        with pytest.raises(ConfigurationError, match=r"dispatch\(\).*\(/items\)"):
            adapter.check()
    finally:
        site.close()
