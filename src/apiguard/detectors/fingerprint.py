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

SHAPE = (
    b"user-agent",
    b"accept-language",
    b"accept-encoding",
    b"sec-ch-ua",
    b"sec-ch-ua-platform",
    b"sec-ch-ua-mobile",
)
_INDEX = {name: i for i, name in enumerate(SHAPE)}  # header name -> its place


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
    header's first value, at most 256 bytes of it, in `SHAPE`'s order. With `cache`, a
    shape seen before is answered from it, keyed by the shape's salted built-in hash (no
    raw value kept there either; two shapes sharing a 64-bit hash share a fingerprint:
    about 2^64 tries even for an attacker who knows the process's hash seed, and it
    gives nothing that copying the headers would not; a 32-bit build keeps no cache).
    `headers` may offer `shape()`, the values itself (a WSGI environ's, read by key)."""
    values = shape_values(headers)
    if cache is None or not CACHE_BY_HASH:
        return hasher("fp", _joined(values))
    try:
        key = hash(values)
    except TypeError:  # (a value that is no `bytes`: a bytearray a middleware put there)
        values = tuple(bytes(value) for value in values)
        key = hash(values)
    fp = cache.get(key)
    if fp is None:
        if len(cache) >= _CACHED:
            cache.clear()
        fp = cache[key] = hasher("fp", _joined(values))
    return fp


def shape_values(headers: Iterable[tuple[bytes, bytes]]) -> tuple[bytes, ...]:
    """Each `SHAPE` header's first value (b"" when absent), whole, in `SHAPE`'s order."""
    if type(headers) is list:
        # (the usual ASGI list: one dict built in C, unless a header repeats, where the
        # dict would keep its last value)
        try:
            found = dict(headers)
        except (TypeError, ValueError):
            return first_values(headers)
        if len(found) == len(headers):
            get = found.get
            return (
                get(b"user-agent", b""),
                get(b"accept-language", b""),
                get(b"accept-encoding", b""),
                get(b"sec-ch-ua", b""),
                get(b"sec-ch-ua-platform", b""),
                get(b"sec-ch-ua-mobile", b""),
            )
        return first_values(headers)
    own = getattr(headers, "shape", None)
    if own is not None:
        return own()  # type: ignore[no-any-return]
    return first_values(headers)


def first_values(headers: Iterable[tuple[bytes, bytes]]) -> tuple[bytes, ...]:
    found = [b"", b"", b"", b"", b"", b""]
    seen = 0  # (a bit per place: the first value of a repeated header counts)
    for name, value in headers:
        i = _INDEX.get(name)
        if i is not None and not seen >> i & 1:
            seen |= 1 << i
            found[i] = value
    return tuple(found)


def _joined(values: tuple[bytes, ...]) -> bytes:
    """What is hashed: the values, at most 256 bytes each, one per line."""
    return b"\n".join([value[:256] for value in values])
