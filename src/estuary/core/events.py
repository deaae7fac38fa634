"""The normalised stream event model every provider adapter produces.

Providers translate their wire format into these values; the HTTP layer translates them into the
app-API events, OpenAI chunks or plain text. Must not import anything outside the stdlib.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Failover",
    "FinishReason",
    "ReasoningDelta",
    "StreamEnd",
    "StreamEvent",
    "StreamStart",
    "TextDelta",
    "ToolCall",
    "Usage",
]

FinishReason = Literal[
    "stop", "length", "tool_calls", "content_filter", "canceled", "error", "budget"
]


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamStart:
    """The upstream accepted the request and sent its first well-formed message."""

    provider: str
    model: str
    kind: Literal["start"] = "start"


@dataclass(frozen=True, slots=True, kw_only=True)
class TextDelta:
    """A piece of the answer's text."""

    text: str
    kind: Literal["text"] = "text"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReasoningDelta:
    """A piece of the model's visible thinking (DeepSeek, Kimi, Qwen `reasoning_content`)."""

    text: str
    kind: Literal["reasoning"] = "reasoning"


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCall:
    """One tool call, fully assembled from its fragments; `arguments` is the model's JSON text."""

    index: int
    id: str
    name: str
    arguments: str
    kind: Literal["tool_call"] = "tool_call"


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """Token counts as the upstream reported them."""

    prompt_tokens: int
    completion_tokens: int
    kind: Literal["usage"] = "usage"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEnd:
    """The upstream finished the answer normally."""

    reason: FinishReason
    kind: Literal["end"] = "end"


@dataclass(frozen=True, slots=True, kw_only=True)
class Failover:
    """Mid-stream failover: the target died after some answer text; another one continues it.

    Routing yields it at the seam, only when the alias has `midstream_failover` on; the text
    after it comes from `provider`/`model` (the upstream model), which was given the text so far
    as the start of its answer. `reason` is the error code of the failure that ended the last one.
    """

    provider: str
    model: str
    reason: str
    kind: Literal["failover"] = "failover"


StreamEvent = StreamStart | TextDelta | ReasoningDelta | ToolCall | Usage | StreamEnd | Failover
