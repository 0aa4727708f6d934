"""Detectors: account takeover, BOLA enumeration, IP rotation and stolen keys, scraping,
reconnaissance.

Each family is one module; `build` makes those the configuration turns on. See
`apiguard.detectors.base` for how they plug into the engine.
"""

from __future__ import annotations

from apiguard.config import DetectionConfig
from apiguard.detectors.account_takeover import AccountTakeover
from apiguard.detectors.base import Detector, Finding, LoginAttempt, Outcome
from apiguard.detectors.bola import Bola
from apiguard.detectors.flow_groups import FlowGroups
from apiguard.detectors.recon import Recon
from apiguard.detectors.rotation import Rotation
from apiguard.detectors.scraping import Scraping

__all__ = [
    "AccountTakeover",
    "Bola",
    "Detector",
    "Finding",
    "FlowGroups",
    "LoginAttempt",
    "Outcome",
    "Recon",
    "Rotation",
    "Scraping",
    "build",
]


def build(config: DetectionConfig, enforce_default: bool) -> list[Detector]:
    """The detectors `config` turns on, each in its own mode (None: `enforce_default`)."""
    found: list[Detector] = []

    def enforce(mode: str | None) -> bool:
        return enforce_default if mode is None else mode == "enforce"

    ato = config.account_takeover
    if ato.enabled:
        found.append(AccountTakeover(ato, enforce(ato.mode)))
    if config.bola.enabled:
        found.append(Bola(config.bola, enforce(config.bola.mode)))
    if config.rotation.enabled:
        found.append(Rotation(config.rotation, enforce(config.rotation.mode)))
    if config.flow_groups.enabled:
        found.append(FlowGroups(config.flow_groups, enforce(config.flow_groups.mode)))
    if config.scraping.enabled:
        found.append(
            Scraping(config.scraping, enforce(config.scraping.mode), config.challenge_path)
        )
    if config.recon.enabled:
        found.append(Recon(config.recon, enforce(config.recon.mode)))
    return found
