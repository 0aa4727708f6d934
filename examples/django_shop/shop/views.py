"""The shop's views; apiguard's decorators come from the guard the settings configure."""

import json
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from apiguard import identify
from apiguard.django import guard
from shop.data import BY_USERNAME, COUPONS, ORDERS, PRODUCTS

redeemed: set[tuple[int, str]] = set()


def problem(status: int, detail: str) -> JsonResponse:
    return JsonResponse({"detail": detail}, status=status)


@require_GET
def health(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"status": "ok"})


@csrf_exempt
@require_POST
@guard.limit("20/minute", per="ip", name="login")
def login(request: HttpRequest) -> HttpResponse:
    try:
        body: dict[str, Any] = json.loads(request.body or b"{}")
    except ValueError:
        return problem(400, "invalid JSON")
    username = str(body.get("username") or "")
    user = BY_USERNAME.get(username)
    ok = user is not None and user.password == body.get("password")
    # the outcome, for account-takeover detection (it may refuse: a challenge first)
    guard.login_result(username, ok, exists=user is not None)
    if not ok or user is None:
        return problem(401, "wrong username or password")
    identify(user.id)
    return JsonResponse({"access_token": user.token, "token_type": "bearer"})


@csrf_exempt
@require_POST
def challenge(request: HttpRequest) -> HttpResponse:
    """A person solved the challenge the app showed (a CAPTCHA in a real app)."""
    try:
        body: dict[str, Any] = json.loads(request.body or b"{}")
    except ValueError:
        return problem(400, "invalid JSON")
    if body.get("answer") != "human-ok":
        return problem(400, "challenge failed")
    guard.challenge_passed()
    return JsonResponse({"passed": True})


@require_GET
def list_products(request: HttpRequest) -> HttpResponse:
    try:
        page = max(int(request.GET.get("page", "1")), 1)
    except ValueError:
        page = 1
    start = (page - 1) * 20 + 1
    items = [PRODUCTS[i] for i in range(start, start + 20) if i in PRODUCTS]
    return JsonResponse(items, safe=False)


@require_GET
def get_product(request: HttpRequest, product_id: int) -> HttpResponse:
    product = PRODUCTS.get(product_id)
    return JsonResponse(product) if product else problem(404, "no such product")


@csrf_exempt
@require_POST
@guard.flow("redeem-coupon", "3/hour", per="principal", count="success")
def redeem_coupon(request: HttpRequest, code: str) -> HttpResponse:
    user = request.shop_user  # type: ignore[attr-defined]
    if user is None:
        return problem(401, "authentication required")
    percent = COUPONS.get(code.upper())
    if percent is None:
        return problem(404, "unknown coupon")  # not a success: refunded
    if (user.id, code.upper()) in redeemed:
        return problem(409, "coupon already used")
    redeemed.add((user.id, code.upper()))
    return JsonResponse({"code": code.upper(), "discount_percent": percent})


@require_GET
def get_order(request: HttpRequest, order_id: int) -> HttpResponse:
    user = request.shop_user  # type: ignore[attr-defined]
    if user is None:
        return problem(401, "authentication required")
    order = ORDERS.get(order_id)
    if order is None or order["user_id"] != user.id:
        return problem(404, "no such order")  # never reveal others' orders
    return JsonResponse(order)
