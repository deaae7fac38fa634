"""Mapping an upstream's HTTP failure to Estuary's error tree, for every wire format.

The upstream's own message is kept (it often says what is wrong, e.g. a context that is too long),
but only after redaction, and cut short: some upstreams echo request headers back in error bodies.
Must not import the HTTP layer, routing or storage.
"""

from __future__ import annotations

import orjson

from estuary.core.errors import (
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)
from estuary.core.redaction import Redactor

__all__ = ["connection_failure", "error_for_status", "parse_retry_after"]

_MAX_DETAIL = 300


def error_for_status(
    provider: str, status: int, body: bytes, retry_after: str | None, redact: Redactor
) -> UpstreamError:
    """The error for an upstream answer with a non-2xx `status` and this `body`."""
    detail = f"HTTP {status}: {redact(_message(body))[:_MAX_DETAIL]}"
    if status in (401, 403):
        return UpstreamAuthFailed(provider, detail)
    if status == 429:
        return UpstreamRateLimited(provider, detail, retry_after_s=parse_retry_after(retry_after))
    if status in (408, 504):
        return UpstreamTimeout(provider, detail)
    if status in (400, 413, 422):
        return UpstreamRejected(provider, detail)
    return UpstreamError(provider, detail)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header in its delta-seconds form; None otherwise."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _message(body: bytes) -> str:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace").strip() or "no body"
    if isinstance(parsed, list) and parsed:
        parsed = parsed[0]  # Gemini sometimes wraps its error in a list
    if isinstance(parsed, dict):
        error = parsed.get("error", parsed)
        if isinstance(error, dict):
            return str(error.get("message") or error.get("msg") or error.get("code") or error)
        return str(error)
    return str(parsed)


def connection_failure(exc: BaseException) -> str:
    """A plain description of a transport failure (never the exception's text: it may hold URLs)."""
    if isinstance(exc, ConnectionRefusedError):
        return "could not connect to the upstream (connection refused)"
    if isinstance(exc, ConnectionError):
        return "the upstream closed the connection before the answer was complete"
    return f"could not reach the upstream ({type(exc).__name__})"
