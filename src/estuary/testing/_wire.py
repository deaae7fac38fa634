"""OpenAI wire format for the fake upstream: pre-encoded SSE frames and whole JSON bodies.

Everything a stream will send is encoded once, before the first byte goes out, so the
writer only moves bytes (the benchmark runs up to 1,000 of these streams at once).
Pure functions; imports nothing from estuary.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import orjson

from ._scenario import FakeToolCall, Fault, Scenario
from ._text import split_arguments

__all__ = [
    "DONE_FRAME",
    "ERROR_FRAME",
    "OVERLOADED_BODY",
    "StreamPlan",
    "chat_completion_body",
    "chat_stream_plan",
    "error_body",
    "fail_body",
    "legacy_completion_body",
    "legacy_stream_plan",
    "transcript_messages",
]

DONE_FRAME = b"data: [DONE]\n\n"
# The in-band error an upstream sends after the first token (and the 500 body when not streaming).
OVERLOADED_BODY = orjson.dumps(
    {
        "error": {
            "message": "The model is overloaded. Please retry later.",
            "type": "server_error",
            "code": "overloaded",
        }
    }
)
ERROR_FRAME = b"data: " + OVERLOADED_BODY + b"\n\n"

# Default error bodies for `fail_status`, by status; any other status uses the 4xx/5xx row.
_FAILURES = MappingProxyType[int, tuple[str, str, str | None]](
    {
        400: ("Invalid request.", "invalid_request_error", None),
        401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
        403: ("You are not allowed to sample from this model.", "invalid_request_error", None),
        404: ("The model does not exist.", "invalid_request_error", "model_not_found"),
        429: ("Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
        500: ("The server had an error while processing your request.", "server_error", None),
    }
)


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """The pre-encoded frames of one stream.

    `head` (may be empty) goes out together with the first token; `tokens` are the counted
    chunks (reasoning, content, tool-call fragments); `fault` happens after `cut` tokens
    instead of the `tail` (finish chunk, usage chunk if any, `[DONE]` if any).
    """

    head: bytes
    tokens: tuple[bytes, ...]
    tail: tuple[bytes, ...]
    fault: Fault | None
    cut: int


def error_body(message: str, type_: str, code: str | None) -> bytes:
    """An OpenAI error object, `{"error": {"message", "type", "param", "code"}}`."""
    error = {"message": message, "type": type_, "param": None, "code": code}
    return orjson.dumps({"error": error})


def fail_body(status: int) -> bytes:
    """The default body for a scripted `fail_status`."""
    fallback = _FAILURES[500] if status >= 500 else _FAILURES[400]
    return error_body(*_FAILURES.get(status, fallback))


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _frame(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _wants_usage(scenario: Scenario, body: dict[str, Any]) -> bool:
    if scenario.usage is not None:
        return scenario.usage
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _cut(scenario: Scenario, before: int, content: int) -> tuple[Fault | None, int]:
    if (fault := scenario.fault) is None:
        return None, 0
    kind, after = fault
    return kind, before + min(after, content)


def _tool_deltas(index: int, call: FakeToolCall) -> list[dict[str, Any]]:
    function = {"name": call.name, "arguments": ""}
    opening = {"index": index, "id": call.id, "type": "function", "function": function}
    deltas: list[dict[str, Any]] = [{"tool_calls": [opening]}]
    for piece in split_arguments(call.arguments):
        fragment = {"index": index, "function": {"arguments": piece}}
        deltas.append({"tool_calls": [fragment]})
    return deltas


def transcript_messages(transcript: bytes) -> tuple[bytes, ...]:
    """A recorded SSE body cut after each blank line (`\n\n` or `\r\n\r\n`); the last piece
    keeps whatever follows the final blank line (a truncated message stays truncated)."""
    messages: list[bytes] = []
    start = 0
    while True:
        lf, crlf = transcript.find(b"\n\n", start), transcript.find(b"\r\n\r\n", start)
        ends = [i + n for i, n in ((lf, 2), (crlf, 4)) if i >= 0]
        if not ends:
            break
        end = min(ends)
        messages.append(transcript[start:end])
        start = end
    if start < len(transcript):
        messages.append(transcript[start:])
    return tuple(messages)


def _transcript_plan(scenario: Scenario, transcript: bytes) -> StreamPlan:
    messages = transcript_messages(transcript)
    fault, cut = _cut(scenario, 0, len(messages))
    return StreamPlan(head=b"", tokens=messages, tail=(), fault=fault, cut=cut)


def chat_stream_plan(scenario: Scenario, body: dict[str, Any], model: str) -> StreamPlan:
    """Frames of a `chat.completion.chunk` stream for this scenario and request."""
    if scenario.transcript is not None:
        return _transcript_plan(scenario, scenario.transcript)
    chunk_id, created = _new_id("chatcmpl"), int(time.time())
    # Every chunk shares this opening; only the delta and finish_reason differ.
    prefix = (
        b'data: {"id":' + orjson.dumps(chunk_id) + b',"object":"chat.completion.chunk"'
        b',"created":'
        + str(created).encode()
        + b',"model":'
        + orjson.dumps(model)
        + b',"choices":[{"index":0,"delta":'
    )
    open_end = b',"finish_reason":null}]}\n\n'
    deltas: list[dict[str, Any]] = [{"reasoning_content": r} for r in scenario.reasoning]
    content = scenario.content_chunks()
    deltas.extend({"content": c} for c in content)
    for index, call in enumerate(scenario.tool_calls):
        deltas.extend(_tool_deltas(index, call))
    reason = orjson.dumps(scenario.resolved_finish_reason())
    tail = [prefix + b'{},"finish_reason":' + reason + b"}]}\n\n"]
    if _wants_usage(scenario, body):
        usage = _usage(*scenario.usage_for(body))
        common = {"id": chunk_id, "object": "chat.completion.chunk", "created": created}
        tail.append(_frame({**common, "model": model, "choices": [], "usage": usage}))
    if scenario.done:
        tail.append(DONE_FRAME)
    fault, cut = _cut(scenario, len(scenario.reasoning), len(content))
    return StreamPlan(
        head=prefix + b'{"role":"assistant","content":""}' + open_end,
        tokens=tuple(prefix + orjson.dumps(d) + open_end for d in deltas),
        tail=tuple(tail),
        fault=fault,
        cut=cut,
    )


def legacy_stream_plan(scenario: Scenario, body: dict[str, Any], model: str) -> StreamPlan:
    """Frames of a legacy `text_completion` stream (content only)."""
    chunk_id, created = _new_id("cmpl"), int(time.time())
    prefix = (
        b'data: {"id":' + orjson.dumps(chunk_id) + b',"object":"text_completion"'
        b',"created":'
        + str(created).encode()
        + b',"model":'
        + orjson.dumps(model)
        + b',"choices":[{"index":0,"text":'
    )
    content = scenario.content_chunks()
    reason = orjson.dumps(scenario.resolved_finish_reason(legacy=True))
    tail = [prefix + b'"","finish_reason":' + reason + b',"logprobs":null}]}\n\n']
    if _wants_usage(scenario, body):
        usage = _usage(*scenario.usage_for(body))
        common = {"id": chunk_id, "object": "text_completion", "created": created}
        tail.append(_frame({**common, "model": model, "choices": [], "usage": usage}))
    if scenario.done:
        tail.append(DONE_FRAME)
    fault, cut = _cut(scenario, 0, len(content))
    end = b',"finish_reason":null,"logprobs":null}]}\n\n'
    return StreamPlan(
        head=b"",
        tokens=tuple(prefix + orjson.dumps(c) + end for c in content),
        tail=tuple(tail),
        fault=fault,
        cut=cut,
    )


def chat_completion_body(scenario: Scenario, body: dict[str, Any], model: str) -> bytes:
    """A whole `chat.completion` object for a non-streaming request."""
    text = scenario.expected_text()
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text if text or not scenario.tool_calls else None,
    }
    if scenario.reasoning:
        message["reasoning_content"] = "".join(scenario.reasoning)
    if scenario.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in scenario.tool_calls
        ]
    choice = {"index": 0, "message": message, "finish_reason": scenario.resolved_finish_reason()}
    return _whole("chatcmpl", "chat.completion", choice, scenario, body, model)


def legacy_completion_body(scenario: Scenario, body: dict[str, Any], model: str) -> bytes:
    """A whole `text_completion` object for a non-streaming legacy request."""
    choice = {
        "index": 0,
        "text": scenario.expected_text(),
        "finish_reason": scenario.resolved_finish_reason(legacy=True),
        "logprobs": None,
    }
    return _whole("cmpl", "text_completion", choice, scenario, body, model)


def _whole(
    prefix: str,
    kind: str,
    choice: dict[str, Any],
    scenario: Scenario,
    body: dict[str, Any],
    model: str,
) -> bytes:
    obj: dict[str, Any] = {
        "id": _new_id(prefix),
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
    }
    # OpenAI always reports usage on whole responses; `usage=False` turns it off here too.
    if scenario.usage is not False:
        obj["usage"] = _usage(*scenario.usage_for(body))
    return orjson.dumps(obj)
