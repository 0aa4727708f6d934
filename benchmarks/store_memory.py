"""Memory of a full in-process store, filled the way a flood fills it (tracemalloc).

A flood of requests with made-up API keys (except in "anonymous"), two per client address,
runs through the real engine (Engine.begin + the checkpoint, bans on): each request creates
a new-credential marker, each address its per-IP and new-credentials-per-IP windows (and,
in "anonymous" and "refused", a per-principal window), until the window table and the
marker table hold `store.max_keys` live entries; then request views from further addresses
fill the engine's per-client-address caches (client address -> IP key; behind a trusted
proxy also the trust and grouping caches) to their bound (request.IP_CACHE_MAX, 131,072)
without having just been emptied: the worst moment. tracemalloc's count of live bytes
allocated since the guard was built is the figure.

Scenarios:
  anonymous   IPv4 clients without credentials: windows only (per-principal and per-IP),
              no markers
  ipv4        IPv4 clients, no proxy (the client-address -> IP key cache only)
  ipv6-proxy  IPv6 clients behind a trusted proxy (X-Forwarded-For): also the trust and
              /64 grouping caches hold every client address
  refused     ipv6-proxy, then every key twice more at 1/minute: refused, a strike
              record and a ban (bans.after=1) for each, up to max_keys, on top

    python benchmarks/store_memory.py                    # all scenarios, default cap
    python benchmarks/store_memory.py --max-keys 20000 --scenario ipv4
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import logging
import sys
import time
import tracemalloc
from typing import Any

from apiguard import Guard, Refused
from apiguard.request import IP_CACHE_MAX
from apiguard.simulate.clock import FakeClock

SCENARIOS = ("anonymous", "ipv4", "ipv6-proxy", "refused")
PROXY = "10.0.0.1"


_V6 = int(ipaddress.IPv6Address("2001:db8::"))
_V4 = int(ipaddress.IPv4Address("11.0.0.0"))


def _address(i: int, v6: bool) -> str:
    """A new string each call, as a server makes one per request (the caches keep it)."""
    if v6:  # one address per /64, so the grouping cache holds distinct networks
        return str(ipaddress.IPv6Address(_V6 + (i << 64) + 0x1234))
    return str(ipaddress.IPv4Address(_V4 + i))


def _scope(client: str, key: str | None, proxied: bool) -> dict[str, Any]:
    headers = [(b"user-agent", b"flood/1.0")]
    if key is not None:
        headers.append((b"x-api-key", key.encode()))
    if proxied:
        headers.append((b"x-forwarded-for", client.encode()))
    return {
        "type": "http",
        "method": "GET",
        "path": "/items",
        "headers": headers,
        "client": (PROXY if proxied else client, 40_000),
    }


def measure(scenario: str, max_keys: int) -> dict[str, Any]:
    proxied = scenario in ("ipv6-proxy", "refused")
    cache = min(IP_CACHE_MAX, max_keys) - 1  # distinct addresses: every cache full, not reset
    gc.collect()
    tracemalloc.start()
    clock = FakeClock(1_000.0)
    config: dict[str, Any] = {
        "store": {"max_keys": max_keys},
        "secret": "m" * 32,
        # ipv4 / ipv6-proxy: no per-principal window, two made-up keys per address, so the
        # window table (per-IP and new-credentials windows) and the marker table (one per
        # key) fill together; the store keeps no state for refused requests, and a full
        # table drops no live state, so every entry here is live at the end
        "limits": {
            "principal": None if scenario in ("ipv4", "ipv6-proxy") else "1/minute",
            "ip": "100/minute",
        },
        "bans": {"after": 1, "within": 60},
    }
    if proxied:
        config["client_ip"] = {"trusted_proxies": ["10.0.0.0/8"]}
    guard = Guard(config, clock=clock)
    engine = guard.engine
    v6 = proxied
    keyed = scenario != "anonymous"
    gc.collect()
    base = tracemalloc.get_traced_memory()[0]
    # phase 1 fills the store, phase 2 the per-client-address caches (request views only)
    requests = max_keys if keyed else max_keys // 2
    per_address = 2 if scenario in ("ipv4", "ipv6-proxy") else 1
    refused = 0

    def request(i: int) -> None:
        nonlocal refused
        key = f"made-up-{i}" if keyed else None
        ctx = engine.begin(_scope(_address(i // per_address % cache, v6), key, proxied))
        try:
            engine.check_sync(ctx)
        except Refused:
            refused += 1
        ctx.release()

    started = time.perf_counter()
    for i in range(requests):
        request(i)
    for i in range(requests // per_address, cache):  # the rest of the address caches
        engine.begin(_scope(_address(i, v6), None, proxied)).release()
    if scenario == "refused":  # keys again, twice: 1/minute, so refused and banned
        # (max_keys - 1 of them: a full ban table makes each further ban scan it; the
        # figure is the same, the run would take hours)
        for i in range(requests - max_keys + 1, requests):
            request(i)
            request(i)
    elapsed = time.perf_counter() - started
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    store: Any = guard.store
    return {
        "scenario": scenario,
        "max_keys": max_keys,
        "requests": requests + (2 * (max_keys - 1) if scenario == "refused" else 0),
        "refused": refused,
        "windows": len(store._windows),
        "markers": len(store._seen),
        "strikes": len(store._strikes),
        "bans": len(store._bans),
        "ip_keys": len(engine._ip_keys),
        "trust_cache": len(engine.ip._trust_cache),
        "group_cache": len(engine.ip._group_cache),
        "mb": used / 1e6,
        "us_per_request": elapsed / max(1, requests) * 1e6,
        "seconds": elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-keys", type=int, default=200_000)
    parser.add_argument("--scenario", choices=(*SCENARIOS, "all"), default="all")
    args = parser.parse_args(argv)
    logging.getLogger("apiguard").setLevel(logging.ERROR)  # not one line per ban
    chosen = SCENARIOS if args.scenario == "all" else (args.scenario,)
    print(f"Python {sys.version.split()[0]}, store.max_keys={args.max_keys}")
    header = (
        f"{'scenario':<11} {'windows':>8} {'markers':>8} {'strikes':>8} {'bans':>7} "
        f"{'ip keys':>8} {'trust':>7} {'group':>7} {'MB':>7} {'B/window':>8} {'s':>5}"
    )
    print(header)
    print("-" * len(header))
    for scenario in chosen:
        m = measure(scenario, args.max_keys)
        print(
            f"{m['scenario']:<11} {m['windows']:>8} {m['markers']:>8} {m['strikes']:>8} "
            f"{m['bans']:>7} {m['ip_keys']:>8} {m['trust_cache']:>7} {m['group_cache']:>7} "
            f"{m['mb']:>7.1f} {m['mb'] * 1e6 / max(1, m['windows']):>8.0f} "
            f"{m['seconds']:>5.0f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
