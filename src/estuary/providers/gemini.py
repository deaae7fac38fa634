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

import re
from collections.abc import Mapping
from typing import Final
from urllib.parse import quote

import orjson

from estuary.core.errors import (
    UpstreamAuthFailed,
    UpstreamError,
)
from estuary.core.redaction import Redactor
from estuary.core.requests import UpstreamRequest
from estuary.providers.gemini_wire import GeminiStreamParser, generate_body
from estuary.providers.http_errors import error_for_status
from estuary.providers.streaming import StreamingProvider, StreamParser
from estuary.providers.upstream_http import (
    Endpoint,
    UpstreamPool,
    request_head,
)

__all__ = ["GeminiProvider"]

_RETRY_DELAY: Final = re.compile(r"(\d+(?:\.\d+)?)s")


class GeminiProvider(StreamingProvider):
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
        super().__init__(
            name,
            endpoint=Endpoint.parse(base_url),
            pool=pool,
            redact=(redact or Redactor()).extended([api_key] if api_key else []),
        )
        self._headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "User-Agent": "estuary",
            **(headers or {}),
        }
        if api_key:
            self._headers["x-goog-api-key"] = api_key

    def _parser(self, request: UpstreamRequest) -> StreamParser:
        return GeminiStreamParser(self._name, self._redact)

    def _wire(self, request: UpstreamRequest, model: str) -> bytes:
        """The whole HTTP request: head, its length, the JSON body."""
        body = generate_body(request)
        name = quote(model.removeprefix("models/"), safe="-._~")  # Google lists "models/…"
        path = f"/v1beta/models/{name}:streamGenerateContent?alt=sse"
        head = request_head(self._endpoint, path, self._headers)
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    def _failure(self, status: int, body: bytes, retry_after: str | None) -> UpstreamError:
        """The error for a non-2xx answer, with Google's own signals read from its error body."""
        error = _google_error(body)
        if status == 400 and _has_reason(error, "API_KEY_INVALID"):
            return UpstreamAuthFailed(self._name, "HTTP 400: the upstream API key is not valid")
        if status == 429 and retry_after is None:
            retry_after = _retry_delay(error)
        return error_for_status(self._name, status, body, retry_after, self._redact)


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
