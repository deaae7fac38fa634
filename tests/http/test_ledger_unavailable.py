"""A ledger that cannot record a request stops it before anything is relayed: nothing unbilled."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from estuary.config import load_config
from estuary.ledger.base import OpenedRow
from estuary.ledger.memory import MemoryLedger
from estuary.testing import FakeUpstream, Scenario
from tests.support import AUTH, ENVIRON, gateway_toml, serve_in_thread


class BrokenLedger(MemoryLedger):
    """A ledger whose database refuses every new row."""

    def open_soon(self, row: OpenedRow) -> asyncio.Future[None]:
        failed = asyncio.get_running_loop().create_future()
        failed.set_exception(OSError("database is locked"))
        return failed


async def test_no_row_no_stream(upstream: FakeUpstream, tmp_path: Path) -> None:
    path = tmp_path / "estuary.toml"
    path.write_text(gateway_toml(upstream.base_url))
    upstream.script("fake-model", Scenario(tokens=50, gap_s=0.01))
    with serve_in_thread(load_config(path, environ=ENVIRON), ledger=BrokenLedger()) as gateway:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{gateway.url}/api/chat/stream", json={"message": "hi"}, headers=AUTH
            ) as response:
                body = await response.json()
                assert response.status == 503
            assert body["error"]["code"] == "unavailable"
            assert "ledger" in body["error"]["message"]
            assert "locked" not in body["error"]["message"]  # no internals to the client
            (seen,) = await upstream.wait_for_requests(1)
            await asyncio.wait_for(seen.client_gone.wait(), 5)  # the upstream was stopped
