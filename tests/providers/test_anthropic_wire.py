"""The Anthropic wire adapter, fed golden transcripts in fragments: no network."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from estuary.core.errors import (
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamRejected,
)
from estuary.core.events import (
    ReasoningDelta,
    StreamEnd,
    StreamEvent,
    TextDelta,
    ToolCall,
    Usage,
)
from estuary.core.redaction import Redactor
from estuary.core.requests import parse_openai_chat, parse_openai_completion
from estuary.providers.anthropic_wire import (
    DEFAULT_MAX_TOKENS,
    AnthropicStreamParser,
    UntranslatableRequest,
    messages_body,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "anthropic"
SIZES = [1, 7, 1 << 20]


def fragments(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def parse(name: str, size: int, *, crlf: bool = False) -> list[StreamEvent]:
    parser = AnthropicStreamParser("claude", Redactor())
    body = (FIXTURES / name).read_bytes()
    if crlf:
        body = body.replace(b"\n", b"\r\n")
    events = [e for part in fragments(body, size) for e in parser.feed(part)]
    return events + parser.finish()


def body_of(request: dict[str, Any], model: str = "claude-sonnet-4-5") -> dict[str, Any]:
    parsed: dict[str, Any] = orjson.loads(messages_body(parse_openai_chat(request), model))
    return parsed


# -- the stream -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("crlf", [False, True])
def test_normal_stream_yields_text_usage_and_end(size: int, crlf: bool) -> None:
    """Text deltas, then the reported usage, then `end_turn` as stop — however the bytes split."""
    assert parse("normal.sse", size, crlf=crlf) == [
        TextDelta(text="Hello"),
        TextDelta(text=", 世界"),
        TextDelta(text=" 🌊"),
        Usage(prompt_tokens=25, completion_tokens=15),
        StreamEnd(reason="stop"),
    ]


@pytest.mark.parametrize("size", SIZES)
def test_tool_use_blocks_become_whole_tool_calls(size: int) -> None:
    """input_json_delta fragments are assembled per block; a call without input gets `{}`."""
    assert parse("tool_call.sse", size) == [
        TextDelta(text="Let me check the weather."),
        ToolCall(
            index=0,
            id="toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            name="get_weather",
            arguments='{"city": "杭州"}',
        ),
        ToolCall(index=1, id="toolu_01AbCdEfGhIjKlMnOpQrStUv", name="get_time", arguments="{}"),
        Usage(prompt_tokens=472, completion_tokens=89),
        StreamEnd(reason="tool_calls"),
    ]


@pytest.mark.parametrize("size", SIZES)
def test_thinking_blocks_become_reasoning_and_signatures_are_dropped(size: int) -> None:
    """thinking_delta is reasoning, kept apart from the answer; signature_delta yields nothing."""
    assert parse("thinking.sse", size) == [
        ReasoningDelta(text="用户问"),
        ReasoningDelta(text="的是 1+1"),
        TextDelta(text="答案是 2。"),
        Usage(prompt_tokens=36, completion_tokens=20),
        StreamEnd(reason="stop"),
    ]


@pytest.mark.parametrize("size", SIZES)
def test_pings_are_ignored_and_cache_tokens_count_as_prompt(size: int) -> None:
    """Pings anywhere change nothing; prompt = input + cache writes + cache reads."""
    assert parse("pings.sse", size) == [
        TextDelta(text="Slow"),
        TextDelta(text=" but sure."),
        Usage(prompt_tokens=3 + 1200 + 40, completion_tokens=6),
        StreamEnd(reason="length"),
    ]


@pytest.mark.parametrize("size", SIZES)
def test_error_event_mid_stream_raises_after_the_text(size: int) -> None:
    """`event: error` after content is an upstream error, raised after the text before it."""
    parser = AnthropicStreamParser("claude", Redactor())
    body = (FIXTURES / "error_mid_stream.sse").read_bytes()
    seen: list[StreamEvent] = []

    def feed_all() -> None:
        for part in fragments(body, size):
            seen.extend(parser.feed(part))
        parser.check()

    with pytest.raises(UpstreamError, match="overloaded_error") as raised:
        feed_all()
    assert seen == [TextDelta(text="部分")]
    assert raised.value.provider == "claude"
    assert raised.value.fallback


@pytest.mark.parametrize("size", SIZES)
def test_overloaded_before_any_content_raises_with_no_events(size: int) -> None:
    """An overload right after message_start yields no event first, so routing can fall back."""
    parser = AnthropicStreamParser("claude", Redactor())
    body = (FIXTURES / "overloaded_first.sse").read_bytes()
    seen: list[StreamEvent] = []

    def feed_all() -> None:
        for part in fragments(body, size):
            seen.extend(parser.feed(part))

    with pytest.raises(UpstreamError) as raised:
        feed_all()
    assert seen == []
    assert type(raised.value) is UpstreamError
    assert raised.value.fallback


@pytest.mark.parametrize("size", SIZES)
def test_truncated_stream_is_a_protocol_error(size: int) -> None:
    """A body that stops before message_stop raises on finish(), after the text it had."""
    parser = AnthropicStreamParser("claude", Redactor())
    body = (FIXTURES / "truncated.sse").read_bytes()
    events = [e for part in fragments(body, size) for e in parser.feed(part)]
    assert events == [TextDelta(text="你好")]
    with pytest.raises(UpstreamProtocolError, match="message_stop"):
        parser.finish()


def test_message_delta_without_message_stop_is_still_truncated() -> None:
    """Only message_stop ends a stream: a stop reason alone is not enough."""
    body = (FIXTURES / "normal.sse").read_bytes()
    cut = body[: body.index(b"event: message_stop")]
    parser = AnthropicStreamParser("claude", Redactor())
    parser.feed(cut)
    with pytest.raises(UpstreamProtocolError):
        parser.finish()


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("rate_limit_error", UpstreamRateLimited),
        ("authentication_error", UpstreamAuthFailed),
        ("invalid_request_error", UpstreamRejected),
        ("api_error", UpstreamError),
    ],
)
def test_error_types_map_to_their_failures(kind: str, error: type[UpstreamError]) -> None:
    """The error event's `type` decides the failure, and so whether another target is tried."""
    parser = AnthropicStreamParser("claude", Redactor())
    frame = {"type": "error", "error": {"type": kind, "message": "no"}}
    with pytest.raises(UpstreamError) as raised:
        parser.feed(b"event: error\ndata: " + orjson.dumps(frame) + b"\n\n")
    assert type(raised.value) is error


def test_in_band_error_message_is_redacted() -> None:
    """An upstream that echoes our key inside an error event cannot leak it."""
    secret = "sk-ant-api03-upstream-secret-123456"
    parser = AnthropicStreamParser("claude", Redactor([secret]))
    frame = {"type": "error", "error": {"type": "api_error", "message": f"x-api-key: {secret}"}}
    with pytest.raises(UpstreamError) as raised:
        parser.feed(b"event: error\ndata: " + orjson.dumps(frame) + b"\n\n")
    assert secret not in str(raised.value)


def test_malformed_json_is_a_protocol_error() -> None:
    """A non-JSON data line is reported, not crashed on."""
    parser = AnthropicStreamParser("claude", Redactor())
    with pytest.raises(UpstreamProtocolError, match="malformed"):
        parser.feed(b"event: content_block_delta\ndata: {not json\n\n")


def test_message_delta_input_tokens_replace_message_start() -> None:
    """Counts are cumulative: message_delta's input_tokens, when present, win."""
    parser = AnthropicStreamParser("claude", Redactor())
    start = {"type": "message_start", "message": {"usage": {"input_tokens": 5}}}
    end = {"type": "message_delta", "delta": {"stop_reason": "refusal"}}
    end["usage"] = {"input_tokens": 7, "output_tokens": 2}
    stream = b"".join(
        b"data: " + orjson.dumps(m) + b"\n\n" for m in (start, end, {"type": "message_stop"})
    )
    assert parser.feed(stream) == [
        Usage(prompt_tokens=7, completion_tokens=2),
        StreamEnd(reason="content_filter"),
    ]


# -- the request ------------------------------------------------------------------------------


def test_body_moves_system_to_the_top_and_streams() -> None:
    """System and developer messages become `system`; the body streams and names the model."""
    body = body_of(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use 中文."}]},
                {"role": "user", "content": "hi"},
            ],
        }
    )
    assert body["model"] == "claude-sonnet-4-5"
    assert body["stream"] is True
    assert body["max_tokens"] == DEFAULT_MAX_TOKENS
    assert body["system"] == [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": "Use 中文."},
    ]
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]


def test_single_system_message_is_a_plain_string() -> None:
    """One system text is sent as a string, as most clients write it."""
    body = body_of(
        {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "u"}]}
    )
    assert body["system"] == "S"


def test_consecutive_turns_of_one_role_are_merged() -> None:
    """Anthropic wants user and assistant to alternate: same-role neighbours become one turn."""
    body = body_of(
        {
            "messages": [
                {"role": "user", "content": "one"},
                {"role": "user", "content": "two"},
                {"role": "assistant", "content": "three"},
            ]
        }
    )
    assert body["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "three"}]},
    ]


def test_tool_calls_and_results_become_tool_use_and_tool_result() -> None:
    """Assistant tool_calls → tool_use (arguments parsed); tool messages → leading tool_result."""
    body = body_of(
        {
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "杭州"}'},
                        },
                        {
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": ""},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "晴"},
                {"role": "tool", "tool_call_id": "call_2", "content": "12:00"},
                {"role": "user", "content": "thanks"},
            ],
        }
    )
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "杭州"}},
            {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
        ],
    }
    assert body["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "晴"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "12:00"},
            {"type": "text", "text": "thanks"},
        ],
    }


def test_images_become_image_blocks() -> None:
    """A data: URL is a base64 source; an https URL is a url source."""
    content = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    body = body_of({"messages": [{"role": "user", "content": content}]})
    assert body["messages"][0]["content"][1:] == [
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


def test_tools_sampling_and_stop_are_translated() -> None:
    """tools → input_schema; max_tokens, temperature (capped at 1), top_p, stop, tool_choice."""
    body = body_of(
        {
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 50,
            "temperature": 1.5,
            "top_p": 0.9,
            "stop": "END",
            "user": "user-7",
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "lookup", "description": "Find", "parameters": {}},
                }
            ],
            "tool_choice": {"type": "function", "function": {"name": "lookup"}},
            "parallel_tool_calls": False,
            "frequency_penalty": 0.5,
        }
    )
    assert body["max_tokens"] == 50
    assert body["temperature"] == 1.0
    assert body["top_p"] == 0.9
    assert body["stop_sequences"] == ["END"]
    assert body["metadata"] == {"user_id": "user-7"}
    assert body["tools"] == [
        {"name": "lookup", "description": "Find", "input_schema": {"type": "object"}}
    ]
    assert body["tool_choice"] == {
        "type": "tool",
        "name": "lookup",
        "disable_parallel_tool_use": True,
    }
    assert "frequency_penalty" not in body  # Anthropic has no such parameter


@pytest.mark.parametrize(
    ("choice", "expected"), [("auto", "auto"), ("required", "any"), ("none", "none")]
)
def test_tool_choice_modes(choice: str, expected: str) -> None:
    """OpenAI's tool_choice strings in Anthropic's words."""
    body = body_of(
        {
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": choice,
        }
    )
    assert body["tool_choice"] == {"type": expected}


def test_legacy_completion_is_one_user_turn() -> None:
    """A legacy prompt becomes a single user message."""
    request = parse_openai_completion({"prompt": "Once upon", "max_tokens": 9})
    body = orjson.loads(messages_body(request, "claude-haiku-4-5"))
    assert body["messages"] == [{"role": "user", "content": "Once upon"}]
    assert body["max_tokens"] == 9


@pytest.mark.parametrize(
    "message",
    [
        {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]},
        {"role": "function", "name": "f", "content": "x"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}
            ],
        },
    ],
)
def test_what_anthropic_cannot_carry_is_refused(message: dict[str, Any]) -> None:
    """Audio parts, legacy function messages and non-object arguments raise, naming the field."""
    with pytest.raises(UntranslatableRequest, match="messages"):
        body_of({"messages": [message]})
