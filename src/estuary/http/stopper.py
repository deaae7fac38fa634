"""Stopping a request's own work from another task, without cancelling the request.

A stream's pump runs in the request's task. When the client leaves or a cancel arrives, a watcher
cancels that task; `Stopper.run()` turns that one cancellation back into a normal return (with
`Task.uncancel()`, as `asyncio.timeout` does), so the request can still write its terminal event
and settle its ledger row. Any other cancellation — a server shutting down — propagates.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

__all__ = ["Stopper"]


class Stopper:
    """Owns the current task's "stop the pump" switch."""

    __slots__ = ("_done", "_stopped", "_task")

    def __init__(self) -> None:
        task = asyncio.current_task()
        assert task is not None, "a Stopper lives inside a task"
        self._task = task
        self._stopped = False
        self._done = False

    @property
    def stopped(self) -> bool:
        return self._stopped

    def stop(self) -> bool:
        """Interrupt `run()` at its current await; False if it already ended or was stopped."""
        if self._done or self._stopped:
            return False
        self._stopped = True
        self._task.cancel()
        return True

    async def run(self, work: Awaitable[None]) -> None:
        """Await `work`; a `stop()` ends it early and quietly."""
        try:
            await work
        except asyncio.CancelledError:
            if not self._stopped or self._task.uncancel() > 0:
                raise
        finally:
            self._done = True
