"""Google Gemini `generateContent` wire format, both ways, with no I/O.

`generate_body()` translates Estuary's OpenAI-shaped request into a Gemini request body;
`GeminiStreamParser` turns the bytes of `streamGenerateContent?alt=sse` — every SSE `data:` a whole
`GenerateContentResponse` — split anywhere, into core events.

The request, field by field:

- `system` and `developer` messages → `systemInstruction` (all of them, in order: Gemini has no
  system turn inside the conversation);
- `user` → a `"user"` turn, `assistant` → a `"model"` turn; consecutive turns of one role merge;
  text parts, `image_url` parts holding a `data:` URL and `input_audio` parts become parts;
- assistant `tool_calls` → `functionCall` parts (the arguments' JSON text → the `args` object); the
  first call of each model turn carries Google's documented placeholder thought signature, since the
  real one never reaches an OpenAI client and Gemini 3 refuses function calls without any;
- `tool` (and legacy `function`) messages → `functionResponse` parts of a `"user"` turn, named after
  the matching earlier call, `response` = `{"output": <the content text>}`;
- `tools` → one `Tool` of `functionDeclarations` (JSON Schema as `parametersJsonSchema`, which takes
  the schema OpenAI clients write as is); `tool_choice` → `toolConfig.functionCallingConfig`;
- `max_tokens`, `temperature`, `top_p`, `stop`, `seed`, `presence_penalty`, `frequency_penalty` →
  `generationConfig`. A legacy completion is one user turn.

Anything Gemini's format cannot carry (an `https:` image URL, a malformed tool call) raises
`UntranslatableRequest`, a `ValueError`; the provider reports it as the request's own fault.

The stream: text parts → `TextDelta`, parts with `thought: true` → `ReasoningDelta`, `functionCall`
parts (always whole) → `ToolCall` at once, the last `usageMetadata` → `Usage`, `finishReason` → the
end's reason. There is no `[DONE]`: the end of the body after a finish reason is a clean end,
without one it is an `UpstreamProtocolError`. An `error` object is an in-band `UpstreamError`
(redacted); a prompt Gemini blocked (`promptFeedback.blockReason`, no candidates) is
`UpstreamRejected` — the request itself is refused, so no other target is tried either.
Must not import the HTTP layer, routing or storage.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

import orjson

from estuary.core.errors import UpstreamError, UpstreamProtocolError, UpstreamRejected
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

__all__ = ["PLACEHOLDER_SIGNATURE", "GeminiStreamParser", "UntranslatableRequest", "generate_body"]

JSONObject = dict[str, Any]

_FINISH_REASONS: Final[Mapping[str, FinishReason]] = MappingProxyType(
    {
        "STOP": "stop",
        "MAX_TOKENS": "length",
        "SAFETY": "content_filter",
        "RECITATION": "content_filter",
        "BLOCKLIST": "content_filter",
        "PROHIBITED_CONTENT": "content_filter",
        "SPII": "content_filter",
        "IMAGE_SAFETY": "content_filter",
        "IMAGE_PROHIBITED_CONTENT": "content_filter",
        "IMAGE_RECITATION": "content_filter",
    }
)
# Google's documented stand-in for a thought signature the client does not have (Gemini API FAQ,
# "thought signatures"; Vertex AI documents the same value for REST callers).
PLACEHOLDER_SIGNATURE: Final = "skip_thought_signature_validator"
_TOOL_MODES: Final[Mapping[str, str]] = MappingProxyType(
    {"auto": "AUTO", "none": "NONE", "required": "ANY"}
)
_AUDIO_TYPES: Final[Mapping[str, str]] = MappingProxyType({"wav": "audio/wav", "mp3": "audio/mp3"})
_MAX_ERROR_TEXT: Final = 500


# -- the request ------------------------------------------------------------------------------


def generate_body(request: UpstreamRequest) -> bytes:
    """The JSON body of a `generateContent`/`streamGenerateContent` call for `request`."""
    body: JSONObject = {}
    if isinstance(request, CompletionRequest):
        body["contents"] = [{"role": "user", "parts": [{"text": request.prompt}]}]
    else:
        system, contents = _conversation(request.messages)
        body["contents"] = contents
        if system:
            body["systemInstruction"] = {"parts": system}
        if request.tools:
            declarations = [_declaration(i, tool) for i, tool in enumerate(request.tools)]
            body["tools"] = [{"functionDeclarations": declarations}]
            if (choice := request.extra.get("tool_choice")) is not None:
                body["toolConfig"] = {"functionCallingConfig": _calling_config(choice)}
    if config := _generation_config(request):
        body["generationConfig"] = config
    return orjson.dumps(body)


def _conversation(messages: Sequence[JSONObject]) -> tuple[list[JSONObject], list[JSONObject]]:
    """`(systemInstruction parts, contents)` for a list of OpenAI-shaped messages."""
    system: list[JSONObject] = []
    contents: list[JSONObject] = []
    names: dict[str, str] = {}  # tool_call_id → function name; the nearest earlier call wins
    for i, message in enumerate(messages):
        role = message.get("role")
        where = f"messages[{i}]"
        if role in ("system", "developer"):
            system.extend(_parts(message.get("content"), where))
        elif role == "user":
            _append(contents, "user", _parts(message.get("content"), where))
        elif role == "assistant":
            _append(contents, "model", _model_parts(message, where, names))
        elif role in ("tool", "function"):
            _append(contents, "user", [_function_response(message, where, names)])
        else:
            raise UntranslatableRequest(f"'{where}.role' {role!r} has no Gemini equivalent")
    for content in contents:
        if content["role"] == "model":
            _sign_first_call(content["parts"])
    return system, contents


def _append(contents: list[JSONObject], role: str, parts: list[JSONObject]) -> None:
    """Add a turn, merging it into the last one when the role repeats (Gemini wants them apart)."""
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def _parts(content: object, where: str) -> list[JSONObject]:
    """Gemini parts for a message's `content` (a string or a list of OpenAI content parts)."""
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        return []  # None: an assistant message that only calls tools
    parts: list[JSONObject] = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind in ("text", "refusal"):
            if text := part.get(kind):
                parts.append({"text": str(text)})
        elif kind == "image_url":
            parts.append(_image(part.get("image_url"), f"{where}.content[{j}]"))
        elif kind == "input_audio":
            parts.append(_audio(part.get("input_audio"), f"{where}.content[{j}]"))
        else:
            raise UntranslatableRequest(
                f"'{where}.content[{j}]': {kind!r} parts cannot be sent to Gemini"
            )
    return parts


def _image(image: object, where: str) -> JSONObject:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url.startswith("data:"):
        raise UntranslatableRequest(f"'{where}': Gemini takes images only as data: URLs")
    head, comma, data = url[len("data:") :].partition(",")
    mime, _, encoding = head.partition(";")
    if not comma or encoding != "base64" or not mime:
        raise UntranslatableRequest(f"'{where}': expected data:<mime type>;base64,<data>")
    return {"inlineData": {"mimeType": mime, "data": data}}


def _audio(audio: object, where: str) -> JSONObject:
    if not isinstance(audio, dict) or not isinstance(data := audio.get("data"), str):
        raise UntranslatableRequest(f"'{where}.input_audio' must hold base64 'data'")
    mime = _AUDIO_TYPES.get(str(audio.get("format")))
    if mime is None:
        raise UntranslatableRequest(f"'{where}.input_audio.format' must be wav or mp3")
    return {"inlineData": {"mimeType": mime, "data": data}}


def _model_parts(message: JSONObject, where: str, names: dict[str, str]) -> list[JSONObject]:
    """An assistant message: its text, then one `functionCall` part per tool call."""
    parts = _parts(message.get("content"), where)
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise UntranslatableRequest(f"'{where}.tool_calls' must be a list")
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(name := function.get("name"), str):
            raise UntranslatableRequest(f"'{where}.tool_calls[{j}].function.name' is required")
        if isinstance(call_id := call.get("id"), str):
            names[call_id] = name
        args = _arguments(function.get("arguments"), f"{where}.tool_calls[{j}]")
        parts.append({"functionCall": {"name": name, "args": args}})
    legacy = message.get("function_call")  # OpenAI's deprecated single function call
    if isinstance(legacy, dict) and isinstance(name := legacy.get("name"), str):
        args = _arguments(legacy.get("arguments"), f"{where}.function_call")
        parts.append({"functionCall": {"name": name, "args": args}})
    return parts


def _arguments(text: object, where: str) -> JSONObject:
    """A call's arguments: JSON text of an object (empty text means no arguments)."""
    if text is None or text == "":
        return {}
    if isinstance(text, dict):
        return text
    try:
        args = orjson.loads(text) if isinstance(text, str) else None
    except orjson.JSONDecodeError:
        args = None
    if not isinstance(args, dict):
        raise UntranslatableRequest(f"'{where}.function.arguments' must be a JSON object")
    return args


def _sign_first_call(parts: list[JSONObject]) -> None:
    for part in parts:
        if "functionCall" in part:
            part.setdefault("thoughtSignature", PLACEHOLDER_SIGNATURE)
            return


def _function_response(message: JSONObject, where: str, names: Mapping[str, str]) -> JSONObject:
    """A `tool` (or legacy `function`) message as a `functionResponse` part."""
    if message.get("role") == "function":
        name = message.get("name")
        if not isinstance(name, str):
            raise UntranslatableRequest(f"'{where}.name' is required for a function message")
    else:
        call_id = message.get("tool_call_id")
        name = names.get(call_id) if isinstance(call_id, str) else None
        if name is None:
            raise UntranslatableRequest(
                f"'{where}.tool_call_id' {call_id!r} matches no earlier assistant tool call"
            )
    output = "".join(p.get("text", "") for p in _parts(message.get("content"), where))
    return {"functionResponse": {"name": name, "response": {"output": output}}}


def _declaration(i: int, tool: JSONObject) -> JSONObject:
    function = tool["function"]  # core.requests checked it is an object with a string name
    declaration: JSONObject = {"name": function["name"]}
    if isinstance(description := function.get("description"), str):
        declaration["description"] = description
    parameters = function.get("parameters")
    if isinstance(parameters, dict):
        declaration["parametersJsonSchema"] = parameters
    elif parameters is not None:
        raise UntranslatableRequest(f"'tools[{i}].function.parameters' must be an object")
    return declaration


def _calling_config(choice: object) -> JSONObject:
    """OpenAI's `tool_choice` as Gemini's `functionCallingConfig`."""
    if isinstance(choice, str) and choice in _TOOL_MODES:
        return {"mode": _TOOL_MODES[choice]}
    function = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(function, dict) and isinstance(name := function.get("name"), str):
        return {"mode": "ANY", "allowedFunctionNames": [name]}
    raise UntranslatableRequest(
        "'tool_choice' must be auto, none, required or {'type': 'function', 'function': {'name'}}"
    )


def _generation_config(request: UpstreamRequest) -> JSONObject:
    config: JSONObject = {}
    if request.max_tokens is not None:
        config["maxOutputTokens"] = request.max_tokens
    if request.temperature is not None:
        config["temperature"] = request.temperature
    extra = request.extra
    if (top_p := extra.get("top_p")) is not None:
        config["topP"] = top_p
    if (stop := extra.get("stop")) is not None:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    for ours, theirs in (
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        value = extra.get(ours)
        if isinstance(value, int | float) and not isinstance(value, bool):
            config[theirs] = value
    return config


# -- the stream -------------------------------------------------------------------------------


class GeminiStreamParser:
    """Bytes of a `streamGenerateContent?alt=sse` body in, core events out.

    `feed()` raises `UpstreamError` for an error object inside the stream, `UpstreamRejected` for a
    blocked prompt and `UpstreamProtocolError` for malformed JSON — but never loses the events
    before the failure: those are returned first and the failure is raised by `check()` or the next
    call. Usage and the end are produced by `finish()`, when the body is over: Gemini repeats
    `usageMetadata` in several chunks and only the last one counts.
    """

    __slots__ = (
        "_calls",
        "_decoder",
        "_done",
        "_failed",
        "_finish",
        "_provider",
        "_redact",
        "_usage",
    )

    def __init__(self, provider: str, redact: Redactor) -> None:
        self._provider = provider
        self._redact = redact
        self._decoder = SSEDecoder()
        self._calls = 0
        self._usage: Usage | None = None
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
                self._on_data(message.data, events)
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
        """The upstream closed the body: usage and the end if it had finished, else raise."""
        self.check()
        events: list[StreamEvent] = []
        for message in self._decoder.finish():
            self._on_data(message.data, events)
        if not self._done:
            if self._finish is None:
                raise UpstreamProtocolError(self._provider, "stream ended before it was complete")
            if self._usage is not None:
                events.append(self._usage)
            reason = self._finish
            if reason == "stop" and self._calls:
                reason = "tool_calls"
            events.append(StreamEnd(reason=reason))
            self._done = True
        return events

    def _on_data(self, data: str, events: list[StreamEvent]) -> None:
        if self._done or not data:
            return
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError(self._provider, "malformed JSON in stream") from None
        if not isinstance(chunk, dict):
            raise UpstreamProtocolError(self._provider, "stream message is not a JSON object")
        if "error" in chunk:
            raise self._in_band_error(chunk["error"])
        if isinstance(usage := chunk.get("usageMetadata"), dict):
            self._usage = _usage(usage)
        candidates = chunk.get("candidates")
        if not candidates:
            feedback = chunk.get("promptFeedback")
            if isinstance(feedback, dict) and (reason := feedback.get("blockReason")):
                detail = f"Gemini blocked the prompt ({self._redact(str(reason))[:100]})"
                raise UpstreamRejected(self._provider, detail)
            return
        candidate = candidates[0] if isinstance(candidates, list) else None
        if not isinstance(candidate, dict):
            raise UpstreamProtocolError(self._provider, "stream candidate is not a JSON object")
        content = candidate.get("content")
        if isinstance(content, dict):
            self._take_parts(content.get("parts") or (), events)
        if reason := candidate.get("finishReason"):
            self._finish = _FINISH_REASONS.get(str(reason), "stop")

    def _take_parts(self, parts: Iterable[object], events: list[StreamEvent]) -> None:
        for part in parts:
            if not isinstance(part, dict):
                continue
            if isinstance(call := part.get("functionCall"), dict):
                events.append(self._tool_call(call))
            elif isinstance(text := part.get("text"), str) and text:
                thought = part.get("thought") is True
                events.append(ReasoningDelta(text=text) if thought else TextDelta(text=text))
            # Anything else (inlineData, executableCode, a signature-only part) is not relayed.

    def _tool_call(self, call: JSONObject) -> ToolCall:
        index = self._calls
        self._calls += 1
        args = call.get("args")
        call_id = call.get("id")
        return ToolCall(
            index=index,
            id=call_id if isinstance(call_id, str) and call_id else f"call_{index}",
            name=str(call.get("name") or ""),
            arguments=orjson.dumps(args if args is not None else {}).decode(),
        )

    def _in_band_error(self, error: object) -> UpstreamError:
        if isinstance(error, dict):
            text = str(error.get("message") or error.get("status") or error.get("code") or "error")
        else:
            text = str(error)
        detail = "error in stream: " + self._redact(text)[:_MAX_ERROR_TEXT]
        return UpstreamError(self._provider, detail)


def _usage(usage: JSONObject) -> Usage:
    """Gemini's counts: the answer's tokens are the candidates' plus the thinking's."""
    answer = _count(usage.get("candidatesTokenCount")) + _count(usage.get("thoughtsTokenCount"))
    return Usage(prompt_tokens=_count(usage.get("promptTokenCount")), completion_tokens=answer)


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
