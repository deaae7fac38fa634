"""The asyncio client, over aiohttp.

    async with AsyncEstuary("http://127.0.0.1:8080", api_key="sk-est-…") as client:
        async with client.chat.stream(message="你好") as stream:
            async for event in stream:
                if isinstance(event, Content):
                    print(event.content, end="")

A dropped connection is resumed from the last event id (`GET /api/chat/stream/{id}` with
`Last-Event-ID`), with exponential backoff and full jitter, a bounded number of times; events are
never delivered twice. Leaving the `async with` early cancels the stream on the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import aiohttp

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

__all__ = ["AsyncChat", "AsyncChatStream", "AsyncEstuary"]

TokenSource = Callable[[], Awaitable[str]]


class AsyncEstuary:
    """A client for one Estuary server. Give `api_key`, or `token` (called before each request,
    e.g. to fetch a fresh end-user JWT)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        token: TokenSource | None = None,
        resume_attempts: int = 5,
        backoff_base_s: float = 0.25,
        backoff_cap_s: float = 5.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if (api_key is None) == (token is None):
            raise ValueError("give exactly one of api_key or token")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._token = token
        self.resume_attempts = resume_attempts
        self.backoff = (backoff_base_s, backoff_cap_s)
        self._own_session = session is None
        self._session = session
        self.rng = random.Random()  # noqa: S311 - jitter, not secrets
        self.chat = AsyncChat(self)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_connect=10))
        return self._session

    async def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        token = self._api_key if self._token is None else await self._token()
        return {"Authorization": f"Bearer {token}", **(extra or {})}


class AsyncChat:
    """`client.chat`: streams, collected text, cancel."""

    def __init__(self, client: AsyncEstuary) -> None:
        self._client = client

    def stream(
        self,
        messages: Sequence[Mapping[str, Any]] | None = None,
        *,
        message: str | None = None,
        **options: Any,
    ) -> AsyncChatStream:
        """A stream for one chat; see `estuary.client.chat_body` for the options."""
        return AsyncChatStream(self._client, chat_body(messages, message, options))

    async def text(
        self,
        messages: Sequence[Mapping[str, Any]] | None = None,
        *,
        message: str | None = None,
        **options: Any,
    ) -> str:
        """The whole answer's text."""
        async with self.stream(messages, message=message, **options) as stream:
            return await stream.text()

    async def cancel(self, request_id: str) -> bool:
        """Stop a running stream; False if it had already finished."""
        client = self._client
        async with client.session.post(
            f"{client.base_url}/api/chat/{request_id}/cancel", headers=await client.headers()
        ) as response:
            if response.status == 409:
                return False
            if response.status != 200:
                raise EstuaryError.from_response(
                    response.status, await response.read(), response.headers.get("Retry-After")
                )
            return True


class AsyncChatStream:
    """One streamed chat: iterate it for events; `request_id` is known after `start`."""

    def __init__(self, client: AsyncEstuary, body: dict[str, Any]) -> None:
        self._client = client
        self._body = body
        self._state = StreamState()
        self._response: aiohttp.ClientResponse | None = None

    @property
    def request_id(self) -> str | None:
        return self._state.request_id

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection; a stream left before its end is cancelled on the server."""
        if self._response is not None:
            self._response.close()
            self._response = None
        if not self._state.finished and self._state.request_id is not None:
            self._state.finished = True
            # It may have ended meanwhile; the disconnect stops it anyway.
            with contextlib.suppress(EstuaryError, aiohttp.ClientError):
                await self._client.chat.cancel(self._state.request_id)

    async def text(self) -> str:
        """Read to the end and return the content text; an in-band error raises."""
        parts = [event.content async for event in self if isinstance(event, Content)]
        return "".join(parts)

    async def __aiter__(self) -> AsyncIterator[Event]:
        attempt = 0
        while True:
            try:
                async for event in self._connection(resume=attempt > 0):
                    attempt = 0
                    yield event
                if self._state.finished:
                    return
                reason = "the connection ended before the stream did"
            except (
                aiohttp.ClientPayloadError,
                aiohttp.ClientConnectionError,
                ResumeRefused,
            ) as exc:
                reason = f"connection lost ({type(exc).__name__})"
            if self._state.request_id is None or attempt >= self._client.resume_attempts:
                raise StreamInterrupted(reason)
            base, cap = self._client.backoff
            await asyncio.sleep(backoff_s(attempt, base_s=base, cap_s=cap, rng=self._client.rng))
            attempt += 1

    async def _connection(self, *, resume: bool) -> AsyncIterator[Event]:
        client, state = self._client, self._state
        if resume:
            extra = {"Last-Event-ID": state.last_id} if state.last_id else {}
            request = client.session.get(
                f"{client.base_url}/api/chat/stream/{state.request_id}",
                headers=await client.headers(extra),
            )
        else:
            request = client.session.post(
                f"{client.base_url}/api/chat/stream",
                json=self._body,
                headers=await client.headers(),
            )
        response = self._response = await request
        try:
            if response.status != 200:
                error = EstuaryError.from_response(
                    response.status, await response.read(), response.headers.get("Retry-After")
                )
                raise resume_failure(error) if resume else error
            state.request_id = state.request_id or response.headers.get("X-Request-Id")
            decoder = SSEDecoder()
            async for chunk in response.content.iter_any():
                for message in decoder.feed(chunk):
                    event = state.take(message)
                    if event is not None:
                        yield event
                    if state.finished:
                        return
        finally:
            response.close()
            self._response = None
