"""`SeenRequest`: what the fake upstream saw and did for one request, filled in as it goes.

Imports nothing from estuary.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

__all__ = ["SeenRequest", "mark_client_gone", "mark_finished", "request_headers", "summary"]

_T = TypeVar("_T")


class _Headers(dict[str, str]):
    """A plain dict of header values whose keys are lower-case; lookups ignore case."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__((name.lower(), value) for name, value in items)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    @overload
    def get(self, key: str, default: None = None, /) -> str | None: ...
    @overload
    def get(self, key: str, default: str, /) -> str: ...
    @overload
    def get(self, key: str, default: _T, /) -> str | _T: ...
    def get(self, key: str, default: object = None, /) -> object:
        return super().get(key.lower(), default)


def request_headers(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers as a dict with lower-case keys and case-insensitive lookups (last value wins)."""
    return _Headers(items)


@dataclass(slots=True)
class SeenRequest:
    """One request as the fake upstream saw it; mutated by the server while it answers.

    `headers` keys are lower-case, and lookups ignore case (`headers["Authorization"]` works).
    Times are `time.monotonic()`. `chunks_sent` counts reasoning, content and tool-call chunks
    written (not the role, finish, usage or `[DONE]` messages); `first_chunk_at` is when the
    first of those was written. `client_gone` is set when the client went away before the
    server finished (the handler was cancelled by the disconnect, or a write failed);
    `finished` is set when the handler ended for any reason.
    """

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    model: str | None
    stream: bool
    status: int = 0
    chunks_sent: int = 0
    received_at: float = 0.0
    first_chunk_at: float | None = None
    client_gone_at: float | None = None
    finished_at: float | None = None
    client_gone: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)


def mark_client_gone(seen: SeenRequest) -> None:
    """Record that the client left before the server was done (first time only)."""
    if seen.client_gone_at is None:
        seen.client_gone_at = time.monotonic()
    seen.client_gone.set()


def mark_finished(seen: SeenRequest) -> None:
    """Record that the handler for this request has ended."""
    seen.finished_at = time.monotonic()
    seen.finished.set()


def summary(seen: SeenRequest) -> dict[str, Any]:
    """A JSON-ready digest of one record.

    `user` is the body's `user` field or, for gateways that drop it, a `[tag]` ending the last
    message — how a benchmark matches its requests with what the upstream saw.
    """
    body = seen.body if isinstance(seen.body, dict) else {}
    return {
        "user": body.get("user") or _tag(body),
        "model": seen.model,
        "status": seen.status,
        "chunks_sent": seen.chunks_sent,
        "received_at": seen.received_at,
        "first_chunk_at": seen.first_chunk_at,
        "client_gone_at": seen.client_gone_at,
        "finished_at": seen.finished_at,
    }


def _tag(body: dict[str, Any]) -> str | None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return None
    content = messages[-1].get("content")
    if isinstance(content, str) and content.endswith("]") and "[" in content:
        return content[content.rindex("[") + 1 : -1]
    return None
