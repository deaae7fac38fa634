"""The Gemini wire adapter: golden transcripts fed in fragments, and the request translation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from estuary.core.errors import UpstreamError, UpstreamProtocolError, UpstreamRejected
from estuary.core.events import (
    ReasoningDelta,
    StreamEnd,
    StreamEvent,
    TextDelta,
    ToolCall,
    Usage,
)
from estuary.core.redaction import Redactor
from estuary.core.requests import parse_app_chat, parse_openai_chat, parse_openai_completion
from estuary.providers.gemini_wire import (
    PLACEHOLDER_SIGNATURE,
    GeminiStreamParser,
    UntranslatableRequest,
    generate_body,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "gemini"
SIZES = [1, 7, 1 << 20]


def fragments(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def parse(name: str, size: int) -> list[StreamEvent]:
    parser = GeminiStreamParser("gem", Redactor())
    body = (FIXTURES / name).read_bytes()
    events = [e for part in fragments(body, size) for e in parser.feed(part)]
    return events + parser.finish()


def frame(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\r\n\r\n"


def text_chunk(text: str, finish: str | None = None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
    if finish is not None:
        candidate["finishReason"] = finish
    return {"candidates": [candidate]}


def body_of(**request: Any) -> dict[str, Any]:
    """The Gemini body generated for an OpenAI chat request with these fields."""
    result: dict[str, Any] = orjson.loads(generate_body(parse_openai_chat(request)))
    return result


# -- the stream -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_normal_stream_yields_text_then_the_last_usage_and_end(size: int) -> None:
    """Text parts in order; usage is the last `usageMetadata`; the body's end after STOP ends it."""
    assert parse("normal.sse", size) == [
        TextDelta(text="Hello"),
        TextDelta(text=", 世界"),
        TextDelta(text=" 🌊"),
        Usage(prompt_tokens=12, completion_tokens=4),
        StreamEnd(reason="stop"),
    ]


@pytest.mark.parametrize("size", SIZES)
def test_function_calls_become_whole_tool_calls_and_end_with_tool_calls(size: int) -> None:
    """Each `functionCall` is one ToolCall (compact JSON args, generated ids); STOP → tool_calls."""
    assert parse("function_call.sse", size) == [
        TextDelta(text="Let me check."),
        ToolCall(
            index=0,
            id="call_0",
            name="get_weather",
            arguments='{"city":"杭州","unit":"celsius"}',
        ),
        ToolCall(index=1, id="call_1", name="get_time", arguments="{}"),
        Usage(prompt_tokens=30, completion_tokens=18 + 54),
        StreamEnd(reason="tool_calls"),
    ]


@pytest.mark.parametrize("size", SIZES)
def test_thought_parts_are_reasoning_and_thinking_tokens_count_as_completion(size: int) -> None:
    """`thought: true` parts are reasoning; a signature-only part is not relayed."""
    assert parse("thinking.sse", size) == [
        ReasoningDelta(text="**Adding the numbers**\n\nThe user asks for 1+1"),
        ReasoningDelta(text=", which is 2."),
        TextDelta(text="答案是 2。"),
        Usage(prompt_tokens=9, completion_tokens=6 + 26),
        StreamEnd(reason="stop"),
    ]


@pytest.mark.parametrize("size", SIZES)
def test_error_object_inside_the_stream_raises_after_the_text(size: int) -> None:
    """Google's error object inside a 200 stream is an upstream error, delivered after the text."""
    parser = GeminiStreamParser("gem", Redactor())
    body = (FIXTURES / "error_mid_stream.sse").read_bytes()
    seen: list[StreamEvent] = []

    def feed_all() -> None:
        for part in fragments(body, size):
            seen.extend(parser.feed(part))
        parser.check()

    with pytest.raises(UpstreamError, match="overloaded") as raised:
        feed_all()
    assert seen == [TextDelta(text="部分")]
    assert raised.value.provider == "gem"
    assert raised.value.fallback  # a plain upstream failure, not the request's fault


@pytest.mark.parametrize("size", SIZES)
def test_truncated_stream_is_an_error_not_a_silent_end(size: int) -> None:
    """A body that stops mid-message, before any finishReason, raises on finish()."""
    parser = GeminiStreamParser("gem", Redactor())
    body = (FIXTURES / "truncated.sse").read_bytes()
    events = [e for part in fragments(body, size) for e in parser.feed(part)]
    assert events == [TextDelta(text="你好")]
    with pytest.raises(UpstreamProtocolError, match="ended before"):
        parser.finish()


@pytest.mark.parametrize("size", SIZES)
def test_safety_finish_ends_with_content_filter(size: int) -> None:
    """A candidate stopped by SAFETY (no content of its own) ends the answer as content_filter."""
    assert parse("safety_block.sse", size) == [
        TextDelta(text="Here is how"),
        Usage(prompt_tokens=21, completion_tokens=3),
        StreamEnd(reason="content_filter"),
    ]


@pytest.mark.parametrize("size", SIZES)
def test_blocked_prompt_is_rejected_without_fallback(size: int) -> None:
    """`promptFeedback.blockReason` with no candidates: the request itself is refused."""
    parser = GeminiStreamParser("gem", Redactor())
    body = (FIXTURES / "prompt_blocked.sse").read_bytes()

    def feed_all() -> list[StreamEvent]:
        return [e for part in fragments(body, size) for e in parser.feed(part)]

    with pytest.raises(UpstreamRejected, match="PROHIBITED_CONTENT") as raised:
        feed_all()
    assert not raised.value.fallback
    assert raised.value.status_code == 400


def test_complete_messages_without_a_finish_reason_are_not_a_clean_end() -> None:
    """Whole messages but no finishReason before the body ended: a protocol error."""
    parser = GeminiStreamParser("gem", Redactor())
    assert parser.feed(frame(text_chunk("hi"))) == [TextDelta(text="hi")]
    with pytest.raises(UpstreamProtocolError, match="ended before"):
        parser.finish()


@pytest.mark.parametrize(
    ("gemini", "ours"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("IMAGE_SAFETY", "content_filter"),
        ("OTHER", "stop"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
        ("SOMETHING_NEW", "stop"),
    ],
)
def test_finish_reasons_are_mapped(gemini: str, ours: str) -> None:
    """Gemini's finishReason in our words; unknown ones are a plain stop."""
    parser = GeminiStreamParser("gem", Redactor())
    parser.feed(frame(text_chunk("x", finish=gemini)))
    assert parser.finish() == [StreamEnd(reason=ours)]  # type: ignore[arg-type]  # str from table


def test_max_tokens_stays_length_even_after_a_function_call() -> None:
    """Only STOP turns into tool_calls when calls were made."""
    parser = GeminiStreamParser("gem", Redactor())
    call = {"functionCall": {"name": "f", "args": {"a": 1}}}
    chunk = {"candidates": [{"content": {"parts": [call]}, "finishReason": "MAX_TOKENS"}]}
    assert parser.feed(frame(chunk)) == [
        ToolCall(index=0, id="call_0", name="f", arguments='{"a":1}')
    ]
    assert parser.finish() == [StreamEnd(reason="length")]


def test_a_function_call_id_from_the_upstream_is_kept() -> None:
    """When Gemini names its call, that id is the tool call's id."""
    parser = GeminiStreamParser("gem", Redactor())
    call = {"functionCall": {"id": "fc-7x2", "name": "lookup"}}
    events = parser.feed(frame({"candidates": [{"content": {"parts": [call]}}]}))
    assert events == [ToolCall(index=0, id="fc-7x2", name="lookup", arguments="{}")]


def test_in_band_error_message_is_redacted() -> None:
    """An upstream that echoes our key inside an error object cannot leak it."""
    secret = "AIzaSyUpstreamSecret-0123456789abcdef"
    parser = GeminiStreamParser("gem", Redactor([secret]))
    error = {"error": {"code": 400, "message": f"bad key {secret}", "status": "INVALID_ARGUMENT"}}
    with pytest.raises(UpstreamError) as raised:
        parser.feed(frame(error))
    assert secret not in str(raised.value)
    assert "***" in str(raised.value)


def test_malformed_json_is_a_protocol_error() -> None:
    """A non-JSON data line is reported, not crashed on."""
    parser = GeminiStreamParser("gem", Redactor())
    with pytest.raises(UpstreamProtocolError, match="malformed"):
        parser.feed(b"data: {not json\r\n\r\n")


def test_nothing_is_read_after_the_end() -> None:
    """`done` is set by the end; `finish()` after it adds nothing."""
    parser = GeminiStreamParser("gem", Redactor())
    parser.feed(frame(text_chunk("a", finish="STOP")))
    before = parser.done  # the finish reason alone does not end it: usage may still come
    assert parser.finish() == [StreamEnd(reason="stop")]
    assert (before, parser.done) == (False, True)
    assert parser.finish() == []


# -- the request ------------------------------------------------------------------------------


def test_system_and_developer_messages_become_the_system_instruction() -> None:
    """Every system/developer message, in order, is a part of `systemInstruction`."""
    body = body_of(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in Chinese."}]},
        ]
    )
    assert body["systemInstruction"] == {
        "parts": [{"text": "Be brief."}, {"text": "Answer in Chinese."}]
    }
    assert body["contents"] == [{"role": "user", "parts": [{"text": "Hi"}]}]
    assert "generationConfig" not in body  # nothing asked for: Gemini's defaults apply


def test_roles_are_mapped_and_consecutive_turns_merged() -> None:
    """user → user, assistant → model; two user messages in a row are one turn."""
    body = body_of(
        messages=[
            {"role": "user", "content": "one"},
            {"role": "user", "content": [{"type": "text", "text": "two"}]},
            {"role": "assistant", "content": "three"},
            {"role": "user", "content": "four"},
        ]
    )
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "one"}, {"text": "two"}]},
        {"role": "model", "parts": [{"text": "three"}]},
        {"role": "user", "parts": [{"text": "four"}]},
    ]


def test_a_tool_round_trip_is_function_call_and_function_response() -> None:
    """Assistant tool calls → functionCall parts; tool results → functionResponse parts by name."""
    body = body_of(
        messages=[
            {"role": "user", "content": "Weather and time in 杭州?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_0",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "杭州"}'},
                    },
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": ""},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "14:00"},
            {"role": "tool", "tool_call_id": "call_0", "content": '{"temp": 21}'},
        ]
    )
    assert body["contents"][1:] == [
        {
            "role": "model",
            "parts": [
                {
                    "functionCall": {"name": "get_weather", "args": {"city": "杭州"}},
                    "thoughtSignature": PLACEHOLDER_SIGNATURE,
                },
                {"functionCall": {"name": "get_time", "args": {}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_time", "response": {"output": "14:00"}}},
                {
                    "functionResponse": {
                        "name": "get_weather",
                        "response": {"output": '{"temp": 21}'},
                    }
                },
            ],
        },
    ]


def test_a_reused_call_id_names_the_nearest_earlier_call() -> None:
    """Ids such as call_0 repeat across turns; a result belongs to the latest call of that id."""
    call = {"id": "call_0", "type": "function", "function": {"name": "", "arguments": "{}"}}
    first = {**call, "function": {"name": "first", "arguments": "{}"}}
    second = {**call, "function": {"name": "second", "arguments": "{}"}}
    body = body_of(
        messages=[
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": None, "tool_calls": [first]},
            {"role": "tool", "tool_call_id": "call_0", "content": "1"},
            {"role": "assistant", "content": None, "tool_calls": [second]},
            {"role": "tool", "tool_call_id": "call_0", "content": "2"},
        ]
    )
    responses = [
        part["functionResponse"]["name"]
        for content in body["contents"]
        for part in content["parts"]
        if "functionResponse" in part
    ]
    assert responses == ["first", "second"]


def test_tools_and_tool_choice_are_declared() -> None:
    """OpenAI tools → functionDeclarations with the JSON Schema as is; tool_choice → toolConfig."""
    schema = {
        "type": "object",
        "properties": {"q": {"type": "string"}},
        "required": ["q"],
        "additionalProperties": False,
    }
    body = body_of(
        messages=[{"role": "user", "content": "hi"}],
        tools=[
            {
                "type": "function",
                "function": {"name": "lookup", "description": "Search.", "parameters": schema},
            },
            {"type": "function", "function": {"name": "now"}},
        ],
        tool_choice={"type": "function", "function": {"name": "lookup"}},
    )
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {"name": "lookup", "description": "Search.", "parametersJsonSchema": schema},
                {"name": "now"},
            ]
        }
    ]
    assert body["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["lookup"]}
    }


@pytest.mark.parametrize(
    ("choice", "mode"), [("auto", "AUTO"), ("none", "NONE"), ("required", "ANY")]
)
def test_tool_choice_words_are_modes(choice: str, mode: str) -> None:
    """auto/none/required are Gemini's AUTO/NONE/ANY."""
    tools = [{"type": "function", "function": {"name": "f"}}]
    body = body_of(messages=[{"role": "user", "content": "hi"}], tools=tools, tool_choice=choice)
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": mode}}


def test_sampling_parameters_go_to_generation_config() -> None:
    """max_tokens, temperature, top_p, stop (a string becomes a list), seed, penalties."""
    body = body_of(
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=64,
        temperature=0.2,
        top_p=0.9,
        stop="END",
        seed=7,
        presence_penalty=0.5,
    )
    assert body["generationConfig"] == {
        "maxOutputTokens": 64,
        "temperature": 0.2,
        "topP": 0.9,
        "stopSequences": ["END"],
        "seed": 7,
        "presencePenalty": 0.5,
    }


def test_a_legacy_completion_is_one_user_turn() -> None:
    """A prompt string is a single user turn, with the same generation settings."""
    request = parse_openai_completion({"model": "a", "prompt": "Once", "max_tokens": 5})
    body = orjson.loads(generate_body(request))
    assert body == {
        "contents": [{"role": "user", "parts": [{"text": "Once"}]}],
        "generationConfig": {"maxOutputTokens": 5},
    }


def test_app_api_system_field_is_the_system_instruction() -> None:
    """The app API's `system` arrives as a system message and ends up in `systemInstruction`."""
    body = orjson.loads(generate_body(parse_app_chat({"message": "hi", "system": "Be kind."})))
    assert body["systemInstruction"] == {"parts": [{"text": "Be kind."}]}
    assert body["contents"] == [{"role": "user", "parts": [{"text": "hi"}]}]


def test_a_data_url_image_is_inline_data() -> None:
    """An image sent as a base64 data: URL is an inlineData part."""
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    body = body_of(messages=[{"role": "user", "content": [{"type": "text", "text": "?"}, image]}])
    assert body["contents"][0]["parts"] == [
        {"text": "?"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
    ]


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        (
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}
                    ],
                }
            ],
            "data: URLs",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "tool", "tool_call_id": "call_9", "content": "?"},
            ],
            "matches no earlier",
        ),
        (
            [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c",
                            "type": "function",
                            "function": {"name": "f", "arguments": "[1]"},
                        }
                    ],
                }
            ],
            "JSON object",
        ),
        ([{"role": "user", "content": [{"type": "file", "file": {}}]}], "'file' parts"),
    ],
)
def test_what_gemini_cannot_carry_is_refused(messages: list[dict[str, Any]], match: str) -> None:
    """Untranslatable input raises UntranslatableRequest naming the field, never half a request."""
    with pytest.raises(UntranslatableRequest, match=match):
        body_of(messages=messages)
