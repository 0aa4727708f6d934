"""A real redis-server on a free loopback port, for the Redis store's tests.

Without redis-server the tests that need it are skipped with a message, unless
APIGUARD_REQUIRE_REDIS=1 (CI), where they fail: a missing binary must not pass silently.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


def free_port(below: int = 65536) -> int:
    """A free loopback port under `below` (a Cluster node also needs port + 10000)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port < below:
            return port


def require_redis() -> str:
    """The redis-server binary, or skip (fail under APIGUARD_REQUIRE_REDIS=1)."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed: the Redis store's tests need it"
        if os.environ.get("APIGUARD_REQUIRE_REDIS") == "1":
            pytest.fail(message + " (APIGUARD_REQUIRE_REDIS=1)")
        pytest.skip(message + " (apt-get install redis-server)")
    try:
        import redis  # noqa: F401
    except ModuleNotFoundError:
        if os.environ.get("APIGUARD_REQUIRE_REDIS") == "1":
            pytest.fail("redis-py is not installed (pip install -e '.[dev]')")
        pytest.skip("redis-py is not installed")
    return binary


class RedisServer:
    """One redis-server process: `start()`, `stop()` (SIGKILL: a crash), `url`."""

    def __init__(self, port: int | None = None, *extra: str) -> None:
        self.binary = require_redis()
        self.fixed = port is not None
        self.port = port or free_port(55_000)
        self.extra = extra
        self.dir = tempfile.mkdtemp(prefix="apiguard-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        for _ in range(3):  # a port taken between choosing and binding: another one
            try:
                started = self._start()
            except RuntimeError:
                if self.fixed:
                    raise
                self.port = free_port(55_000)
            else:
                self.fixed = True  # restarts keep the port (clients know its URL)
                return started
        return self._start()

    def _start(self) -> RedisServer:
        self.stop()
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self.dir,
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break  # it exited (port taken)
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
                    # (its own directory: not another test process's server that took
                    # the port first, while this one is about to exit)
                    s.sendall(b"CONFIG GET dir\r\n")
                    answer = s.recv(4096)
                    if os.path.realpath(self.dir).encode() in answer:
                        return self
                    if answer.startswith(b"*"):
                        break  # (someone else's)
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(Path(self.dir), ignore_errors=True)
