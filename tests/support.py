"""Test support: a real Estuary server on loopback sockets, and readers for what it sends.

The gateway runs under uvicorn in a thread of its own (its own event loop, as in production), the
fake upstream in the test's loop; everything between them and the test client is real TCP.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvicorn

from estuary.config import Config
from estuary.ledger.base import LedgerRecord, Store
from estuary.ledger.memory import LedgerRow, MemoryLedger
from estuary.reload import ConfigSource
from estuary.server import build_app, build_runtime
from estuary.sse import SSEDecoder

UPSTREAM_KEY = "sk-upstream-SECRET-0123456789abcdef"
APP_KEY = "sk-est-app-key-for-tests-0000000001"
OTHER_KEY = "sk-est-other-key-for-tests-00000002"
ADMIN_KEY = "sk-est-admin-key-for-tests-000000003"
JWT_SECRET = "jwt-secret-for-tests-0123456789abcdef-0123456789"
ENVIRON = {
    "UPSTREAM_KEY": UPSTREAM_KEY,
    "APP_KEY": APP_KEY,
    "OTHER_KEY": OTHER_KEY,
    "ADMIN_KEY": ADMIN_KEY,
    "JWT_SECRET": JWT_SECRET,
}
AUTH = {"Authorization": f"Bearer {APP_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def free_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def gateway_toml(
    upstream_url: str, *, header_hold_s: float = 0.3, server: str = "", extra: str = ""
) -> str:
    """A config with one fake upstream reachable under several aliases, and a dead one.

    `server` adds lines to `[server]`; `extra` adds tables at the end.
    """
    return f"""
[server]
heartbeat_s = 0.2
header_hold_s = {header_hold_s}
{server}

[auth]
keys = ["${{APP_KEY}}", "${{OTHER_KEY}}"]
admin_key = "${{ADMIN_KEY}}"

[providers.fake]
format = "openai"
base_url = "{upstream_url}"
api_key = "${{UPSTREAM_KEY}}"

[providers.spare]
format = "openai"
base_url = "{upstream_url}"
api_key = "${{UPSTREAM_KEY}}"

[providers.dead]
format = "openai"
base_url = "http://127.0.0.1:{free_port()}/v1"
api_key = "${{UPSTREAM_KEY}}"

[models.chat]
targets = ["fake/fake-model"]
first_token_timeout_s = 2.0
idle_timeout_s = 2.0

[models."fallback-chat"]
targets = ["fake/primary-model", "spare/backup-model"]
first_token_timeout_s = 0.5
idle_timeout_s = 2.0

[models."dead-first"]
targets = ["dead/nothing", "fake/fake-model"]

{extra}
"""


@dataclass
class RunningGateway:
    """A live Estuary server for a test."""

    url: str
    ledger: Store  # memory: the server's own; SQL: a second store on the same database

    @property
    def memory_rows(self) -> dict[str, LedgerRow]:
        """Every row of a server that keeps them in memory (the default here)."""
        assert isinstance(self.ledger, MemoryLedger)
        return self.ledger.rows

    async def row(self, request_id: str, within_s: float = 5.0) -> LedgerRecord:
        """The ledger row of `request_id` once it has been settled."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            row = await self.ledger.get(request_id)
            if row is not None and row.settled is not None:
                return row
            await asyncio.sleep(0.02)
        raise AssertionError(f"ledger row {request_id} was not settled within {within_s} s")


@contextmanager
def serve_in_thread(
    config: Config,
    *,
    reader: Store | None = None,
    ledger: Store | None = None,
    source: ConfigSource | None = None,
) -> Iterator[RunningGateway]:
    """Run Estuary for `config` on a free loopback port until the block exits.

    By default the server keeps its rows in a `MemoryLedger` the test can read (or in `ledger`);
    with a `reader` (a store opened by the test on the same database) it uses `[ledger] url`.
    With a `source` (where `config` came from), `POST /admin/reload` reads it again.
    """
    if reader is None:
        ledger = ledger if ledger is not None else MemoryLedger()
    runtime = build_runtime(config, ledger=ledger, source=source)
    ledger = reader if reader is not None else ledger
    assert ledger is not None
    app = build_app(runtime)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app, loop="uvloop", http="httptools", log_config=None, access_log=False, lifespan="on"
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the gateway did not start")
        time.sleep(0.01)
    try:
        yield RunningGateway(url=f"http://127.0.0.1:{port}", ledger=ledger)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@dataclass
class Received:
    """An app-API SSE response as the client saw it."""

    status: int
    headers: Mapping[str, str]  # case-insensitive
    events: list[dict[str, Any]]
    ids: list[str]
    comments: int


async def read_app_stream(response: aiohttp.ClientResponse) -> Received:
    """Read an app-API stream to its end, decoding every event and counting heartbeats."""
    decoder = SSEDecoder()
    events: list[dict[str, Any]] = []
    ids: list[str] = []
    comments = 0
    async for chunk in response.content.iter_any():
        comments += chunk.count(b": ping")
        for message in decoder.feed(chunk):
            events.append(orjson.loads(message.data))
            ids.append(message.id or "")
    return Received(
        status=response.status,
        headers=response.headers,
        events=events,
        ids=ids,
        comments=comments,
    )


@dataclass
class ServerProcess:
    """`estuary serve` in a child process."""

    url: str
    process: asyncio.subprocess.Process


@asynccontextmanager
async def server_process(
    config: Path, *, port: int, log_path: Path, cwd: Path
) -> AsyncIterator[ServerProcess]:
    """Start `python -m estuary serve --config …` and wait for `/healthz`; stop it afterwards."""
    command = [sys.executable, "-m", "estuary", "serve", "--config", str(config)]
    command += ["--port", str(port)]
    env = {**os.environ, **ENVIRON}
    with log_path.open("ab") as log:
        child = await asyncio.create_subprocess_exec(
            *command, stdout=log, stderr=log, env=env, cwd=cwd
        )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_until_up(url, child)
        yield ServerProcess(url, child)
    finally:
        if child.returncode is None:
            child.terminate()
            await child.wait()


async def wait_until_up(url: str, child: asyncio.subprocess.Process | None = None) -> None:
    """Poll `/healthz` until it answers 200 (10 s at most)."""
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            if child is not None and child.returncode is not None:
                raise AssertionError(f"estuary serve exited with {child.returncode}")
            try:
                async with http.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
    raise AssertionError("estuary serve did not come up")


class TcpProxy:
    """A loopback TCP proxy to `target_port` that a test can cut (an outage: every connection
    closed, new ones refused) and restore, to take a database or Redis away and back.

    It runs its own event loop in a thread, so it keeps forwarding while the test's loop is
    blocked (a gateway started by `serve_in_thread` waits synchronously for its start-up).
    """

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = free_port()

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        self.restore()
        return self

    def __exit__(self, *_: object) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def restore(self) -> None:
        """Accept and forward connections again (on the same port)."""
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(5)

    def cut(self) -> None:
        """Close the listening socket and every open connection."""
        asyncio.run_coroutine_threadsafe(self._cut(), self._loop).result(5)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self._target_port)
        except OSError:
            client_w.transport.abort()
            return
        self._writers |= {client_w, server_w}

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.transport.abort()

        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))
        self._writers -= {client_w, server_w}
