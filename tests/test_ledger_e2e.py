"""The ledger through the whole gateway on a real SQLite file: no row missing, whatever happens."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from estuary.ledger import open_store
from estuary.ledger.base import Store, UsageFilter
from estuary.testing import FakeUpstream, Scenario, fake_usage
from tests.support import (
    AUTH,
    RunningGateway,
    free_port,
    gateway_toml,
    read_app_stream,
    server_process,
)

STREAMS = 1000


@pytest.fixture
async def reader(tmp_path: Path) -> AsyncIterator[Store]:
    """A store on the test's SQLite file, opened by the test (the server opens its own)."""
    store = open_store(f"sqlite:///{tmp_path / 'ledger.db'}")
    await store.start("test-reader")
    yield store
    await store.aclose()


def ledger_toml(tmp_path: Path) -> str:
    return f'[ledger]\nurl = "sqlite:///{tmp_path / "ledger.db"}"\n'


async def test_a_thousand_concurrent_streams_leave_exactly_a_thousand_exact_rows(
    make_gateway: Callable[..., RunningGateway],
    upstream: FakeUpstream,
    reader: Store,
    tmp_path: Path,
) -> None:
    # The test's own loop runs 1,000 clients and the fake upstream: on a busy machine the first
    # token can take seconds, which is not what this test is about.
    bulk = '[models.bulk]\ntargets = ["fake/fake-model"]\nfirst_token_timeout_s = 60.0\n'
    gateway = make_gateway(extra=ledger_toml(tmp_path) + bulk, reader=reader)
    scenario = Scenario(tokens=5, gap_s=0.02)
    upstream.script("fake-model", scenario)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(i: int) -> str:
            body = {"message": f"request number {i} " + "x" * (i % 37), "model": "bulk"}
            async with http.post(
                f"{gateway.url}/api/chat/stream", json=body, headers=AUTH
            ) as response:
                got = await read_app_stream(response)
            assert got.events[-1]["type"] == "done"
            return got.headers["X-Request-Id"]

        ids = await asyncio.gather(*(one(i) for i in range(STREAMS)))
    assert len(set(ids)) == STREAMS
    expected = [fake_usage(seen.body, scenario) for seen in upstream.requests]
    assert len(expected) == STREAMS
    where = UsageFilter(key_id=(await gateway.row(ids[0])).opened.key_id)
    # A row is closed just after its stream's last byte: wait until none is still open.
    for _ in range(200):
        if [t.group for t in await reader.usage(where, ("status",))] == [{"status": "completed"}]:
            break
        await asyncio.sleep(0.05)
    (total,) = await reader.usage(where)
    assert total.requests == STREAMS
    assert total.errors == 0
    assert total.prompt_tokens == sum(p for p, _ in expected)
    assert total.completion_tokens == sum(c for _, c in expected)
    for request_id in ids[:: STREAMS // 20]:
        row = await reader.get(request_id)
        assert row is not None
        assert row.settled is not None
        assert (row.status, row.settled.token_source) == ("completed", "reported")


async def test_after_kill_9_the_next_start_marks_the_open_row_interrupted(
    upstream: FakeUpstream, reader: Store, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "estuary.toml"
    config.write_text(gateway_toml(upstream.base_url, extra=ledger_toml(tmp_path)))
    log = tmp_path / "server.log"
    upstream.script("fake-model", Scenario(tokens=500, gap_s=0.05))
    async with (
        server_process(config, port=port, log_path=log, cwd=tmp_path) as first,
        aiohttp.ClientSession() as http,
    ):
        done = await _stream_to_end(http, first.url)
        async with http.post(
            f"{first.url}/api/chat/stream", json={"message": "long"}, headers=AUTH
        ) as response:
            cut = response.headers["X-Request-Id"]
            await response.content.readuntil(b'"type":"content"')
            first.process.send_signal(signal.SIGKILL)
            await first.process.wait()
    row = await reader.get(cut)
    assert row is not None
    assert row.status == "open"  # the process died holding it
    async with (
        server_process(config, port=port, log_path=log, cwd=tmp_path) as second,
        aiohttp.ClientSession() as http,
    ):
        after = await _stream_to_end(http, second.url)
    for request_id, status in ((done, "completed"), (cut, "interrupted"), (after, "completed")):
        row = await reader.get(request_id)
        assert row is not None, request_id
        assert row.status == status
    assert b"ledger.interrupted" in log.read_bytes()


async def _stream_to_end(http: aiohttp.ClientSession, url: str) -> str:
    async with http.post(
        f"{url}/api/chat/stream", json={"message": "hi", "model": "fallback-chat"}, headers=AUTH
    ) as response:
        got = await read_app_stream(response)
    assert got.events[-1]["type"] == "done"
    return got.headers["X-Request-Id"]
