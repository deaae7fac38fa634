"""The load generator: many concurrent streamed chat completions over raw asyncio sockets.

A bare `asyncio.Protocol` per stream (no HTTP client library) keeps the generator's own cost per
chunk to a few microseconds, so it is not the bottleneck it measures; its CPU time is reported
with every run. Times are `time.monotonic()`, the same clock the fake upstream records, so a
client's disconnect can be compared with the moment the upstream saw its connection close.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, cast

import orjson

__all__ = ["StreamResult", "Target", "run_closed_loop", "run_sequential"]

_CONTENT: Final = re.compile(rb'"content":\s?"[^"]')
_HEADER_END: Final = b"\r\n\r\n"


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """Where and how to send the benchmark's chat completions."""

    name: str
    host: str
    port: int
    path: str
    model: str
    headers: Mapping[str, str] = field(default_factory=dict)

    def request(self, user: str, *, max_tokens: int | None = None) -> bytes:
        """One complete HTTP/1.1 request; `user` tags it so the upstream's record can be matched."""
        payload: dict[str, object] = {
            "model": self.model,
            # The tag survives gateways that drop `user`; the fake upstream reads either.
            "messages": [{"role": "user", "content": f"Write a short poem about rivers. [{user}]"}],
            "stream": True,
            "user": user,
        }
        if max_tokens is not None:
            payload["max_tokens"] = max_tokens
        body = orjson.dumps(payload)
        lines = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Content-Type: application/json",
            "Accept: text/event-stream",
            "Connection: close",
            f"Content-Length: {len(body)}",
            *(f"{k}: {v}" for k, v in self.headers.items()),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass(slots=True)
class StreamResult:
    """What one stream looked like from the client."""

    user: str
    started_at: float = 0.0
    status: int = 0
    first_token_at: float | None = None
    last_token_at: float | None = None
    tokens: int = 0
    done: bool = False
    error_in_band: bool = False
    closed_by_client_at: float | None = None
    ended_at: float | None = None
    failure: str | None = None

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started_at

    @property
    def mean_gap_s(self) -> float | None:
        if self.first_token_at is None or self.last_token_at is None or self.tokens < 2:
            return None
        return (self.last_token_at - self.first_token_at) / (self.tokens - 1)

    def ok(self, expected_tokens: int, *, cancel: bool = False) -> bool:
        """Complete and clean: 200, every token, the end (`[DONE]`, or the app API's `done`)
        unless we hung up, no error object."""
        if self.status != 200 or self.failure is not None or self.error_in_band:
            return False
        if cancel:
            return self.tokens >= expected_tokens
        return self.done and self.tokens == expected_tokens


class _Stream(asyncio.Protocol):
    """One request → one response, parsed just enough to time tokens."""

    def __init__(
        self,
        request: bytes,
        result: StreamResult,
        finished: asyncio.Future[None],
        close_after: int | None,
    ) -> None:
        self._request = request
        self._result = result
        self._finished = finished
        self._close_after = close_after
        self._head = b""
        self._in_body = False
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        result = self._result
        if not self._in_body:
            self._head += data
            end = self._head.find(_HEADER_END)
            if end < 0:
                return
            status_line = self._head[: self._head.find(b"\r\n")]
            result.status = int(status_line.split(b" ", 2)[1])
            data = self._head[end + 4 :]
            self._in_body = True
            self._head = b""
        if not data:
            return
        tokens = len(_CONTENT.findall(data))
        if tokens:
            if result.first_token_at is None:
                result.first_token_at = now
            result.last_token_at = now
            result.tokens += tokens
        if b"[DONE]" in data or b'"type":"done"' in data:  # OpenAI's end, or the app API's
            result.done = True
        if b'"error"' in data:
            result.error_in_band = True
        if self._close_after is not None and result.tokens >= self._close_after:
            result.closed_by_client_at = now
            assert self._transport is not None
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._result.ended_at = time.monotonic()
        if not self._finished.done():
            self._finished.set_result(None)


async def _one(
    target: Target, user: str, close_after: int | None, max_tokens: int | None
) -> StreamResult:
    loop = asyncio.get_running_loop()
    result = StreamResult(user=user, started_at=time.monotonic())
    finished: asyncio.Future[None] = loop.create_future()
    request = target.request(user, max_tokens=max_tokens)
    try:
        await loop.create_connection(
            lambda: _Stream(request, result, finished, close_after), target.host, target.port
        )
        await finished
    except OSError as exc:
        result.failure = f"{type(exc).__name__}: {exc}"
        result.ended_at = time.monotonic()
    return result


async def run_closed_loop(
    target: Target,
    *,
    concurrency: int,
    total: int,
    tag: str,
    close_after: int | None = None,
    max_tokens: int | None = None,
    stagger_s: float = 0.0,
) -> list[StreamResult]:
    """`concurrency` clients each run streams back to back until `total` have run.

    With `stagger_s`, client i starts after i × stagger_s / concurrency seconds, so arrivals are
    spread the way users' are; without it every client starts at once (a burst).
    """
    results: list[StreamResult] = []
    counter = iter(range(total))
    clients = min(concurrency, total)

    async def client(delay: float) -> None:
        await asyncio.sleep(delay)
        for n in counter:
            results.append(await _one(target, f"{tag}-{n}", close_after, max_tokens))

    async with asyncio.TaskGroup() as tasks:
        for i in range(clients):
            tasks.create_task(client(i * stagger_s / clients))
    return results


async def run_sequential(target: Target, *, count: int, tag: str) -> list[StreamResult]:
    """One stream at a time: latency without contention."""
    return await run_closed_loop(target, concurrency=1, total=count, tag=tag)
