"""The Anthropic provider: `POST {base_url}/v1/messages` with `stream: true`.

The thin async part of the adapter: it sends the body built by `anthropic_wire` over the lean
client in `upstream_http`, maps a failed answer to an `UpstreamError` (`http_errors`, which reads
Anthropic's `{"type": "error", "error": {"type", "message"}}` body and redacts it), feeds the body
to `AnthropicStreamParser` and enforces the timeouts. The key travels in `x-api-key`, with
`anthropic-version: 2023-06-01`. Leaving early (the consumer closed the iterator) resets the
upstream connection, which is how a cancel reaches the upstream at once.

Status codes as Anthropic documents them: 429 → `UpstreamRateLimited` with its `Retry-After`;
500, 503, 529 (overloaded) → `UpstreamError`, so another target is tried; 401/403 →
`UpstreamAuthFailed`; 400/413 → `UpstreamRejected` (the request itself, no fallback).
Must not import the HTTP layer, routing or storage.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Mapping
from typing import Final

from estuary.core.errors import UpstreamError, UpstreamRejected, UpstreamTimeout
from estuary.core.events import StreamEvent, StreamStart
from estuary.core.redaction import Redactor
from estuary.core.requests import UpstreamRequest
from estuary.providers.anthropic_wire import (
    AnthropicStreamParser,
    UntranslatableRequest,
    messages_body,
)
from estuary.providers.base import Timeouts
from estuary.providers.http_errors import connection_failure, error_for_status
from estuary.providers.upstream_http import (
    Endpoint,
    UpstreamClosed,
    UpstreamPool,
    UpstreamResponse,
    request_head,
)
from estuary.providers.watchdog import IdleWatchdog

__all__ = ["ANTHROPIC_VERSION", "AnthropicProvider"]

ANTHROPIC_VERSION: Final = "2023-06-01"
_MAX_ERROR_BODY: Final = 16 * 1024
_DRAIN_S: Final = 0.5


class AnthropicProvider:
    """Streams from the Anthropic Messages API (`api.anthropic.com` or a compatible host)."""

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        api_key: str | None,
        pool: UpstreamPool,
        headers: Mapping[str, str] | None = None,
        redact: Redactor | None = None,
    ) -> None:
        """`base_url` is the host's root (`https://api.anthropic.com`); a trailing `/v1` is fine."""
        self._name = name
        self._endpoint = Endpoint.parse(base_url)
        self._pool = pool
        fixed = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "User-Agent": "estuary",
            "anthropic-version": ANTHROPIC_VERSION,
            **(headers or {}),
        }
        if api_key:
            fixed["x-api-key"] = api_key
        path = "/messages" if self._endpoint.prefix.endswith("/v1") else "/v1/messages"
        self._head = request_head(self._endpoint, path, fixed)
        self._redact = (redact or Redactor()).extended([api_key] if api_key else [])

    @property
    def name(self) -> str:
        return self._name

    async def aclose(self) -> None:
        """Nothing to release: the pool belongs to whoever built the providers."""

    async def stream(
        self, request: UpstreamRequest, model: str, timeouts: Timeouts
    ) -> AsyncGenerator[StreamEvent, None]:
        parser = AnthropicStreamParser(self._name, self._redact)
        response: UpstreamResponse | None = None
        phase = "no answer within the first-token timeout"
        try:
            async with asyncio.timeout(timeouts.first_token_s):
                # The request bytes are not kept in this frame: a stream lives long, they don't.
                response = await self._open(self._wire(request, model), timeouts.connect_s)
                first = await self._first_events(response, parser)
            phase = f"no data for {timeouts.idle_s:g} s"
            yield StreamStart(provider=self._name, model=model)
            for event in first:
                yield event
            async for event in self._rest(response, parser, timeouts.idle_s):
                yield event
            await _drain(response)
            response = None  # released: the connection may carry the next request
        except UpstreamError:
            raise
        except TimeoutError:
            raise UpstreamTimeout(self._name, phase) from None
        except OSError as exc:
            raise UpstreamError(self._name, connection_failure(exc)) from None
        finally:
            if response is not None:
                response.abort()  # left early (cancel, disconnect, error)

    def _wire(self, request: UpstreamRequest, model: str) -> bytes:
        """The whole HTTP request: the pre-encoded head, its length, the JSON body."""
        try:
            body = messages_body(request, model)
        except UntranslatableRequest as exc:
            raise UpstreamRejected(self._name, self._redact(str(exc))) from None
        return self._head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    async def _open(self, wire: bytes, connect_s: float) -> UpstreamResponse:
        """Send the request and wait for the response headers.

        A pooled connection the upstream closed while it sat idle fails before any answer; the
        request is then sent once more on a new connection (the upstream never saw it whole).
        """
        response = await self._pool.open(self._endpoint, wire, connect_s=connect_s)
        try:
            await response.wait_headers()
        except UpstreamClosed:
            if not response.reused or response.total_bytes:
                raise
            response = await self._pool.open(self._endpoint, wire, connect_s=connect_s, fresh=True)
            await response.wait_headers()
        return response

    async def _first_events(
        self, response: UpstreamResponse, parser: AnthropicStreamParser
    ) -> list[StreamEvent]:
        """The status, then the first message that means something (`message_start` does not)."""
        if response.status >= 300:  # not a 2xx answer
            body = await _read_some(response, _MAX_ERROR_BODY)
            retry_after = response.headers.get("retry-after")
            response.abort()
            raise error_for_status(self._name, response.status, body, retry_after, self._redact)
        while True:
            chunk = await response.read()
            if not chunk:
                return parser.finish()
            if events := parser.feed(chunk):
                return events

    async def _rest(
        self, response: UpstreamResponse, parser: AnthropicStreamParser, idle_s: float
    ) -> AsyncGenerator[StreamEvent, None]:
        watchdog = IdleWatchdog(response, idle_s)
        try:
            while True:
                parser.check()
                if parser.done:
                    return
                chunk = await response.read()
                for event in parser.feed(chunk) if chunk else parser.finish():
                    yield event
        finally:
            watchdog.cancel()


async def _read_some(response: UpstreamResponse, limit: int) -> bytes:
    """Up to `limit` bytes of an (error) body."""
    parts: list[bytes] = []
    size = 0
    with contextlib.suppress(OSError):
        while size < limit and (chunk := await response.read()):
            parts.append(chunk)
            size += len(chunk)
    return b"".join(parts)[:limit]


async def _drain(response: UpstreamResponse) -> None:
    """Read the body's last bytes (the chunked terminator) so the connection can be reused."""
    with contextlib.suppress(TimeoutError, OSError):
        async with asyncio.timeout(_DRAIN_S):
            while await response.read():
                pass
    response.release()
