"""The pooled HTTP client all upstream adapters share.

The aiohttp session must be created inside the running event loop, so it is made on first use and
closed by the server's lifespan. Connections are kept alive and reused: a new TCP (and TLS)
handshake per stream would add to every time-to-first-token. Must not import the HTTP layer.
"""

from __future__ import annotations

import asyncio

import aiohttp

__all__ = ["HttpPool", "IdleWatchdog"]


class HttpPool:
    """One `aiohttp.ClientSession` per process, created lazily."""

    def __init__(self, *, keepalive_s: float = 30.0) -> None:
        self._keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=0,  # streams are long-lived; a pool cap would queue new ones silently
                keepalive_timeout=self._keepalive_s,
                ttl_dns_cache=300,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=True, trust_env=False
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class IdleWatchdog:
    """Fails the reads of an upstream body once no byte has arrived for `idle_s` seconds.

    It checks the reader's byte counter from a timer a few times per `idle_s` instead of arming a
    timeout around every read: the token path pays nothing. A consumer that is slow to read does
    not count as silence, because the counter moves when bytes arrive, not when they are read.
    """

    __slots__ = ("_content", "_handle", "_idle_s", "_last_change", "_loop", "_seen")

    _CHECKS_PER_PERIOD = 4

    def __init__(self, content: aiohttp.StreamReader, idle_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._content = content
        self._idle_s = idle_s
        self._seen = content.total_bytes
        self._last_change = self._loop.time()
        self._handle = self._loop.call_later(idle_s / self._CHECKS_PER_PERIOD, self._check)

    def cancel(self) -> None:
        self._handle.cancel()

    def _check(self) -> None:
        now = self._loop.time()
        if self._content.total_bytes != self._seen:
            self._seen, self._last_change = self._content.total_bytes, now
        elif now - self._last_change >= self._idle_s:
            self._content.set_exception(TimeoutError(f"no data for {self._idle_s:g} s"))
            return
        self._handle = self._loop.call_later(self._idle_s / self._CHECKS_PER_PERIOD, self._check)
