"""The provider adapter interface every wire format implements.

A provider turns an `UpstreamRequest` for one upstream model into a stream of core events. The
contract, relied on by routing and the HTTP layer:

- the first event is `StreamStart`, yielded only once the upstream has answered *and* sent its first
  well-formed message, so any failure before it can still fall back to another target;
- the stream ends with `StreamEnd` (preceded by `Usage` when the upstream reported it);
- failures are raised as `UpstreamError` subclasses only, with secrets already redacted;
- closing the iterator early (`aclose()`) aborts the upstream request at once.

Must not import the HTTP layer, routing or storage.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol

from estuary.core.events import StreamEvent
from estuary.core.requests import UpstreamRequest

__all__ = ["Provider", "Timeouts"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    """How long to wait for an upstream, in seconds."""

    connect_s: float = 10.0
    first_token_s: float = 30.0  # request sent → first well-formed message
    idle_s: float = 60.0  # longest silence between two chunks once streaming


class Provider(Protocol):
    """One configured upstream (an entry of `[providers]`)."""

    @property
    def name(self) -> str: ...

    def stream(
        self, request: UpstreamRequest, model: str, timeouts: Timeouts
    ) -> AsyncGenerator[StreamEvent, None]:
        """Stream `request` from the upstream `model`; see the module docstring for the contract."""
        ...

    async def aclose(self) -> None:
        """Release pooled connections."""
        ...
