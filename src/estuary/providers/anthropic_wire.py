"""Anthropic Messages wire format, both ways, with no I/O.

`messages_body()` translates Estuary's OpenAI-shaped request into an Anthropic Messages request
(`POST /v1/messages`, always `stream: true`); `AnthropicStreamParser` turns the upstream's SSE
bytes, split anywhere, into core events.

The request, field by field:

- `system` and `developer` messages → the top-level `system` (all of them, in order: Anthropic has
  no system turn inside the conversation);
- `user` and `assistant` turns; consecutive turns of one role merge (Anthropic wants them to
  alternate); text parts → `text` blocks, `image_url` parts → `image` blocks (a `data:` URL as a
  `base64` source, an `http(s)` URL as a `url` source);
- assistant `tool_calls` → `tool_use` blocks (the arguments' JSON text → the `input` object);
- `tool` messages → `tool_result` blocks of a user turn, placed before any other block of that
  turn as Anthropic requires;
- `tools` → `{name, description, input_schema}`; `tool_choice` (`auto`, `none`, `required` → `any`,
  a named function → `tool`) and `parallel_tool_calls: false` → `tool_choice`;
- `max_tokens` (required by Anthropic: 4096 when the client sent none), `temperature` (Anthropic's
  range is 0–1: a higher value is sent as 1), `top_p`, `stop` → `stop_sequences`, `user` →
  `metadata.user_id`. A legacy completion is one user turn.

Anything else in the request is not sent. What Anthropic's format cannot carry (audio or file
parts, legacy `function` messages, a malformed tool call) raises `UntranslatableRequest`, a
`ValueError`; the provider reports it as the request's own fault.

The stream: `message_start` carries the input tokens (cache reads and writes included),
`content_block_start`/`_delta` give text (`TextDelta`), thinking (`ReasoningDelta`; signatures are
dropped) and tool input fragments, assembled into one `ToolCall` at `content_block_stop`;
`message_delta` brings the stop reason and the output tokens (cumulative counts, so the last one
wins); `message_stop` ends the stream with `Usage` and `StreamEnd`. `ping` is ignored; an `error`
event is an in-band `UpstreamError` of the kind its `type` names, its message redacted. A body that
ends before `message_stop` is an `UpstreamProtocolError`.
Must not import the HTTP layer, routing or storage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import orjson

from estuary.core.errors import (
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)
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
from estuary.core.requests import CompletionRequest, UpstreamRequest
from estuary.providers.base import UntranslatableRequest
from estuary.sse import SSEDecoder

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "AnthropicStreamParser",
    "UntranslatableRequest",
    "messages_body",
]

JSONObject = dict[str, Any]

DEFAULT_MAX_TOKENS: Final = 4096
_MAX_TEMPERATURE: Final = 1.0
_MAX_ERROR_TEXT: Final = 500

_STOP_REASONS: Final[Mapping[str, FinishReason]] = MappingProxyType(
    {
        "end_turn": "stop",
        "stop_sequence": "stop",
        "pause_turn": "stop",  # a server tool paused the turn; the answer so far is whole
        "max_tokens": "length",
        "model_context_window_exceeded": "length",
        "tool_use": "tool_calls",
        "refusal": "content_filter",
    }
)
# Anthropic's error `type`s (Errors page of its API docs) → the failure they are. Others, such as
# `overloaded_error` and `api_error`, are plain `UpstreamError`s: another target may do better.
_ERRORS: Final[Mapping[str, type[UpstreamError]]] = MappingProxyType(
    {
        "invalid_request_error": UpstreamRejected,
        "request_too_large": UpstreamRejected,
        "authentication_error": UpstreamAuthFailed,
        "permission_error": UpstreamAuthFailed,
        "billing_error": UpstreamAuthFailed,
        "rate_limit_error": UpstreamRateLimited,
        "timeout_error": UpstreamTimeout,
    }
)
_TOOL_MODES: Final[Mapping[str, str]] = MappingProxyType(
    {"auto": "auto", "none": "none", "required": "any"}
)


# -- the request ------------------------------------------------------------------------------


def messages_body(request: UpstreamRequest, model: str) -> bytes:
    """The JSON body of a streamed `POST /v1/messages` for `request` and the upstream `model`."""
    body: JSONObject = {"model": model, "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS}
    if isinstance(request, CompletionRequest):
        body["messages"] = [{"role": "user", "content": request.prompt}]
    else:
        system, messages = _conversation(request.messages)
        if system is not None:
            body["system"] = system
        body["messages"] = messages
        if request.tools:
            body["tools"] = [_tool(i, tool) for i, tool in enumerate(request.tools)]
            if (choice := _tool_choice(request.extra)) is not None:
                body["tool_choice"] = choice
    _sampling(request, body)
    body["stream"] = True
    return orjson.dumps(body)


def _conversation(
    messages: Sequence[JSONObject],
) -> tuple[str | list[JSONObject] | None, list[JSONObject]]:
    """`(system, messages)` for a list of OpenAI-shaped messages."""
    system: list[JSONObject] = []
    turns: list[JSONObject] = []
    for i, message in enumerate(messages):
        role = message.get("role")
        where = f"messages[{i}]"
        if role in ("system", "developer"):
            system.extend(b for b in _blocks(message.get("content"), where) if b["type"] == "text")
        elif role == "user":
            _append(turns, "user", _blocks(message.get("content"), where))
        elif role == "assistant":
            _append(turns, "assistant", _assistant_blocks(message, where))
        elif role == "tool":
            _append(turns, "user", [_tool_result(message, where)])
        else:
            raise UntranslatableRequest(f"'{where}.role' {role!r} has no Anthropic equivalent")
    for turn in turns:
        if turn["role"] == "user":  # tool results must open the turn that answers the calls
            turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    if not system:
        return None, turns
    if len(system) == 1:
        return str(system[0]["text"]), turns
    return system, turns


def _append(turns: list[JSONObject], role: str, blocks: list[JSONObject]) -> None:
    """Add a turn, merging it into the last one when the role repeats."""
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def _blocks(content: object, where: str) -> list[JSONObject]:
    """Anthropic content blocks for a message's `content` (a string or OpenAI content parts)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        return []  # None: an assistant message that only calls tools
    blocks: list[JSONObject] = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind in ("text", "refusal"):
            if text := part.get(kind):
                blocks.append({"type": "text", "text": str(text)})
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url"), f"{where}.content[{j}]"))
        else:
            raise UntranslatableRequest(
                f"'{where}.content[{j}]': {kind!r} parts cannot be sent to Anthropic"
            )
    return blocks


def _image(image: object, where: str) -> JSONObject:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise UntranslatableRequest(f"'{where}.image_url.url' must be a string")
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    head, comma, data = url.removeprefix("data:").partition(",")
    media_type, _, encoding = head.partition(";")
    if not url.startswith("data:") or not comma or encoding != "base64" or not media_type:
        raise UntranslatableRequest(
            f"'{where}': expected an http(s) URL or data:<media type>;base64,<data>"
        )
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _assistant_blocks(message: JSONObject, where: str) -> list[JSONObject]:
    """An assistant message: its text, then one `tool_use` block per tool call."""
    blocks = _blocks(message.get("content"), where)
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise UntranslatableRequest(f"'{where}.tool_calls' must be a list")
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        call_id = call.get("id") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(name := function.get("name"), str):
            raise UntranslatableRequest(f"'{where}.tool_calls[{j}].function.name' is required")
        if not isinstance(call_id, str) or not call_id:
            raise UntranslatableRequest(f"'{where}.tool_calls[{j}].id' is required")
        arguments = _arguments(function.get("arguments"), f"{where}.tool_calls[{j}]")
        blocks.append({"type": "tool_use", "id": call_id, "name": name, "input": arguments})
    if message.get("function_call") is not None:
        raise UntranslatableRequest(f"'{where}.function_call' (legacy) is not supported; use tools")
    return blocks


def _arguments(text: object, where: str) -> JSONObject:
    """A call's arguments: JSON text of an object (empty text means no arguments)."""
    if text is None or text == "":
        return {}
    if isinstance(text, dict):
        return text
    try:
        arguments = orjson.loads(text) if isinstance(text, str) else None
    except orjson.JSONDecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        raise UntranslatableRequest(f"'{where}.function.arguments' must be a JSON object")
    return arguments


def _tool_result(message: JSONObject, where: str) -> JSONObject:
    """A `tool` message as a `tool_result` block (its text, or its text and image blocks)."""
    block: JSONObject = {"type": "tool_result", "tool_use_id": message.get("tool_call_id")}
    content = message.get("content")
    if isinstance(content, str):
        if content:
            block["content"] = content
    elif blocks := _blocks(content, where):
        block["content"] = blocks
    return block


def _tool(i: int, tool: JSONObject) -> JSONObject:
    function = tool["function"]  # core.requests checked it is an object with a string name
    parameters = function.get("parameters")
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise UntranslatableRequest(f"'tools[{i}].function.parameters' must be an object")
    # Anthropic insists on an object schema; OpenAI clients often send `{}` for "no parameters".
    declared: JSONObject = {"name": function["name"]}
    if isinstance(description := function.get("description"), str):
        declared["description"] = description
    declared["input_schema"] = {"type": "object", **parameters}
    return declared


def _tool_choice(extra: Mapping[str, Any]) -> JSONObject | None:
    """OpenAI's `tool_choice` and `parallel_tool_calls` as Anthropic's `tool_choice`."""
    choice = extra.get("tool_choice")
    result: JSONObject
    if choice is None:
        result = {"type": "auto"}
    elif isinstance(choice, str) and choice in _TOOL_MODES:
        result = {"type": _TOOL_MODES[choice]}
    else:
        function = choice.get("function") if isinstance(choice, dict) else None
        if not isinstance(function, dict) or not isinstance(name := function.get("name"), str):
            raise UntranslatableRequest(
                "'tool_choice' must be auto, none, required or "
                "{'type': 'function', 'function': {'name': …}}"
            )
        result = {"type": "tool", "name": name}
    if extra.get("parallel_tool_calls") is False and result["type"] != "none":
        result["disable_parallel_tool_use"] = True
    elif choice is None:
        return None  # nothing asked: Anthropic's default is `auto`
    return result


def _sampling(request: UpstreamRequest, body: JSONObject) -> None:
    if request.temperature is not None:
        body["temperature"] = min(request.temperature, _MAX_TEMPERATURE)
    extra = request.extra
    if (top_p := extra.get("top_p")) is not None:
        body["top_p"] = top_p
    if (stop := extra.get("stop")) is not None:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if isinstance(user := extra.get("user"), str) and user:
        body["metadata"] = {"user_id": user}


# -- the stream -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Block:
    """One open content block; only tool-use blocks are kept until they stop."""

    kind: str
    id: str = ""
    name: str = ""
    start_input: object = None
    fragments: list[str] = field(default_factory=list)


class AnthropicStreamParser:
    """Bytes of an Anthropic Messages SSE stream in, core events out.

    `feed()` raises `UpstreamError` for an `error` event and `UpstreamProtocolError` for malformed
    JSON — but never loses the events before the failure: those are returned first and the failure
    is raised by `check()` or the next call. `finish()` raises when the stream ended before
    `message_stop`.
    """

    __slots__ = (
        "_blocks",
        "_calls",
        "_decoder",
        "_done",
        "_failed",
        "_finish",
        "_input",
        "_output",
        "_provider",
        "_redact",
        "_reported",
    )

    def __init__(self, provider: str, redact: Redactor) -> None:
        self._provider = provider
        self._redact = redact
        self._decoder = SSEDecoder()
        self._blocks: dict[int, _Block] = {}
        self._calls = 0  # tool calls emitted so far: the next call's index
        self._input: dict[str, int] = {}  # the input-token counts by field, latest wins
        self._output = 0
        self._reported = False
        self._finish: FinishReason | None = None
        self._failed: UpstreamError | None = None
        self._done = False

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
                self._on_message(message.event, message.data, events)
        except UpstreamError as exc:
            if not events:
                raise
            self._failed = exc  # deliver the text that came before it first
        return events

    def check(self) -> None:
        """Raise the failure found by the last `feed()`, if it had events to return first."""
        if self._failed is not None:
            raise self._failed

    def finish(self) -> list[StreamEvent]:
        """The upstream closed the body: fine after `message_stop`, else raise."""
        self.check()
        events: list[StreamEvent] = []
        for message in self._decoder.finish():
            self._on_message(message.event, message.data, events)
        if not self._done:
            raise UpstreamProtocolError(self._provider, "stream ended before message_stop")
        return events

    def _on_message(self, name: str, data: str, events: list[StreamEvent]) -> None:
        if self._done or not data:
            return
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError(self._provider, "malformed JSON in stream") from None
        if not isinstance(message, dict):
            raise UpstreamProtocolError(self._provider, "stream message is not a JSON object")
        match message.get("type") or name:
            case "content_block_delta":
                self._on_delta(message, events)
            case "content_block_start":
                self._on_start(message, events)
            case "content_block_stop":
                self._on_stop(message.get("index"), events)
            case "message_start":
                started = message.get("message")
                if isinstance(started, dict):
                    self._take_usage(started.get("usage"))
            case "message_delta":
                self._on_message_delta(message)
            case "message_stop":
                self._end(events)
            case "error":
                raise self._in_band_error(message.get("error"))
            case _:
                pass  # `ping`, and event types added after this was written

    def _on_start(self, message: JSONObject, events: list[StreamEvent]) -> None:
        block = message.get("content_block")
        if not isinstance(block, dict):
            raise UpstreamProtocolError(self._provider, "content_block_start without a block")
        kind = str(block.get("type"))
        if kind == "tool_use":
            self._blocks[_index(message)] = _Block(
                kind=kind,
                id=str(block.get("id") or ""),
                name=str(block.get("name") or ""),
                start_input=block.get("input"),
            )
            return
        self._blocks[_index(message)] = _Block(kind=kind)
        if kind == "text" and (text := block.get("text")):
            events.append(TextDelta(text=str(text)))
        elif kind == "thinking" and (thought := block.get("thinking")):
            events.append(ReasoningDelta(text=str(thought)))

    def _on_delta(self, message: JSONObject, events: list[StreamEvent]) -> None:
        delta = message.get("delta")
        if not isinstance(delta, dict):
            raise UpstreamProtocolError(self._provider, "content_block_delta without a delta")
        match delta.get("type"):
            case "text_delta":
                if text := delta.get("text"):
                    events.append(TextDelta(text=str(text)))
            case "thinking_delta":
                if thought := delta.get("thinking"):
                    events.append(ReasoningDelta(text=str(thought)))
            case "input_json_delta":
                block = self._blocks.get(_index(message))
                if block is None or block.kind != "tool_use":
                    raise UpstreamProtocolError(self._provider, "tool input outside a tool block")
                if fragment := delta.get("partial_json"):
                    block.fragments.append(str(fragment))
            case _:
                pass  # signature_delta, citations_delta: nothing a client of ours can use

    def _on_stop(self, index: object, events: list[StreamEvent]) -> None:
        block = self._blocks.pop(index, None) if isinstance(index, int) else None
        if block is not None and block.kind == "tool_use":
            events.append(self._tool_call(block))

    def _tool_call(self, block: _Block) -> ToolCall:
        arguments = "".join(block.fragments)
        if not arguments:  # no fragments: the input was whole in the start (or empty)
            start = block.start_input if isinstance(block.start_input, dict) else {}
            arguments = orjson.dumps(start).decode()
        index = self._calls
        self._calls += 1
        return ToolCall(
            index=index, id=block.id or f"toolu_{index}", name=block.name, arguments=arguments
        )

    def _on_message_delta(self, message: JSONObject) -> None:
        delta = message.get("delta")
        if isinstance(delta, dict) and (reason := delta.get("stop_reason")):
            self._finish = _STOP_REASONS.get(str(reason), "stop")
        self._take_usage(message.get("usage"))

    def _take_usage(self, usage: object) -> None:
        """Counts are cumulative: each one present replaces the one before."""
        if not isinstance(usage, dict):
            return
        self._reported = True
        for name in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
            if (count := _count(usage.get(name))) is not None:
                self._input[name] = count
        if (output := _count(usage.get("output_tokens"))) is not None:
            self._output = output

    def _end(self, events: list[StreamEvent]) -> None:
        for index in sorted(self._blocks):  # blocks the upstream never closed
            self._on_stop(index, events)
        if self._reported:
            prompt = sum(self._input.values())
            events.append(Usage(prompt_tokens=prompt, completion_tokens=self._output))
        reason = self._finish or ("tool_calls" if self._calls else "stop")
        events.append(StreamEnd(reason=reason))
        self._done = True

    def _in_band_error(self, error: object) -> UpstreamError:
        kind, text = "", "error"
        if isinstance(error, dict):
            kind = str(error.get("type") or "")
            text = str(error.get("message") or kind or "error")
        elif error is not None:
            text = str(error)
        label = f" ({kind})" if kind else ""
        detail = self._redact(f"error in stream{label}: {text}")[:_MAX_ERROR_TEXT]
        return _ERRORS.get(kind, UpstreamError)(self._provider, detail)


def _index(message: JSONObject) -> int:
    index = message.get("index")
    return index if isinstance(index, int) and not isinstance(index, bool) else 0


def _count(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None
