"""The fake upstream's Gemini route, driven with a plain HTTP client: Google's shapes and rules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from estuary.testing import FakeToolCall, FakeUpstream, Scenario, fake_usage

KEY = "AIzaSy-fake-test-key-0123456789"
BODY = {
    "systemInstruction": {"parts": [{"text": "Be brief."}]},  # 9 characters
    "contents": [{"role": "user", "parts": [{"text": "hi there"}]}],  # 8 characters
}


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream(api_key=KEY) as fake:
        yield fake


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        yield client


def url(upstream: FakeUpstream, model: str = "gemini-2.5-flash", query: str = "?alt=sse") -> str:
    root = upstream.base_url.removesuffix("/v1")
    return f"{root}/v1beta/models/{model}:streamGenerateContent{query}"


async def post(
    session: aiohttp.ClientSession, target: str, key: str | None = KEY
) -> tuple[int, bytes]:
    headers = {"x-goog-api-key": key} if key is not None else {}
    async with session.post(target, json=BODY, headers=headers) as response:
        return response.status, await response.read()


def messages(raw: bytes) -> list[dict[str, Any]]:
    """The JSON of every SSE message; Gemini separates them with CRLF CRLF."""
    blocks = raw.decode().split("\r\n\r\n")
    assert blocks[-1] == ""  # nothing after the last message
    return [orjson.loads(block.removeprefix("data: ")) for block in blocks[:-1]]


async def test_a_stream_is_whole_responses_with_usage_and_finish_at_the_end(
    upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    """Thought parts, text parts, one functionCall, then STOP with the final usageMetadata."""
    call = FakeToolCall(id="c1", name="lookup", arguments='{"q": "x"}')
    scenario = Scenario(tokens=2, reasoning=("hm",), tool_calls=(call,))
    upstream.enqueue(scenario)
    status, raw = await post(session, url(upstream))
    assert status == 200
    chunks = messages(raw)
    parts = [part for c in chunks for part in c["candidates"][0]["content"]["parts"]]
    assert parts == [
        {"text": "hm", "thought": True},
        *({"text": t} for t in scenario.content_chunks()),
        {"functionCall": {"name": "lookup", "args": {"q": "x"}}},
        {"text": ""},
    ]
    assert [c["candidates"][0].get("finishReason") for c in chunks][-2:] == [None, "STOP"]
    prompt, completion = fake_usage(BODY, scenario)
    assert prompt == (9 + 8) // 4 + 1  # systemInstruction and contents both count
    assert chunks[-1]["usageMetadata"] == {
        "promptTokenCount": prompt,
        "candidatesTokenCount": 3,
        "thoughtsTokenCount": 1,
        "totalTokenCount": prompt + completion,
    }
    (seen,) = upstream.requests
    assert (seen.model, seen.stream) == ("gemini-2.5-flash", True)


@pytest.mark.parametrize(
    ("key", "status", "reason"),
    [(None, 403, "PERMISSION_DENIED"), ("AIzaSy-wrong", 400, "INVALID_ARGUMENT")],
)
async def test_the_key_is_checked_as_google_does(
    upstream: FakeUpstream,
    session: aiohttp.ClientSession,
    key: str | None,
    status: int,
    reason: str,
) -> None:
    """No key: 403; a wrong key: 400 with an API_KEY_INVALID ErrorInfo."""
    got, raw = await post(session, url(upstream), key=key)
    error = orjson.loads(raw)["error"]
    assert (got, error["code"], error["status"]) == (status, status, reason)
    if key is not None:
        assert error["details"][0]["reason"] == "API_KEY_INVALID"


async def test_only_alt_sse_streaming_is_served(
    upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    """Without alt=sse (a JSON-array stream) the fake answers 404 rather than the wrong shape."""
    status, _ = await post(session, url(upstream, query=""))
    assert status == 404


async def test_error_after_sends_googles_error_frame(
    upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    """The mid-stream fault is Google's error object, after the first N content chunks."""
    upstream.enqueue(Scenario(tokens=5, error_after=2))
    _, raw = await post(session, url(upstream))
    chunks = messages(raw)
    assert len(chunks) == 3
    assert chunks[-1] == {
        "error": {
            "code": 503,
            "message": "The model is overloaded. Please try again later.",
            "status": "UNAVAILABLE",
        }
    }


async def test_a_rate_limit_says_when_in_retry_info(
    upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    """`retry_after` becomes a google.rpc.RetryInfo detail (Google sends no Retry-After)."""
    upstream.enqueue(Scenario(fail_status=429, retry_after="30"))
    async with session.post(url(upstream), json=BODY, headers={"x-goog-api-key": KEY}) as response:
        assert response.status == 429
        assert "Retry-After" not in response.headers
        error = (await response.json())["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED"
    assert error["details"] == [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "30s"}
    ]


async def test_scripts_apply_to_the_model_in_the_url(
    upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    """`script(model, …)` matches the model named in the Gemini URL."""
    upstream.script("gemini-2.5-pro", Scenario(fail_status=503))
    status, _ = await post(session, url(upstream, model="gemini-2.5-pro"))
    assert status == 503
