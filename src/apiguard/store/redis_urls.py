"""Redis clients from a store URL, the way `limits` resolves its storage URIs.

    redis://[:password@]host:port/db     rediss:// (TLS)      unix:///path.sock?db=0
    valkey://, valkeys://                the same, for Valkey
    redis+cluster://host:port[,host:port...]
    redis+sentinel://[:password@]host:port[,host:port...]/service_name[/db]

redis-py is imported here only (the `redis` extra). Errors name the scheme, never the URL
(it may carry a password).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from apiguard.errors import ConfigurationError

SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "valkey",
    "valkeys",
    "redis+cluster",
    "rediss+cluster",
    "valkey+cluster",
    "redis+sentinel",
    "valkey+sentinel",
)


def scheme_of(url: str) -> str:
    """The URL's scheme in lower case ('' when there is none)."""
    head, sep, _ = url.partition("://")
    return head.lower() if sep else ""


def redis_module() -> Any:
    """`redis`, or a ConfigurationError saying how to install it."""
    try:
        return importlib.import_module("redis")
    except ModuleNotFoundError:
        raise ConfigurationError(
            "Guard(store=...): a Redis store needs redis-py: pip install 'apiguard-shield[redis]'"
        ) from None


def client_factories(
    url: str, timeout: float
) -> tuple[Callable[[], Any], Callable[[], Any], str]:
    """(make a sync client, make an asyncio client, a description without credentials)
    for `url`; raises ConfigurationError for an unknown scheme or a malformed URL."""
    scheme = scheme_of(url)
    if scheme not in SCHEMES:
        shown = f"scheme {scheme!r}" if scheme else "a value without a scheme"
        raise ConfigurationError(
            f"Guard(store=...): {shown} is not a store URL; use one of "
            + ", ".join(f"{s}://" for s in SCHEMES)
        )
    redis_module()
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
    }
    kind, _, variant = scheme.partition("+")
    plain = {"valkey": "redis", "valkeys": "rediss"}.get(kind, kind)
    rest = url.split("://", 1)[1]
    if variant == "cluster":
        return _cluster(f"{plain}://{rest}", options)
    if variant == "sentinel":
        return _sentinel(rest, options)
    normal = f"{plain}://{rest}"
    try:
        parts = urlsplit(normal)
        if plain != "unix":
            parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ConfigurationError(
            f"Guard(store=...): the {scheme}:// URL is malformed (host or port)"
        ) from None

    def sync() -> Any:
        return importlib.import_module("redis").Redis.from_url(normal, **options)

    def asyncio() -> Any:
        return importlib.import_module("redis.asyncio").Redis.from_url(normal, **options)

    return sync, asyncio, f"{scheme}://{parts.hostname or parts.path}"


def _cluster(
    url: str, options: dict[str, Any]
) -> tuple[Callable[[], Any], Callable[[], Any], str]:
    scheme, rest = url.split("://", 1)
    auth, _, hosts = rest.rpartition("@")
    nodes = _hosts(hosts.split("/", 1)[0], 7000, "redis+cluster")
    extra = _auth(auth)

    def sync() -> Any:
        cluster = importlib.import_module("redis.cluster")
        return cluster.RedisCluster(
            startup_nodes=[cluster.ClusterNode(h, p) for h, p in nodes],
            ssl=scheme == "rediss",
            **extra,
            **options,
        )

    def asyncio() -> Any:
        cluster = importlib.import_module("redis.asyncio.cluster")
        return cluster.RedisCluster(
            startup_nodes=[cluster.ClusterNode(h, p) for h, p in nodes],
            ssl=scheme == "rediss",
            **extra,
            **options,
        )

    return sync, asyncio, f"{scheme}+cluster://{nodes[0][0]}"


def _sentinel(
    rest: str, options: dict[str, Any]
) -> tuple[Callable[[], Any], Callable[[], Any], str]:
    auth, _, location = rest.rpartition("@")
    hosts, _, path = location.partition("/")
    service, _, db = path.partition("/")
    if not service:
        raise ConfigurationError(
            "Guard(store=...): a redis+sentinel:// URL names its service: "
            "redis+sentinel://host:26379/mymaster"
        )
    nodes = _hosts(hosts, 26379, "redis+sentinel")
    extra = _auth(auth)
    if db:
        try:
            extra["db"] = int(db)
        except ValueError:
            raise ConfigurationError(
                "Guard(store=...): the database of a redis+sentinel:// URL is a number"
            ) from None

    def sync() -> Any:
        sentinel = importlib.import_module("redis.sentinel")
        return sentinel.Sentinel(nodes, sentinel_kwargs=options, **options).master_for(
            service, **extra
        )

    def asyncio() -> Any:
        sentinel = importlib.import_module("redis.asyncio.sentinel")
        return sentinel.Sentinel(nodes, sentinel_kwargs=options, **options).master_for(
            service, **extra
        )

    return sync, asyncio, f"redis+sentinel://{nodes[0][0]}/{service}"


def _hosts(text: str, default_port: int, scheme: str) -> list[tuple[str, int]]:
    nodes: list[tuple[str, int]] = []
    for item in text.split(","):
        host, _, port = item.strip().rpartition(":") if ":" in item else (item, "", "")
        host = host.strip("[]") or item.strip()
        try:
            nodes.append((host, int(port) if port else default_port))
        except ValueError:
            raise ConfigurationError(
                f"Guard(store=...): a {scheme}:// URL lists host:port pairs"
            ) from None
    if not nodes or not nodes[0][0]:
        raise ConfigurationError(f"Guard(store=...): a {scheme}:// URL needs a host")
    return nodes


def _auth(auth: str) -> dict[str, Any]:
    if not auth:
        return {}
    user, _, password = auth.partition(":")
    extra: dict[str, Any] = {}
    if user:
        extra["username"] = unquote(user)
    if password:
        extra["password"] = unquote(password)
    return extra
