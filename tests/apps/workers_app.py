"""The app `tests/test_redis_workers.py` serves with `uvicorn --workers 2` (one Redis)."""

from __future__ import annotations

import os

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from apiguard import Guard
from apiguard.asgi import GuardMiddleware

guard = Guard(
    {
        "limits": {"principal": None, "ip": None},
        "identity": {"new_credentials_per_ip": None},
        "bans": {"after": 3, "within": 60, "base": 120},
        # a loaded test machine: sharing is tested, not timeouts
        "store": {"timeout": 2.0, "lease": os.environ.get("APIGUARD_TEST_LEASE") == "1"},
    },
    store=os.environ["APIGUARD_TEST_REDIS"],  # no secret configured: shared through Redis
)
api = FastAPI()
api.add_middleware(GuardMiddleware, guard=guard)


@api.get("/limited")
@guard.limit("20/minute")
async def limited() -> dict[str, int]:
    return {"pid": os.getpid()}


@api.get("/pid")
async def pid() -> dict[str, int]:
    return {"pid": os.getpid()}


class Pid:
    """Says which worker answered, refusals included (outside apiguard)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-pid", b"%d" % os.getpid())]
            await send(message)

        await self.app(scope, receive, tagged)


app = Pid(api)
