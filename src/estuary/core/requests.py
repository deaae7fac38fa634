"""What a client asks for, validated: chat and legacy completion requests.

The parsers here turn a decoded JSON body into a frozen request value or raise `InvalidRequest`
with a message that names the offending field. They are pure (no I/O) so the OpenAI API, the app
API and the WebSocket share one set of rules. Messages are kept as the client's JSON objects after
validation: adapters for OpenAI-format upstreams pass them on untouched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from estuary.core.errors import InvalidRequest

__all__ = [
    "ChatRequest",
    "CompletionRequest",
    "UpstreamRequest",
    "parse_app_chat",
    "parse_openai_chat",
    "parse_openai_completion",
    "prompt_text",
]

JSONObject = dict[str, Any]

_ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# Parameters validated here; anything else goes to OpenAI-format upstreams as it came.
_HANDLED: Final = frozenset(
    {"model", "messages", "prompt", "stream", "stream_options", "max_tokens", "temperature", "n"}
    | {"max_completion_tokens", "tools", "top_p", "stop", "template", "variables"}
)
_MAX_VARIABLES: Final = 32
_MAX_STOP: Final = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatRequest:
    """A chat completion request, model still an alias."""

    model: str | None
    messages: tuple[JSONObject, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    tools: tuple[JSONObject, ...] | None = None
    stream: bool = True
    include_usage: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)
    template: str | None = None  # a server-side prompt template, filled in with `variables`
    variables: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class CompletionRequest:
    """A legacy `/v1/completions` request (one prompt string)."""

    model: str | None
    prompt: str
    max_tokens: int | None = None
    temperature: float | None = None
    stream: bool = True
    include_usage: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)


UpstreamRequest = ChatRequest | CompletionRequest


def parse_openai_chat(body: object) -> ChatRequest:
    """Validate an OpenAI `POST /v1/chat/completions` body."""
    obj = _object(body)
    stream = _optional_bool(obj, "stream") or False
    return ChatRequest(
        model=_model(obj),
        messages=_messages(obj.get("messages")),
        max_tokens=_max_tokens(obj),
        temperature=_temperature(obj),
        tools=_tools(obj.get("tools")),
        stream=stream,
        include_usage=_include_usage(obj, stream),
        extra=_extra(obj),
        template=_template(obj),
        variables=_variables(obj),
    )


def parse_openai_completion(body: object) -> CompletionRequest:
    """Validate an OpenAI legacy `POST /v1/completions` body (a single string prompt)."""
    obj = _object(body)
    prompt = obj.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InvalidRequest("'prompt' must be a string (or a list of exactly one string)")
    stream = _optional_bool(obj, "stream") or False
    return CompletionRequest(
        model=_model(obj),
        prompt=prompt,
        max_tokens=_max_tokens(obj),
        temperature=_temperature(obj),
        stream=stream,
        include_usage=_include_usage(obj, stream),
        extra=_extra(obj),
    )


def parse_app_chat(body: object) -> ChatRequest:
    """Validate an app-API body: `messages`, or `prompt`/`message`, plus an optional `system`."""
    obj = _object(body)
    system = obj.get("system")
    if system is not None and not isinstance(system, str):
        raise InvalidRequest("'system' must be a string")
    if "messages" in obj:
        messages = _messages(obj["messages"])
    else:
        text = obj.get("message", obj.get("prompt"))
        if not isinstance(text, str) or not text.strip():
            raise InvalidRequest("send 'messages', or a non-empty 'message' string")
        messages = ({"role": "user", "content": text},)
    if system:
        messages = ({"role": "system", "content": system}, *messages)
    return ChatRequest(
        model=_model(obj),
        messages=messages,
        max_tokens=_max_tokens(obj),
        temperature=_temperature(obj),
        tools=_tools(obj.get("tools")),
        stream=True,
        include_usage=True,
        template=_template(obj),
        variables=_variables(obj),
    )


def _template(obj: JSONObject) -> str | None:
    name = obj.get("template")
    if name is not None and (not isinstance(name, str) or not name):
        raise InvalidRequest("'template' must be a non-empty string (a template's name)")
    return name


def _variables(obj: JSONObject) -> dict[str, str]:
    value = obj.get("variables")
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > _MAX_VARIABLES:
        raise InvalidRequest(f"'variables' must be an object of at most {_MAX_VARIABLES} strings")
    for name, text in value.items():
        if not isinstance(text, str):
            raise InvalidRequest(f"'variables.{name}' must be a string")
    if "template" not in obj:
        raise InvalidRequest("'variables' are only meaningful with a 'template'")
    return value


def _object(body: object) -> JSONObject:
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


def _model(obj: JSONObject) -> str | None:
    model = obj.get("model")
    if model is None:
        return None
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a non-empty string")
    return model


def _messages(value: object) -> tuple[JSONObject, ...]:
    if not isinstance(value, list):
        raise InvalidRequest("'messages' must be a list of message objects")
    if not value:
        raise InvalidRequest("'messages' must not be empty")
    for i, message in enumerate(value):
        _check_message(i, message)
    return tuple(value)


def _check_message(i: int, message: object) -> None:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise InvalidRequest(f"'{where}' must be an object")
    role = message.get("role")
    if role not in _ROLES:
        raise InvalidRequest(f"'{where}.role' must be one of {', '.join(sorted(_ROLES))}")
    content = message.get("content")
    if content is None:
        if role == "assistant" and message.get("tool_calls"):
            return
        raise InvalidRequest(f"'{where}.content' is required")
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise InvalidRequest(f"'{where}.content[{j}]' must be an object with a 'type'")
    elif not isinstance(content, str):
        raise InvalidRequest(f"'{where}.content' must be a string or a list of content parts")
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise InvalidRequest(f"'{where}.tool_call_id' is required for a tool message")


def _max_tokens(obj: JSONObject) -> int | None:
    value = obj.get("max_completion_tokens", obj.get("max_tokens"))
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest("'max_tokens' must be an integer >= 1")
    return value


def _temperature(obj: JSONObject) -> float | None:
    value = obj.get("temperature")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequest("'temperature' must be a number between 0 and 2")
    if not 0 <= value <= 2:  # OpenAI's documented range
        raise InvalidRequest("'temperature' must be a number between 0 and 2")
    return float(value)


def _tools(value: object) -> tuple[JSONObject, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidRequest("'tools' must be a list")
    for i, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest(
                f"'tools[{i}]' must be {{'type': 'function', 'function': {{'name': …}}}}"
            )
    return tuple(value)


def _optional_bool(obj: JSONObject, name: str) -> bool | None:
    value = obj.get(name)
    if value is not None and not isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be a boolean")
    return value


def _include_usage(obj: JSONObject, stream: bool) -> bool:
    options = obj.get("stream_options")
    if options is None:
        return not stream  # a non-streamed answer always carries usage
    if not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object")
    include = _optional_bool(options, "include_usage")
    return bool(include) or not stream


def _extra(obj: JSONObject) -> dict[str, Any]:
    n = obj.get("n")
    if n is not None and n != 1:
        raise InvalidRequest("'n' must be 1: Estuary streams one choice per request")
    top_p = obj.get("top_p")
    if top_p is not None and (
        isinstance(top_p, bool) or not isinstance(top_p, int | float) or not 0 <= top_p <= 1
    ):
        raise InvalidRequest("'top_p' must be a number between 0 and 1")
    stop = obj.get("stop")
    if stop is not None and not (
        isinstance(stop, str)
        or (
            isinstance(stop, list)
            and len(stop) <= _MAX_STOP
            and all(isinstance(s, str) for s in stop)
        )
    ):
        raise InvalidRequest("'stop' must be a string or a list of up to 4 strings")
    extra = {k: v for k, v in obj.items() if k not in _HANDLED}
    if top_p is not None:
        extra["top_p"] = top_p
    if stop is not None:
        extra["stop"] = stop
    return extra


def prompt_text(request: UpstreamRequest) -> str:
    """All the text a request sends the model (for estimating its tokens)."""
    if isinstance(request, CompletionRequest):
        return request.prompt
    parts: list[str] = []
    for message in request.messages:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "\n".join(parts)
