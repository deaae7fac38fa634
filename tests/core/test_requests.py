"""Request validation: clear errors naming the field, and nothing but `InvalidRequest` on junk."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from estuary.core.errors import InvalidRequest
from estuary.core.requests import (
    ChatRequest,
    parse_app_chat,
    parse_openai_chat,
    parse_openai_completion,
    prompt_text,
)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = st.sampled_from(
    [
        "model",
        "messages",
        "max_tokens",
        "temperature",
        "stream",
        "stream_options",
        "tools",
        "n",
        "top_p",
        "stop",
        "prompt",
        "message",
        "system",
        "role",
        "content",
    ]
)
BODIES = st.dictionaries(FIELDS, JSON, max_size=6) | JSON


@given(BODIES)
def test_any_json_is_parsed_or_refused_with_invalid_request(body: Any) -> None:
    """Fuzzed bodies never raise anything but `InvalidRequest` (a 400), in all three parsers."""
    for parse in (parse_openai_chat, parse_openai_completion, parse_app_chat):
        with contextlib.suppress(InvalidRequest):
            parse(body)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": True}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"messages": [{"role": "user", "content": [{"text": "x"}]}]}, "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": "x"}], "top_p": 2}, "top_p"),
        ({"messages": [{"role": "user", "content": "x"}], "stop": ["a"] * 5}, "stop"),
        ({"messages": [{"role": "user", "content": "x"}], "model": ""}, "model"),
    ],
)
def test_errors_name_the_offending_field(body: dict[str, Any], field: str) -> None:
    """The message says which field is wrong."""
    with pytest.raises(InvalidRequest, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_openai_chat(body)


def test_app_body_with_message_and_system_builds_two_turns() -> None:
    """`message` + `system` in the app API is a system turn and a user turn."""
    request = parse_app_chat({"message": "hi", "system": "be brief", "max_tokens": 5})
    assert request.messages == (
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    )
    assert (request.max_tokens, request.include_usage, request.stream) == (5, True, True)


def test_include_usage_follows_stream_options() -> None:
    """Usage is wanted when the client asked for it, and always for a non-streamed answer."""
    messages = [{"role": "user", "content": "x"}]
    assert not parse_openai_chat({"messages": messages, "stream": True}).include_usage
    streamed = {"messages": messages, "stream": True, "stream_options": {"include_usage": True}}
    assert parse_openai_chat(streamed).include_usage
    assert parse_openai_chat({"messages": messages}).include_usage


def test_unknown_parameters_pass_through_as_extra() -> None:
    """Parameters Estuary does not handle itself reach OpenAI-format upstreams unchanged."""
    body = {
        "messages": [{"role": "user", "content": "x"}],
        "seed": 3,
        "response_format": {"type": "json_object"},
    }
    assert dict(parse_openai_chat(body).extra) == {
        "seed": 3,
        "response_format": {"type": "json_object"},
    }


def test_prompt_text_gathers_text_parts() -> None:
    """Token estimates see the text of string and multi-part contents alike."""
    request = ChatRequest(
        model=None,
        messages=(
            {"role": "user", "content": "a"},
            {"role": "user", "content": [{"type": "text", "text": "b"}, {"type": "image_url"}]},
        ),
    )
    assert prompt_text(request) == "a\nb\n"
