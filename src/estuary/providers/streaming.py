"""What every HTTP + SSE adapter shares: send, wait for the first message, relay, time out, abort.

An adapter subclasses `StreamingProvider` and supplies three things: the request bytes (`_wire`),
a sans-IO parser for its stream (`_parser`) and, if its errors need more than the status and
body, `_failure`. The rest is written once here:

- the request goes out over the shared `UpstreamPool`; a pooled connection the upstream closed
  while idle is retried once on a fresh one (the upstream never saw the request whole);
- `StreamStart` is yielded only after a 2xx status *and* the first message that means something,
  so every failure before it may still fall back (the `Provider` contract in `base.py`);
- the first-token timeout covers connect + request + that first message; after it, an
  `IdleWatchdog` bounds the silence between chunks;
- leaving early (the consumer closed the iterator) resets the connection — that is how a cancel
  reaches the upstream at once — and a stream read to its end is drained so its connection is
  reused.

Must not import the HTTP layer, routing or storage.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Final, Protocol

from estuary.core.errors import UpstreamError, UpstreamRejected, UpstreamTimeout
from estuary.core.events import StreamEvent, StreamStart
from estuary.core.redaction import Redactor
from estuary.core.requests import UpstreamRequest
from estuary.providers.base import Timeouts, UntranslatableRequest
from estuary.providers.http_errors import connection_failure, error_for_status
from estuary.providers.upstream_http import (
    Endpoint,
    UpstreamClosed,
    UpstreamPool,
    UpstreamResponse,
)
from estuary.providers.watchdog import IdleWatchdog

__all__ = ["StreamParser", "StreamingProvider"]

_MAX_ERROR_BODY: Final = 16 * 1024
_DRAIN_S: Final = 0.5


class StreamParser(Protocol):
    """A sans-IO stream parser: bytes in, core events out (see `OpenAIStreamParser`)."""

    @property
    def done(self) -> bool: ...

    def feed(self, chunk: bytes) -> list[StreamEvent]: ...

    def check(self) -> None: ...

    def finish(self) -> list[StreamEvent]: ...


class StreamingProvider:
    """The shared body of the OpenAI, Anthropic and Gemini providers."""

    def __init__(
        self, name: str, *, endpoint: Endpoint, pool: UpstreamPool, redact: Redactor
    ) -> None:
        self._name = name
        self._endpoint = endpoint
        self._pool = pool
        self._redact = redact

    @property
    def name(self) -> str:
        return self._name

    async def aclose(self) -> None:
        """Nothing to release: the pool belongs to whoever built the providers."""

    def _wire(self, request: UpstreamRequest, model: str) -> bytes:
        """The whole HTTP request (head, `Content-Length`, body) for `model`; may raise
        `UntranslatableRequest`, which `stream` reports as `UpstreamRejected`."""
        raise NotImplementedError

    def _parser(self, request: UpstreamRequest) -> StreamParser:
        """A fresh parser for the answer to `request`."""
        raise NotImplementedError

    def _failure(self, status: int, body: bytes, retry_after: str | None) -> UpstreamError:
        """The error for a non-2xx answer."""
        return error_for_status(self._name, status, body, retry_after, self._redact)

    async def stream(
        self, request: UpstreamRequest, model: str, timeouts: Timeouts
    ) -> AsyncGenerator[StreamEvent, None]:
        parser = self._parser(request)
        response: UpstreamResponse | None = None
        phase = "no answer within the first-token timeout"
        try:
            async with asyncio.timeout(timeouts.first_token_s):
                # The request bytes are not kept in this frame: a stream lives long, they don't.
                response = await self._open(self._request(request, model), timeouts.connect_s)
                first = await self._first_events(response, parser)
            phase = f"no data for {timeouts.idle_s:g} s"
            yield StreamStart(provider=self._name, model=model)
            for event in first:
                yield event
            async for event in _rest(response, parser, timeouts.idle_s):
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

    def _request(self, request: UpstreamRequest, model: str) -> bytes:
        try:
            return self._wire(request, model)
        except UntranslatableRequest as exc:  # the request itself: no other target would do
            raise UpstreamRejected(self._name, self._redact(str(exc))) from None

    async def _open(self, wire: bytes, connect_s: float) -> UpstreamResponse:
        """Send the request and wait for the response headers (see the module docstring)."""
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
        self, response: UpstreamResponse, parser: StreamParser
    ) -> list[StreamEvent]:
        """The status, then the first message that means something (a role-only chunk, a
        `message_start` or a bare signature do not: the parser returns no events for them)."""
        if response.status >= 300:  # not a 2xx answer
            body = await _read_some(response, _MAX_ERROR_BODY)
            retry_after = response.headers.get("retry-after")
            response.abort()
            raise self._failure(response.status, body, retry_after)
        while True:
            chunk = await response.read()
            if not chunk:
                return parser.finish()
            if events := parser.feed(chunk):
                return events


async def _rest(
    response: UpstreamResponse, parser: StreamParser, idle_s: float
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
