"""The streaming response: one admitted session relayed to one client, whatever the format.

Per stream (diagram in docs/architecture.md):

- the **pump** (the request's own task) pulls events from the session — upstream, fallback and
  accounting — encodes each and writes it at once;
- the **disconnect watcher** (the one extra task) waits for `http.disconnect` and stops the pump
  — or, for a resumable app-API stream (`Resumable`), *detaches* it: the pump goes on writing
  only into the resume log, and a grace timer stops it once no resume reads the log;
- the session's **cancel signal** (a future) stops the pump from its done-callback;
- the process's **drain** (`Drain`, on SIGTERM) stops the pump at its deadline: the stream ends
  with a `shutting_down` error, or, with a shared log, without a terminal event, handed over to
  whichever instance the client resumes on;
- a **timer** commits the response headers if nothing arrived within the header hold, then starts
  a heartbeat write whenever the stream has been silent for `heartbeat_s`.

Timers and callbacks instead of tasks keep the per-stream cost low: one task besides the
request's own. "Stops the pump" means `Stopper`: the request's task is interrupted where it
waits, and carries on to write the terminal event.

Response headers are held until the first upstream event, so a failure before it — after every
fallback — is a real HTTP error. Stopping the pump closes the event generators under `aclosing`,
which closes the upstream connection. After the pump, exactly one terminal message is written
(none to a client that left), the body is ended, and the ledger row is settled, shielded from
cancellation so that no row is left open.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing
from dataclasses import dataclass
from typing import Final, Literal

import orjson
from starlette.types import Receive, Scope, Send

from estuary.core.errors import EstuaryError, kept
from estuary.core.events import StreamEnd, StreamStart
from estuary.core.policy import Principal
from estuary.gateway.session import Outcome, StreamSession
from estuary.http.drain import Drain, ShuttingDown
from estuary.http.encoders import Encoder, error_body
from estuary.http.stopper import Stopper
from estuary.state.base import EventLog

__all__ = [
    "SERVER_SEND",
    "Resumable",
    "StreamResponse",
    "StreamSettings",
    "error_messages",
    "streaming_headers",
]

SERVER_SEND: Final = "estuary.server_send"  # scope key: the ASGI server's own `send`

_log: Final = logging.getLogger("estuary.stream")
SHUTDOWN: Final = ShuttingDown("this gateway instance is shutting down; send the request again")


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamSettings:
    """Timing of a streamed response, from `[server]`."""

    heartbeat_s: float = 15.0
    header_hold_s: float = 10.0
    resume_grace_s: float = 30.0  # app API: a dropped client's stream goes on this long
    resume_ttl_s: float = 120.0  # app API: a stream's events stay readable this long after it

    def grace_for(self, principal: Principal) -> float:
        """The resume grace period of `principal`'s streams: its key's own, or the server's."""
        grace = principal.policy.resume_grace_s
        return self.resume_grace_s if grace is None else grace


@dataclass(frozen=True, slots=True)
class Resumable:
    """An app-API stream a dropped client may resume: its log, and how long to wait for that.

    `handover`: the log is shared (Redis), so on shutdown the stream is cut without a terminal
    event and left for another instance to take over when the client resumes there.
    """

    log: EventLog
    grace_s: float
    handover: bool = False


def streaming_headers(media_type: str, request_id: str) -> list[tuple[bytes, bytes]]:
    """Headers every streamed response carries: no caching, no proxy buffering, no compression."""
    return [
        (b"content-type", media_type.encode()),
        (b"cache-control", b"no-cache, no-transform"),
        (b"x-accel-buffering", b"no"),
        (b"x-request-id", request_id.encode()),
    ]


def error_messages(
    error: EstuaryError, request_id: str | None = None
) -> tuple[dict[str, object], dict[str, object]]:
    """The two ASGI messages of a JSON error response in OpenAI's shape."""
    body = orjson.dumps(error_body(error))
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if request_id is not None:
        headers.append((b"x-request-id", request_id.encode()))
    if (retry_after := error.retry_after_s) is not None:
        headers.append((b"retry-after", b"%d" % max(1, round(retry_after))))
    start = {"type": "http.response.start", "status": error.status_code, "headers": headers}
    return start, {"type": "http.response.body", "body": body, "more_body": False}


class StreamResponse:
    """An ASGI response relaying `session` through `encoder` (see the module docstring)."""

    def __init__(
        self,
        session: StreamSession,
        encoder: Encoder,
        settings: StreamSettings,
        resumable: Resumable | None = None,
        drain: Drain | None = None,
        *,
        headers_sent: bool = False,
    ) -> None:
        """`headers_sent`: the response started already (a stream taken over on a resume)."""
        self._session = session
        self._encoder = encoder
        self._settings = settings
        self._resumable = resumable
        self._drain = drain
        self._detached = False  # the client left, the stream goes on into the log (grace)
        self._handed_over = False  # shut down mid-stream, left open for a takeover
        self._grace: asyncio.TimerHandle | None = None
        self._lock = asyncio.Lock()
        self._loop = asyncio.get_running_loop()
        self._send: Send | None = None
        self._body_send: Send | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stopper: Stopper | None = None
        self._committed = headers_sent
        self._held = b""  # the start event, waiting to go out with the first token
        self._last_write = 0.0
        self._stopped_by: Literal["client", "cancel", "shutdown"] | None = None
        self._failure: EstuaryError | None = None
        self._finish_reason = "stop"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._send = send
        # Body chunks may skip the framework's send wrappers: they only look at the response start.
        self._body_send = scope.get(SERVER_SEND, send)
        self._last_write = self._loop.time()
        canceled = self._session.canceled
        drained = None
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks, self._stopper = tasks, Stopper()
                watcher = tasks.create_task(self._watch_disconnect(receive))
                canceled.add_done_callback(self._on_cancel)
                self._timer = self._loop.call_later(self._settings.header_hold_s, self._on_hold)
                if self._drain is not None:
                    drained = self._drain.register(self._on_shutdown)
                try:
                    await self._stopper.run(self._pump())
                finally:
                    if drained is not None and self._drain is not None:
                        self._drain.unregister(drained)
                    self._timer.cancel()
                    if self._grace is not None:
                        self._grace.cancel()
                    canceled.remove_done_callback(self._on_cancel)
                    watcher.cancel()
            await self._end()
        finally:
            if self._resumable is not None and not self._handed_over:
                self._resumable.log.close()
            await asyncio.shield(self._session.settle(self._outcome()))

    async def _pump(self) -> None:
        encode = self._encoder.event
        try:
            async with aclosing(self._session.events()) as events:
                async for event in events:
                    if type(event) is StreamEnd:
                        self._finish_reason = event.reason
                    elif type(event) is StreamStart:
                        # The first token follows at once: send both in one write, not two.
                        self._held = encode(event)
                    elif data := encode(event):
                        await self._write(data)
        except EstuaryError as exc:
            self._failure = kept(exc)
        except Exception:
            _log.exception("stream %s failed", self._session.request_id)
            self._failure = EstuaryError("internal error while streaming")

    async def _write(self, data: bytes) -> None:
        if self._detached:
            return  # the frames are in the resume log already; nobody is on this connection
        if self._held:
            data, self._held = self._held + data, b""
        async with self._lock:
            if not self._committed:
                await self._commit()
            if data:
                assert self._body_send is not None
                await self._body_send(
                    {"type": "http.response.body", "body": data, "more_body": True}
                )
            self._last_write = self._loop.time()

    async def _commit(self) -> None:
        assert self._send is not None
        self._committed = True
        headers = streaming_headers(self._encoder.media_type, self._session.request_id)
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})

    async def _end(self) -> None:
        """Write the one terminal message (unless the client left) and end the body."""
        send = self._send
        assert send is not None
        resumable = self._resumable
        if (
            self._stopped_by == "shutdown"
            and resumable is not None
            and resumable.handover
            and self._committed
        ):
            # No terminal event: the client resumes (on another instance, or this one after
            # its restart), which takes the stream over from its log.
            self._handed_over = True
            if not self._detached:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if self._detached or self._stopped_by == "client":
            if self._resumable is not None:  # for a resume that comes after all
                self._terminal()
            return
        if self._failure is not None and not self._committed:
            start, body = error_messages(self._failure, self._session.request_id)
            await send(start)
            await send(body)
            return
        await self._write(self._terminal())
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _terminal(self) -> bytes:
        """The stream's one `done` or `error` message."""
        if self._failure is not None:
            return self._encoder.error(self._failure)
        if self._stopped_by == "shutdown":
            return self._encoder.error(SHUTDOWN)
        reason = "canceled" if self._stopped_by is not None else self._finish_reason
        tokens = self._session.token_count(complete=self._stopped_by is None)
        return self._encoder.done(reason, tokens)

    def _outcome(self) -> Outcome:
        if self._stopped_by == "client":
            return Outcome(status="canceled", finish_reason="client_disconnected")
        if self._stopped_by == "cancel":
            return Outcome(status="canceled", finish_reason="canceled")
        if self._stopped_by == "shutdown":
            return Outcome(status="canceled", finish_reason="shutdown")
        if self._failure is not None:
            return Outcome(status="error", finish_reason="error", error=self._failure)
        return Outcome(status="completed", finish_reason=self._finish_reason)

    def _stop(self, by: Literal["client", "cancel", "shutdown"]) -> None:
        assert self._stopper is not None
        if self._failure is None and self._stopper.stop():
            self._stopped_by = by

    def _on_cancel(self, _: object) -> None:
        self._stop("cancel")

    def _on_shutdown(self) -> None:
        self._stop("shutdown")

    async def _watch_disconnect(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        resumable = self._resumable
        if resumable is None or resumable.grace_s <= 0 or self._failure is not None:
            self._stop("client")
            return
        # The connection dropped; the user did not press stop. Keep generating into the log
        # for the grace period, for as long as someone is reading it (see `_on_grace`).
        self._detached = True
        self._grace = self._loop.call_later(resumable.grace_s, self._on_grace)

    def _on_grace(self) -> None:
        assert self._tasks is not None
        self._tasks.create_task(self._grace_over())

    async def _grace_over(self) -> None:
        """No resume reading the log at the end of a grace period: stop; else wait another."""
        assert self._resumable is not None
        try:
            followed = await self._resumable.log.followed()
        except Exception:  # the shared state is unreachable: nobody can be resuming
            followed = False
        if followed:
            self._grace = self._loop.call_later(self._resumable.grace_s, self._on_grace)
        else:
            self._stop("client")

    def _spawn_write(self, data: bytes) -> None:
        assert self._tasks is not None
        self._tasks.create_task(self._write(data))

    def _on_hold(self) -> None:
        """The hold is over: commit the headers now, then keep a silent stream alive."""
        heartbeat = self._encoder.heartbeat
        if not self._committed:
            self._spawn_write(heartbeat or b"")
        if heartbeat is not None:
            self._timer = self._loop.call_later(self._settings.heartbeat_s, self._on_tick)

    def _on_tick(self) -> None:
        interval = self._settings.heartbeat_s
        idle = self._loop.time() - self._last_write
        if idle >= interval:
            assert self._encoder.heartbeat is not None
            self._spawn_write(self._encoder.heartbeat)
            idle = 0.0
        self._timer = self._loop.call_later(interval - idle, self._on_tick)
