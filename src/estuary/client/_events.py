"""The app-API events as typed values, the client's errors, and the sans-IO stream state.

`StreamState` turns decoded SSE messages into events, remembers the last event id (for
`Last-Event-ID` on resume), drops events already delivered, and knows when the stream has ended —
the same logic for the async and the sync client.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import orjson

from estuary.sse import SSEMessage

__all__ = [
    "Attempt",
    "Content",
    "Done",
    "ErrorEvent",
    "EstuaryError",
    "Event",
    "Reasoning",
    "ResumeRefused",
    "Start",
    "StreamInterrupted",
    "StreamState",
    "ToolCallEvent",
    "Unknown",
    "Usage",
    "backoff_s",
    "resume_failure",
]


@dataclass(frozen=True, slots=True)
class Start:
    request_id: str
    model: str
    provider: str


@dataclass(frozen=True, slots=True)
class Reasoning:
    content: str


@dataclass(frozen=True, slots=True)
class Content:
    content: str


@dataclass(frozen=True, slots=True)
class ToolCallEvent:
    index: int
    id: str
    name: str
    arguments: str  # the JSON text as the model produced it


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    estimated: bool


@dataclass(frozen=True, slots=True)
class Done:
    finish_reason: str
    usage: Usage | None


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """The stream failed after it started; `retryable` says whether asking again may work."""

    code: str
    message: str
    retryable: bool


@dataclass(frozen=True, slots=True)
class Attempt:
    """A mid-stream failover seam: the answer continues from another target."""

    provider: str
    model: str
    reason: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """An event type this client does not know (a newer server); passed on, not dropped."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)


Event = Start | Reasoning | Content | ToolCallEvent | Done | ErrorEvent | Attempt | Unknown


class EstuaryError(Exception):
    """The gateway refused the request (`status` and `code` from its error body)."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        code: str = "error",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.retry_after = retry_after

    @classmethod
    def from_response(cls, status: int, body: bytes, retry_after: str | None) -> EstuaryError:
        try:
            error = orjson.loads(body)["error"]
            message, code = str(error["message"]), str(error.get("code") or "error")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            message, code = f"HTTP {status}", "http_error"
        wait = float(retry_after) if retry_after and retry_after.isdigit() else None
        return cls(message, status=status, code=code, retry_after=wait)


class StreamInterrupted(EstuaryError):
    """The connection ended before `done` or `error`, and resuming did not succeed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="stream_interrupted")


class ResumeRefused(Exception):
    """A resume attempt answered with a passing failure (5xx, 429): try again after a pause."""


def resume_failure(error: EstuaryError) -> Exception:
    """What a failed resume request means: try again later, or give up."""
    if error.status >= 500 or error.status == 429:
        return ResumeRefused(error.message)
    return StreamInterrupted(f"cannot resume the stream: {error.message}")


class StreamState:
    """What a stream has delivered so far; shared by every connection of one stream."""

    def __init__(self) -> None:
        self.request_id: str | None = None
        self.last_id: str | None = None
        self.finished = False
        self._last_seq = 0

    def take(self, message: SSEMessage) -> Event | None:
        """The event in `message`, or None for one already delivered (a replay after resume)."""
        if message.id:
            request_id, _, seq_text = message.id.rpartition(":")
            seq = int(seq_text) if seq_text.isdigit() else 0
            if seq and seq <= self._last_seq:
                return None
            self._last_seq, self.last_id = seq or self._last_seq, message.id
            self.request_id = self.request_id or request_id or None
        event = parse_event(orjson.loads(message.data))
        if isinstance(event, Start):
            self.request_id = event.request_id
        elif isinstance(event, Done | ErrorEvent):
            self.finished = True
        return event


def parse_event(data: dict[str, Any]) -> Event:
    """One app-API event from its JSON object."""
    kind = data.get("type")
    if kind == "content":
        return Content(data["content"])
    if kind == "reasoning":
        return Reasoning(data["content"])
    if kind == "start":
        return Start(data["requestId"], data.get("model", ""), data.get("provider", ""))
    if kind == "tool_call":
        tool = data.get("tool") or {}
        return ToolCallEvent(data["index"], data["id"], tool["name"], tool["arguments"])
    if kind == "done":
        usage = data.get("usage")
        return Done(
            data.get("finishReason", "stop"),
            None
            if usage is None
            else Usage(usage["promptTokens"], usage["completionTokens"], usage["estimated"]),
        )
    if kind == "error":
        error = data.get("error") or {}
        return ErrorEvent(
            str(error.get("code", "error")),
            str(error.get("message", "")),
            bool(error.get("retryable", False)),
        )
    if kind == "attempt":
        return Attempt(data.get("provider", ""), data.get("model", ""), data.get("reason", ""))
    return Unknown(str(kind), data)


def backoff_s(attempt: int, *, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: a random wait in [0, min(cap, base × 2^attempt))."""
    return rng.uniform(0, min(cap_s, base_s * 2**attempt))
