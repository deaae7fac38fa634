"""The ASGI application factory. Importing this module does nothing; `create_app()` builds the app
from explicit services."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp, Lifespan, Message, Receive, Scope, Send

from estuary.core.errors import EstuaryError, MethodNotAllowed, NotFound
from estuary.http.admin import AdminHandlers, Reload
from estuary.http.encoders import error_body
from estuary.http.ops import OpsHandlers
from estuary.http.pages import page_routes
from estuary.http.routes import Handlers, Services
from estuary.http.streaming import SERVER_SEND
from estuary.http.websocket import ChatSockets

__all__ = ["Services", "create_app"]

_log: Final = logging.getLogger("estuary.http")


Endpoint = Callable[[Request], Awaitable[ASGIApp]]


class _Entry:
    """The outermost layer, in front of Starlette.

    - It keeps the server's own `send` in the scope for streamed bodies: framework middleware
      wraps `send` to watch the response start, and on the token path each wrapper is a
      coroutine call per chunk.
    - It serves the streaming endpoints itself (`fast`), without Starlette's middleware and
      router: on the path of every new stream those are half a dozen coroutine layers and send
      wrappers that these endpoints do not use. Errors are turned into responses exactly as the
      app's exception handlers do. A CORS request (an `Origin` header while CORS is configured)
      takes the full stack.
    """

    def __init__(self, app: ASGIApp, fast: dict[tuple[str, str], Endpoint], cors: bool) -> None:
        self._app = app
        self._fast = fast
        self._cors = cors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        scope[SERVER_SEND] = send
        try:
            endpoint = self._fast.get((scope["method"], scope["path"]))
            if endpoint is not None and not (self._cors and _has_origin(scope)):
                await _serve(endpoint, scope, receive, send)
            else:
                await self._app(scope, receive, send)
        finally:
            # `send` is the server's bound method and the server holds the scope: a reference
            # cycle, left for the cyclic GC to find, unless it is broken here.
            del scope[SERVER_SEND]


def _has_origin(scope: Scope) -> bool:
    return any(name == b"origin" for name, _ in scope["headers"])


class _Watched:
    """`send`, noting whether the response has started (for an error after the handler)."""

    __slots__ = ("_send", "started")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


async def _serve(endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
    """One request to a fast endpoint (see `_Entry`)."""
    request = Request(scope, receive, send)
    try:
        response: ASGIApp = await endpoint(request)
    except EstuaryError as exc:
        response = _json_error(exc)
    except Exception as exc:
        response = await _unexpected_error(request, exc)
    watched = _Watched(send)
    try:
        await response(scope, receive, watched)
    except Exception as exc:  # the responses handle their own errors; this is a bug
        if watched.started:
            raise
        if isinstance(exc, EstuaryError):
            await _json_error(exc)(scope, receive, send)
        else:
            await (await _unexpected_error(request, exc))(scope, receive, send)


def create_app(
    services: Services,
    *,
    lifespan: Lifespan[Starlette] | None = None,
    reload: Reload | None = None,
) -> ASGIApp:
    """Build the ASGI app; no state lives anywhere but in `services`.

    `reload` re-reads the config file for `POST /admin/reload` (None: the server has no file).
    """
    handlers = Handlers(services)
    admin = AdminHandlers(
        services.gateway,
        services.authenticator,
        services.store,
        services.max_body_bytes,
        reload=reload,
    )
    ops = OpsHandlers(services.gateway, services.drain)
    fast: dict[tuple[str, str], Endpoint] = {
        ("POST", "/v1/chat/completions"): handlers.chat_completions,
        ("POST", "/v1/completions"): handlers.completions,
        ("POST", "/v1/messages"): handlers.anthropic_messages,
        ("POST", "/api/chat/stream"): handlers.app_stream_post,
        ("GET", "/api/chat/stream"): handlers.app_stream_get,
    }
    routes: list[BaseRoute] = [
        Route("/v1/chat/completions", handlers.chat_completions, methods=["POST"]),
        Route("/v1/completions", handlers.completions, methods=["POST"]),
        Route("/v1/messages", handlers.anthropic_messages, methods=["POST"]),
        Route("/v1/models", handlers.models, methods=["GET"]),
        Route("/api/chat/stream", handlers.app_stream_post, methods=["POST"]),
        Route("/api/chat/stream", handlers.app_stream_get, methods=["GET"]),
        Route("/api/chat/stream/{request_id}", handlers.app_stream_resume, methods=["GET"]),
        Route("/api/chat/{request_id}/cancel", handlers.cancel, methods=["POST"]),
        Route("/api/tickets", handlers.create_ticket, methods=["POST"]),
        WebSocketRoute(
            "/api/chat/ws",
            ChatSockets(
                gateway=services.gateway,
                authenticator=services.authenticator,
                tickets=services.tickets,
                max_frame_bytes=services.max_body_bytes,
                stream=services.stream,
                drain=services.drain,
            ).serve,
        ),
        Route("/api/usage", admin.own_usage, methods=["GET"]),
        Route("/admin/keys", admin.create_key, methods=["POST"]),
        Route("/admin/keys", admin.list_keys, methods=["GET"]),
        Route("/admin/keys/{key_id}", admin.revoke_key, methods=["DELETE"]),
        Route("/admin/usage", admin.admin_usage, methods=["GET"]),
        Route("/admin/stats", admin.stats, methods=["GET"]),
        Route("/admin/reload", admin.reload, methods=["POST"]),
        *page_routes(),
        Route("/healthz", ops.healthz, methods=["GET"]),
        Route("/readyz", ops.readyz, methods=["GET"]),
        Route("/metrics", ops.metrics, methods=["GET"]),
    ]
    middleware = []
    if services.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(services.cors_origins),
                allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                allow_headers=[
                    "authorization",
                    "content-type",
                    "last-event-id",
                    "x-api-key",
                    "anthropic-version",
                ],
                expose_headers=["x-request-id", "retry-after"],
                max_age=600,
            )
        )
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            EstuaryError: _estuary_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
    )
    return _Entry(app, fast, cors=bool(services.cors_origins))


def _json_error(error: EstuaryError) -> Response:
    headers = {}
    if (retry_after := error.retry_after_s) is not None:
        headers["Retry-After"] = str(max(1, round(retry_after)))
    return JSONResponse(error_body(error), status_code=error.status_code, headers=headers)


async def _estuary_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EstuaryError)
    return _json_error(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return _json_error(
            MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
        )
    if exc.status_code == 404:
        return _json_error(NotFound(f"no such endpoint: {request.url.path}"))
    error = EstuaryError(str(exc.detail))
    return JSONResponse(error_body(error), status_code=exc.status_code)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    _log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _json_error(EstuaryError("internal error"))
