"""flow_groups judges a group by a share of two sliding counts: its principals that
completed a flow among those active in it. When each count's generations started at its
key's first use, a group's activity count (first used by a rider's hold) rolled a minute
before its checkout count (first used by the checkout after it), and for that minute lost
its older half while the checkouts kept theirs: 14 completing among 8 active, a share of
1.8, and an office's checkouts refused (6 of 240 in one process hash seed of twelve,
`tests/test_unfinished_flows.py`). Its share counts are now aligned on the clock
(`Tally(aligned=True)`, whose effect `tests/test_generations_aligned.py` measures), and
only they: a count judged alone keeps its first use's start."""

from __future__ import annotations

from apiguard import Guard
from apiguard.simulate.clock import FakeClock
from apiguard.simulate.driver import AsgiDriver
from apiguard.store.sketch import generation_start
from detection_support import BROWSERS, Client, run
from test_unfinished_flows import START, hold_app


def test_the_share_counts_roll_on_the_clock_and_the_others_do_not() -> None:
    clock = FakeClock(START + 777.0)
    guard = Guard({"secret": "w" * 32}, clock=clock)
    driver = AsgiDriver(hold_app(guard, clock))
    rider = Client(driver, BROWSERS[0], "203.0.113.77", token="tok-3")

    async def go() -> None:
        assert (await rider.send("GET", "/me")).status == 200
        clock.advance(61)
        held = await rider.send("POST", "/holds", {"vehicle_id": 2})
        assert held.status == 201
        clock.advance(33)
        done = await rider.send("POST", f"/holds/{held.json()['hold_id']}/checkout")
        assert done.status == 200

    run(go())
    tallies = guard.engine.store._tallies  # type: ignore[attr-defined]
    shares = {k: t for k, t in tallies.items() if k.startswith(("fga:", "fgf:"))}
    assert {k.split(":")[0] for k in shares} == {"fga", "fgf"}
    for key, t in shares.items():
        assert t.start == generation_start(t.start + 1.0, t.half), key
    alone = {k: t for k, t in tallies.items() if k.startswith("rot:")}
    assert alone and all(t.start % t.half for t in alone.values())
