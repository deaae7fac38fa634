"""The blocking client, over the standard library's `http.client` (no extra dependency).

    with Estuary("http://127.0.0.1:8080", api_key="sk-est-…") as client:
        for event in client.chat.stream(message="你好"):
            ...

The same events, resume and cancel rules as `AsyncEstuary`.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Self
from urllib.parse import urlsplit

import orjson

from estuary.client._events import (
    Content,
    EstuaryError,
    Event,
    ResumeRefused,
    StreamInterrupted,
    StreamState,
    backoff_s,
    resume_failure,
)
from estuary.client._request import chat_body
from estuary.sse import SSEDecoder

__all__ = ["Chat", "ChatStream", "Estuary"]

_READ: int = 64 * 1024


class Estuary:
    """A blocking client for one Estuary server. Give `api_key` or `token` (called per request)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        token: Callable[[], str] | None = None,
        resume_attempts: int = 5,
        backoff_base_s: float = 0.25,
        backoff_cap_s: float = 5.0,
        timeout_s: float = 120.0,
    ) -> None:
        if (api_key is None) == (token is None):
            raise ValueError("give exactly one of api_key or token")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("base_url must be an http:// or https:// URL")
        self._parts = parts
        self._prefix = parts.path.rstrip("/")
        self._api_key = api_key
        self._token = token
        self.resume_attempts = resume_attempts
        self.backoff = (backoff_base_s, backoff_cap_s)
        self.timeout_s = timeout_s
        self.rng = random.Random()  # noqa: S311 - jitter, not secrets
        self.chat = Chat(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        """Nothing pooled: each stream has its own connection."""

    def request(
        self, method: str, path: str, body: object = None, headers: Mapping[str, str] | None = None
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send one request on a new connection; the caller closes the connection."""
        parts = self._parts
        factory = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        connection = factory(parts.hostname or "", parts.port, timeout=self.timeout_s)
        token = self._api_key if self._token is None else self._token()
        all_headers = {"Authorization": f"Bearer {token}", **(headers or {})}
        data = None
        if body is not None:
            data = orjson.dumps(body)
            all_headers["Content-Type"] = "application/json"
        try:
            connection.request(method, self._prefix + path, body=data, headers=all_headers)
            return connection, connection.getresponse()
        except BaseException:
            connection.close()
            raise


class Chat:
    """`client.chat`: streams, collected text, cancel."""

    def __init__(self, client: Estuary) -> None:
        self._client = client

    def stream(
        self,
        messages: Sequence[Mapping[str, Any]] | None = None,
        *,
        message: str | None = None,
        **options: Any,
    ) -> ChatStream:
        return ChatStream(self._client, chat_body(messages, message, options))

    def text(
        self,
        messages: Sequence[Mapping[str, Any]] | None = None,
        *,
        message: str | None = None,
        **options: Any,
    ) -> str:
        with self.stream(messages, message=message, **options) as stream:
            return stream.text()

    def cancel(self, request_id: str) -> bool:
        """Stop a running stream; False if it had already finished."""
        connection, response = self._client.request("POST", f"/api/chat/{request_id}/cancel")
        try:
            body = response.read()
            if response.status == 409:
                return False
            if response.status != 200:
                raise EstuaryError.from_response(
                    response.status, body, response.getheader("Retry-After")
                )
            return True
        finally:
            connection.close()


class ChatStream:
    """One streamed chat: iterate it for events; `request_id` is known after `start`."""

    def __init__(self, client: Estuary, body: dict[str, Any]) -> None:
        self._client = client
        self._body = body
        self._state = StreamState()
        self._connection: http.client.HTTPConnection | None = None

    @property
    def request_id(self) -> str | None:
        return self._state.request_id

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; a stream left before its end is cancelled on the server."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if not self._state.finished and self._state.request_id is not None:
            self._state.finished = True
            # It may have ended meanwhile; the disconnect stops it anyway.
            with contextlib.suppress(EstuaryError, OSError, http.client.HTTPException):
                self._client.chat.cancel(self._state.request_id)

    def text(self) -> str:
        return "".join(event.content for event in self if isinstance(event, Content))

    def __iter__(self) -> Iterator[Event]:
        attempt = 0
        while True:
            try:
                for event in self._events(resume=attempt > 0):
                    attempt = 0
                    yield event
                if self._state.finished:
                    return
                reason = "the connection ended before the stream did"
            except (OSError, http.client.HTTPException, ResumeRefused) as exc:
                reason = f"connection lost ({type(exc).__name__})"
            if self._state.request_id is None or attempt >= self._client.resume_attempts:
                raise StreamInterrupted(reason)
            base, cap = self._client.backoff
            time.sleep(backoff_s(attempt, base_s=base, cap_s=cap, rng=self._client.rng))
            attempt += 1

    def _events(self, *, resume: bool) -> Iterator[Event]:
        client, state = self._client, self._state
        if resume:
            extra = {"Last-Event-ID": state.last_id} if state.last_id else {}
            path = f"/api/chat/stream/{state.request_id}"
            connection, response = client.request("GET", path, headers=extra)
        else:
            connection, response = client.request("POST", "/api/chat/stream", self._body)
        self._connection = connection
        try:
            if response.status != 200:
                error = EstuaryError.from_response(
                    response.status, response.read(), response.getheader("Retry-After")
                )
                raise resume_failure(error) if resume else error
            state.request_id = state.request_id or response.getheader("X-Request-Id")
            decoder = SSEDecoder()
            while chunk := response.read1(_READ):
                for message in decoder.feed(chunk):
                    event = state.take(message)
                    if event is not None:
                        yield event
                    if state.finished:
                        return
        finally:
            connection.close()
            self._connection = None
