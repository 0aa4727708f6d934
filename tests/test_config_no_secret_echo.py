"""Configuration errors never echo a secret-bearing value (the hashing/signing `secret`,
a store URL's password), whichever way the configuration comes in; they may echo a rate
or a network, which are not secrets (trial finding 9)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apiguard import ConfigurationError, Guard, GuardConfig
from harness import close_django, configure_django

SHORT = "hunter2-pw"  # too short a secret (under 16 bytes)
PW = "s3cr3t-Passw0rd-xyz"


@pytest.fixture(autouse=True)
def _close_sites() -> Iterator[None]:
    yield
    close_django()


def message(fn: Any) -> str:
    with pytest.raises(ConfigurationError) as err:
        fn()
    text = str(err.value)
    assert err.value.__cause__ is None or SHORT not in str(err.value.__cause__)
    return text


@pytest.mark.parametrize(
    "bad",
    [
        {"secret": SHORT},
        {"secret": SHORT, "limits": {"principal": "lots"}},
        {"secret": [SHORT]},
        {"secret": {"value": SHORT}},
        {"secrets": SHORT},  # a misspelt key: named, its value not shown
    ],
)
def test_secret_never_echoed_by_guard_or_config(bad: dict[str, Any]) -> None:
    for fn in (lambda: Guard(bad), lambda: GuardConfig.model_validate(bad)):
        text = message(fn)
        assert SHORT not in text and "hunter2" not in text
        assert "secret" in text


def test_secret_never_echoed_from_env_or_toml(tmp_path: Path) -> None:
    text = message(lambda: GuardConfig.from_env(environ={"APIGUARD_SECRET": SHORT}))
    assert "secret" in text and SHORT not in text
    toml = tmp_path / "settings.toml"
    toml.write_text(f'[apiguard]\nsecret = "{SHORT}"\nmode = "enforced"\n')
    text = message(lambda: GuardConfig.from_toml(toml))
    assert "secret" in text and SHORT not in text
    broken = tmp_path / "broken.toml"
    broken.write_text(f'[apiguard]\nsecret = "{SHORT}\n')  # unterminated string
    assert SHORT not in message(lambda: GuardConfig.from_toml(broken))


def test_secret_never_echoed_from_django_settings() -> None:
    configure_django()
    from django.test import Client
    from django.test.utils import override_settings

    with override_settings(APIGUARD={"secret": SHORT, "limits": {"principal": "x"}}):
        text = message(lambda: Client().get("/"))
    assert "settings.APIGUARD" in text and SHORT not in text


@pytest.mark.parametrize(
    "url",
    [
        f"memcached://user:{PW}@cache.internal:11211",
        f"redis://:{PW}@[::1",
        f"redis://:{PW}@host:notaport/0",
        f"redis+sentinel://:{PW}@",
        f"http://:{PW}@redis.internal",
        f"{PW}",
    ],
)
def test_store_url_password_never_echoed(url: str) -> None:
    pytest.importorskip("redis")
    try:
        Guard(store=url)
    except ConfigurationError as exc:
        assert PW not in str(exc) and "store" in str(exc)
        for linked in (exc.__cause__, exc.__context__):  # shown with a traceback
            assert linked is None or PW not in str(linked)
    else:  # accepted (connects lazily): nothing to echo
        pass


def test_a_rate_or_a_network_may_be_echoed() -> None:
    assert "'600/minit'" in message(lambda: Guard({"limits": {"principal": "600/minit"}}))
    text = message(lambda: Guard({"client_ip": {"trusted_proxies": ["10.0.0.0/1"]}}))
    assert "10.0.0.0/1" in text
