"""In-process state for a single instance (the embedded default).

Must not import the HTTP layer, routing, auth or the ledger.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from estuary.state.base import Bucket, CancelResult, Shortfall

_log: Final = logging.getLogger("estuary.state")
_SWEEP_EVERY_S: Final = 30.0

__all__ = ["MemoryState"]


@dataclass(slots=True)
class _Stream:
    owner: str
    canceled: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    finished_at: float | None = None


class _MemoryLog:
    """One stream's resume log in this process: its frames, and a wake-up for live readers."""

    __slots__ = (
        "_clock",
        "_ttl_s",
        "_waiter",
        "closed",
        "expires",
        "followers",
        "frames",
        "owner",
        "request",
    )

    def __init__(self, owner: str, ttl_s: float, clock: Callable[[], float]) -> None:
        self.owner = owner
        self.frames: list[bytes] = []  # frames[n] is event seq n + 1
        self.closed = False
        self.expires = math.inf
        self.followers = 0
        self._ttl_s = ttl_s
        self._clock = clock
        self._waiter: asyncio.Future[None] | None = None
        self.request: bytes | None = None  # kept for a takeover until the log closes

    def append(self, seq: int, frame: bytes) -> None:
        self.frames.append(frame)
        if self._waiter is not None:  # only a live reader costs a wake-up
            self._wake()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.request = None
            self.expires = self._clock() + self._ttl_s
            self._wake()

    async def followed(self) -> bool:
        return self.followers > 0

    async def follow(self, after: int) -> AsyncIterator[bytes]:
        """Frames after seq `after`, then each new one, until the log is closed."""
        self.followers += 1
        try:
            at = max(0, after)
            while True:
                while at < len(self.frames):
                    at += 1
                    yield self.frames[at - 1]
                if self.closed:
                    return
                if self._waiter is None:
                    self._waiter = asyncio.get_running_loop().create_future()
                await asyncio.shield(self._waiter)
        finally:
            self.followers -= 1

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class MemoryState:
    """A `StateStore` in this process's memory; finished streams are remembered `keep_s` seconds."""

    def __init__(
        self, *, keep_s: float = 600.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._keep_s = keep_s
        self._clock = clock
        self._streams: dict[str, _Stream] = {}
        self._tickets: dict[str, tuple[float, bytes]] = {}
        self._levels: dict[str, tuple[float, float, Bucket]] = {}  # name -> (level, at, bucket)
        self._counters: dict[str, float] = {}
        self._logs: dict[str, _MemoryLog] = {}
        self._subscribers: dict[str, list[Callable[[str], None]]] = {}
        self._sweep_every_s = min(keep_s, _SWEEP_EVERY_S)
        self._next_sweep = clock() + self._sweep_every_s

    @property
    def shared(self) -> bool:
        return False

    async def start(self) -> None:
        return None

    async def register_stream(self, request_id: str, owner: str) -> asyncio.Future[None]:
        self._sweep()
        stream = self._streams[request_id] = _Stream(owner)
        return stream.canceled

    async def finish_stream(self, request_id: str) -> None:
        if (stream := self._streams.get(request_id)) is not None:
            stream.finished_at = self._clock()

    async def cancel_stream(self, request_id: str, owner: str) -> CancelResult:
        stream = self._streams.get(request_id)
        if stream is None or stream.owner != owner:
            return "not_found"
        if stream.finished_at is not None:
            return "finished"
        if not stream.canceled.done():
            stream.canceled.set_result(None)
        return "canceled"

    async def put_ticket(self, ticket: str, payload: bytes, ttl_s: float) -> None:
        self._sweep()
        self._tickets[ticket] = (self._clock() + ttl_s, payload)

    async def take_ticket(self, ticket: str) -> bytes | None:
        entry = self._tickets.pop(ticket, None)
        if entry is None or entry[0] < self._clock():
            return None
        return entry[1]

    async def take(self, takes: Sequence[tuple[Bucket, float]]) -> Shortfall | None:
        now = self._clock()
        levels = [self._level(bucket, now) for bucket, _ in takes]
        for (bucket, amount), level in zip(takes, levels, strict=True):
            if level < amount:
                missing = amount - level
                wait = missing / bucket.per_s if bucket.per_s > 0 else math.inf
                return Shortfall(bucket.name, wait)
        for (bucket, amount), level in zip(takes, levels, strict=True):
            self._levels[bucket.name] = (level - amount, now, bucket)
        return None

    async def give(self, bucket: Bucket, amount: float) -> None:
        now = self._clock()
        level = min(bucket.capacity, self._level(bucket, now) + amount)
        self._levels[bucket.name] = (level, now, bucket)

    async def add(self, name: str, delta: float) -> float:
        value = self._counters.get(name, 0.0) + delta
        if value == 0:
            self._counters.pop(name, None)
        else:
            self._counters[name] = value
        return value

    def open_log(
        self,
        request_id: str,
        owner: str,
        ttl_s: float,
        *,
        taken_over: bool = False,
        request: bytes | None = None,
    ) -> _MemoryLog:
        self._sweep()
        log = self._logs.get(request_id)
        if not (taken_over and log is not None and log.owner == owner and not log.closed):
            log = self._logs[request_id] = _MemoryLog(owner, ttl_s, self._clock)
        # (taken over: the new producer goes on after the last event)
        if request is not None:
            log.request = request
        return log

    async def claim_request(self, request_id: str) -> bytes | None:
        log = self._logs.get(request_id)
        if log is None:
            return None
        request, log.request = log.request, None
        return request

    async def read_log(
        self, request_id: str, owner: str, after: int
    ) -> AsyncIterator[bytes] | None:
        log = self._logs.get(request_id)
        if log is None or log.owner != owner or log.expires < self._clock():
            return None
        return log.follow(after)

    async def publish(self, channel: str, message: str) -> None:
        for callback in list(self._subscribers.get(channel, ())):
            try:
                callback(message)
            except Exception:
                _log.exception("a subscriber of %r failed", channel)

    def publish_soon(self, channel: str, message: str) -> None:
        for callback in list(self._subscribers.get(channel, ())):
            asyncio.get_running_loop().call_soon(callback, message)

    def subscribe(self, channel: str, callback: Callable[[str], None]) -> None:
        self._subscribers.setdefault(channel, []).append(callback)

    async def ping(self) -> None:
        return None

    def _level(self, bucket: Bucket, now: float) -> float:
        """The bucket's level now: full if never seen, else refilled since it was last touched."""
        entry = self._levels.get(bucket.name)
        if entry is None:
            return bucket.capacity
        level, at, _ = entry
        return min(bucket.capacity, level + (now - at) * bucket.per_s)

    async def aclose(self) -> None:
        self._streams.clear()
        self._tickets.clear()
        self._levels.clear()
        self._counters.clear()
        for log in self._logs.values():
            log.close()
        self._logs.clear()
        self._subscribers.clear()

    def _sweep(self) -> None:
        """Forget expired tickets, logs and long-finished streams, at most every 30 s (resume
        logs hold whole answers: they should not outlive their TTL by much)."""
        now = self._clock()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self._sweep_every_s
        horizon = now - self._keep_s
        for rid in [
            r for r, s in self._streams.items() if s.finished_at and s.finished_at < horizon
        ]:
            del self._streams[rid]
        for rid in [r for r, log in self._logs.items() if log.expires < now]:
            del self._logs[rid]
        for ticket in [t for t, (expires, _) in self._tickets.items() if expires < now]:
            del self._tickets[ticket]
        for name in [n for n, (*_, b) in self._levels.items() if self._level(b, now) >= b.capacity]:
            del self._levels[name]  # a full bucket is the same as no bucket
