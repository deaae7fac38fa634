"""The OpenAI-compatible API, driven by the official `openai` SDK pointed at Estuary."""

from __future__ import annotations

import openai
import pytest

from estuary.testing import FakeToolCall, FakeUpstream, Scenario, fake_usage
from tests.support import RunningGateway

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Tell me about 杭州."},
]


async def test_sdk_streams_the_exact_text_and_a_usage_chunk(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    """`stream=True` with include_usage: the exact text, then a usage chunk equal to upstream's."""
    scenario = Scenario(tokens=12)
    upstream.enqueue(scenario)
    stream = await client.chat.completions.create(
        model="chat", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
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
    prompt, completion = fake_usage(upstream.requests[0].body, scenario)
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt, completion)
    assert usage.total_tokens == prompt + completion
    assert upstream.requests[0].body["model"] == "fake-model"  # the alias was resolved


async def test_usage_chunk_is_stripped_when_the_client_did_not_ask(
    client: openai.AsyncOpenAI, upstream: FakeUpstream, gateway: RunningGateway
) -> None:
    """Estuary always asks upstream for usage, but passes it on only when the client asked."""
    upstream.enqueue(Scenario(tokens=3))
    stream = await client.chat.completions.create(model="chat", messages=MESSAGES, stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks)
    assert upstream.requests[0].body["stream_options"] == {"include_usage": True}
    (row,) = gateway.memory_rows.values()
    settled = (await gateway.row(row.opened.request_id)).settled
    assert settled is not None
    assert settled.token_source == "reported"


async def test_sdk_non_streaming_completion(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    """`stream=False` returns one `chat.completion` with the whole text and usage."""
    scenario = Scenario(tokens=7)
    upstream.enqueue(scenario)
    completion = await client.chat.completions.create(model="chat", messages=MESSAGES)
    assert completion.choices[0].message.content == scenario.expected_text()
    assert completion.choices[0].finish_reason == "stop"
    prompt, generated = fake_usage(upstream.requests[0].body, scenario)
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        prompt,
        generated,
    )
    assert upstream.requests[0].stream is True  # the upstream is streamed even so


async def test_sdk_tool_calls_are_streamed_whole(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    """A tool call reaches the SDK with its id, name and complete arguments."""
    call = FakeToolCall(id="call_9", name="lookup", arguments='{"q": "西湖", "n": 3}')
    upstream.enqueue(Scenario(text=(), tool_calls=(call,)))
    completion = await client.chat.completions.create(
        model="chat",
        messages=MESSAGES,
        tools=[{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
    )
    (got,) = completion.choices[0].message.tool_calls or []
    assert got.type == "function"
    assert (got.id, got.function.name, got.function.arguments) == (
        "call_9",
        "lookup",
        '{"q": "西湖", "n": 3}',
    )
    assert completion.choices[0].finish_reason == "tool_calls"


async def test_sdk_legacy_completions_stream(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    """`/v1/completions` streams through the upstream's legacy endpoint."""
    scenario = Scenario(tokens=5)
    upstream.enqueue(scenario)
    stream = await client.completions.create(model="chat", prompt="Once upon", stream=True)
    text = [chunk.choices[0].text async for chunk in stream if chunk.choices]
    assert "".join(text) == scenario.expected_text()
    assert upstream.requests[0].path == "/v1/completions"
    assert upstream.requests[0].body["prompt"] == "Once upon"


async def test_failure_after_first_token_makes_the_sdk_raise(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    """An upstream that dies mid-stream ends with an error object, never a fake [DONE]."""
    upstream.enqueue(Scenario(tokens=10, drop_after=3))
    stream = await client.chat.completions.create(model="chat", messages=MESSAGES, stream=True)
    received: list[str] = []

    async def read_all() -> None:
        async for chunk in stream:
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError) as raised:
        await read_all()
    assert "".join(received) == "".join(Scenario(tokens=10).content_chunks()[:3])
    assert "upstream" in str(raised.value).lower()


async def test_upstream_500_before_first_token_is_a_real_502(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    """An upstream that fails before any byte gives the SDK an HTTP error, not a 200 stream."""
    upstream.enqueue(Scenario(fail_status=500))
    with pytest.raises(openai.InternalServerError) as raised:
        await client.chat.completions.create(model="chat", messages=MESSAGES, stream=True)
    assert raised.value.status_code == 502
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["code"] == "upstream_error"


async def test_upstream_429_passes_retry_after_on(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    """An upstream rate limit is a 429 `upstream_rate_limited` with the upstream's Retry-After."""
    upstream.enqueue(Scenario(fail_status=429, retry_after="7"))
    with pytest.raises(openai.RateLimitError) as raised:
        await client.chat.completions.create(model="chat", messages=MESSAGES, stream=True)
    assert raised.value.response.headers["retry-after"] == "7"
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["code"] == "upstream_rate_limited"


async def test_models_lists_the_aliases(client: openai.AsyncOpenAI) -> None:
    """`/v1/models` lists the configured aliases, not upstream model names."""
    models = [model.id async for model in client.models.list()]
    assert models == ["chat", "fallback-chat", "dead-first"]
