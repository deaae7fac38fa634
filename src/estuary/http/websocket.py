"""The app API over one WebSocket, `/api/chat/ws`: many chats, one socket, cancel in band.

Per socket (the contract is in docs/api.md, "WebSocket"):

- the **reader** (the connection's own task) authenticates — `?ticket=` from `POST /api/tickets`,
  or an `Authorization: Bearer` header for clients that can send one — then reads client frames:
  a `chat` starts a **chat task**, a `cancel` goes to `Gateway.cancel()` (same key);
- each **chat task** admits its chat, relays the session's events as JSON text frames (the app
  API's SSE event objects, each tagged with `requestId`, `start` and refusals with the chat's
  `ref`), writes one terminal frame and settles the ledger row in a shielded `finally`;
- one **writer** drains the socket's bounded outgoing queue. A chat awaits a free slot, so a
  client that does not read stops its chats' upstreams through TCP instead of filling memory.

Every chat also writes its events, as the SSE frames of `POST /api/chat/stream`, to a resume log,
and each frame carries that event's `id`: a client whose socket dropped reads the rest with
`GET /api/chat/stream/{requestId}` and `Last-Event-ID`.

All of them live in one task group owned by the connection. When the client leaves (or a send
fails), the writer only discards frames, so no producer waits on a socket that is gone; the chats
go on into their logs for the grace period (`resume_grace_s`, as a dropped SSE connection), and
each one nobody is reading by then is cancelled — which closes its upstream under `aclosing` —
and settled as `canceled`/`client_disconnected`. With no grace period that happens at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson
from starlette.requests import Request
from starlette.websockets import WebSocket, WebSocketDisconnect

from estuary.auth.keys import Authenticator
from estuary.auth.tickets import TicketIssuer
from estuary.core.errors import EstuaryError, InvalidRequest, kept
from estuary.core.events import StreamEnd, StreamEvent, StreamStart
from estuary.core.policy import Principal
from estuary.core.requests import parse_app_chat
from estuary.core.usage import TokenCount
from estuary.gateway.session import Gateway, Outcome, StreamSession
from estuary.http.drain import Drain
from estuary.http.encoders import (
    AppSSEEncoder,
    app_done_body,
    app_error_body,
    app_event_body,
    app_start_body,
)
from estuary.http.inputs import authenticate, refuse_url_credentials
from estuary.http.stopper import Stopper
from estuary.http.streaming import SHUTDOWN, StreamSettings
from estuary.state.base import EventLog

__all__ = ["ChatSockets"]

_log: Final = logging.getLogger("estuary.websocket")
_POLICY_VIOLATION: Final = 1008  # a refused socket
_MESSAGE_TOO_BIG: Final = 1009


class ChatSockets:
    """The `/api/chat/ws` endpoint, bound to the gateway and its credentials."""

    def __init__(
        self,
        *,
        gateway: Gateway,
        authenticator: Authenticator,
        tickets: TicketIssuer,
        max_frame_bytes: int,
        stream: StreamSettings | None = None,
        drain: Drain | None = None,
        queue_frames: int = 256,
    ) -> None:
        self._gateway = gateway
        self._authenticator = authenticator
        self._tickets = tickets
        self._max_frame_bytes = max_frame_bytes
        self._stream = stream or StreamSettings()
        self._drain = drain or Drain(deadline_s=20.0)
        self._queue_frames = queue_frames

    async def serve(self, websocket: WebSocket) -> None:
        """Serve one socket until the client leaves (the WebSocketRoute endpoint)."""
        await websocket.accept()
        try:
            principal = await self._authenticate(websocket)
        except EstuaryError as exc:
            # No ref, no requestId: the client fails every chat waiting on this socket.
            refusal = {"type": "error", "error": _detail(exc)}
            try:
                await websocket.send_text(_dumps(refusal))
                await websocket.close(_POLICY_VIOLATION)
            except (WebSocketDisconnect, OSError, RuntimeError):
                pass  # the client left already
            return
        connection = _Connection(
            websocket,
            principal,
            self._gateway,
            max_frame_bytes=self._max_frame_bytes,
            queue_frames=self._queue_frames,
            stream=self._stream,
            drain=self._drain,
        )
        await connection.run()

    async def _authenticate(self, websocket: WebSocket) -> Principal:
        # The upgrade is an HTTP request: the same URL, headers and client as the socket's. The
        # reading helpers take a `Request` and only look at those, never at a body, so they get a
        # view of the upgrade's scope (a copy: the socket's own scope is left alone).
        request = Request({**websocket.scope, "type": "http"})
        ticket = websocket.query_params.get("ticket")
        if ticket is None:
            return await authenticate(request, self._authenticator)
        refuse_url_credentials(request)
        return await self._tickets.redeem(ticket)


@dataclass(slots=True)
class _ChatState:
    """How one chat is going, for its terminal frame and its ledger outcome."""

    stopped_by: Literal["client", "cancel", "shutdown"] | None = None
    failure: EstuaryError | None = None
    finish_reason: str = "stop"

    def outcome(self) -> Outcome:
        """The same rules as `StreamResponse`: who stopped it, else whether it failed."""
        if self.stopped_by == "client":
            return Outcome(status="canceled", finish_reason="client_disconnected")
        if self.stopped_by == "cancel":
            return Outcome(status="canceled", finish_reason="canceled")
        if self.stopped_by == "shutdown":
            return Outcome(status="canceled", finish_reason="shutdown")
        if self.failure is not None:
            return Outcome(status="error", finish_reason="error", error=self.failure)
        return Outcome(status="completed", finish_reason=self.finish_reason)


class _Frames:
    """One chat's events as JSON text frames (the app-API objects, tagged with `requestId` and
    the `id` the same event has in the resume log, which the SSE encoder `log` writes)."""

    def __init__(self, session: StreamSession, ref: str, log: AppSSEEncoder) -> None:
        self._request_id = session.request_id
        self._alias = session.route.alias
        self._ref = ref
        self._log = log
        self.started = False
        self.ended = False

    def event(self, event: StreamEvent) -> str | None:
        self._log.event(event)
        if type(event) is StreamStart:
            return self._start(event.provider)
        body = app_event_body(event)
        return None if body is None else self._tagged(body)

    def done(self, finish_reason: str, tokens: TokenCount) -> list[str]:
        self.ended = True
        self._log.done(finish_reason, tokens)
        return self._ended(app_done_body(finish_reason, tokens))

    def error(self, error: EstuaryError) -> list[str]:
        self.ended = True
        if not self.started:  # before `start`: a refusal, with the HTTP status it stands for
            self._log.error(error)
            return [_dumps(_refusal(self._ref, error) | {"requestId": self._request_id})]
        self._log.error(error)
        return [self._tagged(app_error_body(error))]

    def _ended(self, body: dict[str, Any]) -> list[str]:
        frame = self._tagged(body)  # the log wrote `start` (if it was missing) before this
        if self.started:
            return [frame]
        self.started = True
        start = app_start_body(self._request_id, self._alias, None) | {"ref": self._ref}
        return [_dumps(start | {"id": f"{self._request_id}:{self._log.seq - 1}"}), frame]

    def _start(self, provider: str | None) -> str | None:
        if self.started:
            return None
        self.started = True
        body = app_start_body(self._request_id, self._alias, provider)
        return _dumps({**body, "ref": self._ref, "id": f"{self._request_id}:{self._log.seq}"})

    def _tagged(self, body: dict[str, Any]) -> str:
        return _dumps({**body, "requestId": self._request_id, "id": self._id()})

    def _id(self) -> str:
        return f"{self._request_id}:{self._log.seq}"


class _Connection:
    """One authenticated socket: its reader, its writer, its chats (see the module docstring)."""

    def __init__(
        self,
        websocket: WebSocket,
        principal: Principal,
        gateway: Gateway,
        *,
        max_frame_bytes: int,
        queue_frames: int,
        stream: StreamSettings,
        drain: Drain,
    ) -> None:
        self._ws = websocket
        self._drain = drain
        self._principal = principal
        self._gateway = gateway
        self._max_frame_bytes = max_frame_bytes
        self._stream = stream
        self._grace_s = stream.grace_for(principal)
        self._queue: asyncio.Queue[str] = asyncio.Queue(maxsize=queue_frames)
        self._chats: dict[asyncio.Task[None], EventLog | None] = {}
        self._dropped: set[asyncio.Task[None]] = set()  # cancelled because the client left
        self._idle = asyncio.Event()  # set when the last chat ended
        self._gone = False  # the client left, or the socket broke: nothing more is sent

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            writer = tasks.create_task(self._write())
            try:
                await self._read(tasks)
            finally:
                self._leave()
                writer.cancel()
            if self._chats and self._grace_s > 0:
                tasks.create_task(self._grace())

    async def _read(self, tasks: asyncio.TaskGroup) -> None:
        while True:
            message = await self._ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                await self._put(_dumps(_refusal(None, InvalidRequest("send JSON text frames"))))
                continue
            if len(text) > self._max_frame_bytes or len(text.encode()) > self._max_frame_bytes:
                self._leave()
                await self._ws.close(_MESSAGE_TOO_BIG)
                return
            await self._dispatch(text, tasks)

    async def _dispatch(self, text: str, tasks: asyncio.TaskGroup) -> None:
        """Start a chat, cancel one, or answer a bad frame; never closes the socket."""
        ref: str | None = None
        try:
            frame = orjson.loads(text)
            if not isinstance(frame, dict):
                raise InvalidRequest("a frame must be a JSON object")
            raw_ref = frame.pop("ref", None)
            ref = raw_ref if isinstance(raw_ref, str) else None
            match frame.pop("type", None):
                case "chat" if ref is not None:
                    chat = tasks.create_task(self._chat(ref, frame))
                    self._chats[chat] = None
                    chat.add_done_callback(self._forget)
                case "chat":
                    raise InvalidRequest("a chat frame needs a string 'ref'")
                case "cancel":
                    await self._cancel(frame.get("requestId"))
                case other:
                    raise InvalidRequest(f"unknown frame type {other!r}; use 'chat' or 'cancel'")
        except orjson.JSONDecodeError as exc:
            await self._put(_dumps(_refusal(None, InvalidRequest(f"not JSON ({exc.msg})"))))
        except EstuaryError as exc:
            await self._put(_dumps(_refusal(ref, exc)))

    async def _cancel(self, request_id: object) -> None:
        if not isinstance(request_id, str):
            raise InvalidRequest("a cancel frame needs a string 'requestId'")
        try:
            await self._gateway.cancel(self._principal, request_id)
        except EstuaryError as exc:
            # Tagged with the id: a client routes it to that chat, long finished or never its.
            await self._put(_dumps({"type": "error", "requestId": request_id} | _error(exc)))

    async def _chat(self, ref: str, body: dict[str, Any]) -> None:
        """Admit one chat, relay it, end it with one terminal frame; settle its row once."""
        try:
            session = await self._gateway.admit(self._principal, parse_app_chat(body), api="app")
        except EstuaryError as exc:
            await self._put(_dumps(_refusal(ref, exc)))
            return
        except Exception:  # one chat's bug must not end the socket's other chats
            _log.exception("websocket chat %s could not be admitted", ref)
            await self._put(_dumps(_refusal(ref, EstuaryError("internal error"))))
            return
        log = self._gateway.open_log(session, self._stream.resume_ttl_s)
        chat = asyncio.current_task()
        if chat in self._chats:
            self._chats[chat] = log
        frames = _Frames(session, ref, AppSSEEncoder(session.request_id, session.route.alias, log))
        state = _ChatState()
        try:
            stopper = Stopper()

            def on_cancel(_: object) -> None:
                if state.failure is None and stopper.stop():
                    state.stopped_by = "cancel"

            def on_shutdown() -> None:
                if state.failure is None and stopper.stop():
                    state.stopped_by = "shutdown"

            session.canceled.add_done_callback(on_cancel)
            drained = self._drain.register(on_shutdown)
            try:
                await stopper.run(self._pump(session, frames, state))
            finally:
                self._drain.unregister(drained)
                session.canceled.remove_done_callback(on_cancel)
            for frame in self._terminal(session, frames, state):
                await self._put(frame)
        finally:
            if chat in self._dropped:
                state.stopped_by = "client"
                if not frames.ended:  # the end, for a resume that comes after all
                    frames.done("canceled", session.token_count(complete=False))
            log.close()
            await asyncio.shield(session.settle(state.outcome()))

    async def _pump(self, session: StreamSession, frames: _Frames, state: _ChatState) -> None:
        try:
            async with aclosing(session.events()) as events:
                async for event in events:
                    if type(event) is StreamEnd:
                        state.finish_reason = event.reason
                    elif (frame := frames.event(event)) is not None:
                        await self._put(frame)
        except EstuaryError as exc:
            state.failure = kept(exc)
        except Exception:
            _log.exception("websocket stream %s failed", session.request_id)
            state.failure = EstuaryError("internal error while streaming")

    @staticmethod
    def _terminal(session: StreamSession, frames: _Frames, state: _ChatState) -> list[str]:
        if state.failure is not None:
            return frames.error(state.failure)
        if state.stopped_by == "shutdown":
            return frames.error(SHUTDOWN)
        reason = "canceled" if state.stopped_by == "cancel" else state.finish_reason
        tokens = session.token_count(complete=state.stopped_by is None)
        return frames.done(reason, tokens)

    async def _put(self, frame: str) -> None:
        """Queue a frame for the writer; waits while the queue is full (backpressure)."""
        if not self._gone:
            await self._queue.put(frame)

    async def _write(self) -> None:
        """Send queued frames in order; once the socket is gone, discard them."""
        while True:
            frame = await self._queue.get()
            if self._gone:
                continue
            try:
                await self._ws.send_text(frame)
            except (WebSocketDisconnect, OSError, RuntimeError):
                self._leave()

    def _forget(self, chat: asyncio.Task[None]) -> None:
        self._chats.pop(chat, None)
        self._dropped.discard(chat)
        if not self._chats:
            self._idle.set()

    def _leave(self) -> None:
        """The client is gone: with no grace period, cancel every running chat at once."""
        if self._gone:
            return
        self._gone = True
        while not self._queue.empty():  # wake chats waiting for room: they go on into their logs
            self._queue.get_nowait()
        if self._grace_s <= 0:
            self._drop(list(self._chats))

    def _drop(self, chats: list[asyncio.Task[None]]) -> None:
        """Cancel these chats (closing their upstreams) because their client left."""
        for chat in chats:
            self._dropped.add(chat)
            chat.cancel()

    async def _grace(self) -> None:
        """Each grace period, cancel the chats that no resume is reading; until none is left."""
        while True:
            self._idle.clear()
            if not self._chats:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._grace_s):
                    await self._idle.wait()  # the last chat ended: no need to wait longer
            idle = []
            for chat, log in list(self._chats.items()):
                try:
                    followed = log is not None and await log.followed()
                except Exception:  # the shared state is unreachable: nobody can be resuming
                    followed = False
                if not followed:
                    idle.append(chat)
            self._drop(idle)


def _dumps(body: dict[str, Any]) -> str:
    return orjson.dumps(body).decode()


def _detail(error: EstuaryError) -> dict[str, Any]:
    detail: dict[str, Any] = {"code": error.code, "message": error.message}
    detail["status"] = error.status_code
    if (retry_after := error.retry_after_s) is not None:
        detail["retryAfter"] = max(1, round(retry_after))
    return detail


def _error(error: EstuaryError) -> dict[str, Any]:
    return {"error": _detail(error)}


def _refusal(ref: str | None, error: EstuaryError) -> dict[str, Any]:
    """An `error` frame for a chat or frame refused before any `start` (with its ref, if any)."""
    body: dict[str, Any] = {"type": "error"}
    if ref is not None:
        body["ref"] = ref
    return body | _error(error)
