"""The `StateStore` protocol: everything instances of one deployment must agree on.

Must not import the HTTP layer, routing, auth or the ledger.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from estuary.core.errors import ServiceUnavailable

__all__ = [
    "Bucket",
    "CancelResult",
    "EventLog",
    "LogAbandoned",
    "Shortfall",
    "StateStore",
    "StateUnavailable",
]

CancelResult = Literal["canceled", "not_found", "finished"]


@dataclass(frozen=True, slots=True)
class Bucket:
    """A token bucket: starts full at `capacity`, refills `per_s` per second (0: never refills).

    Rate limits are buckets that refill (`capacity / 60` per second for a per-minute limit);
    concurrency limits are buckets that do not, given back when the stream ends.
    """

    name: str
    capacity: float
    per_s: float


@dataclass(frozen=True, slots=True)
class Shortfall:
    """Why `take` refused: the first bucket that was short, and when it could succeed."""

    name: str
    wait_s: float  # math.inf for a bucket that never refills


class StateUnavailable(ServiceUnavailable):
    """The shared state cannot be reached and the store is configured to fail closed (503)."""


class LogAbandoned(Exception):
    """A resumed stream's log stopped growing without its last event: its producer is gone."""


class EventLog(Protocol):
    """One stream's app-API events, kept so that a client that lost them can read them again.

    Written only by the instance running the stream, in order, seq 1, 2, 3, …: each `frame` is
    the complete SSE message (`id: …\ndata: …\n\n`). `append` never blocks the token path
    (a shared store batches its writes in the background).
    """

    def append(self, seq: int, frame: bytes) -> None:
        """Add the event `seq` (one more than the last)."""
        ...

    def close(self) -> None:
        """The last event (`done`/`error`) is appended: keep the log `ttl_s` more, then drop it."""
        ...

    async def followed(self) -> bool:
        """Whether some client is reading this log now, on any instance (ends a grace period)."""
        ...


class StateStore(Protocol):
    """What instances of one deployment share: cancel signals, tickets, limit buckets and
    counters, resume logs, and broadcast messages (breaker changes, revoked keys)."""

    @property
    def shared(self) -> bool:
        """Whether other instances (and this one, after a restart) see this store's contents."""
        ...

    async def start(self) -> None:
        """Connect (and start background work) before the first request."""
        ...

    async def register_stream(self, request_id: str, owner: str) -> asyncio.Future[None]:
        """Record a running stream; the returned future completes when someone cancels it.

        A future rather than an event: the stream reacts in a done-callback, with no task
        waiting per stream.
        """
        ...

    async def finish_stream(self, request_id: str) -> None:
        """Mark a stream finished: a later cancel answers `finished`, until it is forgotten."""
        ...

    async def cancel_stream(self, request_id: str, owner: str) -> CancelResult:
        """Ask a running stream to stop; another owner's stream answers `not_found`."""
        ...

    async def put_ticket(self, ticket: str, payload: bytes, ttl_s: float) -> None:
        """Store a ticket that `take_ticket` may redeem once within `ttl_s` seconds."""
        ...

    async def take_ticket(self, ticket: str) -> bytes | None:
        """Redeem a ticket: its payload the first time within its TTL, else None."""
        ...

    async def take(self, takes: Sequence[tuple[Bucket, float]]) -> Shortfall | None:
        """All or nothing: take each amount from its bucket, or none of them and say why."""
        ...

    async def give(self, bucket: Bucket, amount: float) -> None:
        """Put `amount` back, up to capacity; a negative amount takes it even below zero."""
        ...

    async def add(self, name: str, delta: float) -> float:
        """Add to a shared counter (created at 0) and return its new value."""
        ...

    def open_log(
        self,
        request_id: str,
        owner: str,
        ttl_s: float,
        *,
        taken_over: bool = False,
        request: bytes | None = None,
    ) -> EventLog:
        """Start the resume log of a new stream; only `owner` may read it.

        `taken_over`: the stream's producer died and this instance goes on with it: keep the
        events already in the log; the next `append` is the seq after its last. `request`: the
        request that started the stream, kept with the log until it closes, for an instance
        that may have to take the stream over (`claim_request`).
        """
        ...

    async def claim_request(self, request_id: str) -> bytes | None:
        """The `request` kept with a running log, handed out once (None: none, or claimed)."""
        ...

    async def read_log(
        self, request_id: str, owner: str, after: int
    ) -> AsyncIterator[bytes] | None:
        """The log's frames after seq `after`, then the live rest until its last event.

        None if there is no such log (never, expired, or another owner's). While iterated, the
        reader counts as a follower (`EventLog.followed`). Raises `LogAbandoned` from the
        iteration if the stream's producer went away (its instance died) before the last event.
        """
        ...

    async def publish(self, channel: str, message: str) -> None:
        """Send `message` to every subscriber of `channel`, on every instance (this one too)."""
        ...

    def publish_soon(self, channel: str, message: str) -> None:
        """`publish` without waiting (from synchronous code); best effort, in order."""
        ...

    def subscribe(self, channel: str, callback: Callable[[str], None]) -> None:
        """Call `callback(message)` on this instance for each message published on `channel`."""
        ...

    async def ping(self) -> None:
        """Raise if the store cannot be reached (for `/readyz` and `estuary doctor`)."""
        ...

    async def aclose(self) -> None: ...
