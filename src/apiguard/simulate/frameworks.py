"""The demo's shop on Flask or Django: `examples/flask_shop.py` and `examples/django_shop/`,
driven in process like the FastAPI shop (Flask through a small WSGI-to-ASGI bridge,
Django through its own ASGI handler, so apiguard's async Django middleware runs)."""

from __future__ import annotations

import importlib
import importlib.util
import io
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

FRAMEWORKS = ("fastapi", "flask", "django")

Message = dict[str, Any]


class WsgiAsAsgi:
    """Runs a WSGI app for one ASGI request, synchronously (the simulator sends one
    request at a time): the body is read first, the response sent complete."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Any],
        send: Callable[[Message], Any],
    ) -> None:
        if scope.get("type") == "lifespan":  # (WSGI has none: nothing to start or stop)
            while True:
                message = await receive()
                kind = message.get("type", "")
                if kind in ("lifespan.startup", "lifespan.shutdown"):
                    await send({"type": f"{kind}.complete"})
                if kind != "lifespan.startup":
                    return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        client = scope.get("client") or ("", 0)
        environ: dict[str, Any] = {
            "REQUEST_METHOD": scope["method"],
            "SCRIPT_NAME": scope.get("root_path", ""),
            "PATH_INFO": scope["path"].encode("utf-8").decode("latin-1"),
            "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
            "SERVER_NAME": scope.get("server", ("localhost", 80))[0],
            "SERVER_PORT": str(scope.get("server", ("localhost", 80))[1]),
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": client[0],
            "REMOTE_PORT": str(client[1]),
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": scope.get("scheme", "http"),
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in scope.get("headers", ()):
            key = name.decode("latin-1").upper().replace("-", "_")
            if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                environ[key] = value.decode("latin-1")
            else:
                environ[f"HTTP_{key}"] = value.decode("latin-1")
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> Any:
            started[:] = [status, headers]
            return lambda data: None

        result = self.app(environ, start_response)
        try:
            chunks = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status, headers = started
        await send(
            {
                "type": "http.response.start",
                "status": int(status[:3]),
                "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
        )
        await send({"type": "http.response.body", "body": chunks})


def find_examples(shop_path: str | Path | None = None) -> Path:
    """The examples folder: beside `shop_path`, in the source checkout, or in the cwd."""
    here = Path(__file__).resolve()
    candidates = [Path(shop_path).parent] if shop_path is not None else []
    candidates += [here.parents[3] / "examples", here.parents[1] / "_examples"]
    candidates.append(Path.cwd() / "examples")
    for folder in candidates:
        if (folder / "flask_shop.py").is_file():
            return folder
    raise FileNotFoundError(
        "the demo shops examples/flask_shop.py and examples/django_shop were not found "
        "(looked in " + ", ".join(str(c) for c in candidates) + ")"
    )


def shop_app(
    framework: str, clock: Callable[[], float], shop_path: str | Path | None = None
) -> tuple[ModuleType, Any]:
    """(the module with the shop's tables, the shop as an ASGI app) for `framework`."""
    examples = find_examples(shop_path)
    if framework == "flask":
        spec = importlib.util.spec_from_file_location(
            "apiguard_demo_flask_shop", examples / "flask_shop.py"
        )
        if spec is None or spec.loader is None:
            raise ImportError("cannot load flask_shop.py")
        shop = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = shop
        spec.loader.exec_module(shop)
        return shop, WsgiAsAsgi(shop.create_app(shop.demo_guard(clock)))
    if framework == "django":
        sys.path.insert(0, str(examples / "django_shop"))
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
        from django.conf import settings
        from django.core.asgi import get_asgi_application

        settings.APIGUARD_CLOCK = clock  # before the guard is built from the settings
        app = get_asgi_application()
        return importlib.import_module("shop.data"), app
    raise ValueError(f"unknown framework {framework!r}: use one of {', '.join(FRAMEWORKS)}")
