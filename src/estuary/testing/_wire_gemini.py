"""Gemini wire format for the fake upstream: `streamGenerateContent?alt=sse` frames, error bodies.

The same `Scenario` as the OpenAI side, told the way the Gemini API tells it: every SSE message a
whole `GenerateContentResponse` ending in CRLF CRLF (as Google's frontends send them), reasoning as
parts with `"thought": true`, each tool call as one whole `functionCall` part (no id: the classic
shape), usage (`usageMetadata`) growing to its final counts in the last chunk next to the
`finishReason`, and no `[DONE]`: the stream ends when the body does. Errors are Google's
`{"error": {"code", "message", "status", "details"}}`; a 429 says how long to wait in a
`google.rpc.RetryInfo` detail, not a header, as Google does.

Everything is encoded once, before the first byte goes out, as in `_wire`.
Pure functions; imports nothing from estuary.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import orjson

from ._scenario import FakeToolCall, Scenario
from ._wire import StreamPlan

__all__ = [
    "KEY_INVALID_BODY",
    "KEY_MISSING_BODY",
    "gemini_error_body",
    "gemini_stream_plan",
]

# Google's status names and default messages, by HTTP status.
_STATUSES: Final[Mapping[int, tuple[str, str]]] = MappingProxyType(
    {
        400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
        401: ("UNAUTHENTICATED", "Request had invalid authentication credentials."),
        403: ("PERMISSION_DENIED", "The caller does not have permission"),
        404: ("NOT_FOUND", "Requested entity was not found."),
        429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
        500: ("INTERNAL", "An internal error has occurred. Please retry or report it."),
        503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
        504: ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
    }
)
# Our finish reasons (as a Scenario spells them) in Gemini's words; others pass through as given.
_FINISH: Final[Mapping[str, str]] = MappingProxyType(
    {"stop": "STOP", "tool_calls": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY"}
)
_END: Final = b"\r\n\r\n"


def gemini_error_body(
    status: int, message: str | None = None, *, retry_s: str | None = None
) -> bytes:
    """Google's error object for an HTTP `status`; `retry_s` adds a `RetryInfo` detail."""
    fallback = _STATUSES[500] if status >= 500 else _STATUSES[400]
    name, default = _STATUSES.get(status, fallback)
    error: dict[str, Any] = {"code": status, "message": message or default, "status": name}
    if retry_s is not None:
        retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_s}s"}
        error["details"] = [retry]
    return orjson.dumps({"error": error})


# What the Gemini API answers for a wrong key (400, not 401) and for no key at all (403).
KEY_INVALID_BODY: Final = orjson.dumps(
    {
        "error": {
            "code": 400,
            "message": "API key not valid. Please pass a valid API key.",
            "status": "INVALID_ARGUMENT",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            ],
        }
    }
)
KEY_MISSING_BODY: Final = gemini_error_body(
    403,
    "Method doesn't allow unregistered callers (callers without established identity)."
    " Please use API Key or other form of API consumer identity to call this API.",
)
_ERROR_FRAME: Final = b"data: " + gemini_error_body(503) + _END


def gemini_stream_plan(scenario: Scenario, body: dict[str, Any], model: str) -> StreamPlan:
    """Frames of a `streamGenerateContent?alt=sse` answer for this scenario and request body.

    The `error_after` fault is planned as a short stream whose tail is Google's error frame
    (the writer's own `error` fault would send OpenAI's), so the plan's `fault` is only ever
    `drop` or `stall` here.
    """
    response_id = uuid.uuid4().hex[:22]
    content = scenario.content_chunks()
    prompt, completion = scenario.usage_for(body)
    usage = scenario.usage is not False
    running = {"promptTokenCount": prompt, "totalTokenCount": prompt} if usage else None

    def frame(parts: list[dict[str, Any]], finish: str | None = None, counts: Any = None) -> bytes:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
        if finish is not None:
            candidate["finishReason"] = finish
        candidate["index"] = 0
        chunk: dict[str, Any] = {"candidates": [candidate]}
        if counts is not None:
            chunk["usageMetadata"] = counts
        chunk["modelVersion"] = model
        chunk["responseId"] = response_id
        return b"data: " + orjson.dumps(chunk) + _END

    parts: list[dict[str, Any]] = [{"text": r, "thought": True} for r in scenario.reasoning]
    parts.extend({"text": c} for c in content)
    parts.extend(_function_call(call) for call in scenario.tool_calls)
    tokens = tuple(frame([part], counts=running) for part in parts)
    final = None
    if usage:
        answer = len(content) + len(scenario.tool_calls)
        final = {"promptTokenCount": prompt, "candidatesTokenCount": answer}
        if scenario.reasoning:
            final["thoughtsTokenCount"] = len(scenario.reasoning)
        final["totalTokenCount"] = prompt + completion
    reason = scenario.resolved_finish_reason()
    tail = (frame([{"text": ""}], _FINISH.get(reason, reason), final),)
    fault = scenario.fault
    if fault is None:
        return StreamPlan(head=b"", tokens=tokens, tail=tail, fault=None, cut=0)
    kind, after = fault
    cut = len(scenario.reasoning) + min(after, len(content))
    if kind == "error":
        return StreamPlan(head=b"", tokens=tokens[:cut], tail=(_ERROR_FRAME,), fault=None, cut=0)
    return StreamPlan(head=b"", tokens=tokens, tail=tail, fault=kind, cut=cut)


def _function_call(call: FakeToolCall) -> dict[str, Any]:
    """One whole call; Gemini's `args` is an object, so the scripted text must be one."""
    try:
        args = orjson.loads(call.arguments) if call.arguments else {}
    except orjson.JSONDecodeError:
        args = None
    if not isinstance(args, dict):
        raise ValueError(f"tool call {call.id}: Gemini needs arguments that are a JSON object")
    return {"functionCall": {"name": call.name, "args": args}}
