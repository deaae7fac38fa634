"""Core events → bytes on the wire, one encoder per output format.

- `AppSSEEncoder`: the app API's normalised events (`id: <requestId>:<seq>`, one JSON `data:`);
- `TextEncoder`: answer text only, for `fetch` + `reader.read()` front-ends;
- `OpenAIChatEncoder` / `OpenAICompletionEncoder`: OpenAI's `chat.completion.chunk` and
  `text_completion` streams, ending with `[DONE]` — or, after a failure, with an error object and
  no `[DONE]`, so SDKs raise instead of returning a truncated answer as if it were whole.

A mid-stream failover seam (`Failover`) is an `attempt` event in the app API; OpenAI's formats
have no such message, and text mode no room for one, so there the answer simply continues.

Each encoder produces at most one terminal message (`done()` or `error()`). Encoders hold per-stream
state (sequence numbers, whether the start was sent) and are built per request.
"""

from __future__ import annotations

import time
from typing import Any, Final, Protocol

import orjson

from estuary.core.errors import EstuaryError
from estuary.core.events import (
    Failover,
    ReasoningDelta,
    StreamEvent,
    StreamStart,
    TextDelta,
    ToolCall,
)
from estuary.core.usage import TokenCount
from estuary.sse import encode_comment
from estuary.state.base import EventLog

__all__ = [
    "AppSSEEncoder",
    "Encoder",
    "OpenAIChatEncoder",
    "OpenAICompletionEncoder",
    "TextEncoder",
    "app_done_body",
    "app_error_body",
    "app_event_body",
    "app_start_body",
    "error_body",
    "is_terminal",
    "openai_finish_reason",
]

SSE_MEDIA_TYPE: Final = "text/event-stream; charset=utf-8"
TEXT_MEDIA_TYPE: Final = "text/plain; charset=utf-8"
_PING: Final = encode_comment("ping")
_APP_CONTENT: Final = b'%s%d\ndata: {"type":"content","content":%s}\n\n'


def error_body(error: EstuaryError) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": error.message, "type": error.type, "code": error.code}}


def app_start_body(request_id: str, alias: str, provider: str | None) -> dict[str, Any]:
    """The app API's `start` event."""
    return {"type": "start", "requestId": request_id, "model": alias, "provider": provider}


def app_event_body(event: StreamEvent) -> dict[str, Any] | None:
    """The app-API event for one core event between `start` and the end; None: none is sent.

    `StreamStart` is `app_start_body`; usage and the end are folded into `app_done_body`. Shared
    by the SSE encoder and the WebSocket endpoint, which frame the same objects differently.
    """
    match event:
        case TextDelta(text=text):
            return {"type": "content", "content": text}
        case ReasoningDelta(text=text):
            return {"type": "reasoning", "content": text}
        case ToolCall():
            tool = {"name": event.name, "arguments": event.arguments}
            return {"type": "tool_call", "index": event.index, "id": event.id, "tool": tool}
        case Failover(provider=provider, model=model, reason=reason):
            return {"type": "attempt", "provider": provider, "model": model, "reason": reason}
        case _:
            return None


def app_done_body(finish_reason: str, tokens: TokenCount) -> dict[str, Any]:
    """The app API's `done` event."""
    usage = {
        "promptTokens": tokens.prompt_tokens,
        "completionTokens": tokens.completion_tokens,
        "estimated": tokens.estimated,
    }
    return {"type": "done", "finishReason": finish_reason, "usage": usage}


def app_error_body(error: EstuaryError) -> dict[str, Any]:
    """The app API's in-band `error` event (after `start`)."""
    detail = {"code": error.code, "message": error.message, "retryable": error.retryable}
    return {"type": "error", "error": detail}


class Encoder(Protocol):
    """Turns one stream's events into bytes for one wire format."""

    media_type: str
    heartbeat: bytes | None  # written while the upstream is silent; None: the format has none

    def event(self, event: StreamEvent) -> bytes: ...

    def done(self, finish_reason: str, tokens: TokenCount) -> bytes: ...

    def error(self, error: EstuaryError) -> bytes: ...


def is_terminal(frame: bytes) -> bool:
    """Whether an app-API SSE frame is the stream's `done` or `error` (answer text inside a JSON
    string has its quotes escaped, so it cannot look like either)."""
    return b'data: {"type":"done"' in frame or b'data: {"type":"error"' in frame


class AppSSEEncoder:
    """The app API's event stream (see DESIGN "App-API events").

    With a resume `log`, every frame is also appended to it under its seq, as it is encoded —
    whether or not a client is still there to receive it.
    """

    media_type = SSE_MEDIA_TYPE
    heartbeat: bytes | None = _PING

    def __init__(
        self,
        request_id: str,
        alias: str,
        log: EventLog | None = None,
        *,
        after: int = 0,
    ) -> None:
        """`after`: the seq of the last event already sent (a stream taken over goes on)."""
        self._prefix = f"id: {request_id}:".encode()
        self._request_id = request_id
        self._alias = alias
        self._seq = after
        self._started = after > 0
        self._log = log

    @property
    def seq(self) -> int:
        """The seq of the last frame encoded (0 before the first)."""
        return self._seq

    def event(self, event: StreamEvent) -> bytes:
        if type(event) is TextDelta:  # the token path: no dict, one small dumps
            self._seq += 1
            frame = _APP_CONTENT % (self._prefix, self._seq, orjson.dumps(event.text))
            if self._log is not None:
                self._log.append(self._seq, frame)
            return frame
        if type(event) is StreamStart:
            return self._start(event.provider)
        body = app_event_body(event)
        return b"" if body is None else self._message(body)

    def done(self, finish_reason: str, tokens: TokenCount) -> bytes:
        return self._start(None) + self._message(app_done_body(finish_reason, tokens))

    def error(self, error: EstuaryError) -> bytes:
        return self._start(None) + self._message(app_error_body(error))

    def _start(self, provider: str | None) -> bytes:
        if self._started:
            return b""
        self._started = True
        return self._message(app_start_body(self._request_id, self._alias, provider))

    def _message(self, body: dict[str, Any]) -> bytes:
        self._seq += 1
        frame = b"%s%d\ndata: %s\n\n" % (self._prefix, self._seq, orjson.dumps(body))
        if self._log is not None:
            self._log.append(self._seq, frame)
        return frame


class TextEncoder:
    """Answer text only; a failure after the first token becomes a last `[error] …` line."""

    media_type = TEXT_MEDIA_TYPE
    heartbeat: bytes | None = None  # plain text has no room for a keep-alive

    def __init__(self) -> None:
        self._at_line_start = True

    def event(self, event: StreamEvent) -> bytes:
        if type(event) is TextDelta and event.text:
            self._at_line_start = event.text.endswith("\n")
            return event.text.encode()
        return b""

    def done(self, finish_reason: str, tokens: TokenCount) -> bytes:
        return b""

    def error(self, error: EstuaryError) -> bytes:
        lead = "" if self._at_line_start else "\n"
        return f"{lead}[error] {error.code}: {error.message}\n".encode()


class _OpenAIStream:
    """What OpenAI's chat and legacy completion streams share."""

    media_type = SSE_MEDIA_TYPE
    heartbeat: bytes | None = _PING
    _object: str
    _text_choice_open: bytes
    _text_choice_close: bytes

    _id_prefix: str

    def __init__(self, request_id: str, alias: str, *, include_usage: bool) -> None:
        self._head = {"id": self._id_prefix + request_id, "object": self._object, "created": 0}
        self._head["created"] = int(time.time())
        self._head["model"] = alias
        self._include_usage = include_usage
        # The bytes around a text delta, encoded once: the token path only encodes the text.
        self._text_open = b"data: " + orjson.dumps(self._head)[:-1] + self._text_choice_open
        self._text_close = self._text_choice_close

    def _chunk(self, choice: dict[str, Any]) -> bytes:
        return b"data: %s\n\n" % orjson.dumps({**self._head, "choices": [choice]})

    def done(self, finish_reason: str, tokens: TokenCount) -> bytes:
        out = self._finish_chunk(openai_finish_reason(finish_reason))
        if self._include_usage:
            usage = {
                "prompt_tokens": tokens.prompt_tokens,
                "completion_tokens": tokens.completion_tokens,
                "total_tokens": tokens.prompt_tokens + tokens.completion_tokens,
            }
            out += b"data: %s\n\n" % orjson.dumps({**self._head, "choices": [], "usage": usage})
        return out + b"data: [DONE]\n\n"

    def error(self, error: EstuaryError) -> bytes:
        return b"data: %s\n\n" % orjson.dumps(error_body(error))

    def _finish_chunk(self, finish_reason: str) -> bytes:
        raise NotImplementedError


def openai_finish_reason(reason: str) -> str:
    """OpenAI's name for a finish reason: a budget stop is a cut-off, `length` to SDKs."""
    return "length" if reason == "budget" else reason


class OpenAIChatEncoder(_OpenAIStream):
    """`chat.completion.chunk` messages, as OpenAI streams them."""

    _object = "chat.completion.chunk"
    _id_prefix = "chatcmpl-"
    _text_choice_open = b',"choices":[{"index":0,"delta":{"content":'
    _text_choice_close = b'},"finish_reason":null}]}\n\n'

    def event(self, event: StreamEvent) -> bytes:
        if type(event) is TextDelta:  # the token path
            return self._text_open + orjson.dumps(event.text) + self._text_close
        match event:
            case ReasoningDelta(text=text):
                return self._delta({"reasoning_content": text})
            case ToolCall():
                function = {"name": event.name, "arguments": event.arguments}
                call = {
                    "index": event.index,
                    "id": event.id,
                    "type": "function",
                    "function": function,
                }
                return self._delta({"tool_calls": [call]})
            case StreamStart():
                return self._delta({"role": "assistant", "content": ""})
            case _:
                return b""

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return self._chunk({"index": 0, "delta": delta, "finish_reason": None})

    def _finish_chunk(self, finish_reason: str) -> bytes:
        return self._chunk({"index": 0, "delta": {}, "finish_reason": finish_reason})


class OpenAICompletionEncoder(_OpenAIStream):
    """Legacy `text_completion` messages."""

    _object = "text_completion"
    _id_prefix = "cmpl-"
    _text_choice_open = b',"choices":[{"index":0,"text":'
    _text_choice_close = b',"finish_reason":null,"logprobs":null}]}\n\n'

    def event(self, event: StreamEvent) -> bytes:
        if type(event) is TextDelta:
            return self._text_open + orjson.dumps(event.text) + self._text_close
        return b""

    def _finish_chunk(self, finish_reason: str) -> bytes:
        return self._chunk(
            {"index": 0, "text": "", "finish_reason": finish_reason, "logprobs": None}
        )
