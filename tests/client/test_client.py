"""`estuary.client` against a real Estuary, and its resume logic against a scripted server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web

from estuary.client import (
    AsyncEstuary,
    Content,
    Done,
    ErrorEvent,
    Estuary,
    EstuaryError,
    Start,
    StreamInterrupted,
)
from estuary.testing import FakeUpstream, Scenario
from tests.support import APP_KEY, RunningGateway


async def test_async_stream_yields_typed_events_and_the_exact_text(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    scenario = Scenario(tokens=6)
    upstream.enqueue(scenario)
    async with (
        AsyncEstuary(gateway.url, api_key=APP_KEY) as client,
        client.chat.stream(message="hello", model="chat") as stream,
    ):
        events = [event async for event in stream]
    assert isinstance(events[0], Start)
    assert events[0].request_id == stream.request_id
    assert "".join(e.content for e in events if isinstance(e, Content)) == (
        scenario.expected_text()
    )
    done = events[-1]
    assert isinstance(done, Done)
    assert done.usage is not None
    assert not done.usage.estimated


async def test_sync_client_gives_the_same(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    scenario = Scenario(tokens=5)
    upstream.enqueue(scenario)

    def run() -> str:
        with Estuary(gateway.url, api_key=APP_KEY) as client:
            return client.chat.text(messages=[{"role": "user", "content": "hi"}], model="chat")

    assert await asyncio.to_thread(run) == scenario.expected_text()


async def test_leaving_a_stream_early_cancels_it_upstream(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(Scenario(tokens=200, gap_s=0.02))
    async with AsyncEstuary(gateway.url, api_key=APP_KEY) as client:
        async with client.chat.stream(message="long") as stream:
            seen = 0
            async for event in stream:
                seen += isinstance(event, Content)
                if seen == 3:
                    break
        request_id = stream.request_id
    assert request_id is not None
    (request,) = await upstream.wait_for_requests(1)
    await asyncio.wait_for(request.client_gone.wait(), 5)
    row = await gateway.row(request_id)
    assert row.status == "canceled"


async def test_refusals_raise_with_status_and_code(gateway: RunningGateway) -> None:
    async with AsyncEstuary(gateway.url, api_key="sk-est-wrong") as client:
        with pytest.raises(EstuaryError) as caught:
            await client.chat.text(message="hi")
    assert (caught.value.status, caught.value.code) == (401, "invalid_api_key")


async def test_an_in_band_error_is_the_last_event(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.enqueue(Scenario(tokens=6, error_after=2))
    async with (
        AsyncEstuary(gateway.url, api_key=APP_KEY) as client,
        client.chat.stream(message="hi") as stream,
    ):
        events = [event async for event in stream]
    assert isinstance(events[-1], ErrorEvent)
    assert sum(isinstance(e, Content) for e in events) == 2


def _frame(request_id: str, seq: int, data: dict[str, object]) -> bytes:
    return b"id: %s:%d\ndata: %s\n\n" % (request_id.encode(), seq, orjson.dumps(data))


EVENTS: list[dict[str, object]] = [
    {"type": "start", "requestId": "req_r", "model": "chat", "provider": "fake"}
]
EVENTS += [{"type": "content", "content": f"w{i} "} for i in range(6)]
EVENTS += [{"type": "done", "finishReason": "stop", "usage": None}]


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[str, list[str | None]]]:
    """A server that drops the stream after 3 events; the resume endpoint replays everything."""
    resumes: list[str | None] = []

    async def start(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"X-Request-Id": "req_r"})
        await response.prepare(request)
        for seq, data in enumerate(EVENTS[:3], start=1):
            await response.write(_frame("req_r", seq, data))
        assert request.transport is not None
        request.transport.abort()  # dropped: no terminal event
        return response

    async def resume(request: web.Request) -> web.StreamResponse:
        resumes.append(request.headers.get("Last-Event-ID"))
        if len(resumes) == 1:
            return web.json_response({"error": {"message": "x", "code": "busy"}}, status=503)
        response = web.StreamResponse()
        await response.prepare(request)
        for seq, data in enumerate(EVENTS, start=1):  # from the start: the client must dedupe
            await response.write(_frame("req_r", seq, data))
        return response

    app = web.Application()
    app.router.add_post("/api/chat/stream", start)
    app.router.add_get("/api/chat/stream/{request_id}", resume)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", resumes
    await runner.cleanup()


async def test_a_dropped_stream_resumes_from_the_last_id_without_duplicates(
    flaky: tuple[str, list[str | None]],
) -> None:
    url, resumes = flaky
    async with AsyncEstuary(url, api_key="k", backoff_base_s=0.01) as client:
        events = [e async for e in client.chat.stream(message="hi")]
    assert [e.content for e in events if isinstance(e, Content)] == [f"w{i} " for i in range(6)]
    assert isinstance(events[-1], Done)
    # The first resume failed (503) and was retried; both carried the last id delivered.
    assert resumes == ["req_r:3", "req_r:3"]


async def test_the_sync_client_resumes_too(flaky: tuple[str, list[str | None]]) -> None:
    url, _ = flaky

    def run() -> str:
        return Estuary(url, api_key="k", backoff_base_s=0.01).chat.text(message="hi")

    assert await asyncio.to_thread(run) == "".join(f"w{i} " for i in range(6))


async def test_resume_gives_up_after_its_attempts(flaky: tuple[str, list[str | None]]) -> None:
    url, resumes = flaky
    async with AsyncEstuary(url, api_key="k", resume_attempts=0) as client:
        with pytest.raises(StreamInterrupted):
            await client.chat.text(message="hi")
    assert resumes == []


class _CuttingProxy:
    """A TCP proxy in front of the gateway that cuts its first connection after `cut_after`
    bytes from the server: a network failure in the middle of a stream, not a stop."""

    def __init__(self, target_port: int, cut_after: int) -> None:
        self._target_port = target_port
        self._cut_after = cut_after
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> _CuttingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        limit = self._cut_after if self.connections == 1 else None
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self._target_port)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, cut: int | None) -> None:
            sent = 0
            while data := await r.read(4096):
                if cut is not None and sent + len(data) >= cut:
                    w.write(data[: cut - sent])
                    break
                w.write(data)
                sent += len(data)
                await w.drain()
            w.close()

        try:
            await asyncio.gather(pipe(client_r, server_w, None), pipe(server_r, client_w, limit))
        except (ConnectionError, OSError):
            pass
        finally:
            client_w.close()
            server_w.close()


async def test_a_connection_cut_mid_stream_is_resumed_from_the_real_gateway(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    """The network drops the stream after ~1 KiB; the client resumes by itself on a new
    connection and gets the whole answer exactly once; the upstream was never cut."""
    scenario = Scenario(tokens=60, gap_s=0.01)
    upstream.enqueue(scenario)
    port = int(gateway.url.rsplit(":", 1)[1])
    async with (
        _CuttingProxy(port, cut_after=1024) as proxy,
        AsyncEstuary(f"http://127.0.0.1:{proxy.port}", api_key=APP_KEY) as client,
        client.chat.stream(message="hello", model="chat") as stream,
    ):
        events = [event async for event in stream]
    assert proxy.connections >= 2  # the first was cut, a resume came on another
    assert "".join(e.content for e in events if isinstance(e, Content)) == (
        scenario.expected_text()
    )
    assert isinstance(events[-1], Done)
    (seen,) = upstream.requests
    assert not seen.client_gone.is_set()
    assert (await gateway.row(stream.request_id or "")).status == "completed"
