"""Two Estuary instances sharing the real Redis and PostgreSQL, behind the shipped nginx config.

What scale-out must keep: a cancel reaches the stream on another instance, a dropped stream is
resumed from any instance (and, if its instance died, with every event it had written and no
duplicate), a key's rate limit is one limit across instances, and the ledger holds every row.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from estuary.ledger import open_store
from estuary.ledger.base import Store, UsageFilter
from estuary.sse import SSEDecoder
from estuary.testing import FakeUpstream, Scenario
from tests.ledger.helpers import fresh_database
from tests.multi.conftest import Cluster, MakeCluster, cluster_toml
from tests.state.helpers import REDIS_URL, delete_prefix, require_redis
from tests.support import ADMIN, AUTH, read_app_stream

pytestmark = [pytest.mark.nginx, pytest.mark.redis, pytest.mark.postgres]

CHAT: dict[str, Any] = {"messages": [{"role": "user", "content": "Say hello"}], "model": "chat"}


@pytest.fixture
async def shared(tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """A fresh PostgreSQL database and a Redis key prefix of this test's own."""
    await require_redis()
    prefix = f"estuary-test-{secrets.token_hex(4)}:"
    async with fresh_database("postgresql", tmp_path) as database:
        try:
            yield database.url, prefix
        finally:
            await delete_prefix(REDIS_URL, prefix)


async def _cluster(
    make_cluster: MakeCluster, upstream: FakeUpstream, shared: tuple[str, str], server: str = ""
) -> Cluster:
    ledger_url, prefix = shared
    state = f'[state]\nurl = "{REDIS_URL}"\nprefix = "{prefix}"\n'
    toml = cluster_toml(upstream.base_url, ledger_url=ledger_url, server=server, extra=state)
    return await make_cluster(toml=toml)


async def _events(response: aiohttp.ClientResponse, count: int) -> list[tuple[str, Any]]:
    decoder = SSEDecoder()
    got: list[tuple[str, Any]] = []
    async for chunk in response.content.iter_any():
        got += [(m.id or "", orjson.loads(m.data)) for m in decoder.feed(chunk)]
        if len(got) >= count:
            return got
    raise AssertionError(f"the stream ended after {len(got)} events")


async def _requests_seen(http: aiohttp.ClientSession, url: str) -> float:
    """Streams settled plus requests refused by a limit, from one instance's /metrics."""
    async with http.get(f"{url}/metrics") as response:
        text = await response.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(("estuary_requests_total{", "estuary_refusals_total{")):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _kept(meta: str) -> int:
    """Whether a log's meta hash still holds the stream's request (for a takeover)."""
    redis = Redis.from_url(REDIS_URL)
    try:
        return int(await redis.hexists(meta, "request"))
    finally:
        await redis.aclose()


async def _ledger(url: str) -> Store:
    store = open_store(url)
    await store.start("test-reader")
    return store


async def test_a_cancel_sent_to_another_instance_stops_the_stream(
    make_cluster: MakeCluster, upstream: FakeUpstream, shared: tuple[str, str]
) -> None:
    cluster = await _cluster(make_cluster, upstream, shared)
    a, b = cluster.instances
    upstream.enqueue(Scenario(tokens=400, gap_s=0.02))
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{a.url}/api/chat/stream", json=CHAT, headers=AUTH) as response,
    ):
        request_id = response.headers["X-Request-Id"]
        await _events(response, 3)
        async with http.post(f"{b.url}/api/chat/{request_id}/cancel", headers=AUTH) as cancel:
            assert cancel.status == 200, cluster.logs()
        rest = await read_app_stream(response)
    assert rest.events[-1]["type"] == "done"
    assert rest.events[-1]["finishReason"] == "canceled"
    (seen,) = upstream.requests
    await asyncio.wait_for(seen.client_gone.wait(), 5)
    assert seen.chunks_sent < 400


async def test_a_dropped_stream_resumes_through_another_instance_live_to_its_end(
    make_cluster: MakeCluster, upstream: FakeUpstream, shared: tuple[str, str]
) -> None:
    """Started on A, connection dropped, resumed on B while A still generates: every event once."""
    cluster = await _cluster(make_cluster, upstream, shared)
    a, b = cluster.instances
    scenario = Scenario(tokens=80, gap_s=0.02)
    upstream.enqueue(scenario)
    async with aiohttp.ClientSession() as http:
        response = await http.post(f"{a.url}/api/chat/stream", json=CHAT, headers=AUTH)
        request_id = response.headers["X-Request-Id"]
        first = await _events(response, 5)
        response.close()
        meta = f"{shared[1]}logmeta:{request_id}"
        assert await _kept(meta) == 1  # its request is kept with the log while it runs
        headers = {**AUTH, "Last-Event-ID": first[-1][0]}
        async with http.get(f"{b.url}/api/chat/stream/{request_id}", headers=headers) as again:
            assert again.status == 200, cluster.logs()
            rest = await read_app_stream(again)
    ids = [i for i, _ in first] + rest.ids
    assert ids == [f"{request_id}:{n}" for n in range(1, len(ids) + 1)]
    assert rest.events[-1]["type"] == "done"
    text = "".join(e["content"] for _, e in first if e["type"] == "content")
    text += "".join(e["content"] for e in rest.events if e["type"] == "content")
    assert text == scenario.expected_text()
    store = await _ledger(shared[0])
    try:
        for _ in range(100):
            row = await store.get(request_id)
            if row is not None and row.settled is not None:
                break
            await asyncio.sleep(0.05)
        assert row is not None
        assert row.status == "completed"
    finally:
        await store.aclose()
    assert await _kept(meta) == 0  # … and dropped at its end


KIMI = """
[providers.kimi]
preset = "moonshot"
base_url = "{url}"
api_key = "${{UPSTREAM_KEY}}"

[models.kimi-chat]
targets = ["kimi/kimi-model"]
"""


async def _takeover_cluster(
    make_cluster: MakeCluster, upstream: FakeUpstream, shared: tuple[str, str], server: str = ""
) -> Cluster:
    """Two instances whose `kimi-chat` alias can continue a partial answer (Kimi's preset)."""
    ledger_url, prefix = shared
    extra = KIMI.format(url=upstream.base_url)
    extra += f'[state]\nurl = "{REDIS_URL}"\nprefix = "{prefix}"\n'
    toml = cluster_toml(upstream.base_url, ledger_url=ledger_url, server=server, extra=extra)
    return await make_cluster(toml=toml)


def _whole(first: list[tuple[str, Any]], rest: Any, request_id: str) -> tuple[list[Any], str]:
    """Every event the client got (checking the ids run 1, 2, 3… with no gap and no repeat)
    and the answer text they make."""
    numbered = [i for i, _ in first] + list(rest.ids)
    assert numbered == [f"{request_id}:{n}" for n in range(1, len(numbered) + 1)]
    events = [e for _, e in first] + list(rest.events)
    return events, "".join(e["content"] for e in events if e["type"] == "content")


async def test_killing_the_instance_serving_a_stream_the_client_resumes_on_another(
    make_cluster: MakeCluster, upstream: FakeUpstream, shared: tuple[str, str]
) -> None:
    """A dies mid-stream (SIGKILL). Through nginx the client resumes on B, which takes the
    stream over: every event once, in order, an `attempt` seam, and the whole answer."""
    cluster = await _takeover_cluster(make_cluster, upstream, shared)
    scenario = Scenario(text=tuple(f"word{n} " for n in range(120)), gap_s=0.02)
    upstream.script("kimi-model", scenario)
    body = {"messages": CHAT["messages"], "model": "kimi-chat"}
    async with aiohttp.ClientSession() as http:
        a = cluster.instances[0]
        response = await http.post(f"{a.url}/api/chat/stream", json=body, headers=AUTH)
        request_id = response.headers["X-Request-Id"]
        first = await _events(response, 8)
        await asyncio.sleep(0.1)  # let A's last events reach Redis (see docs/api.md)
        await cluster.kill(0)
        response.close()
        headers = {**AUTH, "Last-Event-ID": first[-1][0]}
        url = f"{cluster.url}/api/chat/stream/{request_id}"  # nginx: only B is left
        async with http.get(url, headers=headers) as again:
            assert again.status == 200, cluster.logs()
            rest = await read_app_stream(again)
    events, text = _whole(first, rest, request_id)
    assert [e["type"] for e in events].count("attempt") == 1, cluster.logs()
    assert events[-1]["type"] == "done", events[-1]
    assert text == scenario.expected_text()
    continued = upstream.requests[-1].body["messages"][-1]
    assert (continued["role"], continued["partial"]) == ("assistant", True)


async def test_a_graceful_restart_hands_running_streams_over(
    make_cluster: MakeCluster, upstream: FakeUpstream, shared: tuple[str, str]
) -> None:
    """SIGTERM with no drain time: A cuts the stream without a terminal event and leaves it;
    the client resumes on B, which takes it over; A's row is `canceled`/`shutdown`."""
    cluster = await _takeover_cluster(make_cluster, upstream, shared, server="shutdown_drain_s = 0")
    scenario = Scenario(text=tuple(f"token{n} " for n in range(150)), gap_s=0.02)
    upstream.script("kimi-model", scenario)
    body = {"messages": CHAT["messages"], "model": "kimi-chat"}
    async with aiohttp.ClientSession() as http:
        a = cluster.instances[0]
        async with http.post(f"{a.url}/api/chat/stream", json=body, headers=AUTH) as response:
            request_id = response.headers["X-Request-Id"]
            first = await _events(response, 5)
            a.process.send_signal(signal.SIGTERM)
            cut = await read_app_stream(response)  # ends without `done`: resume
        first += list(zip(cut.ids, cut.events, strict=True))
        assert all(e["type"] != "done" for _, e in first)
        headers = {**AUTH, "Last-Event-ID": first[-1][0]}
        url = f"{cluster.instances[1].url}/api/chat/stream/{request_id}"
        async with http.get(url, headers=headers) as again:
            assert again.status == 200, cluster.logs()
            rest = await read_app_stream(again)
    events, text = _whole(first, rest, request_id)
    assert events[-1]["type"] == "done", cluster.logs()
    assert text == scenario.expected_text()
    store = await _ledger(shared[0])
    try:
        row = await store.get(request_id)
        assert row is not None
        assert row.settled is not None
        assert (row.status, row.settled.finish_reason) == ("canceled", "shutdown")
    finally:
        await store.aclose()


async def test_a_key_rate_limit_holds_across_instances_and_the_ledger_has_every_row(
    make_cluster: MakeCluster, upstream: FakeUpstream, shared: tuple[str, str]
) -> None:
    """A stored key with rpm = 10; 30 requests at once through nginx over both instances:
    exactly 10 streams, 20 refusals with 429, and exactly 10 ledger rows, all completed."""
    cluster = await _cluster(make_cluster, upstream, shared)
    upstream.script("fake-model", Scenario(tokens=5, gap_s=0.01))
    async with aiohttp.ClientSession() as http:
        body = {"name": "limited", "rpm": 10}
        async with http.post(f"{cluster.url}/admin/keys", json=body, headers=ADMIN) as created:
            assert created.status == 201, cluster.logs()
            key = await created.json()
        headers = {"Authorization": f"Bearer {key['key']}"}

        async def one(n: int) -> tuple[int, str | None]:
            message = {"message": f"request {n}", "model": "chat"}
            async with http.post(
                f"{cluster.url}/api/chat/stream", json=message, headers=headers
            ) as response:
                if response.status != 200:
                    return response.status, None
                got = await read_app_stream(response)
                assert got.events[-1]["type"] == "done"
                return 200, got.headers["X-Request-Id"]

        results = await asyncio.gather(*(one(n) for n in range(30)))
        seen = [await _requests_seen(http, instance.url) for instance in cluster.instances]
    assert all(count > 0 for count in seen), seen  # nginx spread them: the limit is shared
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * 10 + [429] * 20, cluster.logs()
    store = await _ledger(shared[0])
    try:
        where = UsageFilter(key_id=key["id"])
        for _ in range(100):
            totals = await store.usage(where, ("status",))
            if [t.group for t in totals] == [{"status": "completed"}] and totals[0].requests == 10:
                break
            await asyncio.sleep(0.05)
        (total,) = await store.usage(where)
        assert total.requests == 10
        assert total.errors == 0
        for _, request_id in results:
            if request_id is not None:
                row = await store.get(request_id)
                assert row is not None
                assert row.status == "completed"
    finally:
        await store.aclose()
