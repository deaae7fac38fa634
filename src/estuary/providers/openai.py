"""The OpenAI-compatible provider: one adapter for OpenAI, Kimi, Qwen, DeepSeek, GLM, Ollama, vLLM….

The thin async part of the adapter: it sends the body built by `openai_wire`, maps a failed answer
to an `UpstreamError`, feeds the body to `OpenAIStreamParser` and enforces the timeouts. Leaving the
`async with` early (the consumer closed the iterator) closes the upstream connection, which is how a
cancel reaches the upstream. Must not import the HTTP layer, routing or storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncGenerator, Mapping
from typing import Final, Literal

import aiohttp

from estuary.core.errors import UpstreamError, UpstreamTimeout
from estuary.core.events import StreamEvent, StreamStart
from estuary.core.redaction import Redactor
from estuary.core.requests import ChatRequest, UpstreamRequest
from estuary.providers.base import Timeouts
from estuary.providers.http_errors import connection_failure, error_for_status
from estuary.providers.openai_wire import OpenAIStreamParser, chat_body, completion_body
from estuary.providers.pool import HttpPool, IdleWatchdog

__all__ = ["OpenAIProvider"]

_MAX_ERROR_BODY: Final = 16 * 1024
_READ_SIZE: Final = 64 * 1024
_DRAIN_S: Final = 0.5
_SKIP_HEADERS: Final = frozenset({"User-Agent"})


@functools.cache
def _connect_timeout(connect_s: float) -> aiohttp.ClientTimeout:
    """Timeouts are immutable: one object per distinct value, not one per request."""
    return aiohttp.ClientTimeout(total=None, connect=connect_s, sock_connect=connect_s)


class OpenAIProvider:
    """Streams from an OpenAI-compatible `/chat/completions` and `/completions`."""

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        api_key: str | None,
        pool: HttpPool,
        headers: Mapping[str, str] | None = None,
        redact: Redactor | None = None,
    ) -> None:
        self._name = name
        self._base_url = base_url.rstrip("/")
        self._pool = pool
        self._headers = {
            "Content-Type": "application/json",
            "User-Agent": "estuary",
            **(headers or {}),
        }
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._redact = (redact or Redactor()).extended([api_key] if api_key else [])

    @property
    def name(self) -> str:
        return self._name

    async def aclose(self) -> None:
        """Nothing to release: the pool belongs to whoever built the providers."""

    async def stream(
        self, request: UpstreamRequest, model: str, timeouts: Timeouts
    ) -> AsyncGenerator[StreamEvent, None]:
        kind: Literal["chat", "completion"]
        if isinstance(request, ChatRequest):
            kind, path, body = "chat", "/chat/completions", chat_body(request, model)
        else:
            kind, path, body = "completion", "/completions", completion_body(request, model)
        parser = OpenAIStreamParser(self._name, kind=kind, redact=self._redact)
        response: aiohttp.ClientResponse | None = None
        phase = "no answer within the first-token timeout"
        try:
            async with asyncio.timeout(timeouts.first_token_s):
                response = await self._post(path, body, timeouts.connect_s)
                first = await self._first_events(response, parser)
            phase = f"no data for {timeouts.idle_s:g} s"
            yield StreamStart(provider=self._name, model=model)
            for event in first:
                yield event
            async for event in self._rest(response, parser, timeouts.idle_s):
                yield event
            await _drain(response)  # finished: the connection may go back to the pool
        except UpstreamError:
            raise
        except aiohttp.ServerTimeoutError:
            raise UpstreamTimeout(self._name, "connect timeout") from None
        except TimeoutError:
            raise UpstreamTimeout(self._name, phase) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(self._name, connection_failure(exc)) from None
        finally:
            if response is not None and not response.closed:
                _abort(response)  # left early (cancel, disconnect, error)

    async def _post(self, path: str, body: bytes, connect_s: float) -> aiohttp.ClientResponse:
        return await self._pool.session.post(
            self._base_url + path,
            data=body,
            headers=self._headers,
            timeout=_connect_timeout(connect_s),
            skip_auto_headers=_SKIP_HEADERS,
        )

    async def _first_events(
        self, response: aiohttp.ClientResponse, parser: OpenAIStreamParser
    ) -> list[StreamEvent]:
        """The status, then the first message that means something (a role-only chunk does not)."""
        if response.status >= 300:  # not a 2xx answer
            body = await response.content.read(_MAX_ERROR_BODY)
            retry_after = response.headers.get("Retry-After")
            raise error_for_status(self._name, response.status, body, retry_after, self._redact)
        while True:
            chunk = await response.content.read(_READ_SIZE)
            if not chunk:
                return parser.finish()
            if events := parser.feed(chunk):
                return events

    async def _rest(
        self, response: aiohttp.ClientResponse, parser: OpenAIStreamParser, idle_s: float
    ) -> AsyncGenerator[StreamEvent, None]:
        content = response.content
        watchdog = IdleWatchdog(content, idle_s)
        try:
            while True:
                parser.check()
                if parser.done:
                    return
                chunk = await content.read(_READ_SIZE)
                for event in parser.feed(chunk) if chunk else parser.finish():
                    yield event
        finally:
            watchdog.cancel()


def _abort(response: aiohttp.ClientResponse) -> None:
    """Reset the upstream connection rather than close it politely.

    A FIN only says "I will send no more"; many servers notice it only at their next write, one
    token later. A reset tells them at once that nobody is reading, so they stop generating.
    """
    connection = response.connection
    if connection is not None and connection.transport is not None:
        connection.transport.abort()
    response.close()


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read the body's last bytes (the chunked terminator) so the connection can be reused."""
    content = response.content
    with contextlib.suppress(TimeoutError, aiohttp.ClientError):
        async with asyncio.timeout(_DRAIN_S):
            while not content.at_eof() and await content.read(_READ_SIZE):
                pass
    response.release()
