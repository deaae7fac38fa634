"""Test support: a real Estuary server on loopback sockets, and readers for what it sends.

The gateway runs under uvicorn in a thread of its own (its own event loop, as in production), the
fake upstream in the test's loop; everything between them and the test client is real TCP.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import uvicorn

from estuary.config import Config
from estuary.ledger.memory import LedgerRow, MemoryLedger
from estuary.server import build_app, build_runtime
from estuary.sse import SSEDecoder

UPSTREAM_KEY = "sk-upstream-SECRET-0123456789abcdef"
APP_KEY = "sk-est-app-key-for-tests-0000000001"
OTHER_KEY = "sk-est-other-key-for-tests-00000002"
ENVIRON = {"UPSTREAM_KEY": UPSTREAM_KEY, "APP_KEY": APP_KEY, "OTHER_KEY": OTHER_KEY}
AUTH = {"Authorization": f"Bearer {APP_KEY}"}


def free_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def gateway_toml(upstream_url: str, *, header_hold_s: float = 0.3, server: str = "") -> str:
    """A config with one fake upstream reachable under several aliases, and a dead one."""
    return f"""
[server]
heartbeat_s = 0.2
header_hold_s = {header_hold_s}
{server}

[auth]
keys = ["${{APP_KEY}}", "${{OTHER_KEY}}"]

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
"""


@dataclass
class RunningGateway:
    """A live Estuary server for a test."""

    url: str
    ledger: MemoryLedger

    async def row(self, request_id: str, within_s: float = 5.0) -> LedgerRow:
        """The ledger row of `request_id` once it has been settled."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            row = self.ledger.rows.get(request_id)
            if row is not None and row.settled is not None:
                return row
            await asyncio.sleep(0.02)
        raise AssertionError(f"ledger row {request_id} was not settled within {within_s} s")


@contextmanager
def serve_in_thread(config: Config) -> Iterator[RunningGateway]:
    """Run Estuary for `config` on a free loopback port until the block exits."""
    ledger = MemoryLedger()
    app = build_app(build_runtime(config, ledger=ledger))
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
