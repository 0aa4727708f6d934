"""Rate strings ("5/minute;100/day") parsed with the `limits` library's syntax."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import limits


@dataclass(frozen=True, slots=True)
class Rate:
    """`amount` requests in any interval of `window` seconds."""

    amount: int
    window: float
    text: str

    @property
    def label(self) -> str:
        """Short window label used in policy names, e.g. "60s"."""
        return f"{self.window:g}s"


@lru_cache(maxsize=256)
def parse_rates(text: str) -> tuple[Rate, ...]:
    """Parse one or more `;`-separated rates; raise ValueError naming the bad part."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a rate string such as '10/minute' is required")
    rates: list[Rate] = []
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        try:
            item = limits.parse(part)
        except ValueError:
            raise ValueError(
                f"{part!r} is not a rate; use the limits syntax, "
                "e.g. '10/minute' or '5 per 2 hours'"
            ) from None
        if item.amount < 1:
            raise ValueError(f"{part!r}: the amount must be at least 1")
        rates.append(Rate(int(item.amount), float(item.get_expiry()), part))
    if not rates:
        raise ValueError(f"{text!r} contains no rate")
    return tuple(rates)
