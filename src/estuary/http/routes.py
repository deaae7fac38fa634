"""Route handlers for the OpenAI API, the app API, tickets and health.

Each handler reads and validates its input, authenticates, admits the request through the gateway
(which opens the ledger row) and returns a streaming or collected response. Nothing here knows a
wire format of any upstream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp

from estuary.auth.keys import Authenticator
from estuary.auth.tickets import TicketIssuer
from estuary.core.errors import EstuaryError, InvalidRequest
from estuary.core.policy import Principal
from estuary.core.requests import (
    ChatRequest,
    UpstreamRequest,
    parse_app_chat,
    parse_openai_chat,
    parse_openai_completion,
)
from estuary.gateway.session import Gateway
from estuary.http.anthropic_api import (
    AnthropicEncoder,
    AnthropicErrors,
    anthropic_error_response,
    anthropic_message,
    authenticate_anthropic,
    parse_anthropic_messages,
)
from estuary.http.collect import CollectedResponse
from estuary.http.drain import Drain
from estuary.http.encoders import (
    AppSSEEncoder,
    Encoder,
    OpenAIChatEncoder,
    OpenAICompletionEncoder,
    TextEncoder,
)
from estuary.http.inputs import authenticate, read_json, refuse_url_credentials
from estuary.http.resume import ResumeResponse, last_event_seq
from estuary.http.streaming import Resumable, StreamResponse, StreamSettings
from estuary.http.takeover import take_over
from estuary.ledger.base import Store

__all__ = ["Handlers", "Services"]

_TRACEPARENT_MAX = 128  # the header is 55 characters; anything much longer is not one
_GET_PARAMS = ("message", "model", "system", "max_tokens", "temperature")


@dataclass(frozen=True, slots=True, kw_only=True)
class Services:
    """Everything the routes need, built once by the server and passed in."""

    gateway: Gateway
    authenticator: Authenticator
    tickets: TicketIssuer
    store: Store
    stream: StreamSettings = field(default_factory=StreamSettings)
    drain: Drain = field(default_factory=lambda: Drain(deadline_s=20.0))
    max_body_bytes: int = 4 * 1024 * 1024
    cors_origins: tuple[str, ...] = ()


class Handlers:
    """The endpoints, bound to one `Services`."""

    def __init__(self, services: Services) -> None:
        self._s = services

    async def chat_completions(self, request: Request) -> ASGIApp:
        principal = await authenticate(request, self._s.authenticator)
        chat = parse_openai_chat(await read_json(request, self._s.max_body_bytes))
        return await self._respond(principal, chat, request)

    async def completions(self, request: Request) -> ASGIApp:
        principal = await authenticate(request, self._s.authenticator)
        completion = parse_openai_completion(await read_json(request, self._s.max_body_bytes))
        return await self._respond(principal, completion, request)

    async def anthropic_messages(self, request: Request) -> ASGIApp:
        """Anthropic's `POST /v1/messages`, from any target, its errors in Anthropic's shape."""
        try:
            principal = await authenticate_anthropic(request, self._s.authenticator)
            chat = parse_anthropic_messages(await read_json(request, self._s.max_body_bytes))
            session = await self._s.gateway.admit(
                principal, chat, api="anthropic", traceparent=_traceparent(request)
            )
        except EstuaryError as exc:
            return anthropic_error_response(exc)
        if not chat.stream:
            return AnthropicErrors(CollectedResponse(session, shape=anthropic_message))
        encoder = AnthropicEncoder(session.request_id, session.route.alias)
        response = StreamResponse(session, encoder, self._s.stream, drain=self._s.drain)
        return AnthropicErrors(response)

    async def models(self, request: Request) -> Response:
        principal = await authenticate(request, self._s.authenticator)
        data = [
            {"id": alias, "object": "model", "created": 0, "owned_by": "estuary"}
            for alias in self._s.gateway.allowed_aliases(principal)
        ]
        return JSONResponse({"object": "list", "data": data})

    async def app_stream_post(self, request: Request) -> ASGIApp:
        principal = await authenticate(request, self._s.authenticator)
        return await self._app_stream(
            principal, await read_json(request, self._s.max_body_bytes), request
        )

    async def app_stream_get(self, request: Request) -> ASGIApp:
        ticket = request.query_params.get("ticket")
        if ticket is not None:
            refuse_url_credentials(request)
            principal = await self._s.tickets.redeem(ticket)
        else:
            principal = await authenticate(request, self._s.authenticator)
        return await self._app_stream(principal, _query_body(request), request)

    async def cancel(self, request: Request) -> Response:
        principal = await authenticate(request, self._s.authenticator)
        await self._s.gateway.cancel(principal, request.path_params["request_id"])
        return JSONResponse({"canceled": True})

    async def create_ticket(self, request: Request) -> Response:
        principal = await authenticate(request, self._s.authenticator)
        ticket, expires_at = await self._s.tickets.issue(principal)
        return JSONResponse({"ticket": ticket, "expiresAt": expires_at})

    async def _respond(
        self, principal: Principal, request: UpstreamRequest, http: Request
    ) -> ASGIApp:
        """An OpenAI-API request: collected, or streamed in OpenAI's chunks."""
        session = await self._s.gateway.admit(
            principal, request, api="openai", traceparent=_traceparent(http)
        )
        if not request.stream:
            return CollectedResponse(session)
        encoder: Encoder
        alias = session.route.alias
        if isinstance(request, ChatRequest):
            encoder = OpenAIChatEncoder(
                session.request_id, alias, include_usage=request.include_usage
            )
        else:
            encoder = OpenAICompletionEncoder(
                session.request_id, alias, include_usage=request.include_usage
            )
        return StreamResponse(session, encoder, self._s.stream, drain=self._s.drain)

    async def _app_stream(self, principal: Principal, body: object, http: Request) -> ASGIApp:
        """An app-API stream: plain text, or events that are kept for resume (and, when the
        state is shared, with the request kept for a takeover)."""
        chat = parse_app_chat(body)
        text = _wants_text(http)  # a bad `format` is refused before anything is admitted
        gateway, settings = self._s.gateway, self._s.stream
        session = await gateway.admit(principal, chat, api="app", traceparent=_traceparent(http))
        if text:
            return StreamResponse(session, TextEncoder(), settings, drain=self._s.drain)
        handover = gateway.shared_state
        request = orjson.dumps(body) if handover else None  # for a takeover elsewhere
        log = gateway.open_log(session, settings.resume_ttl_s, request)
        resumable = Resumable(log, settings.grace_for(principal), handover=handover)
        encoder = AppSSEEncoder(session.request_id, session.route.alias, log)
        return StreamResponse(session, encoder, settings, resumable, self._s.drain)

    async def app_stream_resume(self, request: Request) -> ASGIApp:
        """`GET /api/chat/stream/{id}`: the events after `Last-Event-ID`, then the live rest."""
        principal = await authenticate(request, self._s.authenticator)
        request_id = request.path_params["request_id"]
        after = last_event_seq(request, request_id)
        frames = await self._s.gateway.read_log(principal, request_id, after)

        async def takeover(seen: int) -> ASGIApp | None:
            return await take_over(
                self._s.gateway,
                principal,
                request_id,
                seen=seen,
                settings=self._s.stream,
                drain=self._s.drain,
            )

        return ResumeResponse(
            request_id,
            frames,
            heartbeat_s=self._s.stream.heartbeat_s,
            takeover=takeover,
            after=after,
        )


def _traceparent(request: Request) -> str | None:
    """The caller's W3C `traceparent`, if any (its stream's span becomes a child of it)."""
    value = request.headers.get("traceparent")
    return value if value is not None and len(value) <= _TRACEPARENT_MAX else None


def _wants_text(request: Request) -> bool:
    fmt = request.query_params.get("format")
    if fmt is not None:
        if fmt not in ("text", "sse"):
            raise InvalidRequest("'format' must be 'text' or 'sse'")
        return fmt == "text"
    accept = request.headers.get("accept", "")
    return "text/plain" in accept and "text/event-stream" not in accept


def _query_body(request: Request) -> dict[str, object]:
    """The GET form of an app-API request, as the JSON body it stands for."""
    query = request.query_params
    body: dict[str, object] = {k: query[k] for k in ("message", "model", "system") if k in query}
    for name, convert in (("max_tokens", int), ("temperature", float)):
        if name in query:
            try:
                body[name] = convert(query[name])
            except ValueError:
                raise InvalidRequest(f"'{name}' must be a number") from None
    unknown = set(query) - {*_GET_PARAMS, "ticket", "format"}
    if unknown:
        raise InvalidRequest(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
    if "message" not in body:
        raise InvalidRequest("'message' is required; multi-turn conversations use POST")
    return body
