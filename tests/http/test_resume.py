"""Resume: a dropped app-API stream goes on for a grace period and can be read again by its id."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from estuary.sse import SSEDecoder
from estuary.testing import FakeUpstream, Scenario
from tests.support import AUTH, OTHER_KEY, RunningGateway, read_app_stream

CHAT = {"messages": [{"role": "user", "content": "Say hello"}], "model": "chat"}
OTHER = {"Authorization": f"Bearer {OTHER_KEY}"}


async def _first_events(
    response: aiohttp.ClientResponse, count: int
) -> list[tuple[str, dict[str, Any]]]:
    """Read until `count` events arrived; return them with their ids."""
    decoder = SSEDecoder()
    got: list[tuple[str, dict[str, Any]]] = []
    async for chunk in response.content.iter_any():
        got += [(m.id or "", orjson.loads(m.data)) for m in decoder.feed(chunk)]
        if len(got) >= count:
            return got
    raise AssertionError(f"the stream ended after {len(got)} events")


async def test_a_dropped_stream_resumes_after_last_event_id_without_gaps_or_repeats(
    make_gateway: Callable[..., RunningGateway],
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    """Drop after 4 events, resume with Last-Event-ID: the rest arrive once each, then `done`."""
    gateway = make_gateway(server="resume_grace_s = 10")
    scenario = Scenario(tokens=30, gap_s=0.02)
    upstream.enqueue(scenario)
    response = await http.post(f"{gateway.url}/api/chat/stream", json=CHAT, headers=AUTH)
    request_id = response.headers["X-Request-Id"]
    first = await _first_events(response, 4)
    response.close()  # the connection drops; the user did not press stop
    last_id = first[-1][0]
    resume_url = f"{gateway.url}/api/chat/stream/{request_id}"
    async with http.get(resume_url, headers={**AUTH, "Last-Event-ID": last_id}) as resumed:
        assert resumed.status == 200
        assert resumed.headers["Content-Type"].startswith("text/event-stream")
        rest = await read_app_stream(resumed)
    ids = [event_id for event_id, _ in first] + rest.ids
    assert ids == [f"{request_id}:{n}" for n in range(1, len(ids) + 1)]
    events = [event for _, event in first] + rest.events
    assert events[-1]["type"] == "done"
    assert events[-1]["finishReason"] == "stop"
    text = "".join(e["content"] for e in events if e["type"] == "content")
    assert text == scenario.expected_text()
    (seen,) = upstream.requests
    assert not seen.client_gone.is_set()  # the upstream was never cut
    row = await gateway.row(request_id)
    assert row.status == "completed"


async def test_a_finished_stream_replays_whole_until_its_ttl(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """Without Last-Event-ID a finished stream replays from its first event, byte for byte."""
    upstream.enqueue(Scenario(tokens=5))
    async with http.post(f"{gateway.url}/api/chat/stream", json=CHAT, headers=AUTH) as response:
        original = await read_app_stream(response)
    request_id = original.headers["X-Request-Id"]
    async with http.get(f"{gateway.url}/api/chat/stream/{request_id}", headers=AUTH) as again:
        replay = await read_app_stream(again)
    assert (replay.ids, replay.events) == (original.ids, original.events)


async def test_nobody_resuming_within_the_grace_period_cancels_the_upstream(
    make_gateway: Callable[..., RunningGateway],
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    """A drop with no resume: the upstream is aborted after the grace period, billed partial."""
    gateway = make_gateway(server="resume_grace_s = 0.3")
    upstream.enqueue(Scenario(tokens=400, gap_s=0.02))
    response = await http.post(f"{gateway.url}/api/chat/stream", json=CHAT, headers=AUTH)
    request_id = response.headers["X-Request-Id"]
    await _first_events(response, 3)
    response.close()
    (seen,) = await upstream.wait_for_requests(1)
    await asyncio.wait_for(seen.client_gone.wait(), timeout=5)
    assert seen.chunks_sent < 400
    row = await gateway.row(request_id)
    assert row.status == "canceled"
    assert row.settled is not None
    assert (row.settled.finish_reason, row.settled.token_source) == (
        "client_disconnected",
        "partial",
    )
    # The log ends with the stream: a late resume gets what was generated and its `done`.
    async with http.get(f"{gateway.url}/api/chat/stream/{request_id}", headers=AUTH) as late:
        replay = await read_app_stream(late)
    assert replay.events[-1]["type"] == "done"
    assert replay.events[-1]["finishReason"] == "canceled"


async def test_a_resume_reading_the_log_keeps_the_stream_alive_past_the_grace_period(
    make_gateway: Callable[..., RunningGateway],
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    """Grace 0.2 s, a stream of ~1.5 s: the resumed reader gets it to its end."""
    gateway = make_gateway(server="resume_grace_s = 0.2")
    scenario = Scenario(tokens=60, gap_s=0.025)
    upstream.enqueue(scenario)
    response = await http.post(f"{gateway.url}/api/chat/stream", json=CHAT, headers=AUTH)
    request_id = response.headers["X-Request-Id"]
    first = await _first_events(response, 2)
    response.close()
    headers = {**AUTH, "Last-Event-ID": first[-1][0]}
    async with http.get(f"{gateway.url}/api/chat/stream/{request_id}", headers=headers) as again:
        rest = await read_app_stream(again)
    assert rest.events[-1]["type"] == "done"
    assert rest.events[-1]["finishReason"] == "stop"
    assert sum(e["type"] == "content" for _, e in first) + sum(
        e["type"] == "content" for e in rest.events
    ) == len(scenario.content_chunks())
    assert (await gateway.row(request_id)).status == "completed"


async def test_stop_is_not_a_drop_a_cancel_aborts_at_once_even_with_a_grace_period(
    make_gateway: Callable[..., RunningGateway],
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    """The cancel endpoint on a resumable stream: the upstream stops at once; no grace."""
    gateway = make_gateway(server="resume_grace_s = 60")
    upstream.enqueue(Scenario(tokens=400, gap_s=0.02))
    response = await http.post(f"{gateway.url}/api/chat/stream", json=CHAT, headers=AUTH)
    request_id = response.headers["X-Request-Id"]
    await _first_events(response, 2)
    response.close()
    async with http.post(f"{gateway.url}/api/chat/{request_id}/cancel", headers=AUTH) as answer:
        assert answer.status == 200
    (seen,) = upstream.requests
    await asyncio.wait_for(seen.client_gone.wait(), timeout=5)
    row = await gateway.row(request_id)
    assert (row.status, row.settled and row.settled.finish_reason) == ("canceled", "canceled")


async def test_resume_refuses_other_callers_unknown_ids_and_foreign_event_ids(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """Another key gets 404 (not 403: it must not learn the id exists); bad ids are 400."""
    upstream.enqueue(Scenario(tokens=3))
    async with http.post(f"{gateway.url}/api/chat/stream", json=CHAT, headers=AUTH) as response:
        request_id = (await read_app_stream(response)).headers["X-Request-Id"]
    url = f"{gateway.url}/api/chat/stream/{request_id}"
    cases = [
        (url, OTHER, 404, "not_found"),
        (f"{gateway.url}/api/chat/stream/req_nope", AUTH, 404, "not_found"),
        (url, {**AUTH, "Last-Event-ID": "req_other:3"}, 400, "invalid_request"),
        (url, {**AUTH, "Last-Event-ID": f"{request_id}:x"}, 400, "invalid_request"),
        (url, {}, 401, "invalid_api_key"),
    ]
    for target, headers, status, code in cases:
        async with http.get(target, headers=headers) as answer:
            assert answer.status == status, (target, headers)
            assert (await answer.json())["error"]["code"] == code
