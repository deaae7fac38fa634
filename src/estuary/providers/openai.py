"""The OpenAI-compatible provider: one adapter for OpenAI, Kimi, Qwen, DeepSeek, GLM, Ollama, vLLM….

The thin async part of the adapter: it sends the body built by `openai_wire` over the lean client
in `upstream_http`, maps a failed answer to an `UpstreamError`, feeds the body to
`OpenAIStreamParser` and enforces the timeouts. Leaving early (the consumer closed the iterator)
resets the upstream connection, which is how a cancel reaches the upstream at once.
Must not import the HTTP layer, routing or storage.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Mapping
from typing import Final, Literal

from estuary.core.errors import UpstreamError, UpstreamTimeout
from estuary.core.events import StreamEvent, StreamStart
from estuary.core.redaction import Redactor
from estuary.core.requests import ChatRequest, UpstreamRequest
from estuary.providers.base import Timeouts, with_assistant_prefix
from estuary.providers.http_errors import connection_failure, error_for_status
from estuary.providers.openai_wire import OpenAIStreamParser, chat_body, completion_body
from estuary.providers.upstream_http import (
    Endpoint,
    UpstreamClosed,
    UpstreamPool,
    UpstreamResponse,
    request_head,
)
from estuary.providers.watchdog import IdleWatchdog

__all__ = ["OpenAIProvider"]

_MAX_ERROR_BODY: Final = 16 * 1024
_DRAIN_S: Final = 0.5


def _prefix_flag(flavor: str | None, endpoint: Endpoint) -> str | None:
    """The message flag with which this upstream continues a trailing assistant message, if any.

    - Kimi "Partial Mode": the last message `{"role": "assistant", "content": …, "partial": true}`
      is continued, and the answer leaves that text out
      (https://platform.moonshot.cn/docs/api/partial).
    - DeepSeek "Chat Prefix Completion (Beta)": the same with `"prefix": true`, but only on the
      beta endpoint, `base_url = "https://api.deepseek.com/beta"`
      (https://api-docs.deepseek.com/guides/chat_prefix_completion); the preset's `/v1` is not.
    """
    if flavor == "moonshot":
        return "partial"
    if flavor == "deepseek" and endpoint.prefix.endswith("/beta"):
        return "prefix"
    return None


class OpenAIProvider:
    """Streams from an OpenAI-compatible `/chat/completions` and `/completions`."""

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        api_key: str | None,
        pool: UpstreamPool,
        headers: Mapping[str, str] | None = None,
        redact: Redactor | None = None,
        flavor: str | None = None,
    ) -> None:
        """`flavor` is the preset this upstream speaks (`"zhipu"`, `"spark"`, …), for its quirks."""
        self._name = name
        self._flavor = flavor
        self._endpoint = Endpoint.parse(base_url)
        self._pool = pool
        fixed = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "User-Agent": "estuary",
            **(headers or {}),
        }
        if api_key:
            fixed["Authorization"] = f"Bearer {api_key}"
        self._heads = {
            path: request_head(self._endpoint, path, fixed)
            for path in ("/chat/completions", "/completions")
        }
        self._redact = (redact or Redactor()).extended([api_key] if api_key else [])
        self._prefix_flag = _prefix_flag(flavor, self._endpoint)

    @property
    def name(self) -> str:
        return self._name

    @property
    def continues_prefix(self) -> bool:
        """Whether this upstream can continue a partial answer (`base.ContinuesPrefix`)."""
        return self._prefix_flag is not None

    def continuation(self, request: ChatRequest, partial: str) -> ChatRequest:
        """`request` with `partial` as the assistant's answer so far, flagged for this upstream."""
        return with_assistant_prefix(request, partial, self._prefix_flag)

    async def aclose(self) -> None:
        """Nothing to release: the pool belongs to whoever built the providers."""

    async def stream(
        self, request: UpstreamRequest, model: str, timeouts: Timeouts
    ) -> AsyncGenerator[StreamEvent, None]:
        kind: Literal["chat", "completion"] = (
            "chat" if isinstance(request, ChatRequest) else "completion"
        )
        parser = OpenAIStreamParser(self._name, kind=kind, redact=self._redact, flavor=self._flavor)
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
        if isinstance(request, ChatRequest):
            head, body = self._heads["/chat/completions"], chat_body(request, model)
        else:
            head, body = self._heads["/completions"], completion_body(request, model)
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
        self, response: UpstreamResponse, parser: OpenAIStreamParser
    ) -> list[StreamEvent]:
        """The status, then the first message that means something (a role-only chunk does not)."""
        if response.status >= 300:  # not a 2xx answer
            body = await _read_some(response, _MAX_ERROR_BODY)
            retry_after = response.headers.get("retry-after")
            response.abort()
            raise error_for_status(
                self._name, response.status, body, retry_after, self._redact, flavor=self._flavor
            )
        while True:
            chunk = await response.read()
            if not chunk:
                return parser.finish()
            if events := parser.feed(chunk):
                return events

    async def _rest(
        self, response: UpstreamResponse, parser: OpenAIStreamParser, idle_s: float
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
