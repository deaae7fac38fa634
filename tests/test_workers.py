"""`estuary serve` with two worker processes on one port, sharing Redis state."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from estuary.testing import FakeUpstream, Scenario
from tests.state.helpers import REDIS_URL, delete_prefix, require_redis
from tests.support import AUTH, free_port, gateway_toml, server_process

pytestmark = pytest.mark.redis


def _children(pid: int) -> set[int]:
    """The live child processes of `pid` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


async def _workers(pid: int, count: int, *, other_than: set[int] | None = None) -> set[int]:
    """Wait until `pid` has `count` worker children (not in `other_than`)."""
    for _ in range(200):
        # multiprocessing's spawn also starts a resource tracker: count the workers only.
        workers = {c for c in _children(pid) if b"spawn_main" in _cmdline(c)}
        if len(workers) == count and not (workers & (other_than or set())):
            return workers
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} workers of {pid}, found {_children(pid)}")


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    await require_redis()
    name = f"estuary-test-{secrets.token_hex(4)}:"
    try:
        yield name
    finally:
        await delete_prefix(REDIS_URL, name)


async def test_two_workers_serve_one_port_a_dead_one_is_replaced_and_sigterm_stops_all(
    upstream: FakeUpstream, tmp_path: Path, prefix: str
) -> None:
    extra = (
        f'[state]\nurl = "{REDIS_URL}"\nprefix = "{prefix}"\n'
        f'[ledger]\nurl = "sqlite:///{tmp_path / "ledger.db"}"\n'
    )
    config = tmp_path / "estuary.toml"
    config.write_text(gateway_toml(upstream.base_url, server="workers = 2", extra=extra))
    upstream.script("fake-model", Scenario(tokens=3))
    log = tmp_path / "server.log"
    async with (
        server_process(config, port=free_port(), log_path=log, cwd=tmp_path) as gateway,
        aiohttp.ClientSession() as http,
    ):
        parent = gateway.process.pid
        first = await _workers(parent, 2)

        async def ok() -> None:
            body = {"message": "hi", "model": "chat"}
            async with http.post(f"{gateway.url}/api/chat/stream", json=body, headers=AUTH) as r:
                assert r.status == 200
                assert b'"type":"done"' in await r.read()

        await asyncio.gather(*(ok() for _ in range(20)))
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        replaced = await _workers(parent, 2, other_than={victim})
        assert len(replaced & first) == 1  # the other worker kept running
        await asyncio.gather(*(ok() for _ in range(20)))
        gateway.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(gateway.process.wait(), 40) == 0
    assert not (_children(parent) & replaced)
    text = log.read_text()
    assert "worker.died" in text
    assert text.count("worker.started") == 3
