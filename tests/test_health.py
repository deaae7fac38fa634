"""`/healthz` (the process is up) and `/readyz` (ledger, state store, a usable target per alias)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from estuary.config import load_config
from estuary.ledger.base import UsageDimension, UsageFilter, UsageTotal
from estuary.ledger.memory import MemoryLedger
from estuary.testing import FakeUpstream, Scenario
from tests.support import AUTH, ENVIRON, RunningGateway, gateway_toml, serve_in_thread

BREAKER = "[routing]\nbreaker_failures = 1\nbreaker_cooldown_s = 0.5\n"


async def readyz(http: aiohttp.ClientSession, gateway: RunningGateway) -> tuple[int, Any]:
    async with http.get(f"{gateway.url}/readyz") as response:
        return response.status, await response.json()


async def test_healthz_and_readyz_answer_200_on_a_healthy_gateway(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    """A fresh gateway is alive and ready, every check `ok`."""
    async with http.get(f"{gateway.url}/healthz") as response:
        assert response.status == 200
    status, body = await readyz(http, gateway)
    assert status == 200
    assert body["status"] == "ok"
    assert body["failed"] == []
    assert set(body["checks"]) == {
        "ledger",
        "state",
        "models.chat",
        "models.fallback-chat",
        "models.dead-first",
    }
    assert set(body["checks"].values()) == {"ok"}


async def test_readyz_is_503_while_every_target_of_an_alias_is_open(
    make_gateway: Callable[..., RunningGateway],
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    """One failure opens the only target of `chat`: 503 naming it; ready again after cooldown."""
    gateway = make_gateway(extra=BREAKER)
    upstream.script("fake-model", Scenario(fail_status=503))
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(f"{gateway.url}/api/chat/stream", json=body, headers=AUTH) as response:
        assert response.status == 502
    status, answer = await readyz(http, gateway)
    assert status == 503
    assert answer["status"] == "unavailable"
    assert answer["failed"] == ["models.chat"]
    assert "circuit breaker" in answer["checks"]["models.chat"]
    async with http.get(f"{gateway.url}/healthz") as response:
        assert response.status == 200  # alive, only not ready

    upstream.script("fake-model", Scenario(tokens=2))  # it came back
    deadline = time.monotonic() + 10
    while (await readyz(http, gateway))[0] != 200:  # half-open once the cooldown is over
        assert time.monotonic() < deadline, "readyz did not recover"
        await asyncio.sleep(0.05)
    async with http.post(f"{gateway.url}/api/chat/stream", json=body, headers=AUTH) as response:
        assert response.status == 200
        await response.read()
    assert (await readyz(http, gateway))[0] == 200


class _BrokenLedger(MemoryLedger):
    """A ledger whose queries fail (a database that went away)."""

    async def usage(
        self, where: UsageFilter, by: Sequence[UsageDimension] = ()
    ) -> list[UsageTotal]:
        raise ConnectionError("the database went away")


async def test_readyz_is_503_when_the_ledger_does_not_answer(
    upstream: FakeUpstream, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A failing ledger query makes the gateway unready, naming the ledger and no secret."""
    path = tmp_path / "estuary.toml"
    path.write_text(gateway_toml(upstream.base_url))
    config = load_config(path, environ=ENVIRON)
    with serve_in_thread(config, ledger=_BrokenLedger()) as gateway:
        status, body = await readyz(http, gateway)
    assert status == 503
    assert body["failed"] == ["ledger"]
    assert body["checks"]["ledger"] == "failed: ConnectionError"
