"""Graceful shutdown of running streams.

On SIGTERM the server stops accepting connections at once (uvicorn) and calls `Drain.begin()`.
Streams already running may finish for `deadline_s`; any still running then is stopped the way a
cancel stops it — the upstream closed, the event in flight written whole — and ends with an
in-band `error` event `shutting_down` (retryable: the client sends the request again, to another
instance). Each stream then settles its ledger row as usual (`canceled` / `shutdown`), before
the lifespan closes the ledger. `/readyz` answers 503 while draining, so load balancers move on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

import structlog

from estuary.core.errors import EstuaryError

__all__ = ["Drain", "ShuttingDown"]

_log: Final = structlog.get_logger("estuary.drain")


class ShuttingDown(EstuaryError):
    status_code, code, type = 503, "shutting_down", "server_error"
    retryable = True


class Drain:
    """The running streams of one process, and the switch that ends them on shutdown."""

    def __init__(self, deadline_s: float) -> None:
        self.deadline_s = deadline_s
        self._stops: dict[int, Callable[[], None]] = {}
        self._next = 0
        self._timer: asyncio.TimerHandle | None = None
        self.draining = False

    def register(self, stop: Callable[[], None]) -> int:
        """Track a running stream; `stop()` ends it at the deadline. Returns its token."""
        self._next += 1
        self._stops[self._next] = stop
        if self.draining and self._timer is None:  # admitted just as the drain ended
            asyncio.get_running_loop().call_soon(stop)
        return self._next

    def unregister(self, token: int) -> None:
        self._stops.pop(token, None)

    @property
    def running(self) -> int:
        return len(self._stops)

    def begin(self) -> None:
        """Start draining (idempotent): streams get `deadline_s` to finish, then are stopped."""
        if self.draining:
            return
        self.draining = True
        _log.info("shutdown.drain", streams=len(self._stops), deadline_s=self.deadline_s)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.deadline_s, self._stop_all)

    def _stop_all(self) -> None:
        self._timer = None
        if self._stops:
            _log.warning("shutdown.stopping_streams", streams=len(self._stops))
        for stop in list(self._stops.values()):
            stop()
