"""Bearer-token authentication for the example shop (stands in for the app's own)."""

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse

from apiguard import identify
from shop.data import USERS


class BearerTokenMiddleware:
    """Sets `request.shop_user` (None when anonymous) and declares the account to apiguard
    with identify(), before any view (and so any decorated view's checkpoint) runs."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.shop_user = None  # type: ignore[attr-defined]
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            user = USERS.get(header[7:].strip())
            if user is None:
                return JsonResponse({"detail": "invalid token"}, status=401)
            identify(user.id)  # from here on, the principal is this account on every IP
            request.shop_user = user  # type: ignore[attr-defined]
        return self.get_response(request)
