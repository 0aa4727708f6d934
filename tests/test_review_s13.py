"""Session 13's cost changes, pinned: the client fingerprint read in one dict (or, on
WSGI, straight from the environ) is the one the header loop reads, and the flow-group
detector is not planned for a principal's request until a flow is declared."""

from __future__ import annotations

import itertools
import random

from apiguard import Guard
from apiguard.detectors import fingerprint as fpmod
from apiguard.request import KeyedHasher
from apiguard.simulate.clock import FakeClock
from apiguard.simulate.driver import AsgiDriver, Request
from apiguard.wsgi import EnvironHeaders, environ_headers
from detection_support import run
from test_review_s12 import _app, _spy_plans

START = 7_000_000.0
SHAPE_VALUES = [b"ua/1", b"en-GB", b"gzip, br", b'"Chromium";v="126"', b'"Linux"', b"?0"]


def random_headers(rng: random.Random) -> list[tuple[bytes, bytes]]:
    """Some shape headers (repeated at times), some others, in any order."""
    found = []
    for name, value in zip(fpmod.SHAPE, SHAPE_VALUES, strict=True):
        for _ in range(rng.choice((0, 1, 1, 2))):
            found.append((name, value + str(rng.randrange(3)).encode()))
    for name in (b"accept", b"cookie", b"x-api-key", b"host"):
        if rng.random() < 0.7:
            found.append((name, b"v" * rng.randrange(0, 300)))
    rng.shuffle(found)
    return found


def test_shape_values_are_the_first_values_in_every_header_list() -> None:
    rng = random.Random(13)
    for _ in range(2000):
        headers = random_headers(rng)
        assert fpmod.shape_values(headers) == fpmod.first_values(headers)
        assert fpmod.shape_values(tuple(headers)) == fpmod.first_values(headers)
    for n in range(len(fpmod.SHAPE) + 1):
        for names in itertools.permutations(fpmod.SHAPE, n):
            headers = [(name, name.upper()) for name in names]
            assert fpmod.shape_values(headers) == fpmod.first_values(headers)


def test_a_malformed_header_list_is_read_as_the_loop_reads_it() -> None:
    """A list whose items are no pairs the dict can take (a 3-item entry) falls back to
    the loop, which raises as before: nothing is read differently."""
    headers = [(b"user-agent", b"ua", b"extra")]
    try:
        fpmod.first_values(headers)  # type: ignore[arg-type]
    except ValueError:
        pass
    else:  # pragma: no cover
        raise AssertionError("the loop accepted a 3-item header")
    try:
        fpmod.shape_values(headers)  # type: ignore[arg-type]
    except ValueError:
        return
    raise AssertionError("a 3-item header was read")


def test_a_wsgi_environ_gives_the_fingerprint_its_header_list_gives() -> None:
    hasher = KeyedHasher(b"k" * 32)
    environ = {
        "REQUEST_METHOD": "GET",
        "HTTP_USER_AGENT": "Mozilla/5.0 " + "x" * 300,
        "HTTP_ACCEPT_LANGUAGE": "fr-FR",
        "HTTP_SEC_CH_UA_MOBILE": "?1",
        "HTTP_ACCEPT": "*/*",
        "HTTP_COOKIE": "a=b",
        "wsgi.input": None,
    }
    pairs = environ_headers(environ)
    fresh = EnvironHeaders(environ)
    assert fpmod.shape_values(fresh) == fpmod.first_values(pairs)
    cache: dict[int, str] = {}
    assert fpmod.fingerprint(fresh, hasher, cache) == fpmod.fingerprint(pairs, hasher)
    built = EnvironHeaders(environ)
    list(built)  # (its pairs built: read from them now)
    assert fpmod.shape_values(built) == fpmod.first_values(pairs)
    assert fpmod.fingerprint(built, hasher) == fpmod.fingerprint(pairs, hasher, {})


def test_flow_groups_plan_a_principal_request_only_once_a_flow_is_declared() -> None:
    """Without a flow the detector has nothing to do for a principal (no flow to
    complete, no activity to record): not planned. A flow declared later (a decorator
    applied per request) turns it on at once."""
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    driver = AsgiDriver(_app(guard))
    calls = _spy_plans(guard)

    async def requests(n: int, key: bool) -> None:
        for i in range(n):
            clock.advance(2)
            headers = (("x-api-key", f"key-{i}"),) if key else ()
            await driver.send(Request("GET", f"/v1/items/{i}", "203.0.113.60", headers))

    run(requests(4, key=True))
    assert calls["flow_groups"] == 0 and calls["bola"] == 4

    @guard.flow("late", "5/hour")
    async def late() -> None:  # (declared when `guard.flow` is called)
        return None

    run(requests(4, key=True))
    assert calls["flow_groups"] == 4
