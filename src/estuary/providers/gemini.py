"""The Google Gemini provider: `POST /v1beta/models/{model}:streamGenerateContent?alt=sse`.

The thin async part of the adapter: it sends the body built by `gemini_wire` over the lean client
in `upstream_http`, maps a failed answer to an `UpstreamError`, feeds the body to
`GeminiStreamParser` and enforces the timeouts. The key travels in the `x-goog-api-key` header,
never in the URL (URLs end up in access logs and proxies). Leaving early (the consumer closed the
iterator) resets the upstream connection, which is how a cancel reaches the upstream at once.

Google answers a wrong key with 400 `API_KEY_INVALID`, not 401: that case is mapped to
`UpstreamAuthFailed` (fall back; the client's request was fine) instead of `UpstreamRejected`.
A 429 without `Retry-After` takes its wait from the body's `google.rpc.RetryInfo.retryDelay`.
Must not import the HTTP layer, routing or storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncGenerator, Mapping
from typing import Final
from urllib.parse import quote

import orjson

from estuary.core.errors import (
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
)
from estuary.core.events import StreamEvent, StreamStart
from estuary.core.redaction import Redactor
from estuary.core.requests import UpstreamRequest
from estuary.providers.base import Timeouts
from estuary.providers.gemini_wire import GeminiStreamParser, UntranslatableRequest, generate_body
from estuary.providers.http_errors import connection_failure, error_for_status
from estuary.providers.upstream_http import (
    Endpoint,
    UpstreamClosed,
    UpstreamPool,
    UpstreamResponse,
    request_head,
)
from estuary.providers.watchdog import IdleWatchdog

__all__ = ["GeminiProvider"]

_MAX_ERROR_BODY: Final = 16 * 1024
_DRAIN_S: Final = 0.5
_RETRY_DELAY: Final = re.compile(r"(\d+(?:\.\d+)?)s")


class GeminiProvider:
    """Streams from the Gemini API (`generativelanguage.googleapis.com` or a compatible host)."""

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
        self._name = name
        self._endpoint = Endpoint.parse(base_url)
        self._pool = pool
        self._headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "User-Agent": "estuary",
            **(headers or {}),
        }
        if api_key:
            self._headers["x-goog-api-key"] = api_key
        self._redact = (redact or Redactor()).extended([api_key] if api_key else [])

    @property
    def name(self) -> str:
        return self._name

    async def aclose(self) -> None:
        """Nothing to release: the pool belongs to whoever built the providers."""

    async def stream(
        self, request: UpstreamRequest, model: str, timeouts: Timeouts
    ) -> AsyncGenerator[StreamEvent, None]:
        parser = GeminiStreamParser(self._name, self._redact)
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
        """The whole HTTP request: head, its length, the JSON body."""
        try:
            body = generate_body(request)
        except UntranslatableRequest as exc:
            raise UpstreamRejected(self._name, self._redact(str(exc))) from None
        name = quote(model.removeprefix("models/"), safe="-._~")  # Google lists "models/…"
        path = f"/v1beta/models/{name}:streamGenerateContent?alt=sse"
        head = request_head(self._endpoint, path, self._headers)
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body

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
        self, response: UpstreamResponse, parser: GeminiStreamParser
    ) -> list[StreamEvent]:
        """The status, then the first message that means something (a bare signature does not)."""
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

    def _failure(self, status: int, body: bytes, retry_after: str | None) -> UpstreamError:
        """The error for a non-2xx answer, with Google's own signals read from its error body."""
        error = _google_error(body)
        if status == 400 and _has_reason(error, "API_KEY_INVALID"):
            return UpstreamAuthFailed(self._name, "HTTP 400: the upstream API key is not valid")
        if status == 429 and retry_after is None:
            retry_after = _retry_delay(error)
        return error_for_status(self._name, status, body, retry_after, self._redact)

    async def _rest(
        self, response: UpstreamResponse, parser: GeminiStreamParser, idle_s: float
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


def _google_error(body: bytes) -> dict[str, object]:
    """The `error` object of a Google error body (`{"error": {code, message, status, details}}`)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    if isinstance(parsed, list) and parsed:
        parsed = parsed[0]  # streamGenerateContent without alt=sse wraps it in a list
    error = parsed.get("error") if isinstance(parsed, dict) else None
    return error if isinstance(error, dict) else {}


def _details(error: dict[str, object]) -> list[dict[str, object]]:
    details = error.get("details")
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _has_reason(error: dict[str, object], reason: str) -> bool:
    """Whether a `google.rpc.ErrorInfo` in the details carries `reason`."""
    return any(d.get("reason") == reason for d in _details(error))


def _retry_delay(error: dict[str, object]) -> str | None:
    """Seconds from a `google.rpc.RetryInfo` detail (`"retryDelay": "37s"`), as header text."""
    for detail in _details(error):
        delay = detail.get("retryDelay")
        if isinstance(delay, str) and (match := _RETRY_DELAY.fullmatch(delay.strip())):
            return match.group(1)
    return None


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
