"""Review s20: recon's site-wide rule after it learns the usual level as the median
(lower middle) of the last 8 windows' highest counts, bar max(4 x floor, 2 x level +
floor), attacked as an attacker (teaching it the level) and as an honest site whose
traffic rises over the morning."""

from __future__ import annotations

import random

from apiguard import Guard
from apiguard.simulate.clock import FakeClock
from apiguard.simulate.driver import AsgiDriver
from detection_support import get_like_testclient as _get
from test_detect_recon import START, app_for, probes

SECRET = {"secret": "review-s20-site-level-0123456789"}


def _recon(guard: Guard):  # type: ignore[no-untyped-def]
    return next(d for d in guard.engine.detectors if d.name == "recon")


def _people(rng: random.Random, at: float, n: int) -> list[tuple[float, str, int]]:
    """One hour of people from `at`: `n` of them, each following a stale link or two."""
    return [(at + i * 3600.0 / n + rng.uniform(0, 3600.0 / n), "person", i) for i in range(n)]


def _poison_then_scan(
    bursts: tuple[int, ...], scan_hour: int, burst_paths: int = 200
) -> tuple[int, int, int, Guard]:
    """Background people (about 80 distinct unmatched paths an hour) until the scan's
    hour ends. In each of `bursts` hours, at minute 50, a burst of `burst_paths` distinct
    junk paths in one minute from addresses of different /8s, 4 paths each (under the
    site rule's 5 an address: never challenged). In `scan_hour` a wordlist of 300 paths
    dealt over 15 new addresses of 15 /8s, 20 each (test_detect_recon's held-out spread
    scan). The scan's 404s, the poisoning's refusals, people's refusals."""
    clock = FakeClock(START)
    guard = Guard(dict(SECRET), clock=clock)
    driver = AsgiDriver(app_for(guard), host="testserver")
    rng = random.Random(41)
    stale = probes(rng, 400)
    events: list[tuple[float, str, int]] = []
    for hour in range(scan_hour + 1):
        events += _people(rng, hour * 3600.0, 120)
    for hour in bursts:
        for n in range(burst_paths):
            events.append(
                (hour * 3600.0 + 3000.0 + n * 60.0 / burst_paths, "burst", hour * 1000 + n)
            )
    for n in range(300):
        events.append((scan_hour * 3600.0 + n * 10.0 + rng.uniform(0, 10), "scan", n))
    scanners = [f"{20 + 11 * i}.{rng.randrange(256)}.7.{i + 1}" for i in range(15)]
    poisoners: dict[int, str] = {}
    answered = burst_refused = refused = 0
    for at, kind, n in sorted(events):
        clock.advance_to(START + at)
        if kind == "person":
            ip = f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.9"
            for _ in range(rng.choice((0, 0, 1, 1, 2, 4))):
                _get(driver, ip, stale[300 + rng.randrange(100)])
            refused += _get(driver, ip, f"/products/{n}") != 200
        elif kind == "burst":
            k = n // 4
            if k not in poisoners:
                ip = f"{1 + k % 200}.{rng.randrange(256)}.{rng.randrange(256)}.{1 + k % 250}"
                poisoners[k] = ip
            burst_refused += _get(driver, poisoners[k], f"/x{n}/junk") != 404
        else:
            ua = f"Mozilla/5.0 (X11; Linux x86_64) Chrome/{rng.randrange(90, 130)}.0"
            path = f"/internal/{stale[n]}/{n}"
            answered += _get(driver, scanners[n % 15], path, (("user-agent", ua),)) == 404
    return answered, burst_refused, refused, guard


def test_three_bursts_two_hours_apart_do_not_teach_the_level() -> None:
    """Found by the review: three bursts of 200 junk paths at 4 an address (never
    refused), at minute 50 of hours 8, 10 and 12, each counted in two windows' highest
    counts of the sliding count, made 6 of 8 samples high: level 272, bar 574, and the
    spread scan in hour 14 had 300 of 300 answered. Now each sample is the count of one
    window of the clock alone, capped at the bar in force: 146 answered."""
    answered, burst_refused, refused, guard = _poison_then_scan((8, 10, 12), 14)
    assert refused == 0
    assert burst_refused == 0  # (the poisoning itself costs the attacker nothing)
    assert answered <= 160, (answered, _recon(guard).site_level)


def test_control_the_spread_scan_on_a_site_up_14_hours_is_held() -> None:
    answered, _, refused, _ = _poison_then_scan((), 14)
    assert refused == 0
    assert answered <= 160, answered


def test_control_the_spread_scan_after_a_restart_is_held() -> None:
    answered, _, refused, _ = _poison_then_scan((), 3)
    assert refused == 0
    assert answered <= 160, answered


def test_two_bursts_after_a_restart_do_not_teach_the_level() -> None:
    """Found by the review: two bursts right after a restart made the three first
    samples high (level 272): 300 of 300 answered. Now the level rises to the floor's
    bar (120) at most: the scan is held."""
    answered, burst_refused, refused, guard = _poison_then_scan((0, 1), 3)
    assert refused == 0 and burst_refused == 0
    assert answered <= 160, (answered, _recon(guard).site_level)


# an old app version's calls to endpoints a deploy removed
REMOVED = ["/api/v1/feed", "/api/v1/notifications", "/api/v1/settings", "/api/v1/badges"]
REMOVED += ["/api/v1/inbox"]


def _morning(rates: list[int]) -> tuple[list[int], int]:
    """A site whose people follow stale links (each its own: a content site's old
    pages), `rates[h]` distinct unmatched paths in hour h. At minute 45 of each hour one
    user of an old app version, not signed in, calls the 5 removed endpoints and then a
    product. The hours in which that user was refused anything, and people's refusals."""
    clock = FakeClock(START)
    guard = Guard(dict(SECRET), clock=clock)
    driver = AsgiDriver(app_for(guard), host="testserver")
    rng = random.Random(8)
    events: list[tuple[float, str, int]] = []
    k = 0
    for hour, rate in enumerate(rates):
        for i in range(rate):
            events.append((hour * 3600.0 + (i + rng.random()) * 3600.0 / rate, "person", k))
            k += 1
        events.append((hour * 3600.0 + 2700.0, "user", hour))
    refused_hours: list[int] = []
    refused = 0
    for at, kind, n in sorted(events):
        clock.advance_to(START + at)
        a, b, c, d = (
            rng.randrange(1, 224),
            rng.randrange(256),
            rng.randrange(256),
            rng.randrange(1, 255),
        )
        ip = f"{a}.{b}.{c}.{d}"
        if kind == "person":
            refused += _get(driver, ip, f"/old/p{n}") != 404
            continue
        statuses = [_get(driver, ip, p) for p in REMOVED]
        statuses.append(_get(driver, ip, "/products/3"))
        if statuses != [404] * 5 + [200]:
            refused_hours.append(n)
    return refused_hours, refused


NIGHT = [40] * 8
RAMP = [56, 78, 110, 154, 216, 302]  # (x1.4 an hour: a morning's rise)


def test_a_morning_rise_in_traffic_does_not_challenge_an_old_app_user() -> None:
    """Found by the review: the lower median of 8 windows lagged a x1.4 an hour rise
    by about 4 windows, so an old app's user calling 5 removed endpoints was challenged
    (its product refused too) in 2-3 of the rising hours. Now the level is the higher of
    that and the lower median of the last 4 windows."""
    refused_hours, refused = _morning(NIGHT + RAMP)
    assert refused == 0
    assert refused_hours == [], refused_hours


def test_control_a_slower_rise_of_x1_2_an_hour_challenges_nobody() -> None:
    refused_hours, refused = _morning([*NIGHT, 48, 58, 69, 83, 100, 120, 144, 173, 207])
    assert refused == 0
    assert refused_hours == [], refused_hours
