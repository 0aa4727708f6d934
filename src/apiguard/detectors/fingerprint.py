"""A client fingerprint: what a client's software looks like, never who it is.

The values of the headers a client's software sets the same way on every request it
sends (User-Agent, Accept-Language, Accept-Encoding and the browser's client hints),
keyed-hashed together; headers that change with the request (Accept, Content-Type,
Authorization, Cookie, Origin) are left out, so one client has one fingerprint. No raw
value is kept. Clients of one app version share a fingerprint, so detectors use it only
with shares and floors meant for many people (like a network), never as an identity.
"""

from __future__ import annotations

import sys
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
_INDEX = {name: i for i, name in enumerate(_SHAPE)}  # header name -> its place


_CACHED = 4096  # shapes remembered per cache (then it starts again)
# a shape's built-in hash keys the cache only where it is 64 bits wide (a 32-bit build's
# collides among tens of thousands of shapes: there every shape is hashed anew)
CACHE_BY_HASH = sys.hash_info.width >= 64


def fingerprint(
    headers: Iterable[tuple[bytes, bytes]],
    hasher: KeyedHasher,
    cache: dict[int, str] | None = None,
) -> str:
    """The keyed hash of a request's client shape (see the module docstring): each
    header's first value, at most 256 bytes of it, in `_SHAPE`'s order. With `cache`, a
    shape seen before is answered from it, keyed by the shape's salted built-in hash (no
    raw value kept there either; two shapes sharing a 64-bit hash share a fingerprint:
    about 2^64 tries even for an attacker who knows the process's hash seed, and it
    gives nothing that copying the headers would not; a 32-bit build keeps no cache)."""
    found = [b"", b"", b"", b"", b"", b""]
    seen = 0  # (a bit per place: the first value of a repeated header counts)
    for name, value in headers:
        i = _INDEX.get(name)
        if i is not None and not seen >> i & 1:
            seen |= 1 << i
            found[i] = value[:256]
    shape = b"\n".join(found)
    if cache is None or not CACHE_BY_HASH:
        return hasher("fp", shape)
    key = hash(shape)
    fp = cache.get(key)
    if fp is None:
        if len(cache) >= _CACHED:
            cache.clear()
        fp = cache[key] = hasher("fp", shape)
    return fp
