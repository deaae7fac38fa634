"""The provider adapter interface every wire format implements.

A provider turns an `UpstreamRequest` for one upstream model into a stream of core events. The
contract, relied on by routing and the HTTP layer:

- the first event is `StreamStart`, yielded only once the upstream has answered *and* sent its first
  well-formed message, so any failure before it can still fall back to another target;
- the stream ends with `StreamEnd` (preceded by `Usage` when the upstream reported it);
- failures are raised as `UpstreamError` subclasses only, with secrets already redacted;
- closing the iterator early (`aclose()`) aborts the upstream request at once.

One optional capability, `ContinuesPrefix`: a provider whose upstream can continue a partial
assistant answer sets `continues_prefix = True` and builds that request in `continuation()`.
It is not part of `Provider`, so adapters without it need nothing; routing reads it with
`getattr(provider, "continues_prefix", False)` (mid-stream failover, `routing/fallback.py`).

Must not import the HTTP layer, routing or storage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from estuary.core.events import StreamEvent
from estuary.core.requests import ChatRequest, UpstreamRequest

__all__ = [
    "ContinuesPrefix",
    "Provider",
    "Timeouts",
    "UntranslatableRequest",
    "with_assistant_prefix",
]


class UntranslatableRequest(ValueError):
    """The request uses something the target's wire format cannot carry; the message says what.

    Raised by the request builders of the non-OpenAI formats; the provider reports it as the
    request's own fault (`UpstreamRejected`, no fallback).
    """


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


@runtime_checkable
class ContinuesPrefix(Protocol):
    """A provider that can continue a partial assistant answer instead of starting a new one."""

    @property
    def continues_prefix(self) -> bool:
        """True when this upstream continues the answer `continuation()` puts in the request."""
        ...

    def continuation(self, request: ChatRequest, partial: str) -> ChatRequest:
        """`request` asking the upstream to go on from `partial`, the answer so far.

        The upstream's answer must be only what follows `partial` (not `partial` again).
        """
        ...


def with_assistant_prefix(request: ChatRequest, partial: str, flag: str | None) -> ChatRequest:
    """`request` whose last message is the assistant's answer so far, `partial`.

    `flag` is the message field (set to true) by which the upstream tells a prefix to continue
    from a finished turn (Kimi `partial`, DeepSeek `prefix`); `None` for upstreams that always
    continue a trailing assistant message. A request that already ends with such a flagged
    prefix (the client's own) is extended rather than followed by a second assistant message.
    """
    messages = request.messages
    last = messages[-1] if messages else None
    if (
        last is not None
        and last.get("role") == "assistant"
        and isinstance(content := last.get("content"), str)
        and (flag is None or last.get(flag) is True)
    ):
        messages, partial = messages[:-1], content + partial
    message: dict[str, object] = {"role": "assistant", "content": partial}
    if flag is not None:
        message[flag] = True
    return dataclasses.replace(request, messages=(*messages, message))
