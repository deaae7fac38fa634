"""PostgreSQL and Redis going away under a running gateway, and coming back.

Each outage is real at the socket level: the gateway reaches the server through a TCP proxy that
the test cuts (every connection reset, new ones refused) and restores on the same port.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager
from pathlib import Path

import aiohttp
import pytest

from estuary.config import load_config
from estuary.ledger import open_store
from estuary.ledger.base import Store
from estuary.testing import FakeUpstream, Scenario
from tests.ledger.helpers import PG_PORT, fresh_database
from tests.state.helpers import REDIS_PORT, REDIS_URL, delete_prefix, require_redis
from tests.support import AUTH, ENVIRON, RunningGateway, TcpProxy, gateway_toml, serve_in_thread

CHAT = {"message": "hello", "model": "chat"}


async def _stream(http: aiohttp.ClientSession, url: str) -> tuple[int, str | None]:
    """POST one app-API stream to its end: its status and request id (if it was admitted)."""
    async with http.post(f"{url}/api/chat/stream", json=CHAT, headers=AUTH) as response:
        body = await response.read()
        if response.status != 200:
            return response.status, None
        assert b'"type":"done"' in body
        return 200, response.headers["X-Request-Id"]


async def _metric(http: aiohttp.ClientSession, url: str, name: str) -> float:
    async with http.get(f"{url}/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


async def _settled(store: Store, request_id: str, within_s: float = 10.0) -> str:
    """The row's status once it is settled in the database (waits for a backlog to flush)."""
    for _ in range(int(within_s / 0.05)):
        row = await store.get(request_id)
        if row is not None and row.settled is not None:
            return row.status
        await asyncio.sleep(0.05)
    raise AssertionError(f"row {request_id} not in the database after {within_s} s")


@pytest.fixture
async def postgres(tmp_path: Path) -> AsyncIterator[tuple[str, TcpProxy]]:
    """A fresh database, and a proxy to the server that the test can cut."""
    async with fresh_database("postgresql", tmp_path) as database:
        with TcpProxy(PG_PORT) as proxy:
            yield database.url, proxy


def _gateway_on(
    upstream: FakeUpstream,
    tmp_path: Path,
    ledger: str = "",
    state: str = "",
    reader: Store | None = None,
) -> AbstractContextManager[RunningGateway]:
    """A gateway on this `[ledger]` (with `reader`: a store of the test on the same database;
    without: the gateway keeps its rows in memory) and this `[state]`."""
    path = tmp_path / "estuary.toml"
    path.write_text(gateway_toml(upstream.base_url, extra=ledger + state))
    return serve_in_thread(load_config(path, environ=ENVIRON), reader=reader)


@pytest.mark.postgres
async def test_postgres_down_with_queue_streams_go_on_and_rows_are_written_on_recovery(
    upstream: FakeUpstream, tmp_path: Path, postgres: tuple[str, TcpProxy]
) -> None:
    url, proxy = postgres
    through_proxy = url.replace(f":{PG_PORT}/", f":{proxy.port}/")
    ledger = f'[ledger]\nurl = "{through_proxy}"\non_failure = "queue"\nqueue_max = 100\n'
    upstream.script("fake-model", Scenario(tokens=4))
    reader = open_store(url)
    await reader.start("test-reader")
    try:
        with _gateway_on(upstream, tmp_path, ledger=ledger, reader=reader) as gateway:
            async with aiohttp.ClientSession() as http:
                assert (await _stream(http, gateway.url))[0] == 200
                proxy.cut()
                during = [await _stream(http, gateway.url) for _ in range(5)]
                assert [status for status, _ in during] == [200] * 5
                assert await _metric(http, gateway.url, "estuary_ledger_queued_rows") > 0
                proxy.restore()
                for _, request_id in during:
                    assert request_id is not None
                    assert await _settled(reader, request_id) == "completed"
                assert await _metric(http, gateway.url, "estuary_ledger_queued_rows") == 0
    finally:
        await reader.aclose()


@pytest.mark.postgres
async def test_postgres_down_with_refuse_requests_get_503_until_it_is_back(
    upstream: FakeUpstream, tmp_path: Path, postgres: tuple[str, TcpProxy]
) -> None:
    url, proxy = postgres
    through_proxy = url.replace(f":{PG_PORT}/", f":{proxy.port}/")
    ledger = f'[ledger]\nurl = "{through_proxy}"\n'  # on_failure = "refuse", the default
    upstream.script("fake-model", Scenario(tokens=4))
    reader = open_store(url)
    await reader.start("test-reader")
    with _gateway_on(upstream, tmp_path, ledger=ledger, reader=reader) as gateway:
        async with aiohttp.ClientSession() as http:
            assert (await _stream(http, gateway.url))[0] == 200
            proxy.cut()
            assert (await _stream(http, gateway.url))[0] == 503
            assert await _metric(http, gateway.url, "estuary_ledger_refused_rows") >= 1
            proxy.restore()
            for _ in range(50):  # the writer reconnects on the next batch
                if (await _stream(http, gateway.url))[0] == 200:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the gateway did not recover after PostgreSQL came back")
    await reader.aclose()


@pytest.fixture
async def redis_proxy() -> AsyncIterator[tuple[TcpProxy, str]]:
    await require_redis()
    prefix = f"estuary-test-{secrets.token_hex(4)}:"
    with TcpProxy(REDIS_PORT) as proxy:
        try:
            yield proxy, prefix
        finally:
            await delete_prefix(REDIS_URL, prefix)


@pytest.mark.redis
@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_redis_down_fails_open_or_closed_and_recovers_by_itself(
    upstream: FakeUpstream, tmp_path: Path, redis_proxy: tuple[TcpProxy, str], mode: str
) -> None:
    """Open: streams go on with local state, counted. Closed: 503. Both recover on their own."""
    proxy, prefix = redis_proxy
    state = (
        f'[state]\nurl = "redis://127.0.0.1:{proxy.port}/0"\nprefix = "{prefix}"\n'
        f'on_failure = "{mode}"\n'
    )
    upstream.script("fake-model", Scenario(tokens=4))
    with _gateway_on(upstream, tmp_path, state=state) as gateway:
        async with aiohttp.ClientSession() as http:
            assert (await _stream(http, gateway.url))[0] == 200
            proxy.cut()
            status, _ = await _stream(http, gateway.url)
            if mode == "open":
                assert status == 200
                assert await _metric(http, gateway.url, "estuary_state_degraded") == 1
                assert await _metric(http, gateway.url, "estuary_state_degraded_ops") > 0
            else:
                assert status == 503
            proxy.restore()
            for _ in range(50):
                if (await _stream(http, gateway.url))[0] == 200 and (
                    await _metric(http, gateway.url, "estuary_state_degraded") == 0
                ):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the gateway did not go back to Redis")
