"""OpenAI chat/completions wire format, both ways, with no I/O.

`chat_body()` / `completion_body()` build the upstream request; `OpenAIStreamParser` turns the
upstream's SSE bytes, split anywhere, into core events. The parser covers what OpenAI-compatible
servers actually send: `reasoning_content` (DeepSeek, Kimi, Qwen, GLM, Spark X1) or `reasoning`
(OpenRouter, vLLM), tool-call fragments assembled by index, usage in its own chunk, inside the last
one or inside its choice (Moonshot), error objects inside a 200 stream (read by
`http_errors.error_in_stream` with the preset's own codes; Spark's flat `{"code": 10013, …}` too),
finish reasons the providers invent (`sensitive`, `network_error`, `insufficient_system_resource`,
…), and streams that end without `[DONE]` after a finish reason.

The common OpenAI chunk costs no more than before: every quirk is a branch taken only when its
field is present (an error, a finish reason), or one flag test (`flavor="spark"`).
Must not import the HTTP layer, routing or storage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal

import orjson

from estuary.core.errors import UpstreamError, UpstreamProtocolError
from estuary.core.events import (
    FinishReason,
    ReasoningDelta,
    StreamEnd,
    StreamEvent,
    TextDelta,
    ToolCall,
    Usage,
)
from estuary.core.redaction import Redactor
from estuary.core.requests import ChatRequest, CompletionRequest
from estuary.providers.http_errors import error_in_stream
from estuary.sse import SSEDecoder

__all__ = ["OpenAIStreamParser", "chat_body", "completion_body"]

_FINISH_REASONS: Final[Mapping[str, FinishReason]] = MappingProxyType(
    {
        "stop": "stop",
        "length": "length",
        "tool_calls": "tool_calls",
        "function_call": "tool_calls",
        "content_filter": "content_filter",
        "sensitive": "content_filter",  # Zhipu GLM: its moderation stopped the output
        "model_context_window_exceeded": "length",  # Zhipu GLM-4.5 and later
        "eos": "stop",  # some llama.cpp builds
    }
)
# Finish reasons that say the generation broke: a failure (fallback before any content, in-band
# after), not an answer that ended.
_BROKEN: Final[Mapping[str, str]] = MappingProxyType(
    {
        "network_error": "the model failed while generating",  # Zhipu GLM
        "insufficient_system_resource": "the upstream ran out of capacity",  # DeepSeek
        "error": "the upstream reported an error",  # OpenRouter
    }
)
# Presets whose stream messages carry a top-level `code` (0 = fine), the error sent in place of
# the chunk (iFlytek Spark: {"code": 10013, "message": "…", "sid": "…"}).
_FLAT_CODES: Final = frozenset({"spark"})
_OK_CODES: Final = (None, 0, "0")
_DONE: Final = "[DONE]"


def chat_body(request: ChatRequest, model: str) -> bytes:
    """The upstream body for a streamed chat completion; always asks for usage."""
    body = _common(request, model)
    body["messages"] = request.messages
    if request.tools is not None:
        body["tools"] = request.tools
    return orjson.dumps(body)


def completion_body(request: CompletionRequest, model: str) -> bytes:
    """The upstream body for a streamed legacy completion; always asks for usage."""
    body = _common(request, model)
    body["prompt"] = request.prompt
    return orjson.dumps(body)


def _common(request: ChatRequest | CompletionRequest, model: str) -> dict[str, Any]:
    body: dict[str, Any] = dict(request.extra)
    body["model"] = model
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    return body


@dataclass(slots=True)
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class OpenAIStreamParser:
    """Bytes of an OpenAI-format SSE stream in, core events out.

    `feed()` raises `UpstreamError` for an error object inside the stream and
    `UpstreamProtocolError` for malformed JSON — but never loses the events before the failure:
    those are returned first and the failure is raised by `check()` or the next call.
    `finish()` raises when the stream ended early.
    """

    __slots__ = (
        "_answered",
        "_calls",
        "_decoder",
        "_done",
        "_failed",
        "_finish",
        "_flat_codes",
        "_flavor",
        "_had_calls",
        "_kind",
        "_provider",
        "_redact",
    )

    def __init__(
        self,
        provider: str,
        *,
        kind: Literal["chat", "completion"],
        redact: Redactor,
        flavor: str | None = None,
    ) -> None:
        """`flavor` is the preset (`"zhipu"`, `"spark"`, …) whose error codes and quirks apply."""
        self._provider = provider
        self._kind = kind
        self._redact = redact
        self._flavor = flavor
        self._flat_codes = flavor in _FLAT_CODES
        self._decoder = SSEDecoder()
        self._calls: dict[int, _PartialCall] = {}
        self._finish: FinishReason | None = None
        self._had_calls = False
        self._failed: UpstreamError | None = None
        self._done = False
        self._answered = False  # some event was returned: an error now comes after the answer

    @property
    def done(self) -> bool:
        """True once the stream's terminal `StreamEnd` has been produced."""
        return self._done

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        """Events in `chunk`. A failure raises — after the events before it were returned."""
        self.check()
        events: list[StreamEvent] = []
        try:
            for message in self._decoder.feed(chunk):
                self._on_data(message.data, events)
        except UpstreamError as exc:
            if not events:
                raise
            self._failed = exc  # deliver the text that came before it first
        if events:
            self._answered = True
        return events

    def check(self) -> None:
        """Raise the failure found by the last `feed()`, if it had events to return first."""
        if self._failed is not None:
            raise self._failed

    def finish(self) -> list[StreamEvent]:
        """The upstream closed the body: end cleanly if it had finished, else raise."""
        self.check()
        events: list[StreamEvent] = []
        for message in self._decoder.finish():
            self._on_data(message.data, events)
        if not self._done:
            if self._finish is None:
                raise UpstreamProtocolError(self._provider, "stream ended before it was complete")
            self._end(events)  # finished, but no [DONE]: several compatible servers omit it
        return events

    def _on_data(self, data: str, events: list[StreamEvent]) -> None:
        if self._done or not data:
            return
        if data == _DONE:
            self._end(events)
        else:
            self._take(data, events)

    def _take(self, data: str, events: list[StreamEvent]) -> None:
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError(self._provider, "malformed JSON in stream") from None
        if not isinstance(chunk, dict):
            raise UpstreamProtocolError(self._provider, "stream message is not a JSON object")
        if chunk.get("error") is not None or (
            self._flat_codes and chunk.get("code") not in _OK_CODES
        ):
            self._in_band_error(chunk, events)
            return
        usage = chunk.get("usage")
        choices = chunk.get("choices")
        if choices:
            choice = choices[0]
            if self._kind == "chat":
                self._take_delta(choice.get("delta") or {}, events)
            elif text := choice.get("text"):
                events.append(TextDelta(text=text))
            if reason := choice.get("finish_reason"):
                self._take_finish(reason)
                self._flush_calls(events)
                usage = usage or choice.get("usage")  # Moonshot reports it inside the choice
        if usage:
            events.append(
                Usage(
                    prompt_tokens=int(usage.get("prompt_tokens") or 0),
                    completion_tokens=int(usage.get("completion_tokens") or 0),
                )
            )

    def _take_finish(self, reason: str) -> None:
        finish = _FINISH_REASONS.get(reason)
        if finish is None:
            if (broken := _BROKEN.get(reason)) is not None:
                raise UpstreamError(self._provider, f"{broken} (finish_reason {reason!r})")
            finish = "stop"
        self._finish = finish

    def _take_delta(self, delta: dict[str, Any], events: list[StreamEvent]) -> None:
        if thought := delta.get("reasoning_content") or delta.get("reasoning"):
            events.append(ReasoningDelta(text=thought))
        if text := delta.get("content"):
            events.append(TextDelta(text=text))
        for fragment in delta.get("tool_calls") or ():
            call = self._calls.setdefault(int(fragment.get("index", 0)), _PartialCall())
            call.id = fragment.get("id") or call.id
            function = fragment.get("function") or {}
            call.name = function.get("name") or call.name
            if arguments := function.get("arguments"):
                call.arguments.append(arguments)

    def _flush_calls(self, events: list[StreamEvent]) -> None:
        """Emit each assembled tool call once, in index order."""
        for index in sorted(self._calls):
            call = self._calls[index]
            events.append(
                ToolCall(index=index, id=call.id, name=call.name, arguments="".join(call.arguments))
            )
        self._had_calls = self._had_calls or bool(self._calls)
        self._calls.clear()

    def _end(self, events: list[StreamEvent]) -> None:
        self._flush_calls(events)
        reason: FinishReason = self._finish or ("tool_calls" if self._had_calls else "stop")
        events.append(StreamEnd(reason=reason))
        self._done = True

    def _in_band_error(self, chunk: dict[str, Any], events: list[StreamEvent]) -> None:
        """Raise the error object's failure, or end with `content_filter` for a moderation stop."""
        answered = self._answered or bool(events)
        verdict = error_in_stream(
            self._provider, chunk, self._redact, flavor=self._flavor, answered=answered
        )
        if isinstance(verdict, UpstreamError):
            raise verdict
        self._finish = verdict
        self._end(events)
