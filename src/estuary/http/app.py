"""The ASGI application factory. Importing this module does nothing; `create_app()` builds the app
from explicit services."""

from __future__ import annotations

import logging
from typing import Final

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp, Lifespan, Receive, Scope, Send

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


class _ServerSend:
    """The outermost layer: keeps the server's own `send` in the scope for streamed bodies.

    Framework middleware wraps `send` to watch the response start; body chunks need none of
    that, and on the token path each wrapper is a coroutine call per chunk.
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[SERVER_SEND] = send
        await self._app(scope, receive, send)


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
    return _ServerSend(app)


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
