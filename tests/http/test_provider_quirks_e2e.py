"""The Chinese presets' recorded stream quirks through a real Estuary: count, fail over, cancel.

Each preset is configured as itself (`preset = "zhipu"`, …, pointed at the fake upstream), so its
flavour's error codes apply; the fake replays the golden transcript byte for byte
(`Scenario(transcript=…)`). The primary target is `q-<preset>/<preset>-primary`, the second
`spare/backup-model`, a normal generated stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from estuary.testing import FakeUpstream, Scenario
from tests.support import AUTH, UPSTREAM_KEY, RunningGateway, read_app_stream

FIXTURES = Path(__file__).parent.parent / "fixtures"
PRESETS = ("moonshot", "deepseek", "zhipu", "dashscope", "qianfan", "spark")


def quirk_tables(upstream_url: str) -> str:
    """One provider per preset (its own flavour) and one alias falling back to `spare`."""
    tables = []
    for preset in PRESETS:
        tables.append(
            f"""
[providers.q-{preset}]
preset = "{preset}"
base_url = "{upstream_url}"
api_key = "${{UPSTREAM_KEY}}"

[models."quirk-{preset}"]
targets = ["q-{preset}/{preset}-primary", "spare/backup-model"]
first_token_timeout_s = 2.0
idle_timeout_s = 2.0
"""
        )
    return "\n".join(tables)


@pytest.fixture
def gateway(make_gateway: Callable[..., RunningGateway], upstream: FakeUpstream) -> RunningGateway:
    """An Estuary with the six presets configured against the fake upstream."""
    return make_gateway(extra=quirk_tables(upstream.base_url))


def replay(upstream: FakeUpstream, name: str, *, gap_s: float = 0.0) -> str:
    """Script the preset's primary model to replay `tests/fixtures/<name>`; returns the alias."""
    preset = name.split("/")[0]
    transcript = (FIXTURES / name).read_bytes()
    upstream.script(f"{preset}-primary", Scenario(transcript=transcript, gap_s=gap_s))
    upstream.script("backup-model", Scenario(tokens=4))
    return f"quirk-{preset}"


def chat(alias: str) -> dict[str, object]:
    return {"model": alias, "messages": [{"role": "user", "content": "你好"}]}


@pytest.mark.parametrize(
    ("name", "text", "usage"),
    [
        ("moonshot/chat_normal.sse", "你好，李雷！1+1等于2。", (19, 13)),
        ("moonshot/chat_thinking.sse", "等于 2。", (21, 30)),
        ("deepseek/chat_normal.sse", "Hello! How can I help you today?", (10, 6)),
        ("deepseek/chat_reasoner.sse", "9.8 更大。", (15, 42)),
        ("zhipu/chat_normal.sse", "土豆是一种块茎。", (60, 100)),
        ("dashscope/chat_normal.sse", "我是来自阿里云的大规模语言模型。", (22, 17)),
        ("qianfan/chat_normal.sse", "您好，我是文心一言，有什么可以帮您？", (3, 14)),
        ("qianfan/chat_no_usage.sse", "春眠不觉晓，处处闻啼鸟。", None),
        ("spark/chat_normal.sse", "你好！有什么可以帮你？", (1, 9)),
    ],
)
async def test_a_transcript_counts_its_reported_usage_or_is_estimated(
    gateway: RunningGateway,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    name: str,
    text: str,
    usage: tuple[int, int] | None,
) -> None:
    """The ledger row holds the transcript's usage exactly; without one, an estimate says so."""
    alias = replay(upstream, name)
    async with http.post(f"{gateway.url}/api/chat/stream", json=chat(alias), headers=AUTH) as r:
        got = await read_app_stream(r)
    assert got.status == 200
    kinds = [e["type"] for e in got.events]
    assert (kinds[0], kinds[-1]) == ("start", "done")
    assert "".join(e["content"] for e in got.events if e["type"] == "content") == text
    done = got.events[-1]
    assert done["finishReason"] == "stop"
    row = await gateway.row(got.headers["X-Request-Id"])
    assert row.settled is not None
    assert (row.status, row.settled.provider) == ("completed", f"q-{name.split('/')[0]}")
    if usage is None:
        assert done["usage"]["estimated"] is True
        assert row.settled.token_source == "estimated"
        assert row.settled.completion_tokens == done["usage"]["completionTokens"] > 0
    else:
        assert (done["usage"]["promptTokens"], done["usage"]["completionTokens"]) == usage
        assert done["usage"]["estimated"] is False
        assert row.settled.token_source == "reported"
        assert (row.settled.prompt_tokens, row.settled.completion_tokens) == usage


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("moonshot/chat_overloaded.sse", "upstream_error"),
        ("moonshot/chat_quota_exhausted.sse", "upstream_auth_failed"),
        ("moonshot/chat_rate_limited.sse", "upstream_rate_limited"),
        ("deepseek/chat_insufficient_resource_first.sse", "upstream_error"),
        ("zhipu/chat_rate_limited.sse", "upstream_rate_limited"),
        ("zhipu/chat_arrears.sse", "upstream_auth_failed"),
        ("dashscope/chat_throttled.sse", "upstream_rate_limited"),
        ("dashscope/chat_arrearage.sse", "upstream_auth_failed"),
        ("qianfan/chat_rate_limited.sse", "upstream_rate_limited"),
        ("spark/chat_flow_limited.sse", "upstream_rate_limited"),
        ("spark/chat_daily_limit.sse", "upstream_auth_failed"),
    ],
)
async def test_an_error_before_content_falls_back_to_the_next_target(
    gateway: RunningGateway,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    name: str,
    code: str,
) -> None:
    """An in-stream overload, rate or quota error before any text: the client sees one clean
    stream from the second target, and the row names the failed attempt and its code."""
    alias = replay(upstream, name)
    async with http.post(f"{gateway.url}/api/chat/stream", json=chat(alias), headers=AUTH) as r:
        got = await read_app_stream(r)
    assert got.status == 200
    assert [e["type"] for e in got.events] == ["start"] + ["content"] * 4 + ["done"]
    assert got.events[0]["provider"] == "spare"
    assert [seen.model for seen in upstream.requests] == [f"{alias[6:]}-primary", "backup-model"]
    row = await gateway.row(got.headers["X-Request-Id"])
    assert row.settled is not None
    assert (row.settled.provider, row.settled.attempts) == ("spare", 2)
    assert row.settled.failures == (f"q-{alias[6:]}/{alias[6:]}-primary: {code}",)


@pytest.mark.parametrize(
    "name",
    [
        "moonshot/chat_content_filter.sse",
        "zhipu/chat_moderation_input.sse",
        "dashscope/chat_inspection_input.sse",
        "qianfan/chat_system_unsafe.sse",
        "spark/chat_input_audit.sse",
    ],
)
async def test_refused_input_fails_without_fallback(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession, name: str
) -> None:
    """Moderation of the input is the request's fault: 400 upstream_rejected, no second try."""
    alias = replay(upstream, name)
    async with http.post(f"{gateway.url}/api/chat/stream", json=chat(alias), headers=AUTH) as r:
        body = await r.json()
        assert r.status == 400
        request_id = r.headers["X-Request-Id"]
    assert body["error"]["code"] == "upstream_rejected"
    assert [seen.model for seen in upstream.requests] == [f"{alias[6:]}-primary"]
    row = await gateway.row(request_id)
    assert row.settled is not None
    assert (row.status, row.settled.error_code) == ("error", "upstream_rejected")


@pytest.mark.parametrize(
    "name",
    [
        "moonshot/chat_error_after_content.sse",
        "deepseek/chat_insufficient_resource.sse",
        "zhipu/chat_network_error.sse",
        "dashscope/chat_internal_error_after_content.sse",
        "qianfan/chat_internal_error_after_content.sse",
        "spark/chat_engine_error_after_content.sse",
    ],
)
async def test_an_error_after_content_is_one_in_band_error(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession, name: str
) -> None:
    """Once text reached the client the failure is the stream's one `error` event: no switch."""
    alias = replay(upstream, name)
    async with http.post(f"{gateway.url}/api/chat/stream", json=chat(alias), headers=AUTH) as r:
        got = await read_app_stream(r)
    assert [e["type"] for e in got.events] == ["start", "content", "content", "error"]
    assert got.events[-1]["error"]["code"] == "upstream_error"
    assert got.events[-1]["error"]["retryable"] is True
    assert [seen.model for seen in upstream.requests] == [f"{alias[6:]}-primary"]
    row = await gateway.row(got.headers["X-Request-Id"])
    assert row.settled is not None
    assert (row.status, row.settled.token_source) == ("error", "partial")


@pytest.mark.parametrize(
    "name",
    [
        "zhipu/chat_sensitive.sse",
        "zhipu/chat_moderation_output.sse",
        "dashscope/chat_inspection_output.sse",
        "qianfan/chat_content_filter.sse",
        "spark/chat_output_audit.sse",
        "deepseek/chat_content_filter.sse",
    ],
)
async def test_output_moderation_ends_the_answer_with_content_filter(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession, name: str
) -> None:
    """A moderation stop of the output, as a finish reason or an error object, is OpenAI's
    `content_filter`: a `done`, and a completed row."""
    alias = replay(upstream, name)
    async with http.post(f"{gateway.url}/api/chat/stream", json=chat(alias), headers=AUTH) as r:
        got = await read_app_stream(r)
    assert got.events[-1]["type"] == "done"
    assert got.events[-1]["finishReason"] == "content_filter"
    assert any(e["type"] == "content" for e in got.events)
    row = await gateway.row(got.headers["X-Request-Id"])
    assert row.settled is not None
    assert (row.status, row.settled.finish_reason) == ("completed", "content_filter")


@pytest.mark.parametrize("preset", PRESETS)
async def test_a_client_disconnect_closes_the_upstream_connection(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession, preset: str
) -> None:
    """Leaving an OpenAI-API stream mid-transcript aborts the upstream request at once."""
    alias = replay(upstream, f"{preset}/chat_normal.sse", gap_s=0.3)
    body = {**chat(alias), "stream": True}
    response = await http.post(f"{gateway.url}/v1/chat/completions", json=body, headers=AUTH)
    assert response.status == 200
    request_id = response.headers["X-Request-Id"]
    await response.content.readline()
    response.close()
    (seen,) = await upstream.wait_for_requests(1)
    await asyncio.wait_for(seen.client_gone.wait(), timeout=5)
    assert seen.chunks_sent < 4  # the transcript was not played to its end
    row = await gateway.row(request_id)
    assert row.status == "canceled"
    assert row.settled is not None
    assert row.settled.finish_reason == "client_disconnected"


async def test_the_fake_replays_a_transcript_byte_for_byte(
    upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """`Scenario(transcript=…)` streams exactly the recorded bytes; `drop_after` counts messages."""
    transcript = (FIXTURES / "deepseek" / "chat_normal.sse").read_bytes()
    upstream.enqueue(Scenario(transcript=transcript), Scenario(transcript=transcript, drop_after=3))
    body = {**chat("m"), "stream": True}
    headers = {"Authorization": f"Bearer {UPSTREAM_KEY}"}
    async with http.post(f"{upstream.base_url}/chat/completions", json=body, headers=headers) as r:
        assert await r.read() == transcript
    blocks = transcript.split(b"\n\n")
    async with http.post(f"{upstream.base_url}/chat/completions", json=body, headers=headers) as r:
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    first, second = upstream.requests
    assert first.chunks_sent == len(blocks) - 1  # every message; the last block is empty
    assert second.chunks_sent == 3
