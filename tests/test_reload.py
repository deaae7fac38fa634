"""Config reload: SIGHUP to a real `estuary serve`, and `POST /admin/reload` on a live gateway."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from estuary.config import load_config
from estuary.ledger import open_store
from estuary.ledger.base import LedgerRecord, Store
from estuary.reload import ConfigSource
from estuary.sse import SSEDecoder
from estuary.testing import FakeUpstream, Scenario
from tests.support import (
    ADMIN,
    AUTH,
    ENVIRON,
    OTHER_KEY,
    UPSTREAM_KEY,
    RunningGateway,
    free_port,
    gateway_toml,
    serve_in_thread,
    server_process,
)

NEW_KEY = "sk-est-new-key-for-reload-tests-0004"
LONG_TEXT = tuple(f"w{i} " for i in range(100))
FRESH = """
[models.fresh]
targets = ["spare/fresh-model"]
"""


async def _stream(
    http: aiohttp.ClientSession,
    url: str,
    model: str,
    *,
    headers: dict[str, str] | None = None,
    started: asyncio.Event | None = None,
) -> tuple[str, list[dict[str, Any]]]:
    """An app-API stream read to its end: its request id and its events."""
    body = {"message": "tell me a story", "model": model}
    async with http.post(f"{url}/api/chat/stream", json=body, headers=headers or AUTH) as answer:
        assert answer.status == 200, await answer.text()
        events: list[dict[str, Any]] = []
        decoder = SSEDecoder()
        async for chunk in answer.content.iter_any():
            for message in decoder.feed(chunk):
                events.append(orjson.loads(message.data))
                if started is not None and events[-1]["type"] == "content":
                    started.set()
        return answer.headers["X-Request-Id"], events


def _text(events: list[dict[str, Any]]) -> str:
    return "".join(e["content"] for e in events if e["type"] == "content")


async def _models(http: aiohttp.ClientSession, url: str) -> list[str]:
    async with http.get(f"{url}/v1/models", headers=AUTH) as answer:
        assert answer.status == 200
        return [m["id"] for m in (await answer.json())["data"]]


async def _reload(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{url}/admin/reload", headers=ADMIN) as answer:
        return answer.status, await answer.json()


async def _settled(store: Store, request_id: str) -> LedgerRecord:
    for _ in range(250):
        row = await store.get(request_id)
        if row is not None and row.settled is not None:
            return row
        await asyncio.sleep(0.02)
    raise AssertionError(f"row {request_id} was not settled")


async def _logged(log: Path, event: bytes, after: int) -> None:
    for _ in range(250):
        if event in (await asyncio.to_thread(log.read_bytes))[after:]:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{event!r} was not logged")


async def test_sighup_adds_a_model_and_a_price_while_a_running_stream_goes_on_unchanged(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """After SIGHUP the new alias is listed and streams; the stream admitted before the reload
    ends with all its text and the old price; an invalid file before it changed nothing."""
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    before = f"""
[ledger]
url = "{ledger_url}"

[models.long]
targets = ["fake/long-model"]
first_token_timeout_s = 30.0

[prices."fake/long-model"]
input_per_mtok = 1.0
output_per_mtok = 2.0
"""
    after = before.replace("= 1.0", "= 100.0").replace("= 2.0", "= 200.0") + FRESH
    after += '\n[prices."spare/fresh-model"]\ninput_per_mtok = 100.0\noutput_per_mtok = 200.0\n'
    config = tmp_path / "estuary.toml"
    config.write_text(gateway_toml(upstream.base_url, extra=before))
    upstream.script("long-model", Scenario(text=LONG_TEXT, gap_s=0.04))  # ~4 s
    log = tmp_path / "server.log"
    started = asyncio.Event()
    async with (
        server_process(config, port=free_port(), log_path=log, cwd=tmp_path) as gateway,
        aiohttp.ClientSession() as http,
    ):
        running = asyncio.create_task(_stream(http, gateway.url, "long", started=started))
        await asyncio.wait_for(started.wait(), 10)

        mark = log.stat().st_size
        config.write_text(gateway_toml(upstream.base_url, extra=before + FRESH + "[oops"))
        gateway.process.send_signal(signal.SIGHUP)
        await _logged(log, b"config.reload_failed", mark)
        assert "fresh" not in await _models(http, gateway.url)

        config.write_text(gateway_toml(upstream.base_url, extra=after))
        gateway.process.send_signal(signal.SIGHUP)
        for _ in range(250):
            if "fresh" in await _models(http, gateway.url):
                break
            await asyncio.sleep(0.02)
        fresh_id, fresh = await _stream(http, gateway.url, "fresh")
        assert fresh[-1]["type"] == "done"
        assert not running.done(), "the stream should still run after the reload"
        long_id, long = await asyncio.wait_for(running, 20)
        assert gateway.process.returncode is None
    assert (long[-1]["type"], _text(long)) == ("done", "".join(LONG_TEXT))
    assert b"config.reloaded" in log.read_bytes()
    store = open_store(ledger_url)
    await store.start("test-reader")
    try:
        old = (await _settled(store, long_id)).settled
        new = (await _settled(store, fresh_id)).settled
    finally:
        await store.aclose()
    assert old is not None
    assert new is not None
    prompt, completion = new.prompt_tokens or 0, new.completion_tokens or 0  # the same question
    assert (old.prompt_tokens, old.completion_tokens) == (prompt, len(LONG_TEXT))
    assert old.cost_micro == prompt * 1 + len(LONG_TEXT) * 2  # the price at its admission
    assert new.cost_micro == prompt * 100 + completion * 200 > 0


@pytest.fixture
def reloadable(
    upstream: FakeUpstream, tmp_path: Path
) -> Iterator[tuple[RunningGateway, Callable[..., None]]]:
    """A gateway that reloads its file, and a function that rewrites that file."""
    path = tmp_path / "estuary.toml"
    environ = {**ENVIRON, "NEW_KEY": NEW_KEY}

    def write(server: str = "", extra: str = "", keys: str = "") -> None:
        text = gateway_toml(upstream.base_url, server=server, extra=extra)
        if keys:
            text = text.replace('keys = ["${APP_KEY}", "${OTHER_KEY}"]', f"keys = {keys}")
        path.write_text(text)

    write()
    source = ConfigSource(path=path, environ=environ)
    with serve_in_thread(load_config(path, environ=environ), source=source) as gateway:
        yield gateway, write


async def test_an_invalid_file_is_refused_with_its_message_and_the_old_config_stays(
    reloadable: tuple[RunningGateway, Callable[..., None]],
) -> None:
    """A model naming an unknown provider, or broken TOML: 400 invalid_config naming the
    problem, no secret; the old models still stream; the fixed file then reloads."""
    gateway, write = reloadable
    async with aiohttp.ClientSession() as http:
        write(extra='[models.broken]\ntargets = ["nowhere/x"]\n')
        status, body = await _reload(http, gateway.url)
        assert status == 400
        error = body["error"]
        assert (error["code"], error["type"]) == ("invalid_config", "invalid_request_error")
        assert "models.broken.targets[0]: no provider 'nowhere'" in error["message"]
        assert UPSTREAM_KEY not in error["message"]

        write(extra="[models.broken\n")
        status, body = await _reload(http, gateway.url)
        assert (status, body["error"]["code"]) == (400, "invalid_config")
        assert "invalid TOML" in body["error"]["message"]

        assert "broken" not in await _models(http, gateway.url)
        _, events = await _stream(http, gateway.url, "chat")
        assert events[-1]["type"] == "done"

        write(extra=FRESH)
        status, body = await _reload(http, gateway.url)
        assert (status, body["reloaded"]) == (200, True)
        assert "fresh" in body["models"]
        assert "fresh" in await _models(http, gateway.url)
        _, events = await _stream(http, gateway.url, "fresh")
        assert events[-1]["type"] == "done"


async def test_a_static_key_removed_by_a_reload_fails_and_a_new_one_works(
    reloadable: tuple[RunningGateway, Callable[..., None]],
) -> None:
    """`[auth] keys` without OTHER_KEY and with NEW_KEY: 401 for the one, 200 for the other."""
    gateway, write = reloadable
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    new = {"Authorization": f"Bearer {NEW_KEY}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gateway.url}/v1/models", headers=other) as answer:
            assert answer.status == 200
        write(keys='["${APP_KEY}", "${NEW_KEY}"]')
        assert (await _reload(http, gateway.url))[0] == 200
        async with http.get(f"{gateway.url}/v1/models", headers=other) as answer:
            assert answer.status == 401
        _, events = await _stream(http, gateway.url, "chat", headers=new)
        assert events[-1]["type"] == "done"


async def test_a_file_changing_the_port_is_refused_naming_the_key_and_nothing_changes(
    reloadable: tuple[RunningGateway, Callable[..., None]],
) -> None:
    """`[server] port` needs a restart: 409 reload_refused naming `server.port`; the model the
    same file adds is not served either."""
    gateway, write = reloadable
    async with aiohttp.ClientSession() as http:
        write(server=f"port = {free_port()}", extra=FRESH)
        status, body = await _reload(http, gateway.url)
        assert (status, body["error"]["code"]) == (409, "reload_refused")
        assert "restart to change server.port" in body["error"]["message"]
        assert "fresh" not in await _models(http, gateway.url)


async def test_reload_needs_the_admin_key(
    reloadable: tuple[RunningGateway, Callable[..., None]],
) -> None:
    """A gateway key, or none, gets 401 from `POST /admin/reload`."""
    gateway, _ = reloadable
    async with aiohttp.ClientSession() as http:
        for headers in (AUTH, {}):
            async with http.post(f"{gateway.url}/admin/reload", headers=headers) as answer:
                assert answer.status == 401
                assert (await answer.json())["error"]["code"] == "invalid_api_key"


async def test_a_gateway_without_a_config_file_refuses_to_reload(
    make_gateway: Callable[..., RunningGateway],
) -> None:
    """Built without a source, there is nothing to read again: 409, not a 500."""
    gateway = make_gateway()
    async with aiohttp.ClientSession() as http:
        status, body = await _reload(http, gateway.url)
    assert (status, body["error"]["code"]) == (409, "reload_refused")
    assert "without a config file" in body["error"]["message"]
