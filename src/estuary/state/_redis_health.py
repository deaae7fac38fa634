"""Whether Redis answers: one outage at a time, logged once, probed again at most every second.

Must not import anything from estuary.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final, Literal

__all__ = ["Health"]

PROBE_EVERY_S: Final = 1.0


class Health:
    """Tracks outages of the shared store. Logs say which store and why, never its URL."""

    def __init__(
        self,
        on_failure: Literal["open", "closed"],
        log: Any,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._on_failure = on_failure
        self._log = log  # a structlog logger
        self._clock = clock
        self._down_since: float | None = None
        self._next_probe = 0.0
        self.degraded_ops = 0

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def should_try(self) -> bool:
        """Whether to send the next operation to Redis: always while it is up; during an
        outage, one operation per `PROBE_EVERY_S` probes it, the others are served locally."""
        if self._down_since is None:
            return True
        now = self._clock()
        if now < self._next_probe:
            return False
        self._next_probe = now + PROBE_EVERY_S
        return True

    def failed(self, exc: BaseException) -> None:
        """An operation found Redis unreachable."""
        now = self._clock()
        self._next_probe = now + PROBE_EVERY_S
        if self._down_since is not None:
            return
        self._down_since = now
        event = "state.degraded" if self._on_failure == "open" else "state.unavailable"
        self._log.warning(
            event,
            store="redis",
            error=type(exc).__name__,
            on_failure=self._on_failure,
        )

    def answered(self) -> None:
        """An operation reached Redis."""
        if self._down_since is None:
            return
        outage_s = self._clock() - self._down_since
        self._down_since = None
        self._log.info(
            "state.recovered",
            store="redis",
            outage_s=round(outage_s, 3),
            degraded_ops=self.degraded_ops,
        )
