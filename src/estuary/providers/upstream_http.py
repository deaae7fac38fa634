"""A lean HTTP/1.1 client for streaming from upstreams: pooled connections, httptools' C parser.

The token path of a gateway is one upstream read and one client write per token, so the client
library's per-request and per-read costs are paid on every answer. A general-purpose client spends
most of a short request on features a gateway never uses (cookies, redirects, proxies, multipart,
tracing hooks); this one sends one pre-encoded request and hands body bytes to the caller as they
arrive. Per 1-token request it measured 285 µs of CPU against aiohttp's 407 µs, most of the rest
being the kernel's loopback write (docs/decisions.md).

Must not import the HTTP layer, routing or storage.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, cast
from urllib.parse import urlsplit

import httptools

__all__ = ["Endpoint", "UpstreamClosed", "UpstreamPool", "UpstreamResponse", "request_head"]

_HIGH_WATER: Final = 256 * 1024  # pause reading when a slow consumer lets this much pile up
_DECODERS: Final = MappingProxyType({"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS})


class UpstreamClosed(ConnectionError):
    """The upstream closed the connection before its answer was complete."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where requests go: scheme, host, port and path prefix, split once."""

    host: str
    port: int
    tls: bool
    prefix: str

    @classmethod
    def parse(cls, base_url: str) -> Endpoint:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        tls = parts.scheme == "https"
        return cls(parts.hostname, parts.port or (443 if tls else 80), tls, parts.path.rstrip("/"))

    @property
    def authority(self) -> str:
        default = 443 if self.tls else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


class UpstreamResponse(asyncio.Protocol):
    """One connection's protocol and the response currently being read on it."""

    def __init__(self, pool: UpstreamPool, endpoint: Endpoint) -> None:
        self._pool = pool
        self.endpoint = endpoint
        self._transport: asyncio.Transport | None = None
        self._chunks: list[bytes] = []  # rarely more than one: a list is ~1/10 of a deque
        self._waiter: asyncio.Future[None] | None = None
        self.total_bytes = 0
        self.reused = False
        self.last_used = 0.0
        self._start_response()

    def _start_response(self) -> None:
        """The per-response state: fresh for each request on this connection."""
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._chunks.clear()
        self._buffered = 0
        self._exception: BaseException | None = None
        self._decoder: zlib._Decompress | None = None
        self._keep_alive = False
        self.headers: dict[str, str] = {}
        self.status = 0
        self.headers_done = False
        self.complete = False

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.total_bytes += len(data)
        parser = self._parser
        if parser is None:
            return  # the connection is gone
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.set_exception(UpstreamClosed(f"malformed HTTP from the upstream ({exc})"))

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._parser = None  # it holds our bound methods: a reference cycle, broken here
        if not self.complete:
            self.set_exception(UpstreamClosed("the upstream closed the connection"))

    # -- httptools callbacks -------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None  # called from its own `feed_data`
        self.status = parser.get_status_code()
        self._keep_alive = parser.should_keep_alive()  # only valid until the body starts
        self.headers_done = True
        encoding = self.headers.get("content-encoding", "identity").lower()
        if (wbits := _DECODERS.get(encoding)) is not None:
            self._decoder = zlib.decompressobj(wbits)
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._decoder is not None:
            body = self._decoder.decompress(body)
        if body:
            self._chunks.append(body)
            self._buffered += len(body)
            if self._buffered > _HIGH_WATER and self._transport is not None:
                self._transport.pause_reading()
            self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    # -- the caller's side -------------------------------------------------------------------

    def send(self, request: bytes) -> None:
        assert self._transport is not None
        self._transport.write(request)

    async def wait_headers(self) -> None:
        while not self.headers_done:
            await self._wait()

    async def read(self) -> bytes:
        """The body bytes that arrived since the last read; b"" once the body is complete."""
        while not self._chunks:
            if self._exception is not None:
                raise self._exception
            if self.complete:
                return b""
            await self._wait()
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        if self._buffered > _HIGH_WATER and self._transport is not None:
            self._transport.resume_reading()
        self._buffered = 0
        return data

    def set_exception(self, exc: BaseException) -> None:
        """Fail pending and later reads (also used by the idle watchdog)."""
        if self._exception is None:
            self._exception = exc
        self._wake()

    def release(self) -> None:
        """Done with the response: keep the connection if it can carry another request."""
        if self.complete and self._exception is None and self._keep_alive:
            self._pool.put_back(self)
        else:
            self.abort()

    def abort(self) -> None:
        """Reset the connection: the upstream learns at once that nobody is reading."""
        if self._transport is not None:
            self._transport.abort()
            self._transport = None
        if self._exception is not None:  # raised from `read`: its frames hold this response
            self._exception.__traceback__ = None

    @property
    def usable(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def reset_for_reuse(self) -> None:
        self._start_response()
        self.reused = True

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait(self) -> None:
        if self._exception is not None:
            raise self._exception
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None


class UpstreamPool:
    """Keep-alive connections per endpoint; created on first use, inside the running loop."""

    def __init__(self, *, keepalive_s: float = 30.0) -> None:
        self._keepalive_s = keepalive_s
        self._idle: dict[Endpoint, list[UpstreamResponse]] = {}
        self._tls: ssl.SSLContext | None = None

    async def open(
        self, endpoint: Endpoint, request: bytes, *, connect_s: float, fresh: bool = False
    ) -> UpstreamResponse:
        """Send `request` on a pooled (unless `fresh`) or new connection, once it is written."""
        conn = None if fresh else self._take_idle(endpoint)
        if conn is None:
            conn = await self._connect(endpoint, connect_s)
        conn.send(request)
        return conn

    def put_back(self, conn: UpstreamResponse) -> None:
        conn.reset_for_reuse()
        conn.last_used = time.monotonic()
        self._idle.setdefault(conn.endpoint, []).append(conn)

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.abort()
        self._idle.clear()

    def _take_idle(self, endpoint: Endpoint) -> UpstreamResponse | None:
        conns = self._idle.get(endpoint)
        horizon = time.monotonic() - self._keepalive_s
        while conns:
            conn = conns.pop()
            if conn.usable and conn.last_used > horizon:
                return conn
            conn.abort()
        return None

    async def _connect(self, endpoint: Endpoint, connect_s: float) -> UpstreamResponse:
        loop = asyncio.get_running_loop()
        tls = self._tls_context() if endpoint.tls else None
        async with asyncio.timeout(connect_s):
            _, conn = await loop.create_connection(
                lambda: UpstreamResponse(self, endpoint),
                endpoint.host,
                endpoint.port,
                ssl=tls,
                server_hostname=endpoint.host if tls else None,
            )
        return conn

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls


def request_head(endpoint: Endpoint, path: str, headers: Mapping[str, str]) -> bytes:
    """The fixed part of a POST to `path`; the caller adds Content-Length, a blank line, a body."""
    head = [f"POST {endpoint.prefix}{path} HTTP/1.1", f"Host: {endpoint.authority}"]
    head.extend(f"{name}: {value}" for name, value in headers.items())
    return ("\r\n".join(head) + "\r\n").encode("latin-1")
