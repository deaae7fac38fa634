"""Anthropic both ways: the `openai` SDK to a Claude-format upstream, the `anthropic` SDK to any.

Everything runs over real sockets: the official SDKs talk to Estuary, Estuary to the scripted
fake upstream speaking the Messages API (or OpenAI's).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import aiohttp
import anthropic
import openai
import orjson
import pytest

from estuary.core.events import (
    ReasoningDelta,
    StreamEnd,
    StreamEvent,
    StreamStart,
    TextDelta,
    ToolCall,
    Usage,
)
from estuary.core.redaction import Redactor
from estuary.core.usage import TokenCount
from estuary.http.anthropic_api import AnthropicEncoder, parse_anthropic_messages
from estuary.providers.anthropic_wire import AnthropicStreamParser
from estuary.testing import FakeToolCall, FakeUpstream, Scenario, fake_usage
from tests.support import APP_KEY, UPSTREAM_KEY, RunningGateway

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Tell me about 杭州."},
]
CLAUDE_MESSAGES: list[anthropic.types.MessageParam] = [
    {"role": "user", "content": "Tell me about 杭州."}
]

# `claude` speaks Anthropic to the fake's root; `badclaude` does too, with a key the fake refuses.
EXTRA = """
[providers.claude]
format = "anthropic"
base_url = "{root}"
api_key = "${{UPSTREAM_KEY}}"

[providers.badclaude]
format = "anthropic"
base_url = "{root}"
api_key = "${{OTHER_KEY}}"

[models.claude]
targets = ["claude/claude-sonnet-4-5"]
first_token_timeout_s = 2.0
idle_timeout_s = 2.0

[models."claude-first"]
targets = ["claude/claude-opus-4-1", "fake/fake-model"]
first_token_timeout_s = 2.0
idle_timeout_s = 2.0

[models."claude-bad-key"]
targets = ["badclaude/claude-sonnet-4-5"]
"""


@pytest.fixture
def gateway(make_gateway: Callable[..., RunningGateway], upstream: FakeUpstream) -> RunningGateway:
    """The test gateway plus Anthropic providers pointed at the fake upstream's root."""
    return make_gateway(extra=EXTRA.format(root=upstream.base_url.removesuffix("/v1")))


@pytest.fixture
async def claude(gateway: RunningGateway) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """The official Anthropic SDK pointed at Estuary, with Estuary's key, no retries."""
    async with anthropic.AsyncAnthropic(
        base_url=gateway.url, api_key=APP_KEY, max_retries=0, timeout=10
    ) as sdk:
        yield sdk


# -- an OpenAI client, an Anthropic upstream --------------------------------------------------


async def test_openai_sdk_streams_text_and_the_usage_claude_reported(
    client: openai.AsyncOpenAI, upstream: FakeUpstream, gateway: RunningGateway
) -> None:
    """Text pieces in order; the usage chunk equals the fake's Anthropic usage; the row says so."""
    scenario = Scenario(tokens=12)
    upstream.enqueue(scenario)
    stream = await client.chat.completions.create(
        model="claude", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    text, usage, finish = [], None, None
    async for chunk in stream:
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(text) == scenario.expected_text()
    assert finish == "stop"
    (seen,) = upstream.requests
    assert seen.path == "/v1/messages"
    assert seen.body["system"] == "Be brief."
    assert seen.body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Tell me about 杭州."}]}
    ]
    assert (seen.body["model"], seen.body["stream"]) == ("claude-sonnet-4-5", True)
    prompt, completion = fake_usage(seen.body, scenario)
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt, completion)
    (row,) = gateway.memory_rows.values()
    settled = (await gateway.row(row.opened.request_id)).settled
    assert settled is not None
    assert (settled.provider, settled.token_source) == ("claude", "reported")


async def test_the_upstream_key_goes_in_x_api_key_with_the_version(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    """`x-api-key` and `anthropic-version` are sent; no Authorization header."""
    upstream.enqueue(Scenario(tokens=2))
    await client.chat.completions.create(model="claude", messages=MESSAGES)
    (seen,) = upstream.requests
    assert seen.headers["x-api-key"] == UPSTREAM_KEY
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in seen.headers
    assert seen.body["max_tokens"] == 4096  # Anthropic requires one; the client sent none


async def test_openai_sdk_gets_claude_tool_calls_and_thinking(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    """tool_use blocks arrive as whole tool calls, thinking as reasoning_content."""
    call = FakeToolCall(id="toolu_01", name="lookup", arguments='{"q": "西湖", "n": 3}')
    upstream.enqueue(Scenario(reasoning=("嗯",), text=(), tool_calls=(call,)))
    completion = await client.chat.completions.create(
        model="claude",
        messages=MESSAGES,
        tools=[{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
    )
    (got,) = completion.choices[0].message.tool_calls or []
    assert got.type == "function"
    assert (got.id, got.function.name, got.function.arguments) == (
        "toolu_01",
        "lookup",
        '{"q": "西湖", "n": 3}',
    )
    assert completion.choices[0].finish_reason == "tool_calls"
    message = completion.choices[0].message.model_dump()
    assert message["reasoning_content"] == "嗯"
    assert upstream.requests[0].body["tools"] == [
        {"name": "lookup", "input_schema": {"type": "object"}}
    ]


async def test_a_failing_claude_target_falls_back_to_an_openai_target(
    client: openai.AsyncOpenAI, upstream: FakeUpstream, gateway: RunningGateway
) -> None:
    """Claude answers 529 (overloaded) before any token → the OpenAI-format target streams."""
    upstream.script("claude-opus-4-1", Scenario(fail_status=529))
    backup = Scenario(tokens=4)
    upstream.script("fake-model", backup)
    stream = await client.chat.completions.create(
        model="claude-first", messages=MESSAGES, stream=True
    )
    text = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert "".join(text) == backup.expected_text()
    assert [seen.path for seen in upstream.requests] == ["/v1/messages", "/v1/chat/completions"]
    (row,) = gateway.memory_rows.values()
    settled = (await gateway.row(row.opened.request_id)).settled
    assert settled is not None
    assert (settled.provider, settled.attempts) == ("fake", 2)


async def test_an_overload_right_after_message_start_still_falls_back(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    """`event: error` before any content block is still before the first token: next target."""
    upstream.script("claude-opus-4-1", Scenario(tokens=5, error_after=0))
    backup = Scenario(tokens=3)
    upstream.script("fake-model", backup)
    completion = await client.chat.completions.create(model="claude-first", messages=MESSAGES)
    assert completion.choices[0].message.content == backup.expected_text()
    assert len(upstream.requests) == 2


@pytest.mark.parametrize(
    ("model", "scenario", "status", "code"),
    [
        ("claude", Scenario(fail_status=529), 502, "upstream_error"),
        ("claude", Scenario(fail_status=500), 502, "upstream_error"),
        ("claude", Scenario(fail_status=400), 400, "upstream_rejected"),
        ("claude", Scenario(fail_status=413), 400, "upstream_rejected"),
        ("claude", Scenario(fail_status=403), 502, "upstream_auth_failed"),
        ("claude", Scenario(fail_status=429, retry_after="7"), 429, "upstream_rate_limited"),
        ("claude-bad-key", Scenario(tokens=2), 502, "upstream_auth_failed"),
    ],
)
async def test_claude_failures_before_the_first_token_keep_a_real_status(
    gateway: RunningGateway,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    model: str,
    scenario: Scenario,
    status: int,
    code: str,
) -> None:
    """Anthropic's statuses map like everyone's: 529 falls back, 400 is the request's fault."""
    upstream.enqueue(scenario)
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    headers = {"Authorization": f"Bearer {APP_KEY}"}
    async with http.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers) as r:
        error = (await r.json())["error"]
        assert (r.status, error["code"]) == (status, code)
        if status == 429:
            assert r.headers["Retry-After"] == "7"
    assert UPSTREAM_KEY not in orjson.dumps(error).decode()


async def test_an_echoed_upstream_key_never_reaches_the_client(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    """An error body that repeats our x-api-key is redacted before it becomes a message."""
    echo = '{"type":"error","error":{"type":"api_error","message":"bad key {authorization}"}}'
    upstream.enqueue(Scenario(fail_status=500, fail_body=echo))
    with pytest.raises(openai.APIStatusError) as raised:
        await client.chat.completions.create(model="claude", messages=MESSAGES)
    assert UPSTREAM_KEY not in str(raised.value)
    assert UPSTREAM_KEY not in raised.value.response.text


async def test_a_claude_failure_after_the_first_token_makes_the_sdk_raise(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    """Anthropic's `event: error` mid-stream ends the stream with an error, never [DONE]."""
    upstream.enqueue(Scenario(tokens=10, error_after=3))
    stream = await client.chat.completions.create(model="claude", messages=MESSAGES, stream=True)
    received: list[str] = []

    async def read_all() -> None:
        async for chunk in stream:
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError):
        await read_all()
    assert "".join(received) == "".join(Scenario(tokens=10).content_chunks()[:3])


async def test_closing_the_stream_aborts_the_claude_request(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    """A client that stops reading and closes cuts the upstream connection at once."""
    upstream.enqueue(Scenario(tokens=200, gap_s=0.02))
    stream = await client.chat.completions.create(model="claude", messages=MESSAGES, stream=True)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    await stream.close()
    (seen,) = await upstream.wait_for_requests(1)
    async with asyncio.timeout(3):
        await seen.client_gone.wait()
    assert seen.chunks_sent < 200


# -- the Anthropic SDK, through /v1/messages --------------------------------------------------


async def test_anthropic_sdk_streams_text_and_usage_from_an_openai_target(
    claude: anthropic.AsyncAnthropic, upstream: FakeUpstream, gateway: RunningGateway
) -> None:
    """`messages.stream()` gets the exact text; the final usage equals the upstream's report."""
    scenario = Scenario(tokens=12)
    upstream.enqueue(scenario)
    async with claude.messages.stream(
        model="chat", max_tokens=100, system="Be brief.", messages=CLAUDE_MESSAGES
    ) as stream:
        text = [piece async for piece in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(text) == scenario.expected_text()
    assert final.stop_reason == "end_turn"
    assert final.role == "assistant"
    (seen,) = upstream.requests
    assert seen.path == "/v1/chat/completions"
    assert seen.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me about 杭州."},
    ]
    assert seen.body["max_tokens"] == 100
    prompt, completion = fake_usage(seen.body, scenario)
    assert (final.usage.input_tokens, final.usage.output_tokens) == (prompt, completion)
    (row,) = gateway.memory_rows.values()
    settled = (await gateway.row(row.opened.request_id)).settled
    assert settled is not None
    assert (settled.status, settled.token_source) == ("completed", "reported")


async def test_anthropic_sdk_raw_events_are_in_anthropic_order(
    claude: anthropic.AsyncAnthropic, upstream: FakeUpstream
) -> None:
    """message_start, one text block (start, deltas, stop), message_delta, message_stop."""
    upstream.enqueue(Scenario(tokens=3))
    stream = await claude.messages.create(
        model="chat", max_tokens=50, messages=CLAUDE_MESSAGES, stream=True
    )
    kinds = [event.type async for event in stream]
    assert kinds == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


async def test_anthropic_sdk_non_streamed_message(
    claude: anthropic.AsyncAnthropic, upstream: FakeUpstream
) -> None:
    """`stream` off: one whole `message` object with the text and the usage."""
    scenario = Scenario(tokens=7)
    upstream.enqueue(scenario)
    message = await claude.messages.create(model="chat", max_tokens=50, messages=CLAUDE_MESSAGES)
    assert message.type == "message"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == scenario.expected_text()  # type: ignore[union-attr]  # a text block, checked above
    assert message.stop_reason == "end_turn"
    prompt, completion = fake_usage(upstream.requests[0].body, scenario)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (prompt, completion)
    assert upstream.requests[0].stream is True  # the upstream is streamed even so


async def test_anthropic_sdk_tool_call_and_tool_result_round_trip(
    claude: anthropic.AsyncAnthropic, upstream: FakeUpstream
) -> None:
    """A tool call streams as a tool_use block; the next turn's tool_result reaches upstream."""
    call = FakeToolCall(id="call_9", name="lookup", arguments='{"q": "西湖", "n": 3}')
    upstream.enqueue(Scenario(text=(), tool_calls=(call,)), Scenario(tokens=2))
    tools: list[anthropic.types.ToolParam] = [
        {"name": "lookup", "description": "Find", "input_schema": {"type": "object"}}
    ]
    async with claude.messages.stream(
        model="chat", max_tokens=50, messages=CLAUDE_MESSAGES, tools=tools
    ) as stream:
        final = await stream.get_final_message()
    (block,) = final.content
    assert block.type == "tool_use"
    assert (block.id, block.name, block.input) == ("call_9", "lookup", {"q": "西湖", "n": 3})
    assert final.stop_reason == "tool_use"
    assert upstream.requests[0].body["tools"] == [
        {
            "type": "function",
            "function": {"name": "lookup", "parameters": {"type": "object"}, "description": "Find"},
        }
    ]
    await claude.messages.create(
        model="chat",
        max_tokens=50,
        tools=tools,
        messages=[
            *CLAUDE_MESSAGES,
            {"role": "assistant", "content": final.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "call_9", "content": "A lake."}],
            },
        ],
    )
    sent = upstream.requests[1].body["messages"]
    assert sent[1]["tool_calls"][0]["function"] == {
        "name": "lookup",
        "arguments": '{"q":"西湖","n":3}',
    }
    assert sent[2] == {"role": "tool", "tool_call_id": "call_9", "content": "A lake."}


async def test_anthropic_sdk_to_a_claude_target_round_trips(
    claude: anthropic.AsyncAnthropic, upstream: FakeUpstream
) -> None:
    """Anthropic in, Anthropic out: thinking and text come back; the usage is Claude's."""
    scenario = Scenario(reasoning=("想",), tokens=4)
    upstream.enqueue(scenario)
    async with claude.messages.stream(
        model="claude", max_tokens=64, system="Be brief.", messages=CLAUDE_MESSAGES
    ) as stream:
        final = await stream.get_final_message()
    assert [block.type for block in final.content] == ["thinking", "text"]
    assert final.content[1].text == scenario.expected_text()  # type: ignore[union-attr]  # a text block, checked above
    (seen,) = upstream.requests
    assert (seen.path, seen.body["system"], seen.body["max_tokens"]) == (
        "/v1/messages",
        "Be brief.",
        64,
    )
    prompt, completion = fake_usage(seen.body, scenario)
    assert (final.usage.input_tokens, final.usage.output_tokens) == (prompt, completion)


async def test_anthropic_sdk_raises_on_a_failure_after_the_first_token(
    claude: anthropic.AsyncAnthropic, upstream: FakeUpstream
) -> None:
    """A mid-stream failure is an `event: error`, which the SDK raises."""
    upstream.enqueue(Scenario(tokens=10, drop_after=3))
    received: list[str] = []

    async def read_all() -> None:
        async with claude.messages.stream(
            model="chat", max_tokens=50, messages=CLAUDE_MESSAGES
        ) as stream:
            async for piece in stream.text_stream:
                received.append(piece)

    with pytest.raises(anthropic.APIStatusError) as raised:
        await read_all()
    assert "".join(received) == "".join(Scenario(tokens=10).content_chunks()[:3])
    assert raised.value.body["error"]["type"] == "api_error"  # type: ignore[index]  # a JSON object


async def test_anthropic_sdk_sees_upstream_failures_in_anthropic_shape(
    claude: anthropic.AsyncAnthropic, upstream: FakeUpstream
) -> None:
    """No target left before the first token: a real status, with Anthropic's error body."""
    upstream.enqueue(Scenario(fail_status=429, retry_after="7"))
    with pytest.raises(anthropic.RateLimitError) as raised:
        await claude.messages.create(model="chat", max_tokens=50, messages=CLAUDE_MESSAGES)
    assert raised.value.response.headers["retry-after"] == "7"
    body = raised.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_sdk_sees_a_streamed_upstream_failure_in_anthropic_shape(
    claude: anthropic.AsyncAnthropic, upstream: FakeUpstream, stream: bool
) -> None:
    """A 502 from the streaming and the collected response alike carries `api_error`."""
    upstream.enqueue(Scenario(fail_status=500))

    async def call() -> None:
        response = await claude.messages.create(
            model="chat", max_tokens=50, messages=CLAUDE_MESSAGES, stream=stream
        )
        if isinstance(response, anthropic.AsyncStream):
            async for _ in response:
                pass

    with pytest.raises(anthropic.InternalServerError) as raised:
        await call()
    assert raised.value.status_code == 502
    body = raised.value.body
    assert isinstance(body, dict)
    assert set(body) == {"type", "error"}
    assert (body["type"], body["error"]["type"]) == ("error", "api_error")
    assert "HTTP 500" in body["error"]["message"]


async def test_the_gateway_key_is_taken_from_x_api_key(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    """The SDK sends its key as `x-api-key`; a wrong one is Anthropic's authentication_error."""
    async with anthropic.AsyncAnthropic(
        base_url=gateway.url, api_key="sk-est-wrong-key-000000000000000", max_retries=0
    ) as wrong:
        with pytest.raises(anthropic.AuthenticationError) as raised:
            await wrong.messages.create(model="chat", max_tokens=5, messages=CLAUDE_MESSAGES)
    body = raised.value.body
    assert isinstance(body, dict)
    assert (body["type"], body["error"]["type"]) == ("error", "authentication_error")
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("body", "status", "kind", "words"),
    [
        (
            {"model": "chat", "messages": [{"role": "user", "content": "x"}]},
            400,
            "invalid_request_error",
            "max_tokens",
        ),
        (
            {"model": "chat", "max_tokens": 5, "messages": []},
            400,
            "invalid_request_error",
            "messages",
        ),
        (
            {"model": "chat", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
            400,
            "invalid_request_error",
            "role",
        ),
        (
            {
                "model": "chat",
                "max_tokens": 5,
                "temperature": 1.5,
                "messages": [{"role": "user", "content": "x"}],
            },
            400,
            "invalid_request_error",
            "temperature",
        ),
        (
            {
                "model": "chat",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}],
            },
            400,
            "invalid_request_error",
            "document",
        ),
        (
            {"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
            404,
            "not_found_error",
            "nope",
        ),
    ],
)
async def test_bad_anthropic_requests_get_anthropic_errors(
    gateway: RunningGateway,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    body: dict[str, object],
    status: int,
    kind: str,
    words: str,
) -> None:
    """Validation failures are 4xx in Anthropic's shape, naming the field; nothing goes upstream."""
    headers = {"x-api-key": APP_KEY, "anthropic-version": "2023-06-01"}
    async with http.post(f"{gateway.url}/v1/messages", json=body, headers=headers) as response:
        got = await response.json()
        assert response.status == status
    assert got["type"] == "error"
    assert got["error"]["type"] == kind
    assert words in got["error"]["message"]
    assert upstream.requests == []


# -- the translation, without sockets ---------------------------------------------------------


def test_encoder_output_parses_back_to_the_same_events() -> None:
    """What the inbound encoder writes, the provider's parser reads back event for event."""
    events: list[StreamEvent] = [
        StreamStart(provider="p", model="m"),
        ReasoningDelta(text="想"),
        TextDelta(text="Hello"),
        TextDelta(text=" 世界"),
        ToolCall(index=0, id="call_1", name="lookup", arguments='{"q": "西湖"}'),
        ToolCall(index=1, id="call_2", name="now", arguments="{}"),
    ]
    encoder = AnthropicEncoder("req_1", "chat")
    wire = b"".join(encoder.event(e) for e in events)
    wire += encoder.done(
        "tool_calls", TokenCount(prompt_tokens=11, completion_tokens=7, source="reported")
    )
    parser = AnthropicStreamParser("estuary", Redactor())
    assert parser.feed(wire) + parser.finish() == [
        *events[1:],
        Usage(prompt_tokens=11, completion_tokens=7),
        StreamEnd(reason="tool_calls"),
    ]


def test_inbound_request_becomes_openai_messages() -> None:
    """System blocks, images, tool results first, assistant tool_use as tool_calls."""
    chat = parse_anthropic_messages(
        {
            "model": "chat",
            "max_tokens": 10,
            "system": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
            "stop_sequences": ["END"],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
            "metadata": {"user_id": "u-1"},
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "AA=="},
                        },
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hm", "signature": "s"},
                        {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "and?"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": [{"type": "text", "text": "ok"}],
                        },
                    ],
                },
            ],
        }
    )
    assert chat.messages == (
        {
            "role": "system",
            "content": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "t1", "content": "ok"},
        {"role": "user", "content": "and?"},
    )
    assert (chat.max_tokens, chat.stream) == (10, False)
    assert dict(chat.extra) == {
        "stop": ["END"],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "user": "u-1",
    }
