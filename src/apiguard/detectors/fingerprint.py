"""A client fingerprint: what a client's software looks like, never who it is.

The values of the headers a client's software sets the same way on every request it
sends (User-Agent, Accept-Language, Accept-Encoding and the browser's client hints),
keyed-hashed together; headers that change with the request (Accept, Content-Type,
Authorization, Cookie, Origin) are left out, so one client has one fingerprint. No raw
value is kept. Clients of one app version share a fingerprint, so detectors use it only
with shares and floors meant for many people (like a network), never as an identity.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from apiguard.request import KeyedHasher

_SHAPE = (
    b"user-agent",
    b"accept-language",
    b"accept-encoding",
    b"sec-ch-ua",
    b"sec-ch-ua-platform",
    b"sec-ch-ua-mobile",
)
_WANTED = frozenset(_SHAPE)


def fingerprint(headers: Iterable[tuple[bytes, bytes]], hasher: KeyedHasher) -> str:
    """The keyed hash of a request's client shape (see the module docstring)."""
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        if name in _WANTED and name not in found:
            found[name] = bytes(value[:256])
    return hasher("fp", b"\n".join(found.get(n, b"") for n in _SHAPE))
