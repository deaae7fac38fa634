"""Per-target circuit breakers: stop calling a target that keeps failing, probe it to come back.

    closed ──N consecutive failures──▶ open ──cooldown (or Retry-After) over──▶ half-open
      ▲                                  ▲                                       │ one probe
      └──────────── probe succeeds ──────┼───────────── probe fails ─────────────┘

A failure is what routing may fall back on (connect error, timeout, 429, 5xx, a target dying
mid-stream); a request the upstream rejects as invalid says nothing about the target. Success is
the target's first well-formed message. State is per process; with `on_open`, each opening is
also announced (the server broadcasts it over the shared state), and `opened_elsewhere` applies
another instance's: a target that failed for one instance is paused for all. Must not import
the HTTP layer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

__all__ = ["Breaker", "BreakerSettings", "Breakers"]

BreakerState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerSettings:
    """`[routing]`: when a breaker opens and how long it stays open."""

    failures: int = 5  # consecutive failures that open it
    cooldown_s: float = 30.0  # open this long (or the upstream's Retry-After, if longer)


class Breaker:
    """The breaker of one target."""

    def __init__(
        self,
        settings: BreakerSettings,
        clock: Callable[[], float],
        on_open: Callable[[float], None] | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._on_open = on_open
        self._failures = 0
        self._open_until: float | None = None
        self._probing = False

    def state(self) -> BreakerState:
        """Where the breaker is now."""
        if self._open_until is None:
            return "closed"
        return "open" if self._clock() < self._open_until or self._probing else "half_open"

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 if it would now)."""
        if self._open_until is None:
            return 0.0
        return max(0.0, self._open_until - self._clock())

    def allow(self) -> bool:
        """Whether a request may go to this target now; half-open lets exactly one through."""
        state = self.state()
        if state == "closed":
            return True
        if state == "half_open":
            self._probing = True
            return True
        return False

    def succeeded(self) -> None:
        self._failures = 0
        self._open_until = None
        self._probing = False

    def failed(self, retry_after_s: float | None = None) -> None:
        self._failures += 1
        if self._probing or self._failures >= self._settings.failures:
            pause = max(self._settings.cooldown_s, retry_after_s or 0.0)
            self._open_until = self._clock() + pause
            self._probing = False
            if self._on_open is not None:
                self._on_open(pause)

    def opened_elsewhere(self, pause_s: float) -> None:
        """Another instance opened this target's breaker for `pause_s`: pause it here too
        (unless it is paused longer already); after that, this instance probes on its own."""
        until = self._clock() + pause_s
        if self._open_until is None or self._open_until < until:
            self._open_until = until

    def released(self) -> None:
        """A probe that ended with neither success nor failure (the client left): let another."""
        self._probing = False


class Breakers:
    """One breaker per target label ("provider/model")."""

    def __init__(
        self,
        settings: BreakerSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_open: Callable[[str, float], None] | None = None,
    ) -> None:
        """`on_open(target, pause_s)` hears of every breaker that opens here."""
        self._settings = settings or BreakerSettings()
        self._clock = clock
        self._on_open = on_open
        self._breakers: dict[str, Breaker] = {}

    def __getitem__(self, target: str) -> Breaker:
        breaker = self._breakers.get(target)
        if breaker is None:
            announce = None if self._on_open is None else partial(self._on_open, target)
            breaker = self._breakers[target] = Breaker(self._settings, self._clock, announce)
        return breaker

    def opened_elsewhere(self, target: str, pause_s: float) -> None:
        """Apply another instance's opening of `target`'s breaker (see `Breaker`)."""
        self[target].opened_elsewhere(pause_s)

    def states(self) -> dict[str, BreakerState]:
        """Every known target's state (for metrics and readiness)."""
        return {target: breaker.state() for target, breaker in self._breakers.items()}
