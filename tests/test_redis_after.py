"""What follows responses on the Redis store: many requests' operations in one flush, off
their paths; judged after it; bounded when Redis is down; written at shutdown."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest
import redis
import redis.asyncio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from apiguard import Guard
from apiguard.asgi import GuardMiddleware
from apiguard.store import redis_after
from apiguard.store.base import Ban, Run, Tally
from apiguard.store.redis import RedisStore
from apiguard.store.redis_wire import Wire
from apiguard.window import WindowSpec


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Commands sent from now on (the store's own connection and redis-py's)."""
    sent: list[bytes] = []
    original = redis.asyncio.connection.AbstractConnection.send_packed_command
    wire_send = Wire._send

    async def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(b"".join(command) if isinstance(command, list) else bytes(command))
        await original(self, command, check_health)

    def wire_counting(self: Wire, proto: Any, command: bytes, *rest: Any) -> Any:
        sent.append(command)
        return wire_send(self, proto, command, *rest)

    monkeypatch.setattr(
        redis.asyncio.connection.AbstractConnection, "send_packed_command", counting
    )
    monkeypatch.setattr(Wire, "_send", wire_counting)
    return sent


def test_many_requests_observations_go_in_one_flush_and_are_judged_after_it(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    store = RedisStore(redis.asyncio.Redis.from_url(redis_url), timeout=5.0)  # Redis time
    judged: list[tuple[float, int]] = []

    async def scenario() -> list[bytes]:
        await store.aobserve([Tally("warm", 10.0)], 0.0)  # warm-up and script load
        sent = _counting(monkeypatch)
        for i in range(20):  # twenty requests ending one after the other
            t, r = Tally("objects", 60.0, item=f"o:{i:04x}"), Run("walk", 60.0, i)
            assert store.observe_later(
                [t, r], 0.0, lambda t=t, r=r: judged.append((t.count, r.length))
            )
        assert judged == [] and sent == []  # nothing on the requests' path
        await asyncio.sleep(redis_after.DELAY * 5)
        return sent

    sent = asyncio.run(scenario())
    assert len(sent) == 1  # twenty requests' operations, one script call
    assert judged == [(float(i + 1), i) for i in range(20)]


def test_bans_and_refunds_are_written_with_the_next_flush(redis_url: str) -> None:
    store = RedisStore(redis.asyncio.Redis.from_url(redis_url), timeout=5.0)
    client = redis.Redis.from_url(redis_url)
    spec = WindowSpec(10, 60.0, 10)

    async def scenario() -> None:
        from apiguard.config import BanConfig
        from apiguard.store.base import Batch, Hit

        hit = Hit("w.refund|x", spec, 3)
        await store.aexecute(Batch([hit]), 0.0, BanConfig())
        store.refund(hit.key, spec, hit.bucket, 2)
        store.impose(Ban("k:carried", 1e12, 2, "u:alice", "challenge", "bola"), 0.0)
        await asyncio.sleep(0.001)  # bans are urgent: the loop's next turn
        assert client.hget("{apiguard}:b:k:carried", "o") == b"u:alice"
        store.lift("k:carried")
        await store.drain()
        batch = Batch([Hit("w.refund|x", spec, 0)])
        assert (await store.aexecute(batch, 0.0, BanConfig())).hits[0].remaining == 9

    asyncio.run(scenario())
    assert not client.exists("{apiguard}:b:k:carried")
    assert all(client.pttl(k) > 0 for k in client.scan_iter("{apiguard}:*"))


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_dead_redis_bounds_what_waits_drops_the_rest_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = RedisStore(redis.asyncio.Redis(port=_dead_port()), timeout=0.05, breaker_interval=60.0)
    called = [0]
    n = redis_after.MAX_WAITING + 500

    async def scenario() -> None:
        for i in range(n):  # faster than any flush: nothing was sent yet
            store.observe_later(
                [Tally(f"t{i}", 10.0)], 0.0, lambda: called.__setitem__(0, called[0] + 1)
            )
        await store.drain()

    with caplog.at_level(logging.WARNING, logger="apiguard"):
        asyncio.run(scenario())
    assert called[0] == n  # every judge ran (with no evidence), none was lost
    assert store.dropped == n  # 500 never queued, the rest failed or met the open breaker
    dropping = [r for r in caplog.records if "dropping new ones" in r.getMessage()]
    assert len(dropping) == 1
    assert store.fallbacks == 0  # no request was answered by the failure policy


def test_lifespan_shutdown_writes_what_waits(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    monkeypatch.setattr(redis_after, "DELAY", 60.0)  # nothing is flushed before shutdown
    # (a 2 s store timeout: the first calls of a new client can pass the 50 ms default on
    # a loaded machine, and then the store fails open and drops what it would write)
    guard = Guard({"secret": "s" * 32, "store": {"timeout": 2}}, store=redis_url)

    async def item(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/items/{item_id}", item)])
    app.add_middleware(GuardMiddleware, guard=guard)
    client = redis.Redis.from_url(redis_url)

    async def send(message: Any) -> None:
        pass

    async def request_body() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def scenario() -> None:
        events: asyncio.Queue[Any] = asyncio.Queue()
        events.put_nowait({"type": "lifespan.startup"})
        lifespan = asyncio.ensure_future(app({"type": "lifespan"}, events.get, send))
        for i in range(3):  # the BOLA detector observes every read of an object
            path = f"/items/{i}"
            scope = {
                "type": "http",
                "method": "GET",
                "path": path,
                "raw_path": path.encode(),
                "query_string": b"",
                "headers": [(b"host", b"t")],
                "client": ("192.0.2.7", 1234),
                "server": ("t", 80),
                "scheme": "http",
                "root_path": "",
                "http_version": "1.1",
                "asgi": {"version": "3.0"},
            }
            await app(scope, request_body, send)
        assert not list(client.scan_iter("{apiguard}:t:*"))  # waiting for the flush
        events.put_nowait({"type": "lifespan.shutdown"})
        await asyncio.wait_for(lifespan, 5.0)

    asyncio.run(scenario())
    assert guard.engine.store.fallbacks == 0  # type: ignore[attr-defined]  # (none dropped)
    assert list(client.scan_iter("{apiguard}:t:*"))
