"""The `StateStore` protocol: everything instances of one deployment must agree on.

Must not import the HTTP layer, routing, auth or the ledger.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["Bucket", "CancelResult", "Shortfall", "StateStore"]

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


class StateStore(Protocol):
    """Cancel signals for running streams, and single-use tickets."""

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

    async def aclose(self) -> None: ...
