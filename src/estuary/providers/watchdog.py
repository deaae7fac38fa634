"""Watching an upstream body for silence without a timer per read.

Must not import the HTTP layer.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

__all__ = ["IdleWatchdog"]


class _Watched(Protocol):
    total_bytes: int

    def set_exception(self, exc: BaseException) -> None: ...


class IdleWatchdog:
    """Fails the reads of an upstream body once no byte has arrived for `idle_s` seconds.

    It checks the reader's byte counter from a timer a few times per `idle_s` instead of arming a
    timeout around every read: the token path pays nothing. A consumer that is slow to read does
    not count as silence, because the counter moves when bytes arrive, not when they are read.
    """

    __slots__ = ("_content", "_handle", "_idle_s", "_last_change", "_loop", "_seen")

    _CHECKS_PER_PERIOD = 4

    def __init__(self, content: _Watched, idle_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._content = content
        self._idle_s = idle_s
        self._seen = content.total_bytes
        self._last_change = self._loop.time()
        self._handle = self._loop.call_later(idle_s / self._CHECKS_PER_PERIOD, self._check)

    def cancel(self) -> None:
        self._handle.cancel()

    def _check(self) -> None:
        now = self._loop.time()
        if self._content.total_bytes != self._seen:
            self._seen, self._last_change = self._content.total_bytes, now
        elif now - self._last_change >= self._idle_s:
            self._content.set_exception(TimeoutError(f"no data for {self._idle_s:g} s"))
            return
        self._handle = self._loop.call_later(self._idle_s / self._CHECKS_PER_PERIOD, self._check)
