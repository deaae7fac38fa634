"""The WebSocket endpoint end to end: aiohttp's client, a real Estuary, the scripted upstream."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from estuary.testing import FakeUpstream, Scenario
from tests.support import APP_KEY, AUTH, UPSTREAM_KEY, RunningGateway, read_app_stream

CHAT = {"messages": [{"role": "user", "content": "Say hello"}], "model": "chat"}
Frame = dict[str, Any]


async def _ticket(gateway: RunningGateway, http: aiohttp.ClientSession) -> str:
    async with http.post(f"{gateway.url}/api/tickets", headers=AUTH) as response:
        assert response.status == 200
        return str((await response.json())["ticket"])


async def _open(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> aiohttp.ClientWebSocketResponse:
    """A socket opened the browser's way, with a fresh ticket."""
    ticket = await _ticket(gateway, http)
    return await http.ws_connect(f"{gateway.url}/api/chat/ws", params={"ticket": ticket})


async def _frame(ws: aiohttp.ClientWebSocketResponse) -> Frame:
    message = await ws.receive(timeout=10)
    assert message.type is aiohttp.WSMsgType.TEXT, message
    frame = orjson.loads(message.data)
    assert isinstance(frame, dict)
    return frame


async def _until_done(ws: aiohttp.ClientWebSocketResponse, chats: int = 1) -> list[Frame]:
    """Every frame until `chats` terminal frames (`done` or `error`) have arrived."""
    frames: list[Frame] = []
    while sum(f["type"] in ("done", "error") for f in frames) < chats:
        frames.append(await _frame(ws))
    return frames


def _text(frames: list[Frame], request_id: str) -> str:
    return "".join(
        f["content"] for f in frames if f["type"] == "content" and f["requestId"] == request_id
    )


async def _refused(ws: aiohttp.ClientWebSocketResponse) -> Frame:
    """The socket-level refusal frame, after which the server closes with 1008."""
    frame = await _frame(ws)
    closing = await ws.receive(timeout=10)
    assert closing.type is aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1008
    return frame


async def test_a_chat_over_a_ticket_socket_streams_start_content_done(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """One chat: `start` with ref and requestId, every content piece, `done`; the row is settled."""
    scenario = Scenario(tokens=6)
    upstream.enqueue(scenario)
    async with await _open(gateway, http) as ws:
        await ws.send_json({"type": "chat", "ref": "c1", **CHAT})
        start, *content, done = await _until_done(ws)
    request_id = start["requestId"]
    assert start == {
        "type": "start",
        "ref": "c1",
        "requestId": request_id,
        "model": "chat",
        "provider": "fake",
        "id": f"{request_id}:1",
    }
    # Each frame carries its event's id in the resume log: a dropped socket resumes by SSE.
    ids = [f["id"] for f in (start, *content, done)]
    assert ids == [f"{request_id}:{n}" for n in range(1, len(ids) + 1)]
    assert {f["type"] for f in content} == {"content"}
    assert all(f["requestId"] == request_id for f in content)
    assert _text(content, request_id) == scenario.expected_text()
    assert done["type"] == "done"
    assert done["requestId"] == request_id
    assert done["finishReason"] == "stop"
    assert done["usage"]["estimated"] is False
    row = await gateway.row(request_id)
    assert (row.status, row.settled and row.settled.finish_reason) == ("completed", "stop")


async def test_a_bearer_header_on_the_upgrade_authenticates_non_browser_clients(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """A client that can send headers needs no ticket."""
    upstream.enqueue(Scenario(tokens=3))
    async with http.ws_connect(f"{gateway.url}/api/chat/ws", headers=AUTH) as ws:
        await ws.send_json({"type": "chat", "ref": "c1", **CHAT})
        frames = await _until_done(ws)
    assert [f["type"] for f in frames] == ["start", "content", "content", "content", "done"]


async def test_bad_replayed_or_missing_credentials_refuse_the_socket_with_1008(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """A bad ticket, a used ticket, no credentials, a key in the URL: one error frame, then 1008."""
    url = f"{gateway.url}/api/chat/ws"
    ticket = await _ticket(gateway, http)
    async with http.ws_connect(url, params={"ticket": ticket}) as ws:
        pass  # one ticket opens one socket
    attempts: list[dict[str, str]] = [
        {"ticket": "tkt_not-a-real-one"},
        {"ticket": ticket},
        {},
        {"api_key": APP_KEY},
    ]
    for params in attempts:
        async with http.ws_connect(url, params=params) as ws:
            frame = await _refused(ws)
        assert frame["type"] == "error"
        assert "ref" not in frame
        assert "requestId" not in frame
        assert frame["error"]["code"] == "invalid_api_key"
        assert APP_KEY not in orjson.dumps(frame).decode()
    assert upstream.requests == []


async def test_two_chats_on_one_socket_interleave_and_both_finish(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """Chats run concurrently: frames of both arrive mixed, each chat's text stays whole."""
    scenario = Scenario(tokens=8, gap_s=0.03)
    upstream.enqueue(scenario, scenario)
    async with await _open(gateway, http) as ws:
        await ws.send_json({"type": "chat", "ref": "a", **CHAT})
        await ws.send_json({"type": "chat", "ref": "b", **CHAT})
        frames = await _until_done(ws, chats=2)
    starts = {f["ref"]: f["requestId"] for f in frames if f["type"] == "start"}
    assert set(starts) == {"a", "b"}
    ids = [f["requestId"] for f in frames]
    for request_id in starts.values():
        assert _text(frames, request_id) == scenario.expected_text()
        last = max(i for i, f in enumerate(frames) if f["requestId"] == request_id)
        assert frames[last]["type"] == "done"
    first_done = next(i for i, f in enumerate(frames) if f["type"] == "done")
    assert len(set(ids[:first_done])) == 2  # the other chat was already streaming


async def test_cancel_ends_the_chat_with_done_canceled_and_closes_the_upstream(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """`{"type":"cancel"}` stops the upstream; the chat ends with `done`/`canceled`."""
    upstream.enqueue(Scenario(tokens=200, gap_s=0.05))
    async with await _open(gateway, http) as ws:
        await ws.send_json({"type": "chat", "ref": "c1", **CHAT})
        frames = [await _frame(ws) for _ in range(4)]  # start and three tokens
        request_id = frames[0]["requestId"]
        await ws.send_json({"type": "cancel", "requestId": request_id})
        frames += await _until_done(ws)
        done = frames[-1]
        assert (done["type"], done["finishReason"]) == ("done", "canceled")
        assert done["usage"]["estimated"] is True
        (seen,) = upstream.requests
        await asyncio.wait_for(seen.client_gone.wait(), timeout=5)
        assert seen.chunks_sent < 200
        row = await gateway.row(request_id)
        assert (row.status, row.settled and row.settled.token_source) == ("canceled", "partial")
        await ws.send_json({"type": "cancel", "requestId": request_id})  # finished by now
        late = await _frame(ws)
        assert (late["requestId"], late["error"]["code"]) == (request_id, "stream_finished")


async def test_closing_the_socket_mid_stream_closes_every_upstream_and_settles_rows(
    make_gateway: Callable[..., RunningGateway],
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    """With no grace period, the client leaves: both running chats' upstreams close at once,
    both rows are client_disconnected."""
    gateway = make_gateway(server="resume_grace_s = 0")
    upstream.enqueue(Scenario(tokens=200, gap_s=0.05), Scenario(tokens=200, gap_s=0.05))
    async with await _open(gateway, http) as ws:
        await ws.send_json({"type": "chat", "ref": "a", **CHAT})
        await ws.send_json({"type": "chat", "ref": "b", **CHAT})
        frames: list[Frame] = []
        while sum(f["type"] == "content" for f in frames) < 4:
            frames.append(await _frame(ws))
    request_ids = [f["requestId"] for f in frames if f["type"] == "start"]
    assert len(request_ids) == 2
    for seen in await upstream.wait_for_requests(2):
        await asyncio.wait_for(seen.client_gone.wait(), timeout=5)
        assert seen.chunks_sent < 200
    for request_id in request_ids:
        row = await gateway.row(request_id)
        assert row.status == "canceled"
        assert row.settled is not None
        assert row.settled.finish_reason == "client_disconnected"


async def test_bad_frames_get_an_error_frame_and_the_socket_stays_usable(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """Not JSON, an unknown type, a bad body, an unknown model: error frames; then a chat works."""
    upstream.enqueue(Scenario(tokens=2))
    async with await _open(gateway, http) as ws:
        await ws.send_str("{not json")
        not_json = await _frame(ws)
        assert (not_json["type"], not_json["error"]["code"]) == ("error", "invalid_request")
        assert "ref" not in not_json
        await ws.send_json({"type": "shout", "ref": "x"})
        unknown = await _frame(ws)
        assert (unknown["ref"], unknown["error"]["code"]) == ("x", "invalid_request")
        await ws.send_json({"type": "chat", "ref": "c1", "messages": []})
        bad_body = await _frame(ws)
        assert bad_body["ref"] == "c1"
        assert (bad_body["error"]["code"], bad_body["error"]["status"]) == ("invalid_request", 400)
        await ws.send_json({"type": "chat", "ref": "c2", **CHAT, "model": "no-such-model"})
        missing = await _frame(ws)
        assert (missing["ref"], missing["error"]["status"]) == ("c2", 404)
        await ws.send_json({"type": "chat", "ref": "c3", **CHAT})
        frames = await _until_done(ws)
    assert [f["type"] for f in frames] == ["start", "content", "content", "done"]
    assert frames[0]["ref"] == "c3"
    assert len(upstream.requests) == 1


async def test_upstream_failures_before_and_after_start_are_error_frames(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """Before `start`: a refusal with ref and HTTP status; after: the in-band `error` event."""
    upstream.enqueue(
        Scenario(fail_status=500), Scenario(text=("partial", " answer"), error_after=1)
    )
    async with await _open(gateway, http) as ws:
        await ws.send_json({"type": "chat", "ref": "early", **CHAT})
        (early,) = await _until_done(ws)
        await ws.send_json({"type": "chat", "ref": "late", **CHAT})
        late = await _until_done(ws)
    assert (early["type"], early["ref"]) == ("error", "early")
    assert (early["error"]["code"], early["error"]["status"]) == ("upstream_error", 502)
    assert UPSTREAM_KEY not in orjson.dumps(early).decode()
    assert [f["type"] for f in late] == ["start", "content", "error"]
    assert late[-1]["requestId"] == late[0]["requestId"]
    assert late[-1]["error"]["code"] == "upstream_error"
    for request_id in (early["requestId"], late[0]["requestId"]):
        assert (await gateway.row(request_id)).status == "error"


async def test_a_frame_over_the_size_limit_closes_the_socket_with_1009(
    make_gateway: Callable[..., RunningGateway], http: aiohttp.ClientSession
) -> None:
    """`[server] max_body_bytes` bounds a frame as it bounds a request body."""
    gateway = make_gateway(server="max_body_bytes = 2048")
    async with await _open(gateway, http) as ws:
        await ws.send_json({"type": "chat", "ref": "c1", **CHAT, "system": "x" * 4096})
        closing = await ws.receive(timeout=10)
        assert closing.type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1009


async def _stalled(upstream: FakeUpstream, total: int) -> int:
    """How many chunks the upstream wrote once it stopped making progress (or `total`)."""
    (seen,) = await upstream.wait_for_requests(1)
    deadline = time.monotonic() + 60
    last, since = -1, time.monotonic()
    while seen.chunks_sent < total and time.monotonic() < deadline:
        if seen.chunks_sent != last:
            last, since = seen.chunks_sent, time.monotonic()
        elif time.monotonic() - since > 1.0:
            break  # no progress for a second: something between us and it is full
        await asyncio.sleep(0.05)
    return seen.chunks_sent


async def test_a_client_that_does_not_read_holds_the_upstream_back(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """A slow reader: the bounded per-socket queue fills, the chat waits, TCP stops the upstream.

    If the server buffered without bound the fake upstream would write the whole answer while
    nobody reads; instead it stalls part-way, and the whole text still arrives once read. The
    answer (~48 MB) is larger than every buffer on the way, kernel socket buffers included (~15 MB
    on loopback here), so only a server that waits for the client can stall it.
    """
    total = 3000
    scenario = Scenario(text=tuple(f"{i:06d}" + "~" * 16_000 for i in range(total)))
    upstream.enqueue(scenario)
    async with await _open(gateway, http) as ws:
        # A fixed receive buffer: the kernel would otherwise grow it by megabytes on loopback.
        sock = ws.get_extra_info("socket")
        assert sock is not None
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        await ws.send_json({"type": "chat", "ref": "c1", **CHAT})
        assert await _stalled(upstream, total) < total
        frames = await _until_done(ws)
    request_id = frames[0]["requestId"]
    assert frames[-1]["type"] == "done"
    assert _text(frames, request_id) == scenario.expected_text()


async def test_a_client_that_leaves_while_its_queue_is_full_still_ends_everything(
    make_gateway: Callable[..., RunningGateway],
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    """Leaving with the server blocked on a full queue: upstream closed, row client_disconnected."""
    gateway = make_gateway(server="resume_grace_s = 0")
    total = 3000
    upstream.enqueue(Scenario(text=tuple("~" * 16_000 for _ in range(total))))
    async with await _open(gateway, http) as ws:
        sock = ws.get_extra_info("socket")
        assert sock is not None
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        await ws.send_json({"type": "chat", "ref": "c1", **CHAT})
        start = await _frame(ws)
        assert await _stalled(upstream, total) < total
    (seen,) = upstream.requests
    await asyncio.wait_for(seen.client_gone.wait(), timeout=10)
    row = await gateway.row(start["requestId"], within_s=10)
    assert row.status == "canceled"
    assert row.settled is not None
    assert row.settled.finish_reason == "client_disconnected"


async def test_a_dropped_socket_resumes_its_chat_over_sse_from_the_last_frame_id(
    make_gateway: Callable[..., RunningGateway],
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    """The socket drops mid-chat; the chat goes on; GET with the last frame's id gets the rest."""
    gateway = make_gateway(server="resume_grace_s = 10")
    scenario = Scenario(tokens=40, gap_s=0.02)
    upstream.enqueue(scenario)
    async with await _open(gateway, http) as ws:
        await ws.send_json({"type": "chat", "ref": "c1", **CHAT})
        frames = [await _frame(ws) for _ in range(4)]
    request_id = frames[0]["requestId"]
    headers = {**AUTH, "Last-Event-ID": frames[-1]["id"]}
    async with http.get(f"{gateway.url}/api/chat/stream/{request_id}", headers=headers) as answer:
        rest = await read_app_stream(answer)
    ids = [f["id"] for f in frames] + rest.ids
    assert ids == [f"{request_id}:{n}" for n in range(1, len(ids) + 1)]
    assert rest.events[-1]["type"] == "done"
    text = _text(frames, request_id) + "".join(
        e["content"] for e in rest.events if e["type"] == "content"
    )
    assert text == scenario.expected_text()
    assert (await gateway.row(request_id)).status == "completed"
