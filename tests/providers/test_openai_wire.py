"""The OpenAI wire adapter, fed golden transcripts in fragments: no network."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from estuary.core.errors import UpstreamError, UpstreamProtocolError
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
from estuary.providers.openai_wire import OpenAIStreamParser, chat_body, completion_body

FIXTURES = Path(__file__).parent.parent / "fixtures" / "openai"
SIZES = [1, 7, 1 << 20]


def fragments(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def parse(name: str, size: int, kind: str = "chat") -> list[StreamEvent]:
    parser = OpenAIStreamParser(
        "p", kind="chat" if kind == "chat" else "completion", redact=Redactor()
    )
    body = (FIXTURES / name).read_bytes()
    events = [e for part in fragments(body, size) for e in parser.feed(part)]
    return events + parser.finish()


@pytest.mark.parametrize("size", SIZES)
def test_normal_chat_yields_text_usage_and_end(size: int) -> None:
    """Content deltas, then the reported usage, then the finish reason — however the bytes split."""
    assert parse("chat_normal.sse", size) == [
        TextDelta(text="Hello"),
        TextDelta(text=", 世界"),
        TextDelta(text=" 🌊"),
        Usage(prompt_tokens=12, completion_tokens=4),
        StreamEnd(reason="stop"),
    ]


@pytest.mark.parametrize("size", SIZES)
def test_tool_call_fragments_are_assembled_by_index(size: int) -> None:
    """Interleaved fragments of two calls come out as two whole calls, in index order."""
    events = parse("chat_tool_call.sse", size)
    assert events == [
        ToolCall(index=0, id="call_abc", name="get_weather", arguments='{"city": "杭州"}'),
        ToolCall(index=1, id="call_def", name="get_time", arguments="{}"),
        Usage(prompt_tokens=30, completion_tokens=18),
        StreamEnd(reason="tool_calls"),
    ]


@pytest.mark.parametrize("size", SIZES)
def test_reasoning_content_becomes_reasoning_events(size: int) -> None:
    """DeepSeek's `reasoning_content` is thinking, kept apart from the answer."""
    assert parse("chat_reasoning_deepseek.sse", size) == [
        ReasoningDelta(text="用户问"),
        ReasoningDelta(text="的是 1+1"),
        TextDelta(text="答案是 2。"),
        Usage(prompt_tokens=9, completion_tokens=20),
        StreamEnd(reason="stop"),
    ]


@pytest.mark.parametrize("size", SIZES)
def test_error_object_inside_the_stream_raises_after_the_text(size: int) -> None:
    """An error object sent inside a 200 stream is an upstream error, not text."""
    parser = OpenAIStreamParser("kimi", kind="chat", redact=Redactor())
    body = (FIXTURES / "chat_error_mid_stream.sse").read_bytes()
    seen: list[StreamEvent] = []

    def feed_all() -> None:
        for part in fragments(body, size):
            seen.extend(parser.feed(part))
        parser.check()

    with pytest.raises(UpstreamError, match="overloaded") as raised:
        feed_all()
    assert seen == [TextDelta(text="部分")]
    assert raised.value.provider == "kimi"


@pytest.mark.parametrize("size", SIZES)
def test_truncated_stream_is_an_error_not_a_silent_end(size: int) -> None:
    """A body that stops mid-message without a finish reason raises on finish()."""
    parser = OpenAIStreamParser("qwen", kind="chat", redact=Redactor())
    body = (FIXTURES / "chat_truncated.sse").read_bytes()
    events = [e for part in fragments(body, size) for e in parser.feed(part)]
    assert events == [TextDelta(text="你好")]
    with pytest.raises(UpstreamProtocolError, match="ended before"):
        parser.finish()


@pytest.mark.parametrize("size", SIZES)
def test_legacy_completion_text(size: int) -> None:
    """`choices[0].text` of the legacy API is the answer text; finish reason mapped."""
    assert parse("completion_legacy.sse", size, kind="completion") == [
        TextDelta(text="Once"),
        TextDelta(text=" upon a time"),
        Usage(prompt_tokens=5, completion_tokens=4),
        StreamEnd(reason="length"),
    ]


def test_finish_without_done_marker_still_ends_cleanly() -> None:
    """Servers that finish but never send [DONE] end normally when the body closes."""
    parser = OpenAIStreamParser("ollama", kind="chat", redact=Redactor())
    chunk = {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}
    events = parser.feed(b"data: " + orjson.dumps(chunk) + b"\n\n")
    assert events == [TextDelta(text="hi")]
    assert parser.finish() == [StreamEnd(reason="stop")]


def test_in_band_error_message_is_redacted() -> None:
    """An upstream that echoes our key inside an error object cannot leak it."""
    secret = "sk-live-upstream-secret-123456"
    parser = OpenAIStreamParser("p", kind="chat", redact=Redactor([secret]))
    body = orjson.dumps({"error": {"message": f"bad header Authorization: Bearer {secret}"}})
    with pytest.raises(UpstreamError) as raised:
        parser.feed(b"data: " + body + b"\n\n")
    assert secret not in str(raised.value)


def test_malformed_json_is_a_protocol_error() -> None:
    """A non-JSON data line is reported, not crashed on."""
    parser = OpenAIStreamParser("p", kind="chat", redact=Redactor())
    with pytest.raises(UpstreamProtocolError, match="malformed"):
        parser.feed(b"data: {not json\n\n")


def test_chat_body_always_asks_for_usage_and_passes_extra_params() -> None:
    """The upstream body names the target model, streams, asks for usage, keeps extra params."""
    request = parse_openai_chat(
        {
            "model": "alias",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 5,
            "seed": 7,
            "stream": False,
        }
    )
    body = orjson.loads(chat_body(request, "upstream-model"))
    assert body["model"] == "upstream-model"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 5
    assert body["seed"] == 7
    assert body["messages"] == [{"role": "user", "content": "hi"}]


def test_completion_body_carries_the_prompt() -> None:
    """The legacy body sends the prompt string to the upstream's completions endpoint."""
    request = parse_openai_completion({"model": "a", "prompt": "Once", "stream": True})
    body = orjson.loads(completion_body(request, "m"))
    assert (body["prompt"], body["model"], body["stream"]) == ("Once", "m", True)
