"""The `StateStore` protocol: everything instances of one deployment must agree on.

Must not import the HTTP layer, routing, auth or the ledger.
"""

from __future__ import annotations

import asyncio
from typing import Literal, Protocol

__all__ = ["CancelResult", "StateStore"]

CancelResult = Literal["canceled", "not_found", "finished"]


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

    async def aclose(self) -> None: ...
