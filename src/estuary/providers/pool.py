"""The pooled HTTP client all upstream adapters share.

The aiohttp session must be created inside the running event loop, so it is made on first use and
closed by the server's lifespan. Connections are kept alive and reused: a new TCP (and TLS)
handshake per stream would add to every time-to-first-token. Must not import the HTTP layer.
"""

from __future__ import annotations

import aiohttp

__all__ = ["HttpPool"]


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
