"""Graceful shutdown of a real `estuary serve`: SIGTERM during 100 open streams."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from estuary.ledger import open_store
from estuary.sse import SSEDecoder
from estuary.testing import FakeUpstream, Scenario
from tests.support import AUTH, free_port, gateway_toml, server_process

SHORT = 50  # finish within the drain deadline
LONG = 50  # still running at the deadline
DRAIN_S = 3.0


class _Stream:
    """One client's view: every complete event, and whatever bytes were left undecoded."""

    def __init__(self) -> None:
        self.request_id = ""
        self.events: list[dict[str, Any]] = []
        self.truncated = False
        self.started = asyncio.Event()


async def _read(http: aiohttp.ClientSession, url: str, model: str, out: _Stream) -> None:
    body = {"message": "tell me a long story", "model": model}
    async with http.post(f"{url}/api/chat/stream", json=body, headers=AUTH) as response:
        assert response.status == 200
        out.request_id = response.headers["X-Request-Id"]
        decoder = SSEDecoder()
        async for chunk in response.content.iter_any():
            for message in decoder.feed(chunk):
                out.events.append(orjson.loads(message.data))
                if out.events[-1]["type"] == "content":
                    out.started.set()
        decoder.finish()
        out.truncated = decoder.truncated  # the body ended inside an event


async def test_sigterm_lets_streams_finish_then_ends_the_rest_cleanly_and_closes_every_row(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Short streams end normally; long ones end with a whole `shutting_down` error event at
    the drain deadline; the process exits 0; all 100 ledger rows are closed."""
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    extra = f"""
[ledger]
url = "{ledger_url}"

[models.short]
targets = ["fake/short-model"]
first_token_timeout_s = 30.0

[models.long]
targets = ["fake/long-model"]
first_token_timeout_s = 30.0
"""
    server = f"shutdown_drain_s = {DRAIN_S}\nresume_grace_s = 0"
    config = tmp_path / "estuary.toml"
    config.write_text(gateway_toml(upstream.base_url, server=server, extra=extra))
    upstream.script("short-model", Scenario(tokens=40, gap_s=0.03))  # ~1.2 s
    upstream.script("long-model", Scenario(tokens=2000, gap_s=0.03))  # ~60 s
    streams = [_Stream() for _ in range(SHORT + LONG)]
    log = tmp_path / "server.log"
    connector = aiohttp.TCPConnector(limit=0)
    async with (
        server_process(config, port=free_port(), log_path=log, cwd=tmp_path) as gateway,
        aiohttp.ClientSession(connector=connector) as http,
    ):
        models = ["short"] * SHORT + ["long"] * LONG
        readers = [
            asyncio.create_task(_read(http, gateway.url, model, out))
            for model, out in zip(models, streams, strict=True)
        ]
        await asyncio.wait_for(asyncio.gather(*(s.started.wait() for s in streams)), 30)
        gateway.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*readers), DRAIN_S + 20)
        # uvicorn shuts down cleanly, then re-raises the signal it caught, so that the exit
        # status says "terminated by SIGTERM" as service managers expect.
        assert await asyncio.wait_for(gateway.process.wait(), 20) in (0, -signal.SIGTERM)
    for out in streams:
        assert not out.truncated, "an event was cut in the middle"
    short, long = streams[:SHORT], streams[SHORT:]
    assert {(s.events[-1]["type"], s.events[-1].get("finishReason")) for s in short} == {
        ("done", "stop")
    }
    for out in long:
        last = out.events[-1]
        assert last["type"] == "error"
        assert (last["error"]["code"], last["error"]["retryable"]) == ("shutting_down", True)
    store = open_store(ledger_url)
    await store.start("test-reader")
    try:
        for out in streams:
            row = await store.get(out.request_id)
            assert row is not None
            assert row.settled is not None, f"row {out.request_id} left open"
        statuses = {(await store.get(s.request_id)).status for s in long}  # type: ignore[union-attr]
        assert statuses == {"canceled"}
        reasons = {
            row.settled.finish_reason
            for s in long
            if (row := await store.get(s.request_id)) and row.settled
        }
        assert reasons == {"shutdown"}
    finally:
        await store.aclose()
    assert b"shutdown.drain" in log.read_bytes()
