"""Shared fixtures: a scripted fake upstream and a real Estuary server on loopback sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import aiohttp
import pytest

from estuary.config import load_config
from estuary.ledger.base import Store
from estuary.testing import FakeUpstream
from tests.support import ENVIRON, UPSTREAM_KEY, RunningGateway, gateway_toml, serve_in_thread


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    """A fake OpenAI-compatible upstream that insists on the upstream key."""
    async with FakeUpstream(api_key=UPSTREAM_KEY) as fake:
        yield fake


@pytest.fixture
def make_gateway(upstream: FakeUpstream, tmp_path: Path) -> Iterator[Callable[..., RunningGateway]]:
    """Start gateways with other `[server]` settings; all are stopped after the test."""
    with ExitStack() as stack:

        def start(
            server: str = "",
            header_hold_s: float = 0.3,
            extra: str = "",
            reader: Store | None = None,
        ) -> RunningGateway:
            path = tmp_path / "estuary.toml"
            path.write_text(
                gateway_toml(
                    upstream.base_url, header_hold_s=header_hold_s, server=server, extra=extra
                )
            )
            config = load_config(path, environ=ENVIRON)
            return stack.enter_context(serve_in_thread(config, reader=reader))

        yield start


@pytest.fixture
def gateway(make_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    """An Estuary server with the default test config."""
    return make_gateway()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A raw HTTP client (no retries, no buffering of our own)."""
    async with aiohttp.ClientSession() as session:
        yield session
