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

from collections.abc import Mapping
from typing import Final

from estuary.core.redaction import Redactor
from estuary.core.requests import UpstreamRequest
from estuary.providers.anthropic_wire import (
    AnthropicStreamParser,
    messages_body,
)
from estuary.providers.streaming import StreamingProvider, StreamParser
from estuary.providers.upstream_http import (
    Endpoint,
    UpstreamPool,
    request_head,
)

__all__ = ["ANTHROPIC_VERSION", "AnthropicProvider"]

ANTHROPIC_VERSION: Final = "2023-06-01"


class AnthropicProvider(StreamingProvider):
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
        endpoint = Endpoint.parse(base_url)
        super().__init__(
            name,
            endpoint=endpoint,
            pool=pool,
            redact=(redact or Redactor()).extended([api_key] if api_key else []),
        )
        fixed = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "User-Agent": "estuary",
            "anthropic-version": ANTHROPIC_VERSION,
            **(headers or {}),
        }
        if api_key:
            fixed["x-api-key"] = api_key
        path = "/messages" if endpoint.prefix.endswith("/v1") else "/v1/messages"
        self._head = request_head(endpoint, path, fixed)

    def _parser(self, request: UpstreamRequest) -> StreamParser:
        return AnthropicStreamParser(self._name, self._redact)

    def _wire(self, request: UpstreamRequest, model: str) -> bytes:
        """The whole HTTP request: the pre-encoded head, its length, the JSON body."""
        body = messages_body(request, model)
        return self._head + b"Content-Length: %d\r\n\r\n" % len(body) + body
