"""`GET /api/chat/stream/{id}`: a dropped app-API stream, from the event after `Last-Event-ID`.

The frames come from the stream's resume log (`state`), byte for byte as the first connection got
them (same ids), then live as the stream goes on — on whichever instance runs it. While the
stream is silent the connection gets the usual `: ping` comments. If the log turns out abandoned
(its instance died, or shut down and handed the stream over), this instance tries to take the
stream over (`http/takeover.py`) and the same response goes on with it; if it cannot, or the log
ends without a `done` or `error` for any other reason, the client gets an in-band
`stream_interrupted` error, never a silent end. A client that leaves stops only its own
reading: the stream itself stays subject to the grace period of the connection it started on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from estuary.core.errors import EstuaryError, InvalidRequest, StreamInterrupted
from estuary.http.encoders import SSE_MEDIA_TYPE, app_error_body, is_terminal
from estuary.http.stopper import Stopper
from estuary.http.streaming import SERVER_SEND, streaming_headers
from estuary.sse import encode_comment
from estuary.state.base import LogAbandoned

__all__ = ["ResumeResponse", "last_event_seq"]

_PING: Final = encode_comment("ping")


def last_event_seq(request: Request, request_id: str) -> int:
    """The seq in `Last-Event-ID` (or `?lastEventId=`, as polyfills send it); 0 if none."""
    value = request.headers.get("last-event-id") or request.query_params.get("lastEventId")
    if not value:
        return 0
    stream, _, seq = value.strip().rpartition(":")
    if stream != request_id:
        raise InvalidRequest(f"Last-Event-ID '{value}' is not an event of stream '{request_id}'")
    if not seq.isdigit():
        raise InvalidRequest(f"Last-Event-ID '{value}' does not end in an event number")
    return int(seq)


class ResumeResponse:
    """Relays a resume log's frames to one client (see the module docstring)."""

    def __init__(
        self,
        request_id: str,
        frames: AsyncIterator[bytes],
        *,
        heartbeat_s: float,
        takeover: Callable[[int], Awaitable[ASGIApp | None]] | None = None,
        after: int = 0,
    ) -> None:
        """`takeover(seq)`: what goes on with the stream when its log turns out abandoned, the
        client having events up to `seq` (`after`, or the last one relayed here)."""
        self._request_id = request_id
        self._frames = frames
        self._heartbeat_s = heartbeat_s
        self._takeover = takeover
        self._seen = after
        self._abandoned = False
        self._ended = False  # the last frame relayed was `done` or `error`
        self._error: EstuaryError | None = None
        self._lock = asyncio.Lock()
        self._last_write = 0.0
        self._send: Send | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._send = scope.get(SERVER_SEND, send)
        loop = asyncio.get_running_loop()
        headers = streaming_headers(SSE_MEDIA_TYPE, self._request_id)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        self._last_write = loop.time()
        async with asyncio.TaskGroup() as tasks:
            stopper = Stopper()
            watcher = tasks.create_task(_until_disconnect(receive, stopper))
            self._timer = loop.call_later(self._heartbeat_s, self._on_tick, tasks)
            try:
                await stopper.run(self._relay())
            finally:
                self._timer.cancel()
                watcher.cancel()
                with contextlib.suppress(Exception):
                    await self._frames.aclose()  # type: ignore[attr-defined]
        if stopper.stopped:
            return  # the client left: nobody to tell
        if self._abandoned and self._takeover is not None:
            continuation = await self._takeover(self._seen)
            if continuation is not None:
                await continuation(scope, receive, send)
                return
        if not self._ended:
            error = self._error or StreamInterrupted(
                "the stream stopped before its end (its gateway instance went away); "
                "send the request again"
            )
            await self._write(b"data: %s\n\n" % orjson.dumps(app_error_body(error)))
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _relay(self) -> None:
        try:
            async for frame in self._frames:
                self._ended = is_terminal(frame)
                await self._write(frame)
                self._seen += 1
        except LogAbandoned:
            self._abandoned = True
        except EstuaryError as exc:
            self._error = exc

    async def _write(self, data: bytes) -> None:
        assert self._send is not None
        async with self._lock:
            await self._send({"type": "http.response.body", "body": data, "more_body": True})
            self._last_write = asyncio.get_running_loop().time()

    def _on_tick(self, tasks: asyncio.TaskGroup) -> None:
        """Write a `: ping` if nothing went out for `heartbeat_s`; look again later."""
        loop = asyncio.get_running_loop()
        idle = loop.time() - self._last_write
        if idle >= self._heartbeat_s:
            tasks.create_task(self._write(_PING))
            idle = 0.0
        self._timer = loop.call_later(self._heartbeat_s - idle, self._on_tick, tasks)


async def _until_disconnect(receive: Receive, stopper: Stopper) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    stopper.stop()
