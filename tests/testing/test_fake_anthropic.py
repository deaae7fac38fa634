"""The fake upstream's Anthropic route, driven with a plain HTTP client: the Messages API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from estuary.core.events import ReasoningDelta, StreamEnd, TextDelta, ToolCall, Usage
from estuary.core.redaction import Redactor
from estuary.providers.anthropic_wire import AnthropicStreamParser
from estuary.sse import SSEDecoder
from estuary.testing import FakeToolCall, FakeUpstream, Scenario, fake_usage

KEY = "sk-ant-fake-test-key-0123456789"
HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
BODY: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 64,
    "system": "Be brief.",  # 9 characters
    "messages": [
        {"role": "user", "content": "hi there"},  # 8 characters
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},  # 2 characters
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t", "content": "sunny"}],  # 5
        },
    ],
    "stream": True,
}


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream(api_key=KEY) as fake:
        yield fake


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        yield client


def url(upstream: FakeUpstream) -> str:
    return upstream.base_url + "/messages"


async def post(
    session: aiohttp.ClientSession,
    upstream: FakeUpstream,
    body: dict[str, Any] = BODY,
    headers: dict[str, str] = HEADERS,
) -> tuple[int, bytes]:
    async with session.post(url(upstream), json=body, headers=headers) as response:
        return response.status, await response.read()


async def test_a_stream_has_every_event_named_and_parses_back_to_the_scenario(
    upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    """thinking, text and tool_use blocks; usage counts system and tool results; names given."""
    call = FakeToolCall(id="toolu_1", name="lookup", arguments='{"q": "西湖"}')
    scenario = Scenario(tokens=3, reasoning=("hm",), tool_calls=(call,))
    upstream.enqueue(scenario)
    status, raw = await post(session, upstream)
    assert status == 200
    messages = SSEDecoder().feed(raw)
    assert all(m.event == orjson.loads(m.data)["type"] for m in messages)
    assert [m.event for m in messages][:2] == ["message_start", "ping"]
    assert [m.event for m in messages][-2:] == ["message_delta", "message_stop"]
    parser = AnthropicStreamParser("fake", Redactor())
    events = parser.feed(raw) + parser.finish()
    prompt, completion = fake_usage(BODY, scenario)
    assert prompt == (9 + 8 + 2 + 5) // 4 + 1
    assert events == [
        ReasoningDelta(text="hm"),
        *(TextDelta(text=t) for t in scenario.content_chunks()),
        ToolCall(index=0, id="toolu_1", name="lookup", arguments='{"q": "西湖"}'),
        Usage(prompt_tokens=prompt, completion_tokens=completion),
        StreamEnd(reason="tool_calls"),
    ]
    (seen,) = upstream.requests
    assert (seen.path, seen.model, seen.stream) == ("/v1/messages", "claude-sonnet-4-5", True)


async def test_error_after_sends_an_overloaded_error_event(
    upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    """`error_after` ends the stream with `event: error` of type overloaded_error."""
    upstream.enqueue(Scenario(tokens=5, error_after=2))
    status, raw = await post(session, upstream)
    assert status == 200
    last = SSEDecoder().feed(raw)[-1]
    assert last.event == "error"
    assert orjson.loads(last.data)["error"]["type"] == "overloaded_error"


async def test_a_whole_message_when_not_streamed(
    upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    """Without `stream`, one `message` object with the content blocks and the usage."""
    scenario = Scenario(tokens=2)
    upstream.enqueue(scenario)
    status, raw = await post(session, upstream, {**BODY, "stream": False})
    message = orjson.loads(raw)
    assert status == 200
    assert message["content"] == [{"type": "text", "text": scenario.expected_text()}]
    assert message["stop_reason"] == "end_turn"
    prompt, completion = fake_usage(BODY, scenario)
    assert message["usage"]["input_tokens"] == prompt
    assert message["usage"]["output_tokens"] == completion


@pytest.mark.parametrize(
    ("status", "kind"),
    [(529, "overloaded_error"), (429, "rate_limit_error"), (400, "invalid_request_error")],
)
async def test_fail_status_answers_anthropic_error_json(
    upstream: FakeUpstream, session: aiohttp.ClientSession, status: int, kind: str
) -> None:
    """A scripted failure is Anthropic's `{"type": "error", "error": {"type", "message"}}`."""
    upstream.enqueue(Scenario(fail_status=status, retry_after="3"))
    async with session.post(url(upstream), json=BODY, headers=HEADERS) as response:
        body = await response.json()
        assert response.status == status
        assert response.headers["Retry-After"] == "3"
    assert body["type"] == "error"
    assert body["error"]["type"] == kind


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({"x-api-key": "wrong", "anthropic-version": "2023-06-01"}, BODY, 401),
        ({"Authorization": f"Bearer {KEY}", "anthropic-version": "2023-06-01"}, BODY, 401),
        ({"x-api-key": KEY}, BODY, 400),
        (HEADERS, {k: v for k, v in BODY.items() if k != "max_tokens"}, 400),
    ],
)
async def test_the_route_insists_on_key_version_and_max_tokens(
    upstream: FakeUpstream,
    session: aiohttp.ClientSession,
    headers: dict[str, str],
    body: dict[str, Any],
    status: int,
) -> None:
    """The key only in x-api-key, an anthropic-version header and max_tokens, as Anthropic."""
    got, raw = await post(session, upstream, body, headers)
    assert got == status
    assert orjson.loads(raw)["type"] == "error"
    assert KEY.encode() not in raw
