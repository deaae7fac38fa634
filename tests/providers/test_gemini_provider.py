"""`GeminiProvider` against the scripted fake over real sockets: URL, key, errors, cancel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest

from estuary.core.errors import (
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
)
from estuary.core.events import StreamEnd, StreamEvent, StreamStart, TextDelta, Usage
from estuary.core.requests import ChatRequest, parse_openai_chat
from estuary.providers.base import Timeouts
from estuary.providers.gemini import GeminiProvider
from estuary.providers.upstream_http import UpstreamPool
from estuary.testing import FakeUpstream, Scenario, fake_usage

KEY = "AIzaSy-test-upstream-key-0123456789"
TIMEOUTS = Timeouts(connect_s=2, first_token_s=2, idle_s=2)
REQUEST = parse_openai_chat({"model": "x", "messages": [{"role": "user", "content": "hello"}]})


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream(api_key=KEY) as fake:
        yield fake


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool()
    yield pool
    pool.close()


def provider(upstream: FakeUpstream, pool: UpstreamPool, key: str = KEY) -> GeminiProvider:
    root = upstream.base_url.removesuffix("/v1")
    return GeminiProvider("gem", base_url=root, api_key=key, pool=pool)


async def collect(gem: GeminiProvider, request: ChatRequest = REQUEST) -> list[StreamEvent]:
    async with aclosing(gem.stream(request, "gemini-2.5-flash", TIMEOUTS)) as events:
        return [event async for event in events]


async def test_a_stream_starts_streams_reports_usage_and_ends(
    upstream: FakeUpstream, pool: UpstreamPool
) -> None:
    """StreamStart first, the text, the reported usage, then the end — the Provider contract."""
    scenario = Scenario(tokens=3)
    upstream.enqueue(scenario)
    events = await collect(provider(upstream, pool))
    prompt, completion = fake_usage(upstream.requests[0].body, scenario)
    assert events == [
        StreamStart(provider="gem", model="gemini-2.5-flash"),
        *(TextDelta(text=c) for c in scenario.content_chunks()),
        Usage(prompt_tokens=prompt, completion_tokens=completion),
        StreamEnd(reason="stop"),
    ]


async def test_the_key_is_a_header_and_the_model_is_in_the_path(
    upstream: FakeUpstream, pool: UpstreamPool
) -> None:
    """`x-goog-api-key` carries the key; the URL has only the model, the method and alt=sse."""
    upstream.enqueue(Scenario(tokens=1))
    await collect(provider(upstream, pool))
    (seen,) = upstream.requests
    assert seen.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert seen.headers["x-goog-api-key"] == KEY
    assert seen.headers["accept"] == "text/event-stream"


async def test_a_model_named_as_google_lists_it_works(
    upstream: FakeUpstream, pool: UpstreamPool
) -> None:
    """`models/gemini-2.5-flash` (the name in Google's model list) is the same model."""
    upstream.enqueue(Scenario(tokens=1))
    gem = provider(upstream, pool)
    async with aclosing(gem.stream(REQUEST, "models/gemini-2.5-flash", TIMEOUTS)) as events:
        assert isinstance([e async for e in events][-1], StreamEnd)
    assert upstream.requests[0].path.startswith("/v1beta/models/gemini-2.5-flash:")


async def test_a_connection_is_reused_for_the_next_request(
    upstream: FakeUpstream, pool: UpstreamPool
) -> None:
    """A stream read to its end leaves its connection in the pool, and the next one works."""
    gem = provider(upstream, pool)
    upstream.enqueue(Scenario(tokens=2), Scenario(tokens=2))
    await collect(gem)
    events = await collect(gem)
    assert isinstance(events[-1], StreamEnd)
    assert len(upstream.requests) == 2


async def test_a_wrong_key_is_an_auth_failure_not_a_bad_request(
    upstream: FakeUpstream, pool: UpstreamPool
) -> None:
    """Google answers a wrong key with 400 API_KEY_INVALID: Estuary's key failed, not the client."""
    with pytest.raises(UpstreamAuthFailed) as raised:
        await collect(provider(upstream, pool, key="AIzaSy-wrong-key-000000000000"))
    assert raised.value.fallback
    assert "wrong-key" not in str(raised.value)


async def test_a_rate_limit_takes_its_wait_from_retry_info(
    upstream: FakeUpstream, pool: UpstreamPool
) -> None:
    """No Retry-After header: the wait comes from the body's google.rpc.RetryInfo."""
    upstream.enqueue(Scenario(fail_status=429, retry_after="12"))
    with pytest.raises(UpstreamRateLimited) as raised:
        await collect(provider(upstream, pool))
    assert raised.value.retry_after_s == 12.0


async def test_an_error_body_echoing_the_key_is_redacted(
    upstream: FakeUpstream, pool: UpstreamPool
) -> None:
    """An upstream that repeats our key in its error cannot leak it into Estuary's error."""
    upstream.enqueue(
        Scenario(fail_status=500, fail_body='{"error": {"message": "{authorization}"}}')
    )
    with pytest.raises(UpstreamError) as raised:
        await collect(provider(upstream, pool))
    assert KEY not in str(raised.value)


async def test_an_untranslatable_request_is_rejected_before_any_request(
    upstream: FakeUpstream, pool: UpstreamPool
) -> None:
    """A request Gemini cannot carry is the client's fault (no fallback) and never leaves."""
    image = {"type": "image_url", "image_url": {"url": "https://x.test/cat.png"}}
    request = parse_openai_chat({"messages": [{"role": "user", "content": [image]}]})
    with pytest.raises(UpstreamRejected, match="data: URLs") as raised:
        await collect(provider(upstream, pool), request)
    assert not raised.value.fallback
    assert upstream.requests == []


async def test_closing_early_resets_the_upstream_connection(
    upstream: FakeUpstream, pool: UpstreamPool
) -> None:
    """`aclose()` after the first token: the fake sees its client leave at once."""
    upstream.enqueue(Scenario(tokens=100, gap_s=0.05))
    async with aclosing(provider(upstream, pool).stream(REQUEST, "m", TIMEOUTS)) as events:
        assert isinstance(await anext(events), StreamStart)
        assert isinstance(await anext(events), TextDelta)
    (seen,) = upstream.requests
    async with asyncio.timeout(3):
        await seen.client_gone.wait()
    assert seen.chunks_sent < 100
