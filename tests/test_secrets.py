"""No upstream key in any response, event or log line — even when the upstream echoes it back.

This runs `estuary serve` as a real process with its JSON logs at debug level, makes every kind of
request fail in ways that put the key into upstream error bodies, and searches all of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from estuary.testing import FakeUpstream, Scenario
from tests.support import (
    ADMIN_KEY,
    APP_KEY,
    AUTH,
    JWT_SECRET,
    UPSTREAM_KEY,
    free_port,
    gateway_toml,
    server_process,
)

ECHO = "upstream says: your header was Authorization: {authorization}"


@pytest.fixture
async def server(upstream: FakeUpstream, tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """`estuary serve` in a child process; yields its URL and the file its stderr goes to."""
    config = tmp_path / "estuary.toml"
    config.write_text(gateway_toml(upstream.base_url, server='log_level = "debug"'))
    log_path = tmp_path / "stderr.log"
    async with server_process(config, port=free_port(), log_path=log_path, cwd=tmp_path) as child:
        yield child.url, log_path


async def test_upstream_key_never_leaks(server: tuple[str, Path], upstream: FakeUpstream) -> None:
    """Responses, events and logs never contain the upstream key, whatever the failure."""
    url, log_path = server
    chat = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    upstream.enqueue(
        Scenario(fail_status=500, fail_body=ECHO),
        Scenario(fail_status=401, fail_body=ECHO),
        Scenario(fail_status=400, fail_body='{"error": {"message": "' + ECHO + '"}}'),
        Scenario(fail_status=429, fail_body=ECHO, retry_after="1"),
        Scenario(fail_status=502, fail_body=ECHO),
        Scenario(tokens=4, error_after=2),
        Scenario(tokens=3),
    )
    seen: list[bytes] = []
    async with aiohttp.ClientSession() as http:
        for path, body in [
            ("/api/chat/stream", chat),
            ("/v1/chat/completions", {**chat, "stream": True}),
            ("/v1/chat/completions", chat),
            ("/v1/completions", {"model": "chat", "prompt": "x", "stream": True}),
            ("/api/chat/stream?format=text", chat),
            ("/api/chat/stream", chat),
            ("/api/chat/stream", chat),
        ]:
            async with http.post(url + path, json=body, headers=AUTH) as response:
                seen.append(str(response.headers).encode() + await response.read())
    assert len(upstream.requests) == 7
    assert all(UPSTREAM_KEY in r.headers["Authorization"] for r in upstream.requests)
    everything = b"\n".join(seen)
    assert b"upstream says" in everything  # the upstream's own words did come through...
    assert UPSTREAM_KEY.encode() not in everything  # ...but not the key inside them
    assert APP_KEY.encode() not in everything
    await asyncio.sleep(0.2)  # let the last log lines reach the file
    logs = log_path.read_bytes()
    lines = [orjson.loads(line) for line in logs.splitlines() if line.startswith(b"{")]
    ended = [line for line in lines if line.get("event") == "stream.end"]
    assert len(ended) == 7  # one structured line per request: the check has something to read
    assert any("upstream says" in str(line.get("error")) for line in ended)
    for secret in (UPSTREAM_KEY, APP_KEY, ADMIN_KEY, JWT_SECRET):
        assert secret.encode() not in logs
