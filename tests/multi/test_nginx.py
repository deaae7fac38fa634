"""Estuary behind the shipped nginx config (deploy/nginx/estuary.conf), two instances, real sockets.

No timing assertions: incremental delivery is shown by what the fake upstream had sent when the
client got each event, and failover by what the upstream and the client saw.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from estuary.sse import SSEDecoder
from estuary.testing import FakeUpstream, Scenario
from tests.multi.conftest import REPO, SHIPPED_CONF, MakeCluster
from tests.support import AUTH, read_app_stream

CHAT: dict[str, Any] = {"messages": [{"role": "user", "content": "Say hello"}], "model": "chat"}


@pytest.mark.nginx
async def test_a_stream_through_nginx_arrives_event_by_event(
    make_cluster: MakeCluster, upstream: FakeUpstream
) -> None:
    """Each `content` event reaches the client while the upstream still generates, one per read."""
    scenario = Scenario(tokens=3, gap_s=0.25)
    upstream.enqueue(scenario)
    cluster = await make_cluster()
    decoder = SSEDecoder()
    sent_when_received: list[int] = []  # upstream chunks written when each content event arrived
    finished_when_received: list[bool] = []
    contents_per_read: list[int] = []
    events: list[dict[str, Any]] = []
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{cluster.url}/api/chat/stream", json=CHAT, headers=AUTH) as response,
    ):
        assert response.status == 200, cluster.logs()
        (seen,) = await upstream.wait_for_requests(1)
        async for chunk in response.content.iter_any():
            batch = [orjson.loads(message.data) for message in decoder.feed(chunk)]
            events += batch
            contents = [e for e in batch if e["type"] == "content"]
            contents_per_read.append(len(contents))
            for _ in contents:
                sent_when_received.append(seen.chunks_sent)
                finished_when_received.append(seen.finished.is_set())
    assert [e["type"] for e in events] == ["start"] + ["content"] * 3 + ["done"]
    assert "".join(e["content"] for e in events[1:-1]) == scenario.expected_text()
    # Every content event but the last arrived while the upstream still had tokens to send: had
    # nginx (or anything) buffered the response, the first would only arrive after the last token.
    assert all(sent < scenario.tokens for sent in sent_when_received[:-1]), sent_when_received
    assert finished_when_received[0] is False
    assert sent_when_received == sorted(sent_when_received)
    # … and each in a read of its own, not coalesced into one burst.
    assert max(contents_per_read) == 1, contents_per_read


@pytest.mark.nginx
async def test_streaming_headers_survive_nginx_and_nothing_is_compressed(
    make_cluster: MakeCluster, upstream: FakeUpstream
) -> None:
    """With `Accept-Encoding: gzip`, SSE keeps its streaming headers and no Content-Encoding."""
    upstream.enqueue(Scenario(tokens=3))
    cluster = await make_cluster()
    headers = {**AUTH, "Accept-Encoding": "gzip, deflate, br"}
    async with (
        aiohttp.ClientSession(auto_decompress=False) as http,
        http.post(f"{cluster.url}/api/chat/stream", json=CHAT, headers=headers) as response,
    ):
        received = await read_app_stream(response)
    assert received.status == 200
    assert received.headers["Content-Type"].startswith("text/event-stream")
    assert received.headers["Cache-Control"] == "no-cache, no-transform"
    assert received.headers.get("X-Accel-Buffering") == "no"  # passed on for a proxy in front
    assert "Content-Encoding" not in received.headers
    assert received.headers.get("X-Request-Id", "").startswith("req_")
    assert [e["type"] for e in received.events] == [
        "start",
        "content",
        "content",
        "content",
        "done",
    ]


@pytest.mark.nginx
async def test_the_websocket_endpoint_works_through_nginx(
    make_cluster: MakeCluster, upstream: FakeUpstream
) -> None:
    """The upgrade passes nginx: one chat over `/api/chat/ws`, start → content → done."""
    scenario = Scenario(tokens=3)
    upstream.enqueue(scenario)
    cluster = await make_cluster()
    frames: list[dict[str, Any]] = []
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{cluster.url}/api/chat/ws", headers=AUTH) as ws,
    ):
        await ws.send_json({"type": "chat", "ref": "c1", **CHAT})
        while not frames or frames[-1]["type"] not in ("done", "error"):
            message = await ws.receive(timeout=10)
            assert message.type is aiohttp.WSMsgType.TEXT, message
            frames.append(orjson.loads(message.data))
    assert [f["type"] for f in frames] == ["start", "content", "content", "content", "done"]
    assert frames[0]["ref"] == "c1"
    assert "".join(f["content"] for f in frames[1:-1]) == scenario.expected_text()


@pytest.mark.nginx
async def test_a_post_goes_to_the_other_instance_when_one_is_down(
    make_cluster: MakeCluster, upstream: FakeUpstream
) -> None:
    """A refused connection is retried elsewhere: nothing was sent, so a POST is safe to resend."""
    cluster = await make_cluster()
    await cluster.kill(0)
    async with aiohttp.ClientSession() as http:
        for _ in range(3):  # round robin or least_conn: one of these meets the dead instance
            async with http.post(
                f"{cluster.url}/api/chat/stream", json=CHAT, headers=AUTH
            ) as response:
                received = await read_app_stream(response)
            assert received.status == 200, cluster.logs()
            assert received.events[-1]["type"] == "done"
    assert len(upstream.requests) == 3
    # nginx did meet the dead instance (and so retried): its error log says so.
    assert "Connection refused" in (cluster.workdir / "nginx" / "error.log").read_text()


@pytest.mark.nginx
async def test_a_post_already_sent_to_an_instance_that_dies_is_not_retried(
    make_cluster: MakeCluster, upstream: FakeUpstream
) -> None:
    """The instance holding the request is killed: 502, and the upstream saw one request, not 2."""
    upstream.enqueue(Scenario(headers_delay_s=30))  # the upstream holds its answer back …
    slow = '[models.slow]\ntargets = ["fake/fake-model"]\nfirst_token_timeout_s = 60\n'
    cluster = await make_cluster(header_hold_s=60, extra=slow)  # … and so does Estuary
    chat = {**CHAT, "model": "slow"}
    async with aiohttp.ClientSession() as http, asyncio.TaskGroup() as tasks:
        posted = tasks.create_task(_status(http, f"{cluster.url}/api/chat/stream", chat))
        await upstream.wait_for_requests(1)
        holder = await _instance_with_an_open_stream(http, cluster.instances)
        await cluster.kill(holder)
    assert posted.result() == 502, cluster.logs()
    assert len(upstream.requests) == 1  # never resent to the surviving instance


async def _status(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> int:
    async with http.post(url, json=body, headers=AUTH) as response:
        await response.read()
        return response.status


async def _instance_with_an_open_stream(http: aiohttp.ClientSession, instances: list[Any]) -> int:
    """The index of the one instance whose `estuary_open_streams` gauge is 1."""
    holders = []
    for index, instance in enumerate(instances):
        async with http.get(f"{instance.url}/metrics") as response:
            text = await response.text()
        match = re.search(r"^estuary_open_streams (\S+)$", text, re.MULTILINE)
        assert match is not None, text
        if float(match.group(1)) >= 1:
            holders.append(index)
    assert len(holders) == 1, holders
    return holders[0]


def test_docs_deploy_includes_the_shipped_proxy_configs_verbatim() -> None:
    """docs/deploy.md shows deploy/nginx/estuary.conf and deploy/Caddyfile exactly as shipped."""
    doc = (REPO / "docs" / "deploy.md").read_text()
    for path in (SHIPPED_CONF, REPO / "deploy" / "Caddyfile"):
        text = Path(path).read_text()
        assert text.strip() in doc, f"docs/deploy.md does not include {path.relative_to(REPO)}"
