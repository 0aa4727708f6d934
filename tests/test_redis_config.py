"""`Guard(store=url)`: schemes, errors that name `store` and never echo a password, one
hashing secret across workers, per-rule failure policy settings."""

from __future__ import annotations

import builtins
from typing import Any

import pytest
import redis

from apiguard import Guard
from apiguard.errors import ConfigurationError
from apiguard.store.redis import RedisStore
from redisproc import free_port

SECRET = {"secret": "a-configured-secret-0123456789"}


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2@localhost:6379/0",
        "rediss://user:hunter2@cache.example:6380/1",
        "valkey://localhost:6379",
        "valkeys://localhost",
        "unix:///var/run/redis.sock?db=2",
        "redis+cluster://:hunter2@node1:7000,node2:7001",
        "redis+sentinel://:hunter2@s1:26379,s2:26380/mymaster",
        "redis+sentinel://s1/mymaster/3",
    ],
)
def test_store_urls_make_a_redis_store_without_connecting(url: str) -> None:
    guard = Guard(SECRET, store=url)  # a configured secret: nothing to read at start-up
    assert isinstance(guard.store, RedisStore) and not guard.store.local
    assert guard.store._client is None  # clients are made when first used
    assert "hunter2" not in guard.summary() and "hunter2" not in guard.store.name


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("mongodb://:hunter2@db/0", "scheme 'mongodb'"),
        ("redis://:hunter2@host:notaport/0", "malformed"),
        ("redis+sentinel://:hunter2@s1:26379", "service"),
        ("redis+cluster://:hunter2@n1:x", "host:port"),
    ],
)
def test_bad_store_urls_name_store_and_never_the_password(url: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match) as raised:
        Guard(SECRET, store=url)
    assert "store" in str(raised.value) and "hunter2" not in str(raised.value)


def test_an_unreachable_redis_without_a_secret_fails_at_construction() -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    with pytest.raises(ConfigurationError, match=r"store.*secret") as raised:
        Guard(store=url)
    assert "hunter2" not in str(raised.value)


def test_missing_redis_py_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_redis(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "redis" or name.startswith("redis."):
            raise ModuleNotFoundError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr("importlib.import_module", lambda name: no_redis(name))
    with pytest.raises(ConfigurationError, match=r"apiguard-shield\[redis\]"):
        Guard(SECRET, store="redis://localhost")


def test_workers_share_one_secret_through_redis(redis_url: str) -> None:
    first, second = Guard(store=redis_url), Guard(store=redis_url)
    assert first.hash("u", "alice") == second.hash("u", "alice")
    other_prefix = Guard({"store": {"prefix": "other"}}, store=redis_url)
    assert other_prefix.hash("u", "alice") != first.hash("u", "alice")
    configured = Guard(SECRET, store=redis_url)
    assert configured.hash("u", "alice") == Guard(SECRET).hash("u", "alice")
    client = redis.Redis.from_url(redis_url)
    assert 0 < client.pttl("{apiguard}:secret") <= 30 * 86_400_000


def test_failure_policy_settings_are_checked() -> None:
    guard = Guard(SECRET)
    with pytest.raises(ConfigurationError, match="on_store_failure"):
        guard.limit("1/second", on_store_failure="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"store\.on_failure"):
        Guard({"store": {"on_failure": "maybe"}})
    with pytest.raises(ConfigurationError, match=r"store\.prefix"):
        Guard({"store": {"prefix": "{bad}"}})
    store = RedisStore.from_url("redis://localhost", on_failure="closed")
    assert store.on_failure == "closed" and store.server_time is None
    Guard(SECRET, store=store, clock=lambda: 5.0)
    assert store.server_time is False  # an injected clock drives the windows


def test_each_fallback_is_a_span_event_and_the_outage_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from apiguard.config import BanConfig
    from apiguard.store.base import Batch, Hit
    from apiguard.window import WindowSpec

    caplog.set_level(logging.WARNING, logger="apiguard")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    store = RedisStore.from_url(f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    with provider.get_tracer("t").start_as_current_span("request"):
        for _ in range(3):
            hit = Hit("w|x", WindowSpec(1, 60.0), 1, subject="x")
            result = store.execute(Batch([hit], ("x",)), 5.0, BanConfig())
            assert result.admitted and hit.fits  # fail-open
    (span,) = exporter.get_finished_spans()
    events = [e for e in span.events if e.name == "apiguard.store.fallback"]
    assert len(events) == 3
    assert events[0].attributes is not None
    assert events[0].attributes["apiguard.store.reason"] == "ConnectionError"
    assert events[1].attributes is not None
    assert events[1].attributes["apiguard.store.reason"] == "breaker open"
    lines = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(lines) == 1 and "hunter2" not in lines[0]
    assert trace.get_current_span() is trace.INVALID_SPAN
