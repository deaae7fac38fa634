"""Anthropic's Messages API, inbound: `POST /v1/messages` for the official `anthropic` SDKs.

The request is translated to Estuary's OpenAI-shaped `ChatRequest` (so any target can answer it)
and validated by `core.requests` after checks that name Anthropic's own fields:

- `system` (a string or text blocks) → a system message first;
- `user` turns: `text` and `image` blocks (base64 → a `data:` URL, `url` → the URL) → content
  parts; `tool_result` blocks → `tool` messages, placed before the turn's other content;
- `assistant` turns: `text` → the content, `tool_use` → `tool_calls` (the `input` object → the
  arguments' JSON text); `thinking` and `redacted_thinking` blocks are dropped;
- `tools` → OpenAI function tools, `tool_choice` (`auto`, `any` → `required`, `tool`, `none`)
  and `disable_parallel_tool_use` → `parallel_tool_calls: false`; `max_tokens` (required, as
  Anthropic requires it), `temperature` (0–1), `top_p`, `stop_sequences` → `stop`,
  `metadata.user_id` → `user`. Anything else (`top_k`, `thinking`, `cache_control`, server tools'
  options…) is not carried; `document` blocks and server tools are refused with a clear message.

`AnthropicEncoder` writes Anthropic's event stream — `message_start` (its usage is 0: nothing is
known yet), `content_block_start`/`_delta`/`_stop` for text, thinking and tool use (a tool's
whole arguments in one `input_json_delta`), `message_delta` with the stop reason and the real
usage (the SDK takes these counts over those of `message_start`), `message_stop` — and an
`event: error` after a failure. `anthropic_message()` shapes a non-streamed answer as a whole
`message` object. Errors before any byte of the answer are Anthropic's
`{"type": "error", "error": {"type", "message"}}`: `anthropic_error_response()` for the handler's
own failures, `AnthropicErrors` around the response app for the upstream's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from estuary.auth.keys import Authenticator
from estuary.core.errors import EstuaryError, InvalidRequest
from estuary.core.events import ReasoningDelta, StreamEvent, StreamStart, TextDelta, ToolCall
from estuary.core.policy import Principal
from estuary.core.requests import ChatRequest, parse_openai_chat
from estuary.core.usage import TokenCount
from estuary.http.collect import Answer
from estuary.http.inputs import refuse_url_credentials
from estuary.sse import encode_comment

__all__ = [
    "AnthropicEncoder",
    "AnthropicErrors",
    "anthropic_error_body",
    "anthropic_error_response",
    "anthropic_message",
    "authenticate_anthropic",
    "parse_anthropic_messages",
]

JSONObject = dict[str, Any]

_SSE_MEDIA_TYPE: Final = "text/event-stream; charset=utf-8"
_MAX_STOP: Final = 4  # what OpenAI-format targets take
_STOP_REASONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "stop": "end_turn",
        "canceled": "end_turn",  # Anthropic has no word for it: the answer so far is all
        "length": "max_tokens",
        "budget": "max_tokens",
        "tool_calls": "tool_use",
        "content_filter": "refusal",
    }
)
# Anthropic's error `type` for the status Estuary answers with (Errors page of its API docs).
_ERROR_TYPES: Final[Mapping[int, str]] = MappingProxyType(
    {
        400: "invalid_request_error",
        401: "authentication_error",
        402: "billing_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        503: "overloaded_error",
        504: "timeout_error",
    }
)
_DROPPED_BLOCKS: Final = frozenset({"thinking", "redacted_thinking"})
_TOOL_CHOICES: Final[Mapping[str, str]] = MappingProxyType(
    {"auto": "auto", "any": "required", "none": "none"}
)


# -- the request ------------------------------------------------------------------------------


async def authenticate_anthropic(request: Request, authenticator: Authenticator) -> Principal:
    """The caller from `Authorization: Bearer …` or, as the Anthropic SDKs send it, `x-api-key`."""
    refuse_url_credentials(request)
    authorization = request.headers.get("authorization")
    if not authorization and (key := request.headers.get("x-api-key", "").strip()):
        authorization = f"Bearer {key}"
    client = request.client
    return await authenticator.authenticate(
        authorization, client_ip=client.host if client else None
    )


def parse_anthropic_messages(body: object) -> ChatRequest:
    """Validate an Anthropic `POST /v1/messages` body and translate it to a `ChatRequest`."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    if body.get("max_tokens") is None:
        raise InvalidRequest("'max_tokens' is required")
    chat: JSONObject = {"max_tokens": body["max_tokens"], "stream": body.get("stream", False)}
    if "model" in body:
        chat["model"] = body["model"]
    chat["messages"] = _system(body.get("system")) + _messages(body.get("messages"))
    if (temperature := body.get("temperature")) is not None:
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, int | float)
            or not math.isfinite(temperature)
            or not 0 <= temperature <= 1
        ):
            raise InvalidRequest("'temperature' must be a number between 0 and 1")
        chat["temperature"] = temperature
    if (top_p := body.get("top_p")) is not None:
        chat["top_p"] = top_p
    if (stop := body.get("stop_sequences")) is not None:
        if not isinstance(stop, list) or len(stop) > _MAX_STOP:
            raise InvalidRequest(f"'stop_sequences' must be a list of up to {_MAX_STOP} strings")
        chat["stop"] = stop
    if (tools := body.get("tools")) is not None:
        chat["tools"] = _tools(tools)
    if (choice := body.get("tool_choice")) is not None:
        _tool_choice(choice, chat)
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(user := metadata.get("user_id"), str) and user:
        chat["user"] = user
    if chat["stream"] is True:
        chat["stream_options"] = {"include_usage": True}
    return parse_openai_chat(chat)


def _system(system: object) -> list[JSONObject]:
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if not isinstance(system, list):
        raise InvalidRequest("'system' must be a string or a list of text blocks")
    parts = [
        {"type": "text", "text": _text(block, f"system[{j}]")} for j, block in enumerate(system)
    ]
    if not parts:
        return []
    return [{"role": "system", "content": parts[0]["text"] if len(parts) == 1 else parts}]


def _messages(value: object) -> list[JSONObject]:
    if not isinstance(value, list) or not value:
        raise InvalidRequest("'messages' must be a non-empty list of message objects")
    out: list[JSONObject] = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"'{where}' must be an object")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise InvalidRequest(f"'{where}.role' must be 'user' or 'assistant'")
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
        elif not isinstance(content, list) or not content:
            raise InvalidRequest(f"'{where}.content' must be a string or a non-empty block list")
        elif role == "user":
            out.extend(_user(content, where))
        else:
            out.append(_assistant(content, where))
    return out


def _block(block: object, where: str) -> tuple[str, JSONObject]:
    """A content block and its `type`."""
    if not isinstance(block, dict) or not isinstance(kind := block.get("type"), str):
        raise InvalidRequest(f"'{where}' must be an object with a 'type'")
    return kind, block


def _text(block: object, where: str) -> str:
    kind, obj = _block(block, where)
    if kind != "text" or not isinstance(text := obj.get("text"), str):
        raise InvalidRequest(f"'{where}' must be a text block with a string 'text'")
    return text


def _user(blocks: list[object], where: str) -> list[JSONObject]:
    """A user turn: its tool results as `tool` messages, then the rest as one user message."""
    results: list[JSONObject] = []
    parts: list[JSONObject] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content[{j}]"
        kind, obj = _block(block, at)
        if kind == "tool_result":
            results.append(_tool_message(obj, at))
        else:
            parts.append(_part(obj, at))
    if parts:
        single = len(parts) == 1 and parts[0]["type"] == "text"
        results.append({"role": "user", "content": parts[0]["text"] if single else parts})
    return results


def _part(block: object, where: str) -> JSONObject:
    """A text or image block as an OpenAI content part."""
    kind, obj = _block(block, where)
    if kind == "text":
        return {"type": "text", "text": _text(obj, where)}
    if kind != "image":
        raise InvalidRequest(f"'{where}': {kind!r} blocks are not supported by Estuary")
    source = obj.get("source")
    source = source if isinstance(source, dict) else {}
    if source.get("type") == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if isinstance(media_type, str) and isinstance(data, str):
            return {"type": "image_url", "image_url": {"url": f"data:{media_type};base64,{data}"}}
    if source.get("type") == "url" and isinstance(url := source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": url}}
    raise InvalidRequest(f"'{where}.source' must be a base64 or url image source")


def _tool_message(block: JSONObject, where: str) -> JSONObject:
    """A `tool_result` block as a `tool` message (`is_error` is not carried)."""
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest(f"'{where}.tool_use_id' is required")
    content = block.get("content")
    if content is None:
        content = ""
    elif isinstance(content, list):
        parts = [_part(part, f"{where}.content[{k}]") for k, part in enumerate(content)]
        if all(part["type"] == "text" for part in parts):
            content = "".join(part["text"] for part in parts)
        else:
            content = parts
    elif not isinstance(content, str):
        raise InvalidRequest(f"'{where}.content' must be a string or a list of blocks")
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def _assistant(blocks: list[object], where: str) -> JSONObject:
    """An assistant turn: its text, and its `tool_use` blocks as `tool_calls`."""
    texts: list[str] = []
    calls: list[JSONObject] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content[{j}]"
        kind, obj = _block(block, at)
        if kind == "text":
            texts.append(_text(obj, at))
        elif kind == "tool_use":
            calls.append(_call(obj, at))
        elif kind not in _DROPPED_BLOCKS:
            raise InvalidRequest(f"'{at}': {kind!r} blocks are not supported by Estuary")
    message: JSONObject = {"role": "assistant", "content": "".join(texts)}
    if calls:
        message["tool_calls"] = calls
        message["content"] = message["content"] or None
    return message


def _call(block: JSONObject, where: str) -> JSONObject:
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
    if not isinstance(call_id, str) or not isinstance(name, str) or not isinstance(arguments, dict):
        raise InvalidRequest(f"'{where}' must have a string 'id' and 'name' and an object 'input'")
    function = {"name": name, "arguments": orjson.dumps(arguments).decode()}
    return {"id": call_id, "type": "function", "function": function}


def _tools(tools: object) -> list[JSONObject]:
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be a list")
    out: list[JSONObject] = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise InvalidRequest(f"'tools[{i}]' must be an object")
        if tool.get("type") not in (None, "custom"):
            raise InvalidRequest(f"'tools[{i}]': server tools ({tool['type']!r}) are not supported")
        name, schema = tool.get("name"), tool.get("input_schema")
        if not isinstance(name, str) or not name or not isinstance(schema, dict):
            raise InvalidRequest(f"'tools[{i}]' must have a 'name' and an object 'input_schema'")
        function: JSONObject = {"name": name, "parameters": schema}
        if isinstance(description := tool.get("description"), str):
            function["description"] = description
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: object, chat: JSONObject) -> None:
    if not isinstance(choice, dict):
        choice = {}
    kind = choice.get("type")
    if isinstance(kind, str) and kind in _TOOL_CHOICES:
        chat["tool_choice"] = _TOOL_CHOICES[kind]
    elif kind == "tool" and isinstance(name := choice.get("name"), str):
        chat["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise InvalidRequest("'tool_choice' must be {'type': 'auto'|'any'|'none'|'tool', …}")
    if choice.get("disable_parallel_tool_use") is True:
        chat["parallel_tool_calls"] = False


# -- the answer -------------------------------------------------------------------------------


def _frame(event: str, data: JSONObject) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (event.encode(), orjson.dumps(data))


def _stop_reason(finish_reason: str) -> str:
    return _STOP_REASONS.get(finish_reason, "end_turn")


class AnthropicEncoder:
    """Anthropic's `message` event stream (see the module docstring)."""

    media_type = _SSE_MEDIA_TYPE
    heartbeat: bytes | None = encode_comment("ping")  # any SSE reader skips a comment

    def __init__(self, request_id: str, alias: str) -> None:
        self._id = "msg_" + request_id
        self._alias = alias
        self._started = False
        self._index = -1
        self._open: str | None = None  # the type of the open content block
        self._text_open = b""  # the bytes before a text delta's JSON string, for the open block

    def event(self, event: StreamEvent) -> bytes:
        if type(event) is TextDelta:  # the token path: one small dumps
            lead = b"" if self._open == "text" else self._open_block({"type": "text", "text": ""})
            return lead + self._text_open + orjson.dumps(event.text) + b"}}\n\n"
        match event:
            case ReasoningDelta(text=text):
                lead = b""
                if self._open != "thinking":
                    lead = self._open_block({"type": "thinking", "thinking": "", "signature": ""})
                return lead + self._delta({"type": "thinking_delta", "thinking": text})
            case ToolCall():
                call_id = event.id or f"toolu_{self._id}_{event.index}"
                block = {"type": "tool_use", "id": call_id, "name": event.name, "input": {}}
                out = self._open_block(block)
                out += self._delta({"type": "input_json_delta", "partial_json": event.arguments})
                return out + self._close()
            case StreamStart():
                return self._start()
            case _:
                return b""  # usage and the end are folded into `done`

    def done(self, finish_reason: str, tokens: TokenCount) -> bytes:
        usage = {"input_tokens": tokens.prompt_tokens, "output_tokens": tokens.completion_tokens}
        delta = {"stop_reason": _stop_reason(finish_reason), "stop_sequence": None}
        end = _frame("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
        return (
            self._start() + self._close() + end + _frame("message_stop", {"type": "message_stop"})
        )

    def error(self, error: EstuaryError) -> bytes:
        return _frame("error", anthropic_error_body(error))

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        message: JSONObject = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._alias,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _frame("message_start", {"type": "message_start", "message": message})

    def _open_block(self, block: JSONObject) -> bytes:
        closing = self._close()
        self._index += 1
        self._open = block["type"]
        self._text_open = (
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
            b'"delta":{"type":"text_delta","text":' % self._index
        )
        start = {"type": "content_block_start", "index": self._index, "content_block": block}
        return closing + _frame("content_block_start", start)

    def _delta(self, delta: JSONObject) -> bytes:
        body = {"type": "content_block_delta", "index": self._index, "delta": delta}
        return _frame("content_block_delta", body)

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return _frame("content_block_stop", {"type": "content_block_stop", "index": self._index})


def anthropic_message(answer: Answer) -> JSONObject:
    """A whole collected answer as Anthropic's `message` object (for `stream: false`)."""
    content: list[JSONObject] = []
    if answer.reasoning:
        content.append({"type": "thinking", "thinking": answer.reasoning, "signature": ""})
    if answer.text:
        content.append({"type": "text", "text": answer.text})
    for call in answer.calls:
        try:
            arguments = orjson.loads(call.arguments) if call.arguments else {}
        except orjson.JSONDecodeError:
            arguments = {}
        content.append(
            {
                "type": "tool_use",
                "id": call.id or f"toolu_{answer.request_id}_{call.index}",
                "name": call.name,
                "input": arguments if isinstance(arguments, dict) else {},
            }
        )
    usage = {
        "input_tokens": answer.tokens.prompt_tokens,
        "output_tokens": answer.tokens.completion_tokens,
    }
    return {
        "id": "msg_" + answer.request_id,
        "type": "message",
        "role": "assistant",
        "model": answer.alias,
        "content": content,
        "stop_reason": _stop_reason(answer.finish_reason),
        "stop_sequence": None,
        "usage": usage,
    }


# -- errors -----------------------------------------------------------------------------------


def _error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def anthropic_error_body(error: EstuaryError) -> JSONObject:
    """Anthropic's error shape for `error`."""
    return {
        "type": "error",
        "error": {"type": _error_type(error.status_code), "message": error.message},
    }


def anthropic_error_response(error: EstuaryError) -> Response:
    """A JSON error response in Anthropic's shape, with `Retry-After` when known."""
    headers = {}
    if (retry_after := error.retry_after_s) is not None:
        headers["Retry-After"] = str(max(1, round(retry_after)))
    return JSONResponse(anthropic_error_body(error), status_code=error.status_code, headers=headers)


def _reshaped(body: bytes, status: int) -> bytes:
    """An OpenAI-shaped error body (`{"error": {"message", …}}`) in Anthropic's shape."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str):
        message = body.decode("utf-8", "replace") or "error"
    return orjson.dumps(
        {"type": "error", "error": {"type": _error_type(status), "message": message}}
    )


class AnthropicErrors:
    """Wraps a response app: an error response it sends (status >= 400) is reshaped for Anthropic.

    The streaming and collected responses answer a failure before the first token in OpenAI's
    shape; this rewrites that one JSON body. Streamed bytes pass untouched (they never follow an
    error status).
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        held: Message | None = None
        body = bytearray()

        async def reshaping_send(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held = message
                return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            body.extend(message.get("body", b""))
            if message.get("more_body", False):
                return
            data = _reshaped(bytes(body), held["status"])
            headers = [(k, v) for k, v in held["headers"] if k.lower() != b"content-length"]
            headers.append((b"content-length", b"%d" % len(data)))
            await send({**held, "headers": headers})
            await send({"type": "http.response.body", "body": data, "more_body": False})

        await self._app(scope, receive, reshaping_send)
