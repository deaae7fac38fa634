"""An OpenAI client talking to a Gemini model: the official SDK through Estuary to a Gemini fake."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import openai
import orjson
import pytest

from estuary.testing import FakeToolCall, FakeUpstream, Scenario, fake_usage
from tests.support import AUTH, UPSTREAM_KEY, RunningGateway, read_app_stream

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Tell me about 杭州."},
]
STREAM_PATH = "/v1beta/models/{model}:streamGenerateContent?alt=sse"

# `gem` speaks Gemini to the fake's root (no /v1); `badgem` does too, with a key the fake refuses.
EXTRA = """
[providers.gem]
format = "gemini"
base_url = "{root}"
api_key = "${{UPSTREAM_KEY}}"

[providers.badgem]
format = "gemini"
base_url = "{root}"
api_key = "${{OTHER_KEY}}"

[models.gemini]
targets = ["gem/gemini-2.5-flash"]
first_token_timeout_s = 2.0
idle_timeout_s = 2.0

[models."gemini-first"]
targets = ["gem/gemini-2.5-pro", "fake/fake-model"]
first_token_timeout_s = 2.0
idle_timeout_s = 2.0

[models."gemini-bad-key"]
targets = ["badgem/gemini-2.5-flash"]
"""


@pytest.fixture
def gateway(make_gateway: Callable[..., RunningGateway], upstream: FakeUpstream) -> RunningGateway:
    """The test gateway plus Gemini providers pointed at the fake upstream's root."""
    return make_gateway(extra=EXTRA.format(root=upstream.base_url.removesuffix("/v1")))


async def test_sdk_streams_the_exact_text_and_the_usage_gemini_reported(
    client: openai.AsyncOpenAI, upstream: FakeUpstream, gateway: RunningGateway
) -> None:
    """Text pieces in order; the usage chunk equals Gemini's usageMetadata; the row says so."""
    scenario = Scenario(tokens=12)
    upstream.enqueue(scenario)
    stream = await client.chat.completions.create(
        model="gemini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
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
    assert seen.path == STREAM_PATH.format(model="gemini-2.5-flash")
    assert seen.body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert seen.body["contents"] == [{"role": "user", "parts": [{"text": "Tell me about 杭州."}]}]
    prompt, completion = fake_usage(seen.body, scenario)
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt, completion)
    (row,) = gateway.memory_rows.values()
    settled = (await gateway.row(row.opened.request_id)).settled
    assert settled is not None
    assert (settled.provider, settled.token_source) == ("gem", "reported")


async def test_the_upstream_key_travels_in_a_header_never_in_the_url(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    """The URL the fake saw (query included) holds no key; `x-goog-api-key` carries it."""
    upstream.enqueue(Scenario(tokens=2))
    await client.chat.completions.create(model="gemini", messages=MESSAGES)
    (seen,) = upstream.requests
    assert UPSTREAM_KEY not in seen.path
    assert "key=" not in seen.path
    assert seen.headers["x-goog-api-key"] == UPSTREAM_KEY
    assert "authorization" not in seen.headers


async def test_a_tool_call_reaches_the_sdk_whole(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    """Gemini's functionCall is one tool call: generated id, name, compact JSON arguments."""
    call = FakeToolCall(id="unused", name="lookup", arguments='{"q": "西湖", "n": 3}')
    upstream.enqueue(Scenario(text=(), tool_calls=(call,)))
    completion = await client.chat.completions.create(
        model="gemini",
        messages=MESSAGES,
        tools=[{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
    )
    (got,) = completion.choices[0].message.tool_calls or []
    assert got.type == "function"
    assert (got.id, got.function.name) == ("call_0", "lookup")
    assert got.function.arguments == '{"q":"西湖","n":3}'
    assert completion.choices[0].finish_reason == "tool_calls"
    declarations = upstream.requests[0].body["tools"][0]["functionDeclarations"]
    assert declarations == [{"name": "lookup", "parametersJsonSchema": {}}]


async def test_a_tool_result_goes_back_as_a_function_response(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    """The next turn carries the call as functionCall and the result as functionResponse."""
    upstream.enqueue(Scenario(tokens=3))
    await client.chat.completions.create(
        model="gemini",
        messages=[
            *MESSAGES,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_0",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q":"西湖"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_0", "content": "A lake."},
        ],
        tools=[{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
    )
    contents = upstream.requests[0].body["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    assert contents[1]["parts"][0]["functionCall"] == {"name": "lookup", "args": {"q": "西湖"}}
    assert contents[2]["parts"] == [
        {"functionResponse": {"name": "lookup", "response": {"output": "A lake."}}}
    ]


async def test_a_failing_gemini_target_falls_back_to_an_openai_target(
    client: openai.AsyncOpenAI, upstream: FakeUpstream, gateway: RunningGateway
) -> None:
    """Gemini answers 503 before any token → the OpenAI-format target streams; one clean answer."""
    upstream.script("gemini-2.5-pro", Scenario(fail_status=503))
    backup = Scenario(tokens=4)
    upstream.script("fake-model", backup)
    stream = await client.chat.completions.create(
        model="gemini-first", messages=MESSAGES, stream=True
    )
    text = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert "".join(text) == backup.expected_text()
    paths = [seen.path for seen in upstream.requests]
    assert paths == [STREAM_PATH.format(model="gemini-2.5-pro"), "/v1/chat/completions"]
    (row,) = gateway.memory_rows.values()
    settled = (await gateway.row(row.opened.request_id)).settled
    assert settled is not None
    assert (settled.provider, settled.attempts) == ("fake", 2)


async def test_thinking_is_reasoning_and_counts_in_the_usage(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """Thought parts arrive as `reasoning` events; the done usage includes the thinking tokens."""
    scenario = Scenario(reasoning=("想", "一想"), tokens=3)
    upstream.enqueue(scenario)
    body = {"model": "gemini", "messages": [{"role": "user", "content": "1+1?"}]}
    async with http.post(f"{gateway.url}/api/chat/stream", json=body, headers=AUTH) as response:
        got = await read_app_stream(response)
    kinds = [e["type"] for e in got.events]
    assert kinds == ["start", "reasoning", "reasoning", "content", "content", "content", "done"]
    assert [e["content"] for e in got.events if e["type"] == "reasoning"] == ["想", "一想"]
    prompt, completion = fake_usage(upstream.requests[0].body, scenario)
    assert got.events[-1]["usage"] == {
        "promptTokens": prompt,
        "completionTokens": completion,
        "estimated": False,
    }


@pytest.mark.parametrize(
    ("model", "scenario", "status", "code"),
    [
        ("gemini", Scenario(fail_status=503), 502, "upstream_error"),
        ("gemini", Scenario(fail_status=500), 502, "upstream_error"),
        ("gemini", Scenario(fail_status=400), 400, "upstream_rejected"),
        ("gemini", Scenario(fail_status=403), 502, "upstream_auth_failed"),
        ("gemini", Scenario(fail_status=429, retry_after="7"), 429, "upstream_rate_limited"),
        ("gemini-bad-key", Scenario(tokens=2), 502, "upstream_auth_failed"),
    ],
)
async def test_gemini_failures_before_the_first_token_keep_a_real_status(
    gateway: RunningGateway,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    model: str,
    scenario: Scenario,
    status: int,
    code: str,
) -> None:
    """Google's errors map like everyone's; a wrong key (Google's 400) is an auth failure."""
    upstream.enqueue(scenario)
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    async with http.post(f"{gateway.url}/api/chat/stream", json=body, headers=AUTH) as response:
        error = (await response.json())["error"]
        assert (response.status, error["code"]) == (status, code)
        if status == 429:  # Google says when in a RetryInfo detail, not a header
            assert response.headers["Retry-After"] == "7"
    assert UPSTREAM_KEY not in orjson.dumps(error).decode()


async def test_a_failure_after_the_first_token_makes_the_sdk_raise(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    """Google's in-band error object mid-stream ends the stream with an error, never [DONE]."""
    upstream.enqueue(Scenario(tokens=10, error_after=3))
    stream = await client.chat.completions.create(model="gemini", messages=MESSAGES, stream=True)
    received: list[str] = []

    async def read_all() -> None:
        async for chunk in stream:
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError):
        await read_all()
    assert "".join(received) == "".join(Scenario(tokens=10).content_chunks()[:3])


async def test_closing_the_stream_aborts_the_gemini_request(
    client: openai.AsyncOpenAI, upstream: FakeUpstream
) -> None:
    """A client that stops reading and closes cuts the upstream connection at once."""
    upstream.enqueue(Scenario(tokens=200, gap_s=0.02))
    stream = await client.chat.completions.create(model="gemini", messages=MESSAGES, stream=True)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    await stream.close()
    (seen,) = await upstream.wait_for_requests(1)
    async with asyncio.timeout(3):
        await seen.client_gone.wait()
    assert seen.chunks_sent < 200
