"""Mid-stream failover end to end: a real Estuary, an upstream that drops, Kimi's partial mode."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
import openai
import pytest

from estuary.testing import FakeUpstream, Scenario, fake_usage
from tests.support import APP_KEY, AUTH, RunningGateway, read_app_stream

PRIMARY = Scenario(tokens=10, drop_after=4)
SHOWN = PRIMARY.content_chunks()[:4]  # what reached the client before the drop
REST = Scenario(text=PRIMARY.content_chunks()[4:])  # what "Kimi" continues with

KIMI = """
[providers.kimi]
preset = "moonshot"
base_url = "{url}"
api_key = "${{UPSTREAM_KEY}}"

[models.resilient]
targets = ["fake/primary-model", "kimi/kimi-model"]
first_token_timeout_s = 2.0
idle_timeout_s = 2.0
midstream_failover = {on}
"""

USER = {"role": "user", "content": "Tell me a story."}


@pytest.fixture
def make_resilient(
    make_gateway: Callable[..., RunningGateway], upstream: FakeUpstream
) -> Callable[..., RunningGateway]:
    """A gateway whose alias `resilient` falls over from `fake` to a Kimi-preset provider."""

    def start(*, on: bool = True) -> RunningGateway:
        upstream.script("primary-model", PRIMARY)
        upstream.script("kimi-model", REST)
        return make_gateway(extra=KIMI.format(url=upstream.base_url, on=str(on).lower()))

    return start


async def test_the_app_stream_shows_the_seam_and_finishes_on_the_next_target(
    make_resilient: Callable[..., RunningGateway],
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    """4 content events, one `attempt`, the rest from Kimi, `done`; the row has both attempts."""
    gateway = make_resilient()
    body = {"model": "resilient", "messages": [USER]}
    async with http.post(f"{gateway.url}/api/chat/stream", json=body, headers=AUTH) as response:
        got = await read_app_stream(response)
    kinds = [e["type"] for e in got.events]
    assert kinds == ["start"] + ["content"] * 4 + ["attempt"] + ["content"] * 6 + ["done"]
    assert got.events[0]["provider"] == "fake"
    attempt = got.events[5]
    assert set(attempt) == {"type", "provider", "model", "reason"}
    assert (attempt["provider"], attempt["model"]) == ("kimi", "kimi-model")
    assert attempt["reason"] in {"upstream_error", "upstream_protocol_error"}
    text = "".join(e["content"] for e in got.events if e["type"] == "content")
    assert text == PRIMARY.expected_text()  # nothing lost, nothing twice
    seqs = [int(i.rpartition(":")[2]) for i in got.ids]
    assert seqs == list(range(1, len(got.events) + 1))  # the seam has its own id
    assert got.events[-1]["usage"]["estimated"] is True  # the dropped attempt reported nothing

    first, second = upstream.requests
    assert first.body["messages"] == [USER]
    assert second.model == "kimi-model"
    assert second.body["messages"] == [
        USER,
        {"role": "assistant", "content": "".join(SHOWN), "partial": True},
    ]

    row = await gateway.row(got.headers["X-Request-Id"])
    assert row.status == "completed"
    assert row.settled is not None
    assert (row.settled.provider, row.settled.upstream_model) == ("kimi", "kimi-model")
    assert row.settled.attempts == 2
    (failure,) = row.settled.failures
    assert failure.startswith("fake/primary-model: upstream_")
    assert row.settled.token_source == "estimated"


async def test_usage_is_the_sum_of_both_attempts_when_both_reported_it(
    make_resilient: Callable[..., RunningGateway],
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    """A target that reported usage before it died: `done.usage` adds both reports up."""
    gateway = make_resilient()
    chunk = b'data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":%s}]}\n\n'
    usage = b'{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}'
    died = (  # two words and its usage, then the connection ends: no finish_reason, no [DONE]
        chunk % b'{"role":"assistant","content":"Once "}'
        + chunk % b'{"content":"upon "}'
        + b'data: {"object":"chat.completion.chunk","choices":[],"usage":%s}\n\n' % usage
    )
    upstream.script("primary-model", Scenario(transcript=died))
    rest = Scenario(text=("a ", "time."))
    upstream.script("kimi-model", rest)
    body = {"model": "resilient", "messages": [USER]}
    async with http.post(f"{gateway.url}/api/chat/stream", json=body, headers=AUTH) as response:
        got = await read_app_stream(response)
    kinds = [e["type"] for e in got.events]
    assert kinds == ["start", "content", "content", "attempt", "content", "content", "done"]
    text = "".join(e["content"] for e in got.events if e["type"] == "content")
    assert text == "Once upon a time."
    prompt, completion = fake_usage(upstream.requests[1].body, rest)
    assert got.events[-1]["usage"] == {
        "promptTokens": 7 + prompt,
        "completionTokens": 2 + completion,
        "estimated": False,
    }
    row = await gateway.row(got.headers["X-Request-Id"])
    assert row.settled is not None
    assert row.settled.token_source == "reported"


async def test_without_the_flag_the_same_drop_is_an_in_band_error(
    make_resilient: Callable[..., RunningGateway],
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    """Off (the default): no seam, no second request, the usual `error` event."""
    gateway = make_resilient(on=False)
    body = {"model": "resilient", "messages": [USER]}
    async with http.post(f"{gateway.url}/api/chat/stream", json=body, headers=AUTH) as response:
        got = await read_app_stream(response)
    assert [e["type"] for e in got.events] == ["start"] + ["content"] * 4 + ["error"]
    assert [r.model for r in upstream.requests] == ["primary-model"]


async def test_an_openai_client_sees_one_seamless_answer(
    make_resilient: Callable[..., RunningGateway],
) -> None:
    """OpenAI's stream has no seam event: the SDK gets the whole text, `stop` and usage."""
    gateway = make_resilient()
    async with openai.AsyncOpenAI(
        base_url=f"{gateway.url}/v1", api_key=APP_KEY, max_retries=0, timeout=10
    ) as sdk:
        stream = await sdk.chat.completions.create(
            model="resilient",
            messages=[{"role": "user", "content": "Tell me a story."}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text, finish, usage = [], None, None
        async for chunk in stream:
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
            usage = chunk.usage or usage
        whole = await sdk.chat.completions.create(
            model="resilient", messages=[{"role": "user", "content": "Tell me a story."}]
        )
    assert "".join(text) == PRIMARY.expected_text()
    assert finish == "stop"
    assert usage is not None
    assert usage.completion_tokens > 0
    assert whole.choices[0].message.content == PRIMARY.expected_text()  # non-streamed too
