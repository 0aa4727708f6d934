"""GuardConfig from TOML and from the environment; errors name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from apiguard import ConfigurationError, Guard, GuardConfig


def test_from_toml_reads_the_apiguard_table(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(
        """
[other]
x = 1

[apiguard]
mode = "monitor"
success_statuses = [200, 299]

[apiguard.limits]
principal = "100/minute;2000/day"
ip = "none-is-not-special-in-toml"

[apiguard.client_ip]
trusted_proxies = ["10.0.0.0/8", "fd00::/8"]
"""
    )
    with pytest.raises(ConfigurationError, match=r"limits\.ip"):
        GuardConfig.from_toml(path)
    path.write_text(path.read_text().replace('ip = "none-is-not-special-in-toml"\n', ""))
    config = GuardConfig.from_toml(path)
    assert config.mode == "monitor"
    assert config.limits.principal == "100/minute;2000/day"
    assert config.client_ip.trusted_proxies == ("10.0.0.0/8", "fd00::/8")
    assert config.success_statuses == (200, 299)
    assert Guard(config).config is config
    with pytest.raises(ValueError, match=r"\[nope\]"):
        GuardConfig.from_toml(path, table="nope")


def test_from_env_nests_lists_and_nones() -> None:
    env = {
        "APIGUARD_MODE": "monitor",
        "APIGUARD_LIMITS__PRINCIPAL": "100/minute",
        "APIGUARD_LIMITS__IP": "none",
        "APIGUARD_CLIENT_IP__TRUSTED_PROXIES": "10.0.0.0/8, 192.168.0.0/16",
        "APIGUARD_IDENTITY__API_KEY_HEADERS": "X-Api-Key,X-Token",
        "APIGUARD_BANS__AFTER": "5",
        "APIGUARD_RATELIMIT_HEADERS": "false",
        "APIGUARD_SUCCESS_STATUSES": "200,299",
        "OTHER_MODE": "enforce",
    }
    config = GuardConfig.from_env(environ=env)
    assert config.mode == "monitor"
    assert config.limits.principal == "100/minute" and config.limits.ip is None
    assert config.client_ip.trusted_proxies == ("10.0.0.0/8", "192.168.0.0/16")
    assert config.identity.api_key_headers == ("x-api-key", "x-token")
    assert config.bans.after == 5 and config.ratelimit_headers is False
    assert config.success_statuses == (200, 299)


def test_from_env_errors_name_the_setting() -> None:
    with pytest.raises(ConfigurationError, match=r"limits\.principal"):
        GuardConfig.from_env(environ={"APIGUARD_LIMITS__PRINCIPAL": "lots"})
    with pytest.raises(ConfigurationError, match="trusted_proxies"):
        GuardConfig.from_env(environ={"APIGUARD_CLIENT_IP__TRUSTED_PROXIES": "10.0.0.0/8,nope"})
    with pytest.raises(ConfigurationError, match="nonsense"):
        GuardConfig.from_env(environ={"APIGUARD_NONSENSE": "1"})


def test_from_env_takes_the_challenge_status_as_written() -> None:
    """The environment gives strings: `APIGUARD_DETECTION__CHALLENGE_STATUS=428` (for a
    front-end that signs out on any 401/403, as the full-stack FastAPI template's does)
    was refused with "Input should be 401, 403, 428 or 429"; a status not on the list still
    is, naming the setting."""
    env = {"APIGUARD_DETECTION__CHALLENGE_STATUS": "428"}
    assert GuardConfig.from_env(environ=env).detection.challenge_status == 428
    with pytest.raises(ConfigurationError, match=r"detection\.challenge_status"):
        GuardConfig.from_env(environ={"APIGUARD_DETECTION__CHALLENGE_STATUS": "500"})
