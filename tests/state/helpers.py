"""State test helpers: stores of each kind on a private key prefix, cleaned up afterwards.

A Redis test uses the server on 127.0.0.1:6379 under a random prefix and deletes its keys
afterwards. An unreachable server skips the test with its host:port, or fails it when `CI` is set.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Literal, NoReturn, TypeVar

import pytest
from redis.asyncio import Redis

from estuary.state.base import StateStore
from estuary.state.memory import MemoryState
from estuary.state.redis import RedisState

Kind = Literal["memory", "redis"]
T = TypeVar("T")

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
KINDS = (
    pytest.param("memory", id="memory"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
)


def unreachable(what: str, host: str, port: int, exc: BaseException) -> NoReturn:
    reason = f"{what} at {host}:{port} is not reachable ({type(exc).__name__}: {exc})"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI needs it")
    pytest.skip(reason)


async def require_redis() -> None:
    """Skip (or fail, in CI) unless the Redis server answers."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(REDIS_HOST, REDIS_PORT), 3)
    except (OSError, TimeoutError) as exc:
        unreachable("Redis", REDIS_HOST, REDIS_PORT, exc)
    writer.close()
    await writer.wait_closed()


async def delete_prefix(url: str, prefix: str) -> None:
    """Delete every key under `prefix`."""
    client = Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


class Stores:
    """Makes stores of one kind; Redis ones share a private prefix (= one deployment)."""

    def __init__(self, kind: Kind, url: str = REDIS_URL) -> None:
        self.kind = kind
        self.url = url
        self.prefix = f"estuary-test-{secrets.token_hex(6)}:"
        self._opened: list[StateStore] = []

    async def new(self) -> StateStore:
        """A started store: another instance of the same deployment for Redis."""
        store: StateStore
        if self.kind == "memory":
            store = MemoryState()
        else:
            redis_store = RedisState(self.url, prefix=self.prefix)
            await redis_store.start()
            await redis_store.wait_subscribed()
            store = redis_store
        self._opened.append(store)
        return store

    async def aclose(self) -> None:
        for store in self._opened:
            await store.aclose()
        if self.kind == "redis":
            await delete_prefix(self.url, self.prefix)


@asynccontextmanager
async def stores_of(kind: Kind) -> AsyncIterator[Stores]:
    """Stores of `kind`, all closed (and their Redis keys deleted) afterwards."""
    if kind == "redis":
        await require_redis()
    stores = Stores(kind)
    try:
        yield stores
    finally:
        await stores.aclose()


async def eventually(check: Callable[[], Awaitable[T | None]], timeout_s: float = 5.0) -> T:
    """Poll `check` until it returns something other than None (or fail after `timeout_s`)."""
    async with asyncio.timeout(timeout_s):
        while (result := await check()) is None:  # noqa: ASYNC110  # polling another instance
            await asyncio.sleep(0.05)
    return result
