"""The Redis store when Redis goes away: fail open (and come back), fail closed, dead producers.

Outages use a `redis-server` of the test's own, on a free port, stopped and started again on
the same port. The binary's absence skips these tests, or fails them when `CI` is set.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any, Literal

import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from estuary.state.base import Bucket, LogAbandoned, StateUnavailable
from estuary.state.redis import RedisState
from tests.state.helpers import Stores, eventually, stores_of

pytestmark = [pytest.mark.redis, pytest.mark.timeout(30)]

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "hunter2-do-not-leak"


class RedisServer:
    """A `redis-server` child on one port that a test may stop and start again."""

    def __init__(self, binary: str, port: int, workdir: Path, *args: str) -> None:
        self._command = [binary, "--port", str(port), "--save", "", "--appendonly", "no"]
        self._command += ["--dir", str(workdir), *args]
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            *self._command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        async with asyncio.timeout(10):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                except OSError:
                    await asyncio.sleep(0.02)
                    continue
                writer.close()
                await writer.wait_closed()
                return

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()
        self._process = None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _redis_server_binary() -> str:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed; CI needs it")
        pytest.skip("redis-server is not installed")
    return binary


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A private Redis server, killed after the test."""
    own = RedisServer(_redis_server_binary(), _free_port(), tmp_path)
    await own.start()
    try:
        yield own
    finally:
        await own.stop()


@pytest.fixture
async def stores() -> AsyncIterator[Stores]:
    """Stores of one deployment on the shared Redis server."""
    async with stores_of("redis") as made:
        yield made


def _events(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


async def test_fail_open_serves_locally_then_goes_back_to_redis(server: RedisServer) -> None:
    """Limits and cancel keep working through an outage, logged once; Redis is used again after."""
    store = RedisState(server.url, prefix="t:", on_failure="open")
    heard: list[str] = []
    with capture_logs() as logs:
        try:
            await _outage_and_back(store, server, heard)
        finally:
            await store.aclose()
    assert len(_events(logs, "state.degraded")) == 1
    assert len(_events(logs, "state.recovered")) == 1
    assert _events(logs, "state.degraded")[0]["log_level"] == "warning"


async def _outage_and_back(store: RedisState, server: RedisServer, heard: list[str]) -> None:
    await store.start()
    await store.wait_subscribed()
    slots = Bucket("conc", capacity=2, per_s=0)
    assert await store.take([(slots, 2)]) is None
    before = await store.register_stream("r-before", "key-a")
    await server.stop()

    assert await store.take([(slots, 1)]) is None  # a local bucket, full
    assert store.degraded
    during = await store.register_stream("r-during", "key-a")
    assert await store.cancel_stream("r-during", "key-a") == "canceled"
    assert await store.cancel_stream("r-before", "key-a") == "canceled"
    await asyncio.wait_for(asyncio.gather(before, during), 5)
    assert await store.add("n", 1) == 1
    log = store.open_log("r-local", "key-a", ttl_s=60)
    log.append(1, b"kept here")
    log.close()
    assert await _read_all(store, "r-local") == [b"kept here"]
    assert store.degraded_ops >= 6

    await server.start()
    await eventually(lambda: _recovered(store), timeout_s=5)
    assert await store.add("after", 2) == 2
    client = Redis.from_url(server.url)
    assert await client.get("t:counter:after") == b"2"  # written to Redis again
    await client.aclose()
    assert await _read_all(store, "r-local") == [b"kept here"]  # still, from this instance
    store.subscribe("bus", heard.append)
    await eventually(lambda: _heard_after_publish(store, heard), timeout_s=10)


async def _read_all(store: RedisState, request_id: str) -> list[bytes]:
    frames = await store.read_log(request_id, "key-a", 0)
    assert frames is not None
    return [frame async for frame in frames]


async def _recovered(store: RedisState) -> bool | None:
    await store.add("probe", 0)
    return True if not store.degraded else None


async def _heard_after_publish(store: RedisState, heard: list[str]) -> bool | None:
    await store.publish("bus", "hello")
    await asyncio.sleep(0.1)
    return True if heard else None


async def test_fail_closed_refuses_then_works_again(server: RedisServer) -> None:
    """Every operation raises `StateUnavailable` while Redis is down, and works once it is back."""
    store = RedisState(server.url, prefix="t:", on_failure="closed")
    try:
        await store.start()
        slots = Bucket("rpm", capacity=2, per_s=1)
        assert await store.take([(slots, 1)]) is None
        await server.stop()
        with pytest.raises(StateUnavailable):
            await store.take([(slots, 1)])
        with pytest.raises(StateUnavailable):
            await store.register_stream("r1", "key-a")
        with pytest.raises(StateUnavailable):
            store.open_log("r1", "key-a", ttl_s=60)
        with pytest.raises(StateUnavailable):
            await store.ping()
        assert store.degraded_ops == 0
        await server.start()
        await eventually(lambda: _take_works(store, slots), timeout_s=5)
    finally:
        await store.aclose()


async def _take_works(store: RedisState, bucket: Bucket) -> bool | None:
    try:
        await store.take([(bucket, 0)])
    except StateUnavailable:
        await asyncio.sleep(0.2)
        return None
    return True


@pytest.mark.parametrize("on_failure", ["open", "closed"])
async def test_a_password_in_the_url_appears_nowhere(
    on_failure: Literal["open", "closed"], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither errors (with their causes) nor log lines show the URL's password."""
    seen: list[str] = []
    server = RedisServer(_redis_server_binary(), _free_port(), tmp_path, "--requirepass", "right")
    await server.start()
    wrong = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
    down = f"redis://:{PASSWORD}@127.0.0.1:{_free_port()}/0"
    try:
        with capture_logs() as logs:
            for url in (wrong, down):
                seen += await _everything_said(RedisState(url, prefix="t:", on_failure=on_failure))
    finally:
        await server.stop()
    seen += [repr(entry) for entry in logs]
    seen.append(caplog.text)
    assert any("StateUnavailable" in text for text in seen)  # ping raises in both modes
    assert not [text for text in seen if PASSWORD in text]


async def _everything_said(store: RedisState) -> list[str]:
    """The store's repr and every exception (with its causes) it raises on a few operations."""
    said = [repr(store), str(store)]
    attempts: list[Callable[[], Awaitable[object]]] = [
        store.start,
        store.ping,
        lambda: store.take([(Bucket("b", 1, 1), 1)]),
        lambda: store.cancel_stream("r", "key-a"),
    ]
    for attempt in attempts:
        try:
            await attempt()
        except Exception as exc:
            said += traceback.format_exception(exc)
    await store.aclose()
    return said


async def test_log_entries_are_dropped_not_queued_while_redis_is_down(
    server: RedisServer,
) -> None:
    """Appending never waits: while Redis is down the entries are dropped and counted."""
    store = RedisState(server.url, prefix="t:", on_failure="open")
    try:
        await store.start()
        log = store.open_log("r-drop", "key-a", ttl_s=60)
        log.append(1, b"one")
        assert await store.read_log("r-drop", "key-a", 0) is not None  # written
        await server.stop()
        for seq in range(2, 20_002):
            log.append(seq, b"x")  # more than the queue holds
        assert store.dropped_log_entries >= 10_000
        await eventually(lambda: _dropped_at_least(store, 20_000), timeout_s=5)
    finally:
        await store.aclose()


async def _dropped_at_least(store: RedisState, count: int) -> bool | None:
    return True if store.dropped_log_entries >= count else None


async def test_a_reader_learns_that_the_producer_store_closed(stores: Stores) -> None:
    """A producer whose store closes without closing the log: its reader raises `LogAbandoned`."""
    producer, reader = await stores.new(), await stores.new()
    log = producer.open_log("r-gone", "key-a", ttl_s=60)
    log.append(1, b"one")
    frames = await eventually(lambda: reader.read_log("r-gone", "key-a", 0))
    assert await anext(frames) == b"one"
    await producer.aclose()
    with pytest.raises(LogAbandoned):
        await asyncio.wait_for(anext(frames), 5)


async def test_a_reader_learns_that_the_producer_process_died(stores: Stores) -> None:
    """A producer killed mid-stream (no cleanup at all): its reader raises `LogAbandoned`."""
    reader = await stores.new()
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.state.child", "produce", stores.url, stores.prefix,
        "r-killed", "key-a", cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert child.stdout is not None
    try:
        assert await asyncio.wait_for(child.stdout.readline(), 15) == b"ready\n"
        frames = await reader.read_log("r-killed", "key-a", 0)
        assert frames is not None
        assert [await anext(frames), await anext(frames)] == [b"one", b"two"]
    finally:
        child.kill()  # SIGKILL: no cleanup, the liveness key just stops being refreshed
        await child.wait()
    with pytest.raises(LogAbandoned):
        await asyncio.wait_for(anext(frames), 10)


async def test_a_reader_stops_at_a_gap_in_the_log(stores: Stores) -> None:
    """Entries lost on the way (a gap in seq) end the read with `LogAbandoned`, not a jump."""
    producer = await stores.new()
    log = producer.open_log("r-gap", "key-a", ttl_s=60)
    log.append(1, b"one")
    log.append(3, b"three")
    log.close()
    frames = await eventually(lambda: producer.read_log("r-gap", "key-a", 0))
    assert await anext(frames) == b"one"
    with pytest.raises(LogAbandoned):
        await anext(frames)


async def test_keys_of_a_closed_deployment_expire(stores: Stores) -> None:
    """After a closed log and a finished stream, every key left has an expiry."""
    store = await stores.new()
    await store.register_stream("r-k", "key-a")
    log = store.open_log("r-k", "key-a", ttl_s=60)
    log.append(1, b"one")
    log.close()
    await store.put_ticket("t", b"p", ttl_s=60)
    await store.add("n", 1)
    await store.add("n", -1)
    await store.take([(Bucket("rpm", capacity=5, per_s=1), 1)])
    await store.finish_stream("r-k")
    assert await store.read_log("r-k", "key-a", 0) is not None  # flushed
    client = Redis.from_url(stores.url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{stores.prefix}*")]
        assert keys
        # -1 is "no expiry"; -2 is a key that expired since the scan (the bucket refills in 1 s)
        assert {key: await client.pttl(key) != -1 for key in keys} == dict.fromkeys(keys, True)
    finally:
        await client.aclose()
