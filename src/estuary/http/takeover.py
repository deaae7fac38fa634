"""Taking over a stream whose instance died, when its client resumes elsewhere.

With shared state (Redis), every resumable app-API stream leaves two things behind: its resume
log and, kept with the log while the stream runs, the request that started it. When a resume finds
the log abandoned — the instance running it was killed, or shut down and handed it over — the
instance serving the resume **claims** the request (once: a second claim finds nothing), reads the
answer so far from the log, and admits a continuation: the same request, by the same caller,
sent to the route's first target that can continue a partial answer (Kimi's and DeepSeek's
presets), with that answer as an assistant prefix. The continuation writes on in the same log
with the next ids: an `attempt` event marks the seam, then the rest of the answer, then `done`.
It is limited and billed as a request of its own (a ledger row of its own, cancelled by the
stream's id). A stream whose client already got a tool call is not continued, nor one whose
targets cannot continue an answer: the client then gets `stream_interrupted`.
"""

from __future__ import annotations

from typing import Final

import orjson
import structlog

from estuary.core.errors import EstuaryError
from estuary.core.policy import Principal
from estuary.core.requests import parse_app_chat
from estuary.gateway.session import Gateway
from estuary.http.drain import Drain
from estuary.http.encoders import AppSSEEncoder
from estuary.http.streaming import Resumable, StreamResponse, StreamSettings
from estuary.state.base import LogAbandoned

__all__ = ["answer_so_far", "take_over"]

_log: Final = structlog.get_logger("estuary.takeover")


async def answer_so_far(
    gateway: Gateway, principal: Principal, request_id: str
) -> tuple[str, int] | None:
    """The answer text in a dead stream's log and its last event's seq; None if it cannot be
    continued (a tool call reached the client, or the log ended after all)."""
    frames = await gateway.read_log(principal, request_id, 0)
    parts: list[str] = []
    seq = 0
    try:
        async for frame in frames:
            head, _, data = frame.partition(b"\ndata: ")
            seq = int(head.rpartition(b":")[2])
            event = orjson.loads(data)
            kind = event.get("type")
            if kind == "content":
                parts.append(event["content"])
            elif kind in ("tool_call", "done", "error"):
                return None  # never continued inside a tool call; or it did end
    except LogAbandoned:
        return "".join(parts), seq
    return None  # the log was closed: the stream ended after all


async def take_over(
    gateway: Gateway,
    principal: Principal,
    request_id: str,
    *,
    seen: int,
    settings: StreamSettings,
    drain: Drain,
) -> StreamResponse | None:
    """A response that goes on with stream `request_id` from its log, or None (see above).

    `seen`: the last event the client has. A log that ends before it lost events the dead
    instance had sent but not yet written (its last moment before a crash): the client's answer
    then differs from the log's, so it is not continued.
    """
    so_far = await answer_so_far(gateway, principal, request_id)
    if so_far is None or so_far[1] < seen:
        return None
    body = await gateway.claim(request_id)
    if body is None:
        return None
    text, last = so_far
    try:
        chat = parse_app_chat(orjson.loads(body))
        session = await gateway.admit(principal, chat, api="app", taking_over=(request_id, text))
    except EstuaryError as exc:
        _log.warning("stream.takeover_refused", request_id=request_id, error=exc.code)
        return None
    log = gateway.open_log(session, settings.resume_ttl_s, body)
    _log.info(
        "stream.takeover",
        request_id=request_id,
        continuation=session.request_id,
        after=last,
        chars=len(text),
    )
    resumable = Resumable(log, settings.grace_for(principal), handover=gateway.shared_state)
    encoder = AppSSEEncoder(request_id, session.route.alias, log, after=last)
    return StreamResponse(session, encoder, settings, resumable, drain, headers_sent=True)
