"""The app API end to end: real sockets from client to Estuary to the scripted fake upstream."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import orjson

from estuary.sse import SSEDecoder
from estuary.testing import FakeToolCall, FakeUpstream, Scenario, fake_usage
from tests.support import AUTH, RunningGateway, read_app_stream

CHAT = {"messages": [{"role": "user", "content": "Say hello"}], "model": "chat"}


async def test_post_stream_emits_start_content_done_with_ids_and_headers(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """A normal stream: start, every content piece in order, done with the upstream's usage."""
    scenario = Scenario(tokens=6)
    upstream.enqueue(scenario)
    async with http.post(f"{gateway.url}/api/chat/stream", json=CHAT, headers=AUTH) as response:
        got = await read_app_stream(response)
    assert got.status == 200
    assert got.headers["Content-Type"].startswith("text/event-stream")
    assert got.headers["Cache-Control"] == "no-cache, no-transform"
    assert got.headers["X-Accel-Buffering"] == "no"
    assert "Content-Encoding" not in got.headers
    start, *content, done = got.events
    request_id = got.headers["X-Request-Id"]
    assert start == {"type": "start", "requestId": request_id, "model": "chat", "provider": "fake"}
    assert [e["type"] for e in content] == ["content"] * 6
    assert "".join(e["content"] for e in content) == scenario.expected_text()
    (seen,) = upstream.requests
    prompt, completion = fake_usage(seen.body, scenario)
    assert done == {
        "type": "done",
        "finishReason": "stop",
        "usage": {"promptTokens": prompt, "completionTokens": completion, "estimated": False},
    }
    assert got.ids == [f"{request_id}:{i}" for i in range(1, len(got.events) + 1)]
    row = await gateway.row(request_id)
    assert row.status == "completed"
    assert row.settled is not None
    assert (row.settled.prompt_tokens, row.settled.token_source) == (prompt, "reported")


async def test_events_reach_the_client_while_the_upstream_is_still_generating(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """Each token is relayed before the next one exists: nothing is buffered to the end."""
    upstream.enqueue(Scenario(tokens=5, gap_s=0.15))
    sent_when_received: list[int] = []
    decoder = SSEDecoder()
    async with http.post(f"{gateway.url}/api/chat/stream", json=CHAT, headers=AUTH) as response:
        async for chunk in response.content.iter_any():
            for message in decoder.feed(chunk):
                if orjson.loads(message.data)["type"] == "content":
                    sent_when_received.append(upstream.requests[0].chunks_sent)
    assert len(sent_when_received) == 5
    # When the client held content event i, the upstream had not yet written all five.
    assert sent_when_received[:4] == [1, 2, 3, 4]


async def test_fragmented_and_utf8_split_upstream_bytes_arrive_intact(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """Upstream writes of 1 byte, or cut inside CJK characters, still give the exact text."""
    text = ("你好", "，世界", " 🌊 waves", "。")
    for scenario in (Scenario(text=text, chunk_bytes=1), Scenario(text=text, split_utf8=True)):
        upstream.enqueue(scenario)
        async with http.post(f"{gateway.url}/api/chat/stream", json=CHAT, headers=AUTH) as response:
            got = await read_app_stream(response)
        assert "".join(e["content"] for e in got.events if e["type"] == "content") == "".join(text)
        assert got.events[-1]["type"] == "done"


async def test_reasoning_and_tool_calls_are_normalised(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """Thinking tokens become `reasoning` events; tool-call fragments one whole `tool_call`."""
    call = FakeToolCall(id="call_1", name="get_weather", arguments='{"city": "杭州"}')
    upstream.enqueue(Scenario(reasoning=("想一想", "…"), text=("OK",), tool_calls=(call,)))
    async with http.post(f"{gateway.url}/api/chat/stream", json=CHAT, headers=AUTH) as response:
        got = await read_app_stream(response)
    kinds = [e["type"] for e in got.events]
    assert kinds == ["start", "reasoning", "reasoning", "content", "tool_call", "done"]
    assert [e["content"] for e in got.events if e["type"] == "reasoning"] == ["想一想", "…"]
    assert got.events[4] == {
        "type": "tool_call",
        "index": 0,
        "id": "call_1",
        "tool": {"name": "get_weather", "arguments": '{"city": "杭州"}'},
    }
    assert got.events[-1]["finishReason"] == "tool_calls"


async def test_get_stream_with_a_ticket_for_eventsource(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """EventSource's GET works with a single-use ticket; the ticket cannot be replayed."""
    async with http.post(f"{gateway.url}/api/tickets", headers=AUTH) as response:
        assert response.status == 200
        ticket = (await response.json())["ticket"]
    url = f"{gateway.url}/api/chat/stream"
    params = {"message": "hi", "ticket": ticket}
    async with http.get(url, params=params) as response:
        got = await read_app_stream(response)
    assert got.status == 200
    assert got.events[0]["type"] == "start"
    assert got.events[-1]["type"] == "done"
    assert upstream.requests[0].body["messages"] == [{"role": "user", "content": "hi"}]
    async with http.get(url, params=params) as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "invalid_api_key"


async def test_text_mode_streams_only_the_answer_text(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """`?format=text` gives plain chunked text: no events, no reasoning, just the answer."""
    scenario = Scenario(reasoning=("hmm",), tokens=5)
    upstream.enqueue(scenario)
    url = f"{gateway.url}/api/chat/stream?format=text"
    async with http.post(url, json=CHAT, headers=AUTH) as response:
        body = await response.text()
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert response.headers["Cache-Control"] == "no-cache, no-transform"
    assert body == scenario.expected_text()


async def test_text_mode_failure_after_first_token_appends_an_error_line(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """A failure mid-answer in text mode ends with one `[error] code: message` line."""
    scenario = Scenario(text=("partial", " answer"), error_after=2)
    upstream.enqueue(scenario)
    headers = {**AUTH, "Accept": "text/plain"}
    async with http.post(f"{gateway.url}/api/chat/stream", json=CHAT, headers=headers) as response:
        body = await response.text()
    assert body.startswith("partial answer\n[error] upstream_error: ")
    assert body.endswith("\n")
    assert body.count("[error]") == 1


async def test_heartbeats_keep_a_silent_stream_alive(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """While the upstream stalls before its first token, `: ping` comments flow to the client."""
    upstream.enqueue(Scenario(ttft_s=1.2, tokens=2))
    async with http.post(f"{gateway.url}/api/chat/stream", json=CHAT, headers=AUTH) as response:
        got = await read_app_stream(response)
    assert got.status == 200
    assert got.comments >= 2  # heartbeat_s = 0.2 in the test config
    assert [e["type"] for e in got.events] == ["start", "content", "content", "done"]


async def test_client_disconnect_aborts_the_upstream_without_a_grace_period(
    make_gateway: Callable[..., RunningGateway],
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    """With `resume_grace_s = 0`, closing the connection mid-stream closes the upstream request
    at once (tests/http/test_resume.py has the grace period), and the row says so."""
    gateway = make_gateway(server="resume_grace_s = 0")
    upstream.enqueue(Scenario(tokens=200, gap_s=0.05))
    response = await http.post(f"{gateway.url}/api/chat/stream", json=CHAT, headers=AUTH)
    request_id = response.headers["X-Request-Id"]
    await response.content.readline()
    response.close()
    (seen,) = await upstream.wait_for_requests(1)
    await asyncio.wait_for(seen.client_gone.wait(), timeout=5)
    assert seen.chunks_sent < 200
    row = await gateway.row(request_id)
    assert row.status == "canceled"
    assert row.settled is not None
    assert row.settled.finish_reason == "client_disconnected"


async def test_explicit_cancel_ends_with_done_canceled_and_stops_the_upstream(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """The cancel endpoint stops the upstream and ends the stream with `done`/`canceled`."""
    upstream.enqueue(Scenario(tokens=200, gap_s=0.05))
    decoder = SSEDecoder()
    events: list[dict[str, object]] = []
    canceled = False
    async with http.post(f"{gateway.url}/api/chat/stream", json=CHAT, headers=AUTH) as response:
        request_id = response.headers["X-Request-Id"]
        async for chunk in response.content.iter_any():
            for message in decoder.feed(chunk):
                events.append(orjson.loads(message.data))
            if not canceled and sum(e["type"] == "content" for e in events) >= 3:
                canceled = True
                cancel = f"{gateway.url}/api/chat/{request_id}/cancel"
                async with http.post(cancel, headers=AUTH) as answer:
                    assert answer.status == 200
                    assert await answer.json() == {"canceled": True}
    done = events[-1]
    assert done["type"] == "done"
    assert done["finishReason"] == "canceled"
    usage = done["usage"]
    assert isinstance(usage, dict)
    assert usage["estimated"] is True
    assert usage["completionTokens"] > 0
    (seen,) = upstream.requests
    await asyncio.wait_for(seen.client_gone.wait(), timeout=5)
    row = await gateway.row(request_id)
    assert (row.status, row.settled and row.settled.token_source) == ("canceled", "partial")
    async with http.post(f"{gateway.url}/api/chat/{request_id}/cancel", headers=AUTH) as again:
        assert again.status == 409
        assert (await again.json())["error"]["code"] == "stream_finished"
