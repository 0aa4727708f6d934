"""The Redis store's own asyncio connection (`apiguard.store.redis_wire`) against a real
redis-server: pipelined calls, NOSCRIPT, password, user and database, fallbacks to
redis-py for the clients it does not serve."""

from __future__ import annotations

import asyncio
from builtins import id as builtins_id
from typing import Any

import pytest
import redis
import redis.asyncio

from apiguard.config import BanConfig
from apiguard.store.base import Batch, Hit
from apiguard.store.redis import RedisStore
from apiguard.store.redis_wire import Wire, _parse, pack
from apiguard.window import WindowSpec
from redisproc import RedisServer

SPEC = WindowSpec(1000, 60.0, 10)


def _lane(store: RedisStore) -> Any:
    (lane,) = store._lanes.values()
    return lane


def test_replies_are_parsed_whole_or_waited_for() -> None:
    reply = b"*3\r\n$3\r\nabc\r\n:-7\r\n$-1\r\n"
    assert _parse(reply, 0) == ([b"abc", -7, None], len(reply))
    for cut in range(1, len(reply)):
        assert _parse(reply[:cut], 0)[1] == 0  # incomplete: nothing consumed
    assert pack("SET", "k", 1.5, 2) == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\n1.5\r\n$1\r\n2\r\n"


def test_concurrent_checkpoints_share_one_connection_and_get_their_own_replies(
    redis_url: str,
) -> None:
    store = RedisStore(redis.asyncio.Redis.from_url(redis_url), timeout=5.0)

    async def scenario() -> list[int]:
        await store.aexecute(Batch([Hit("w.warm|x", SPEC)]), 0.0, BanConfig())
        results = await asyncio.gather(
            *(  # window k charged k + 1 a request: replies mixed up would show
                store.aexecute(Batch([Hit(f"w.{i % 3}|x", SPEC, i % 3 + 1)]), 0.0, BanConfig())
                for i in range(60)
            )
        )
        assert isinstance(_lane(store), Wire)
        return [r.hits[0].remaining for r in results]

    remaining = asyncio.run(scenario())
    for k in range(3):  # in the order they were sent
        assert remaining[k::3] == [1000 - (k + 1) * j for j in range(1, 21)]
    assert store.fallbacks == 0


def test_a_flushed_script_cache_is_reloaded_on_the_asyncio_path(redis_url: str) -> None:
    store = RedisStore(redis.asyncio.Redis.from_url(redis_url), timeout=5.0)
    sync = redis.Redis.from_url(redis_url)

    async def scenario() -> int:
        await store.aexecute(Batch([Hit("w.a|x", SPEC)]), 0.0, BanConfig())
        sync.script_flush()  # what a Redis restart does
        result = await store.aexecute(Batch([Hit("w.a|x", SPEC)]), 0.0, BanConfig())
        return result.hits[0].remaining

    assert asyncio.run(scenario()) == 998
    assert store.fallbacks == 0


def test_password_user_and_database_are_those_of_the_client() -> None:
    server = RedisServer().start()
    try:
        admin = redis.Redis(port=server.port)
        admin.execute_command("ACL", "SETUSER", "guard", "on", ">s3cret", "~*", "+@all")
        admin.config_set("requirepass", "pw")
        for url, db in (
            (f"redis://:pw@127.0.0.1:{server.port}/3", 3),
            (f"redis://guard:s3cret@127.0.0.1:{server.port}/5", 5),
        ):
            store = RedisStore(redis.asyncio.Redis.from_url(url), timeout=5.0)

            async def scenario(store: RedisStore = store) -> bool:
                result = await store.aexecute(Batch([Hit("w.a|x", SPEC)]), 0.0, BanConfig())
                return isinstance(_lane(store), Wire) and result.admitted

            assert asyncio.run(scenario())
            assert store.fallbacks == 0
            check = redis.Redis(port=server.port, password="pw", db=db)
            assert check.exists("{apiguard}:w:w.a|x")
        store = RedisStore(
            redis.asyncio.Redis.from_url(f"redis://:wrong@127.0.0.1:{server.port}/0"),
            timeout=1.0,
        )
        refused = asyncio.run(store.aexecute(Batch([Hit("w.a|x", SPEC)]), 0.0, BanConfig()))
        assert refused.admitted and store.fallbacks == 1  # fails open, no exception
    finally:
        server.close()


def test_clients_it_does_not_serve_keep_redis_py() -> None:
    plain = redis.asyncio.Redis(port=1)
    assert Wire.fits(plain)
    assert not Wire.fits(redis.asyncio.Redis(port=1, protocol=3))

    class Provider(redis.CredentialProvider):
        def get_credentials(self) -> tuple[str, str]:
            return ("u", "p")

    assert not Wire.fits(redis.asyncio.Redis(port=1, credential_provider=Provider()))
    assert not Wire.fits(redis.Redis(port=1))  # the sync client
    assert Wire.fits(redis.asyncio.Redis(port=1, ssl=True))  # rediss:// (redis-py's TLS)
    assert Wire.fits(redis.asyncio.Redis(unix_socket_path="/tmp/none.sock"))


def test_a_hung_server_fails_every_waiting_call_by_its_deadline() -> None:
    import os
    import signal
    import time

    server = RedisServer().start()
    assert server.proc is not None
    store = RedisStore.from_url(server.url, timeout=0.25, breaker_interval=60.0)

    async def timed() -> float:
        started = time.perf_counter()
        await store.aexecute(Batch([Hit("w.a|x", SPEC)]), 0.0, BanConfig())
        return time.perf_counter() - started

    async def scenario() -> list[float]:
        await timed()  # connected (its opening's deadlines are longer than the timeout)
        abandoned = asyncio.ensure_future(timed())
        await asyncio.sleep(0)
        abandoned.cancel()  # a caller gone: its reply is read and dropped
        await timed()
        assert store.fallbacks == 0
        os.kill(server.proc.pid, signal.SIGSTOP)
        return await asyncio.gather(*(timed() for _ in range(20)))

    try:
        elapsed = asyncio.run(scenario())
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        server.close()
    assert max(elapsed) < 0.25 + 0.5  # (slack: a loaded machine)
    assert store.fallbacks == 20


def test_tls_uses_the_clients_own_context(redis_url: str, tmp_path: Any) -> None:
    """rediss://: the connection's TLS context is redis-py's (here: a CA file, the host
    name checked), in front of the test server through a TLS-terminating proxy."""
    import shutil
    import ssl
    import subprocess

    import pytest

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (the certificate is made with it)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    upstream = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs["port"]
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
        await asyncio.gather(
            pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True
        )

    async def scenario() -> tuple[bool, int]:
        proxy = await asyncio.start_server(relay, "127.0.0.1", 0, ssl=server_ctx)
        port = proxy.sockets[0].getsockname()[1]
        client = redis.asyncio.Redis(host="localhost", port=port, ssl=True, ssl_ca_certs=str(cert))
        store = RedisStore(client, timeout=5.0)
        result = await store.aexecute(Batch([Hit("w.tls|x", SPEC)]), 0.0, BanConfig())
        lane = _lane(store)
        await store.aclose()
        proxy.close()
        return isinstance(lane, Wire) and result.admitted, store.fallbacks

    uses_wire, fallbacks = asyncio.run(scenario())
    assert uses_wire and fallbacks == 0
    assert redis.Redis.from_url(redis_url).exists("{apiguard}:w:w.tls|x")


@pytest.mark.parametrize("query", ["", "?protocol=3"], ids=["wire", "redis-py-lane"])
def test_a_client_made_on_each_new_event_loop_is_never_taken_for_an_earlier_one(
    redis_url: str, monkeypatch: Any, query: str
) -> None:
    """A store made from a URL makes an asyncio client per event loop (tests, a server
    restarted in one process). The tables it keeps per client were keyed on `id(client)`
    alone: a new client made where a dead one was got its entries (no warm-up; on
    redis-py's path, the dead one's connections, bound to a closed loop: every call
    failed open). Here every client has the same id, as a reused address gives."""
    import apiguard.store.redis as module

    monkeypatch.setattr(module, "id", lambda obj: 7, raising=False)
    store = RedisStore.from_url(redis_url + query, timeout=5.0)
    clients = []

    async def one() -> int:
        clients.append(store._async())
        result = await store.aexecute(Batch([Hit("w.loops|x", SPEC)]), 0.0, BanConfig())
        return result.hits[0].remaining

    remaining = [asyncio.run(one()) for _ in range(6)]
    assert len({*map(builtins_id, clients)}) == 6  # six clients, one per loop
    assert remaining == [1000 - k for k in range(1, 7)]
    assert store.fallbacks == 0
