"""Configuration models. Every setting is validated at start-up; an error names the field."""

from __future__ import annotations

import importlib
import ipaddress
import os
import sys
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from apiguard.rates import parse_rates

Mode = Literal["monitor", "enforce"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_rate(value: str | None) -> str | None:
    if value is not None:
        parse_rates(value)  # raises ValueError with the offending text
    return value


class DefaultLimits(_Model):
    """Global limits applied to every request, routed or not (404s count too).

    `principal`: one budget per principal across the whole API.
    `ip`: one budget per client IP (or IP network, see `ClientIPConfig`); keep it high,
    because offices and mobile carriers put many people behind one address.
    `route`: one budget per (principal, method, route template), so each operation has its
    own; requests no route matched share one bucket (never one per concrete path).
    Each is a `limits` rate string, stackable ("100/minute;2000/day"), or None for off.
    """

    principal: str | None = "600/minute"
    ip: str | None = "3000/minute"
    route: str | None = None
    mode: Mode | None = None

    @field_validator("principal", "ip", "route")
    @classmethod
    def _rates(cls, value: str | None) -> str | None:
        return _check_rate(value)


class ClientIPConfig(_Model):
    """How the client address is found. By default no proxy is trusted.

    `unix_socket_proxy`: the server listens on a unix socket behind a local proxy (uvicorn
    `--uds` behind nginx), so requests have no peer address; trust that proxy's header.
    """

    trusted_proxies: tuple[str, ...] = ()
    proxy_header: Literal["x-forwarded-for", "forwarded"] = "x-forwarded-for"
    ipv4_prefix: int = Field(32, ge=8, le=32)
    ipv6_prefix: int = Field(64, ge=16, le=128)
    unix_socket_proxy: bool = False

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: object) -> tuple[str, ...]:
        if isinstance(value, str):
            value = tuple(v for v in (p.strip() for p in value.split(",")) if v)
        if not isinstance(value, list | tuple):
            raise ValueError("expected a list of networks such as ['10.0.0.0/8']")
        out: list[str] = []
        for item in value:
            try:
                out.append(str(ipaddress.ip_network(str(item), strict=False)))
            except ValueError as exc:
                raise ValueError(f"{item!r} is not an IP network: {exc}") from None
        return tuple(out)


class IdentityConfig(_Model):
    """Where a principal comes from when the app did not call `identify()`.

    `new_credentials_per_ip`: how many distinct API keys / tokens that the app has not
    vouched for (via `identify()` or the resolver) one IP may introduce per window; made-up
    keys would otherwise each get a fresh budget. None turns the check off.
    """

    api_key_headers: tuple[str, ...] = ("x-api-key",)
    bearer_tokens: bool = True
    new_credentials_per_ip: str | None = "100/hour"

    @field_validator("new_credentials_per_ip")
    @classmethod
    def _churn_rate(cls, value: str | None) -> str | None:
        return _check_rate(value)

    @field_validator("api_key_headers", mode="before")
    @classmethod
    def _lower(cls, value: object) -> tuple[str, ...]:
        if isinstance(value, str):
            value = tuple(p for p in value.split(","))
        if not isinstance(value, list | tuple):
            raise ValueError("expected a list of header names")
        names = tuple(str(v).strip().lower() for v in value)
        for name in names:
            if not name or any(c in name for c in " :\r\n\t"):
                raise ValueError(f"{name!r} is not a valid header name")
        return names


class BanConfig(_Model):
    """AppSensor-style escalation: throttle, then ban for `base`, doubling up to `max`.

    A principal whose requests are refused `after` times within `within` seconds is banned
    (403) for `base` seconds; each further ban starting within `memory` seconds of the end
    of the previous one multiplies the duration by `factor`, capped at `max`.

    `strict_ip`: refuse every request from a banned IP before routing, whatever cookie or
    API key it carries. Off by default, so that people signed in behind the same NAT are
    not banned with an anonymous abuser; then a banned IP that sends a cookie or a made-up
    key is refused at the checkpoint instead (an undecorated handler runs first).
    """

    enabled: bool = True
    after: int = Field(20, ge=1)
    within: float = Field(60.0, gt=0)
    base: float = Field(60.0, gt=0)
    factor: float = Field(2.0, ge=1.0)
    max: float = Field(86_400.0, gt=0)
    memory: float = Field(86_400.0, gt=0)
    strict_ip: bool = False


class StoreConfig(_Model):
    """Bounds of the in-process store (every table is capped)."""

    max_keys: int = Field(200_000, ge=100)
    window_buckets: int = Field(10, ge=2, le=120)


class GuardConfig(_Model):
    """All of apiguard's settings: in code, from a dict, a TOML file or the environment."""

    mode: Mode = "enforce"
    secret: SecretStr | None = None
    limits: DefaultLimits = DefaultLimits()
    client_ip: ClientIPConfig = ClientIPConfig()
    identity: IdentityConfig = IdentityConfig()
    bans: BanConfig = BanConfig()
    store: StoreConfig = StoreConfig()
    ratelimit_headers: bool = True
    success_statuses: tuple[int, int] = (200, 399)

    @field_validator("success_statuses", mode="before")
    @classmethod
    def _statuses_text(cls, value: object) -> object:
        if isinstance(value, str):  # "200,399" from the environment
            return tuple(p.strip() for p in value.split(","))
        return value

    @field_validator("success_statuses")
    @classmethod
    def _statuses(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if not 100 <= low <= high <= 599:
            raise ValueError("expected (low, high) HTTP statuses with 100 <= low <= high <= 599")
        return value

    @field_validator("secret")
    @classmethod
    def _secret_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 16:
            raise ValueError("secret must be at least 16 bytes")
        return value

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], table: str = "apiguard") -> GuardConfig:
        """Load `[apiguard]` (or `table`; "" for the whole file) from a TOML file."""
        try:  # tomllib from Python 3.11; the tomli package before
            toml = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")
        except ModuleNotFoundError:
            raise RuntimeError(
                "reading TOML on Python 3.10 needs the tomli package (pip install tomli)"
            ) from None
        with open(path, "rb") as handle:
            data: Any = toml.load(handle)
        for part in table.split(".") if table else ():
            if not isinstance(data, dict) or part not in data:
                raise ValueError(f"{os.fspath(path)} has no [{table}] table")
            data = data[part]
        return cls.model_validate(data)

    @classmethod
    def from_env(
        cls, prefix: str = "APIGUARD_", environ: Mapping[str, str] | None = None
    ) -> GuardConfig:
        """Load settings from variables such as `APIGUARD_MODE=monitor`,
        `APIGUARD_LIMITS__PRINCIPAL=100/minute` (`__` nests) and
        `APIGUARD_CLIENT_IP__TRUSTED_PROXIES=10.0.0.0/8,192.168.0.0/16` (commas list).
        `none` or an empty value means None."""
        env = os.environ if environ is None else environ
        data: dict[str, Any] = {}
        for name, raw in env.items():
            if not name.upper().startswith(prefix.upper()):
                continue
            path = name[len(prefix) :].lower().split("__")
            node = data
            for part in path[:-1]:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise ValueError(f"{name}: {part} is a value, not a section")
                node = child
            node[path[-1]] = None if raw.strip().lower() in ("", "none", "null") else raw
        return cls.model_validate(data)
