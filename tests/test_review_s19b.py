"""Review s19b: recon's site-wide rule (`recon.site`) and rotation's region excuse under
a ban on one client shape, attacked as an attacker and as a careless honest user."""

from __future__ import annotations

import random

import pytest

from apiguard import Guard
from apiguard.detectors.recon import Recon
from apiguard.simulate.clock import FakeClock
from apiguard.simulate.driver import AsgiDriver, Request
from detection_support import BROWSERS, get_like_testclient, public_ip, run
from test_detect_recon import START, app_for
from test_rotation_token import token_app

# what internet background scanners ask every site for, from many addresses all day
_DIRS = "wp-admin phpmyadmin cgi-bin admin backup old test dev api config vendor static"
_FILES = (
    "index.php .env login setup.php config.json shell debug info.php server-status x.sql"
    " db panel upload a.zip b.tar key id_rsa wp-config.php phpinfo.php web.config"
    " xmlrpc.php cmd eval api.php cron.php dump data log trace actuator health metrics"
    " console"
)
NOISE = [f"/{a}/{b}" for a in _DIRS.split() for b in _FILES.split()]
# an old app version's calls to endpoints a deploy removed
REMOVED = ["/api/v1/feed", "/api/v1/notifications", "/api/v1/settings", "/api/v1/badges"]
REMOVED += ["/api/v1/inbox"]


def _recon(guard: Guard) -> Recon:
    found = next(d for d in guard.engine.detectors if d.name == "recon")
    assert isinstance(found, Recon)
    return found


def _any_ip(rng: random.Random) -> str:
    return (
        f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    )


def _background(noise_per_hour: int, hours: int) -> list[int]:
    """`hours` of internet background scanners (`noise_per_hour` addresses an hour, 3
    common paths each: about 175 distinct paths an hour site-wide, as on many public
    sites from the day they go up or the worker starts), then one user of an old app
    version, not signed in, calling the 5 endpoints a deploy removed and a product."""
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    driver = AsgiDriver(app_for(guard), host="testserver")
    rng = random.Random(3)
    for h in range(hours):
        for n in range(noise_per_hour):
            clock.advance_to(START + h * 3600 + n * 3600 / noise_per_hour)
            scanner = _any_ip(rng)
            for path in rng.sample(NOISE, 3):
                get_like_testclient(driver, scanner, path)
    clock.advance(60)
    user = "198.51.100.77"
    return [get_like_testclient(driver, user, p) for p in [*REMOVED, "/products/3"]]


def test_steady_background_noise_becomes_the_usual_level() -> None:
    """Six hours of the same background noise (about 170 to 185 distinct paths an hour
    at each sample). Found by the review: the level was learned only from windows under
    the bar, so it never was (bar 120), the site alarm was on all day, and anyone not
    signed in with 5 stale paths in an hour (an old app version, a buggy single-page
    app) was challenged: an API client that cannot solve one was refused, here on the
    product too. Now the level is the median of the recent windows' highest counts."""
    statuses = _background(150, 6)
    assert statuses == [404] * 5 + [200], statuses


def test_control_the_same_user_on_a_quiet_site_is_not_refused() -> None:
    assert _background(0, 0) == [404] * 5 + [200]


def _spread(per_address: int, v6: bool = False, seed: int = 5) -> list[int]:
    """A 300-path wordlist dealt over addresses of many /8s (or fresh IPv6 /64s),
    `per_address` each, over one hour. The scanner's statuses."""
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    driver = AsgiDriver(app_for(guard), host="testserver")
    rng = random.Random(seed)
    wordlist = [f"/internal/{w}-{n}" for n, w in enumerate(NOISE * 2)][:300]
    statuses: list[int] = []
    client = None
    for n, path in enumerate(wordlist):
        clock.advance(12.0)
        if n % per_address == 0:
            if v6:
                ip = f"2001:db8:{rng.randrange(65536):x}:{rng.randrange(65536):x}::1"
            else:
                ip = f"{1 + (n // per_address) % 200}.{rng.randrange(256)}.{rng.randrange(256)}.7"
            client = ip
        assert client is not None
        statuses.append(get_like_testclient(driver, client, path))
    return statuses


def test_control_a_spread_scan_of_10_paths_an_address_is_challenged() -> None:
    statuses = _spread(10)
    assert 403 in statuses and statuses.index(403) <= 160, statuses


@pytest.mark.xfail(
    strict=True,
    reason="a spread scan of 5 paths an address (60 addresses) or one per fresh IPv6 /64 "
    "is never refused: the site rule flags an address at its 5th path, after its answer",
)
@pytest.mark.parametrize("per_address,v6", [(5, False), (4, False), (1, True)])
def test_a_spread_scan_under_5_paths_an_address_is_challenged(per_address: int, v6: bool) -> None:
    statuses = _spread(per_address, v6)
    assert statuses.count(404) <= 200, statuses.count(404)


def test_the_usual_level_is_learned_from_a_whole_window() -> None:
    """A calm site: people with stale links, 100 distinct unmatched paths every hour (new
    ones each hour). Found by the review: the level was learned from the count read when
    the sketch's newer half-window generation had just begun (samples and generations
    start together), so from half an hour: 51. Now from the highest count of each window
    (and the bar, 3 x level before, is 2 x level + floor: the held-out spread scan in
    test_detect_recon is still held within 160)."""
    clock = FakeClock(START)
    guard = Guard(clock=clock)
    driver = AsgiDriver(app_for(guard), host="testserver")
    rng = random.Random(4)
    for n in range(400):
        clock.advance_to(START + n * 36.0 + rng.uniform(0, 30))
        get_like_testclient(driver, _any_ip(rng), f"/old/page-{n}")
    level = _recon(guard).site_level
    assert level is not None and 80 <= level <= 120, level


def _thief_moves_home(
    to_region: bool, secret: str = "s19b-thief-region-0123"
) -> tuple[list[int], list[int]]:
    """A thief with the owner's headers (one client shape: the ban is on the token as
    that shape uses it) from residential proxies everywhere until refused, then from
    proxies in the owner's /8 (`to_region`: a proxy seller's ISP or city targeting) or
    still everywhere. The owner at home throughout. The thief's statuses after its first
    refusal, and the owner's."""
    clock = FakeClock(3_000_000.0)
    # (a fixed secret: the sketches' hashes, and so this count, move with it: 25-68 of
    # 217 through over six random secrets, one of them under the bar)
    driver = AsgiDriver(token_app(Guard({"secret": secret}, clock=clock)))
    rng = random.Random(17)
    ua = BROWSERS[3]

    async def scenario() -> tuple[list[int], list[int]]:
        resp = await driver.send(
            Request("POST", "/login/erin", "81.2.69.142", (("user-agent", ua),))
        )
        headers = (("user-agent", ua), ("authorization", f"Bearer {resp.json()['token']}"))
        owner: list[int] = []
        thief: list[int] = []
        for minute in range(180):
            clock.advance(60)
            if minute % 5 == 0:
                owner.append(
                    (await driver.send(Request("GET", "/me", "81.2.69.142", headers))).status
                )
            if minute >= 60:
                for _ in range(2):
                    clock.advance(rng.uniform(1, 15))
                    ip = public_ip(rng)
                    if to_region and 403 in thief:
                        ip = f"81.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
                    thief.append((await driver.send(Request("GET", "/me", ip, headers))).status)
        return thief[thief.index(403) :] if 403 in thief else [], owner

    result: tuple[list[int], list[int]] = run(scenario())
    return result


@pytest.mark.xfail(
    strict=True,
    reason="a thief with the owner's headers moving to proxies in the owner's /8 gets "
    "25-70 of 217 through, by the secret and the process's hash salt",
)
def test_a_thief_with_the_owners_headers_moving_to_the_owners_region_is_held() -> None:
    """Held only if held under each of three secrets: the count moves with the sketches'
    slots (the secret and the process's hash salt), and under one of them it once fell
    under the bar (a strict xfail passing by chance fails the build)."""
    for secret in ("s19b-thief-region-0123", "s19b-thief-region-4567", "s19b-thief-89ab-cdef"):
        after, owner = _thief_moves_home(to_region=True, secret=secret)
        assert set(owner) == {200}, owner
        assert after and after.count(200) <= 0.1 * len(after), (after.count(200), len(after))


def test_control_a_thief_with_the_owners_headers_staying_everywhere_is_held() -> None:
    after, owner = _thief_moves_home(to_region=False)
    assert set(owner) == {200}, owner
    assert after and after.count(200) <= 0.1 * len(after), (after.count(200), len(after))
