"""Anthropic Messages wire format for the fake upstream: SSE frames, whole messages, error bodies.

The same `Scenario` as the OpenAI side, told the way the Messages API tells it: `message_start`
(with the input tokens) and a `ping` go out with the first token; reasoning is a `thinking` block
(closed by a `signature_delta`), content a `text` block, each tool call a `tool_use` block whose
input arrives in at least three `input_json_delta` fragments; then `message_delta` (stop reason and
output tokens) and `message_stop`. Every message carries its `event:` name, as Anthropic's do.
Errors are `{"type": "error", "error": {"type", "message"}}`; the `error_after` fault is an
`event: error` with `overloaded_error`, as Anthropic sends when it is overloaded mid-stream.

Everything is encoded once, before the first byte goes out, as in `_wire`.
Pure functions; imports nothing from estuary.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import orjson

from ._scenario import Scenario
from ._text import split_arguments
from ._wire import StreamPlan

__all__ = [
    "AUTH_FAILED_BODY",
    "anthropic_error_body",
    "anthropic_message_body",
    "anthropic_stream_plan",
]

# Anthropic's error types and default messages, by HTTP status (Errors page of its API docs).
_STATUSES: Final[Mapping[int, tuple[str, str]]] = MappingProxyType(
    {
        400: ("invalid_request_error", "There was an issue with the request."),
        401: ("authentication_error", "invalid x-api-key"),
        402: ("billing_error", "Your credit balance is too low."),
        403: ("permission_error", "Your API key does not have permission to use this resource."),
        404: ("not_found_error", "The requested resource was not found."),
        413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
        429: ("rate_limit_error", "This request would exceed your rate limit."),
        500: ("api_error", "Internal server error"),
        504: ("timeout_error", "Request timed out"),
        529: ("overloaded_error", "Overloaded"),
    }
)
# Our finish reasons (as a Scenario spells them) in Anthropic's words; others pass through.
_STOP: Final[Mapping[str, str]] = MappingProxyType(
    {
        "stop": "end_turn",
        "tool_calls": "tool_use",
        "length": "max_tokens",
        "content_filter": "refusal",
    }
)
_SIGNATURE: Final = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"  # any opaque text


def anthropic_error_body(status: int, message: str | None = None) -> bytes:
    """Anthropic's error object for an HTTP `status`."""
    fallback = _STATUSES[500] if status >= 500 else _STATUSES[400]
    kind, default = _STATUSES.get(status, fallback)
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message or default}})


AUTH_FAILED_BODY: Final = anthropic_error_body(401)
_ERROR_FRAME: Final = b"event: error\ndata: " + anthropic_error_body(529) + b"\n\n"


def _frame(event: str, data: dict[str, Any]) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (event.encode(), orjson.dumps({"type": event, **data}))


def _usage(scenario: Scenario, body: dict[str, Any]) -> tuple[dict[str, int], dict[str, int]]:
    """The usage of `message_start` and of `message_delta` (empty when usage is turned off)."""
    if scenario.usage is False:
        return {}, {}
    prompt, completion = scenario.usage_for(body)
    start = {
        "input_tokens": prompt,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 1,
    }
    return start, {"output_tokens": completion}


def _stop_reason(scenario: Scenario) -> str:
    reason = scenario.resolved_finish_reason()
    return _STOP.get(reason, reason)


def anthropic_stream_plan(scenario: Scenario, body: dict[str, Any], model: str) -> StreamPlan:
    """Frames of a streamed `POST /v1/messages` answer for this scenario and request body.

    The `error_after` fault is planned as a short stream whose tail is Anthropic's `error` event
    (the writer's own `error` fault would send OpenAI's), so the plan's `fault` is only ever
    `drop` or `stall` here.
    """
    start_usage, end_usage = _usage(scenario, body)
    message: dict[str, Any] = {
        "id": "msg_" + uuid.uuid4().hex[:24],
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
    }
    if start_usage:
        message["usage"] = start_usage
    head = _frame("message_start", {"message": message}) + _frame("ping", {})
    tokens: list[bytes] = []
    index = -1
    closing = b""  # the stop of the block before, sent with the next block's first frame

    def open_block(block: dict[str, Any], extra: bytes = b"") -> bytes:
        nonlocal index, closing
        index += 1
        opening = closing + _frame("content_block_start", {"index": index, "content_block": block})
        closing = extra + _frame("content_block_stop", {"index": index})
        return opening

    def delta(delta: dict[str, Any]) -> bytes:
        return _frame("content_block_delta", {"index": index, "delta": delta})

    for i, thought in enumerate(scenario.reasoning):
        lead = b""
        if i == 0:
            lead = open_block({"type": "thinking", "thinking": ""})
            closing = delta({"type": "signature_delta", "signature": _SIGNATURE}) + closing
        tokens.append(lead + delta({"type": "thinking_delta", "thinking": thought}))
    content = scenario.content_chunks()
    for i, text in enumerate(content):
        lead = open_block({"type": "text", "text": ""}) if i == 0 else b""
        tokens.append(lead + delta({"type": "text_delta", "text": text}))
    for call in scenario.tool_calls:
        block = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
        for i, piece in enumerate(split_arguments(call.arguments)):
            lead = open_block(block) if i == 0 else b""
            tokens.append(lead + delta({"type": "input_json_delta", "partial_json": piece}))
    end: dict[str, Any] = {"delta": {"stop_reason": _stop_reason(scenario), "stop_sequence": None}}
    if end_usage:
        end["usage"] = end_usage
    tail = (closing + _frame("message_delta", end) + _frame("message_stop", {}),)
    fault = scenario.fault
    if fault is None:
        return StreamPlan(head=head, tokens=tuple(tokens), tail=tail, fault=None, cut=0)
    kind, after = fault
    cut = len(scenario.reasoning) + min(after, len(content))
    if kind == "error":
        # With no token before it, the writer still sends the head (message_start) first.
        return StreamPlan(
            head=head, tokens=tuple(tokens[:cut]), tail=(_ERROR_FRAME,), fault=None, cut=0
        )
    return StreamPlan(head=head, tokens=tuple(tokens), tail=tail, fault=kind, cut=cut)


def anthropic_message_body(scenario: Scenario, body: dict[str, Any], model: str) -> bytes:
    """A whole `message` object for a request with `stream` false or absent."""
    content: list[dict[str, Any]] = []
    if scenario.reasoning:
        thinking = "".join(scenario.reasoning)
        content.append({"type": "thinking", "thinking": thinking, "signature": _SIGNATURE})
    if text := scenario.expected_text():
        content.append({"type": "text", "text": text})
    for call in scenario.tool_calls:
        arguments = orjson.loads(call.arguments) if call.arguments else {}
        content.append({"type": "tool_use", "id": call.id, "name": call.name, "input": arguments})
    message: dict[str, Any] = {
        "id": "msg_" + uuid.uuid4().hex[:24],
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _stop_reason(scenario),
        "stop_sequence": None,
    }
    start_usage, end_usage = _usage(scenario, body)
    if start_usage:
        message["usage"] = {**start_usage, **end_usage}
    return orjson.dumps(message)
