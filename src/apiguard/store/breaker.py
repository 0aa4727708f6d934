"""A circuit breaker for a remote store: a dead store costs one timeout per interval.

Closed: every call goes through. A failure opens it: calls fall back at once (no network
wait) for `interval` seconds of real time; then one call is let through as a probe
(half-open): success closes the breaker, failure (or no answer) keeps it open for another
interval. Each
state change is logged once (a line per outage and per recovery, not per request).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("apiguard")


class Breaker:
    """Whether to call the store now; `failure`/`success` report each call's outcome."""

    def __init__(
        self, interval: float, name: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self.name = name  # how the store is described in the log (never a password)
        self._clock = clock
        self._open_since: float | None = None
        self._lock = threading.Lock()
        self.outages = 0  # state changes to open (tests, report)

    @property
    def closed(self) -> bool:
        """Whether calls go through."""
        return self._open_since is None

    def allow(self) -> bool:
        """Whether to call the store now: an open breaker lets one probe through per
        interval (a probe that never reports, e.g. a cancelled request, cannot wedge it)."""
        if self._open_since is None:
            return True
        with self._lock:
            since = self._open_since
            if since is None:
                return True
            now = self._clock()
            if now - since >= self.interval:
                self._open_since = now  # the next probe waits another interval
                return True
            return False

    def retry_in(self) -> float:
        """Seconds until the next probe (what a fail-closed refusal advertises)."""
        since = self._open_since
        if since is None:
            return 1.0
        return max(1.0, self.interval - (self._clock() - since))

    def success(self) -> None:
        """The store answered: close the breaker (logged once when it was open)."""
        if self._open_since is None:
            return
        with self._lock:
            if self._open_since is None:
                return
            self._open_since = None
        log.warning("apiguard: %s is reachable again; shared limits are enforced", self.name)

    def failure(self, exc: BaseException) -> None:
        """The store failed or timed out: open the breaker (logged once per outage)."""
        with self._lock:
            was_closed = self._open_since is None
            self._open_since = self._clock()
            if was_closed:
                self.outages += 1
        if was_closed:
            log.warning(
                "apiguard: %s is unavailable (%s); falling back per rule (fail-open rules "
                "admit, fail-closed rules refuse) and retrying every %.3gs",
                self.name,
                type(exc).__name__,
                self.interval,
            )
