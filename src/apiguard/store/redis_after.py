"""What follows responses on the Redis store, sent together off every request's path.

Detector observations, refunds, and bans imposed or lifted on an event loop wait in one
`Flusher` per store and loop. A flush sends what waits in one script call (`AFTER`):
`DELAY` seconds after the first operation (a busy worker sends many requests'
operations at once), at the loop's next turn for bans and for callers that wait for their
results, and at once when `CHUNK` operations wait. Each flush is a store call like any
other (timeout, breaker): a failed one is lost and its tallies read zero. At most
`MAX_WAITING` operations wait; past that (Redis down, or slower than the traffic) new ones
are dropped, counted in `apiguard.store.dropped`, with one log line when dropping starts
and one when it stops. `drain()` sends everything (shutdown, tests).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from apiguard.store.base import Observation, Run, Tally

log = logging.getLogger("apiguard")

DELAY = 0.005  # seconds an operation waits for others (unless urgent)
CHUNK = 128  # operations a flush carries at most (a script keeps Redis busy meanwhile)
MAX_WAITING = 8192  # operations waiting at most; more are dropped
IN_FLIGHT = 2  # flushes sent at a time

Then = Callable[[], None]
# sends the operations' arguments in one script call: its reply, or None (failed, or the
# breaker is open)
Send = Callable[[list[Any]], Awaitable["list[Any] | None"]]


class _Item:
    __slots__ = ("args", "count", "ops", "then")

    def __init__(
        self, args: list[Any], count: int, ops: Sequence[Observation], then: Then | None
    ) -> None:
        self.args = args
        self.count = count
        self.ops = ops
        self.then = then


def observe_args(ops: Sequence[Observation], prefix: str) -> list[Any]:
    """The `AFTER` script's arguments for detector operations (keys under `prefix`)."""
    args: list[Any] = []
    for op in ops:
        if isinstance(op, Tally):
            kind = "A" if op.aligned else "T"
            args += (kind, prefix + "t:" + op.key, op.window, op.item or "", op.amount)
        elif isinstance(op, Run):
            args += ("R", prefix + "r:" + op.key, op.window, op.value)
    return args


def fill(ops: Sequence[Observation], reply: list[Any], i: int) -> int:
    """Set `ops`' results from `reply` starting at `i`; the index after them."""
    for op in ops:
        if isinstance(op, Tally):
            op.count = float(reply[i])
            i += 1
        elif isinstance(op, Run):
            op.length = int(float(reply[i]))
            op.stride = int(float(reply[i + 1]))
            i += 2
    return i


class Flusher:
    """The operations waiting on one event loop, and the flushes under way."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, send: Send, dropped: Callable[[int], None]
    ) -> None:
        self.loop = loop
        self._send = send
        self._dropped = dropped
        self._items: list[_Item] = []
        self._waiting = 0  # operations in `_items`
        self._timer: asyncio.TimerHandle | None = None
        self._soon = False  # a flush is scheduled for the loop's next turn
        self._urgent = False  # an urgent operation waits
        self._flights: set[asyncio.Task[None]] = set()
        self.dropping = False

    def add(
        self,
        args: list[Any],
        count: int,
        ops: Sequence[Observation] = (),
        then: Then | None = None,
        urgent: bool = False,
    ) -> bool:
        """Queue `count` operations (their script arguments `args`); after the flush
        `ops` hold their results and `then` is called (also when the flush failed or the
        operations were dropped: False)."""
        if self._waiting + count > MAX_WAITING:
            if not self.dropping:
                self.dropping = True
                log.warning(
                    "apiguard: more than %d store operations wait to be written after "
                    "responses (the store is down or slower than the traffic); dropping "
                    "new ones until they are written",
                    MAX_WAITING,
                )
            self._dropped(count)
            _call(then)
            return False
        self._items.append(_Item(args, count, ops, then))
        self._waiting += count
        self._urgent = self._urgent or urgent
        self._schedule()
        return True

    def _schedule(self) -> None:
        if self._soon:
            return
        if self._urgent or self._waiting >= CHUNK:
            self._soon = True
            self.loop.call_soon(self._kick, context=contextvars.Context())
        elif self._timer is None:
            self._timer = self.loop.call_later(DELAY, self._kick, context=contextvars.Context())

    def _kick(self) -> None:
        """Start flushes for what waits (in the empty context: no request's span)."""
        self._soon = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._items and len(self._flights) < IN_FLIGHT:
            taken = 0
            n = 0
            for item in self._items:
                if taken and taken + item.count > CHUNK:
                    break
                taken += item.count
                n += 1
            items, self._items = self._items[:n], self._items[n:]
            self._waiting -= taken
            self._urgent = self._urgent and bool(self._items)
            task = self.loop.create_task(self._fly(items, taken))
            self._flights.add(task)
            task.add_done_callback(self._landed)
        if self.dropping and self._waiting < MAX_WAITING // 2:
            self.dropping = False
            log.warning("apiguard: store operations after responses are written again")

    async def _fly(self, items: list[_Item], count: int) -> None:
        args = [a for item in items for a in item.args]
        reply = None
        try:
            reply = await self._send(args)
        except Exception:  # (the sender applies the failure policy; never raised here)
            log.exception("apiguard: a store flush failed")
        if reply is None:
            self._dropped(count)
        i = 1
        for item in items:
            if reply is not None and item.ops:
                try:
                    i = fill(item.ops, reply, i)
                except (IndexError, ValueError, TypeError):
                    reply = None  # a reply that cannot be read: results left at zero
            _call(item.then)

    def _landed(self, task: asyncio.Task[None]) -> None:
        self._flights.discard(task)
        if self._items:
            self._schedule()

    @property
    def busy(self) -> bool:
        """A quarter of `MAX_WAITING` waits: callers that may send their work in a
        store call of their own (covered windows) should, rather than queue it."""
        return self._waiting >= MAX_WAITING // 4

    @property
    def idle(self) -> bool:
        """Nothing waits and nothing is under way."""
        return not self._items and not self._flights

    async def drain(self) -> None:
        """Send everything waiting, and wait for every flush under way."""
        while self._items or self._flights:
            if self._items:
                self._kick()
            await asyncio.gather(*list(self._flights), return_exceptions=True)


def _call(then: Then | None) -> None:
    if then is None:
        return
    try:
        then()
    except Exception:  # a callback must never break the flusher
        log.exception("apiguard: a callback after a store flush failed")
