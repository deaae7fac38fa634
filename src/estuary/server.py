"""Assembly: a validated `Config` in, a running ASGI app out.

This is the only place that turns configuration into objects — providers over one shared HTTP pool,
routes, the state store, the ledger, the gateway — and the lifespan that closes them again.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final

from starlette.applications import Starlette
from starlette.types import ASGIApp

from estuary.auth.keys import Authenticator
from estuary.auth.tickets import TicketIssuer
from estuary.config import Config, ProviderConfig, secret_values
from estuary.core.redaction import Redactor
from estuary.gateway.session import Gateway
from estuary.http.app import create_app
from estuary.http.routes import Services
from estuary.http.streaming import StreamSettings
from estuary.ledger.base import LedgerStore
from estuary.ledger.memory import MemoryLedger
from estuary.providers.base import Provider, Timeouts
from estuary.providers.demo import DemoProvider
from estuary.providers.openai import OpenAIProvider
from estuary.providers.upstream_http import UpstreamPool
from estuary.routing.routes import Route, Router, Target
from estuary.state.base import StateStore
from estuary.state.memory import MemoryState

__all__ = ["LEDGER_NOTICE", "Runtime", "build_app", "build_runtime", "tune_gc"]

LEDGER_NOTICE: Final = (
    "usage rows are kept in memory in this version; [ledger] url is not used yet"
    " (SQLite and PostgreSQL stores come with the billing work)"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Runtime:
    """The long-lived objects of one server process."""

    services: Services
    pool: UpstreamPool
    providers: dict[str, Provider]
    ledger: LedgerStore
    state: StateStore
    redactor: Redactor

    async def aclose(self) -> None:
        for provider in self.providers.values():
            await provider.aclose()
        self.pool.close()
        await self.ledger.aclose()
        await self.state.aclose()


def build_runtime(
    config: Config, *, ledger: LedgerStore | None = None, state: StateStore | None = None
) -> Runtime:
    """Build every service from `config`; stores may be injected (tests use the memory ones).

    Raises `NotImplementedError` for a `[state] url` this version cannot honour, rather than
    silently running with per-process state.
    """
    if state is None and config.state.url != "memory://":
        raise NotImplementedError(
            f"[state] url = '{config.state.url}': only memory:// is available in this version"
            " (Redis comes with the scale-out work)"
        )
    redactor = Redactor(secret_values(config))
    pool = UpstreamPool()
    providers = {
        name: _provider(name, provider, pool, redactor)
        for name, provider in config.providers.items()
    }
    routes = {}
    for alias, model in config.models.items():
        timeouts = Timeouts(
            connect_s=min(config.providers[t.provider].connect_timeout_s for t in model.targets),
            first_token_s=model.first_token_timeout_s,
            idle_s=model.idle_timeout_s,
        )
        targets = tuple(Target(providers[t.provider], t.model) for t in model.targets)
        routes[alias] = Route(
            alias=alias, targets=targets, timeouts=timeouts, max_tokens=model.max_tokens
        )
    state = state if state is not None else MemoryState()
    ledger = ledger if ledger is not None else MemoryLedger()
    server = config.server
    services = Services(
        gateway=Gateway(
            router=Router(routes, default=server.default_model), ledger=ledger, state=state
        ),
        authenticator=Authenticator(config.auth.keys, anonymous=config.auth.anonymous),
        tickets=TicketIssuer(state, ttl_s=server.ticket_ttl_s),
        stream=StreamSettings(heartbeat_s=server.heartbeat_s, header_hold_s=server.header_hold_s),
        max_body_bytes=server.max_body_bytes,
        cors_origins=tuple(server.cors_origins),
    )
    return Runtime(
        services=services,
        pool=pool,
        providers=providers,
        ledger=ledger,
        state=state,
        redactor=redactor,
    )


def tune_gc() -> None:
    """Make cyclic garbage collection rare and cheap for a long-running server.

    With a thousand open streams, a full collection of the default schedule paused the event loop
    for 100-160 ms (every stream stalls for that long). Objects built at start-up are frozen out of
    collection, and young collections run after 50,000 allocations instead of 700; reference
    counting still frees everything that is not in a cycle at once. See docs/decisions.md.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def build_app(runtime: Runtime) -> ASGIApp:
    """The ASGI app over `runtime`, closing it when the server shuts down."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await runtime.aclose()

    return create_app(runtime.services, lifespan=lifespan)


def _provider(
    name: str, config: ProviderConfig, pool: UpstreamPool, redactor: Redactor
) -> Provider:
    if config.format == "demo":
        return DemoProvider(name)
    if config.format == "openai":
        return OpenAIProvider(
            name,
            base_url=config.base_url,
            api_key=config.api_key,
            pool=pool,
            headers=config.headers,
            redact=redactor,
        )
    raise NotImplementedError(
        f"providers.{name}: the '{config.format}' format is not available yet"
    )
