"""Assembly: a validated `Config` in, a running ASGI app out.

This is the only place that turns configuration into objects — providers over one shared HTTP pool,
routes, the state store, the ledger, the gateway — and the lifespan that closes them again.
`Runtime.reload()` turns a changed file into new routes, prices, templates, keys and limits and
swaps them into the live objects (see `estuary.reload` for what a reload may change).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Final

import orjson
import structlog
from starlette.applications import Starlette
from starlette.types import ASGIApp

from estuary.auth.jwt import JWTVerifier
from estuary.auth.keys import Authenticator
from estuary.auth.tickets import TicketIssuer
from estuary.config import Config, ConfigError, ProviderConfig, UserLimitsConfig, secret_values
from estuary.core.policy import KeyPolicy
from estuary.core.prices import Price, Prices
from estuary.core.redaction import Redactor
from estuary.gateway.metrics import GatewayMetrics
from estuary.gateway.session import REVOKED_CHANNEL, Gateway
from estuary.http.app import create_app
from estuary.http.drain import Drain
from estuary.http.routes import Services
from estuary.http.streaming import StreamSettings
from estuary.ledger import open_store
from estuary.ledger.base import Store
from estuary.limits.limiter import Limiter, LimitSettings
from estuary.limits.policy import PolicyEnforcer, PromptTemplate
from estuary.providers.anthropic import AnthropicProvider
from estuary.providers.base import Provider, Timeouts
from estuary.providers.demo import DemoProvider
from estuary.providers.gemini import GeminiProvider
from estuary.providers.openai import OpenAIProvider
from estuary.providers.upstream_http import UpstreamPool
from estuary.reload import ConfigSource, RestartRequired, restart_needed
from estuary.routing.breaker import Breakers, BreakerSettings
from estuary.routing.routes import Route, Router, Target
from estuary.state.base import StateStore
from estuary.state.memory import MemoryState
from estuary.state.redis import RedisState
from estuary.telemetry import Tracing

__all__ = ["Runtime", "build_app", "build_runtime", "tune_gc"]

_log: Final = structlog.get_logger("estuary.server")
BREAKER_CHANNEL: Final = "breakers.opened"  # message: [target, pause_s]


@dataclass(slots=True, kw_only=True)
class Runtime:
    """The long-lived objects of one server process, and the config they were built from.

    `source` is where that config came from (None: built without a file, as tests do), which
    `reload()` reads again. Providers a reload replaces are `retired`: kept, not closed, until the
    runtime closes at the end of the process — after the drain, so no stream can still be using
    one. A stream holds its route (and so its provider instances) from admission to its end,
    resume grace and mid-stream failover included, and nothing counts those holders; closing
    earlier would need that count, or a guess of a delay. Keeping them costs a few small objects
    per reload: providers own no connections (the `UpstreamPool` is shared and stays), so their
    `aclose` releases nothing that matters while the process runs.
    """

    services: Services
    pool: UpstreamPool
    providers: dict[str, Provider]
    ledger: Store
    state: StateStore
    redactor: Redactor
    instance: str
    config: Config
    limiter: Limiter
    source: ConfigSource | None = None
    tracing: Tracing | None = None  # `[telemetry]`: kept as started until the process ends
    retired: list[Provider] = field(default_factory=list)
    _reload_asked: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    async def start(self) -> None:
        """Connect the state store, open the ledger (migrating it) and close what this
        instance left open before."""
        await self.state.start()
        interrupted = await self.ledger.start(self.instance)
        if interrupted:
            _log.warning(
                "ledger.interrupted",
                logger="estuary.server",
                instance=self.instance,
                rows=interrupted,
                note="rows left open by an earlier run of this instance are now 'interrupted'",
            )

    async def aclose(self) -> None:
        try:
            for provider in [*self.providers.values(), *self.retired]:
                await provider.aclose()
            self.pool.close()
            await self.ledger.aclose()
            await self.state.aclose()
        finally:
            if self.tracing is not None:  # send the spans still buffered (blocking HTTP)
                await asyncio.to_thread(self.tracing.shutdown)

    async def reload(self) -> list[str]:
        """Read the config file again and admit new requests with it; the aliases now served.

        Raises `ConfigError` — `RestartRequired` when the file changes a key only a restart
        applies — and then nothing has changed. Logs `config.reloaded` or `config.reload_failed`.
        Runs without a pause (no `await` inside), so no request is admitted half-way through.
        """
        try:
            if self.source is None:
                raise ConfigError("started without a config file (--config): nothing to reload")
            models = self._apply(self.source.load(), self.source.path)
        except ConfigError as exc:
            _log.warning("config.reload_failed", logger="estuary.server", message=str(exc))
            raise
        _log.info("config.reloaded", logger="estuary.server", models=models)
        return models

    def request_reload(self) -> None:
        """Ask for a reload, from a signal handler (SIGHUP); `reload_when_asked` runs it."""
        self._reload_asked.set()

    async def reload_when_asked(self) -> None:
        """Run `reload()` after each `request_reload()`, for as long as the server runs."""
        while True:
            await self._reload_asked.wait()
            self._reload_asked.clear()
            try:
                with contextlib.suppress(ConfigError):  # logged; the running config stays
                    await self.reload()
            except Exception:  # a bug: log it and keep serving with the running config
                _log.exception("config.reload_failed", logger="estuary.server", message="bug")

    def _apply(self, config: Config, where: Path) -> list[str]:
        """Build what `config` describes, then swap it in; all of it, or (raising) nothing."""
        if changed := restart_needed(self.config, config):
            message = f"{where}: restart to change {', '.join(changed)}; nothing was reloaded"
            raise RestartRequired(message)
        self.redactor.learn(secret_values(config))
        try:
            providers = {
                name: self._provider(name, table) for name, table in config.providers.items()
            }
        except NotImplementedError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        gateway, settings = self.services.gateway, _limit_settings(config)
        authenticator = _authenticator(config, self.ledger, settings.user)
        router = Router(
            _routes(config, providers),
            default=config.server.default_model,
            breakers=gateway.router.breakers,  # breaker state survives the reload
            rng=gateway.router.rng,
        )
        # Nothing below can fail, and nothing awaits: requests see the old config or the new.
        gateway.reconfigure(router=router, prices=_prices(config), policy=_policy(config))
        self.limiter.settings = settings
        self.services.authenticator.adopt(authenticator)
        self.retired.extend(p for name, p in self.providers.items() if providers.get(name) is not p)
        self.providers, self.config = providers, config
        return router.aliases

    def _provider(self, name: str, table: ProviderConfig) -> Provider:
        """The running provider `name` if its table is unchanged, else a new one."""
        if name in self.providers and self.config.providers.get(name) == table:
            return self.providers[name]
        return _provider(name, table, self.pool, self.redactor)


def build_runtime(
    config: Config,
    *,
    ledger: Store | None = None,
    state: StateStore | None = None,
    source: ConfigSource | None = None,
) -> Runtime:
    """Build every service from `config`; stores may be injected (tests use the memory ones).

    `source` is where `config` was loaded from, for `Runtime.reload()` (None: no reload).

    Raises `ConfigError` for a ledger or state URL or a key file it cannot use, and
    `NotImplementedError` for a provider format this version lacks.
    """
    redactor = Redactor(secret_values(config))
    pool = UpstreamPool()
    providers = {
        name: _provider(name, provider, pool, redactor)
        for name, provider in config.providers.items()
    }
    routes = _routes(config, providers)
    state = state if state is not None else _state(config)
    if ledger is None:
        try:
            queue = config.ledger.queue_max if config.ledger.on_failure == "queue" else 0
            ledger = open_store(config.ledger.url, backlog_max=queue)
        except ValueError as exc:
            raise ConfigError(f"ledger.url: {exc}") from None
    server = config.server
    instance = server.instance or f"{socket.gethostname()}:{server.port}"
    prices, settings = _prices(config), _limit_settings(config)
    store = ledger

    async def spent(key_id: str, end_user: str | None) -> int:
        return await store.spent(key_id=key_id, end_user=end_user)

    authenticator = _authenticator(config, ledger, settings.user)
    state.subscribe(REVOKED_CHANNEL, authenticator.forget)  # a revocation on another instance
    router = Router(routes, default=server.default_model, breakers=_shared_breakers(config, state))
    limiter = Limiter(state, spent=spent, prices=prices, settings=settings)
    tracing = Tracing.start(config.telemetry, instance=instance)  # last to raise: no thread leaks
    gateway = Gateway(
        router=router,
        ledger=ledger,
        state=state,
        limiter=limiter,
        policy=_policy(config),
        prices=prices,
        instance=instance,
        metrics=GatewayMetrics(router),  # a registry per runtime: no clash between gateways
        on_settled=None if tracing is None else tracing.record,
    )
    services = Services(
        gateway=gateway,
        authenticator=authenticator,
        tickets=TicketIssuer(state, authenticator, ttl_s=server.ticket_ttl_s),
        store=ledger,
        stream=StreamSettings(
            heartbeat_s=server.heartbeat_s,
            header_hold_s=server.header_hold_s,
            resume_grace_s=server.resume_grace_s,
            resume_ttl_s=server.resume_ttl_s,
        ),
        max_body_bytes=server.max_body_bytes,
        cors_origins=tuple(server.cors_origins),
        drain=Drain(deadline_s=server.shutdown_drain_s),
    )
    _watch_stores(gateway.metrics, ledger, state)
    return Runtime(
        services=services,
        pool=pool,
        providers=providers,
        ledger=ledger,
        state=state,
        redactor=redactor,
        instance=instance,
        config=config,
        limiter=limiter,
        source=source,
        tracing=tracing,
    )


def _prices(config: Config) -> Prices:
    return Prices({k: Price(p.input_per_mtok, p.output_per_mtok) for k, p in config.prices.items()})


def _limit_settings(config: Config) -> LimitSettings:
    limits = config.limits
    return LimitSettings(
        default_completion_tokens=limits.default_completion_tokens,
        anonymous_rpm=limits.anonymous_rpm,
        anonymous_concurrency=limits.anonymous_concurrency,
        user=_user_limits(limits.user),
        budget_overrun=limits.budget_overrun,
    )


def _policy(config: Config) -> PolicyEnforcer:
    return PolicyEnforcer(
        {
            name: PromptTemplate(
                name=name, system=t.system, variables=t.variables, max_chars=t.max_chars
            )
            for name, t in config.templates.items()
        }
    )


def _shared_breakers(config: Config, state: StateStore) -> Breakers:
    """Breakers whose openings every instance hears (over the state's bus) and applies."""
    settings = BreakerSettings(
        failures=config.routing.breaker_failures, cooldown_s=config.routing.breaker_cooldown_s
    )

    def announce(target: str, pause_s: float) -> None:
        state.publish_soon(BREAKER_CHANNEL, orjson.dumps([target, pause_s]).decode())

    breakers = Breakers(settings, on_open=announce)

    def heard(message: str) -> None:
        try:
            target, pause_s = orjson.loads(message)
            breakers.opened_elsewhere(str(target), float(pause_s))
        except (orjson.JSONDecodeError, TypeError, ValueError):
            _log.warning("breaker.bad_message")

    state.subscribe(BREAKER_CHANNEL, heard)
    return breakers


def _watch_stores(metrics: GatewayMetrics, ledger: Store, state: StateStore) -> None:
    """Export the stores' outage counters, where the store has them (SQL ledger, Redis)."""
    watched = (
        (
            ledger,
            "backlogged",
            "estuary_ledger_queued_rows",
            "Ledger rows waiting for the database.",
        ),
        (ledger, "refused", "estuary_ledger_refused_rows", "Rows refused: database down."),
        (state, "degraded_ops", "estuary_state_degraded_ops", "State operations served locally."),
        (state, "degraded", "estuary_state_degraded", "1 while Redis cannot be reached."),
        (state, "dropped_log_entries", "estuary_resume_dropped_events", "Resume events lost."),
    )
    for store, attribute, name, documentation in watched:
        if hasattr(store, attribute):
            metrics.watch(name, documentation, partial(_read, store, attribute))


def _read(store: object, attribute: str) -> float:
    return float(getattr(store, attribute))


def _state(config: Config) -> StateStore:
    """The state store `[state] url` names: in this process, or shared in Redis."""
    url = config.state.url
    if url == "memory://":
        return MemoryState()
    if url.startswith(("redis://", "rediss://", "unix://")):
        try:
            return RedisState(url, prefix=config.state.prefix, on_failure=config.state.on_failure)
        except ValueError as exc:
            raise ConfigError(f"state.url: {exc}") from None
    raise ConfigError("state.url: use memory:// or redis://host:6379/0 (rediss:// for TLS)")


def _routes(config: Config, providers: Mapping[str, Provider]) -> dict[str, Route]:
    routes = {}
    for alias, model in config.models.items():
        timeouts = Timeouts(
            connect_s=min(config.providers[t.provider].connect_timeout_s for t in model.targets),
            first_token_s=model.first_token_timeout_s,
            idle_s=model.idle_timeout_s,
        )
        targets = tuple(Target(providers[t.provider], t.model) for t in model.targets)
        routes[alias] = Route(
            alias=alias,
            targets=targets,
            timeouts=timeouts,
            max_tokens=model.max_tokens,
            weights=model.weights,
            degrade_to=model.degrade_to,
            degrade_at=model.degrade_at,
            midstream_failover=model.midstream_failover,
        )
    return routes


def _user_limits(user: UserLimitsConfig) -> KeyPolicy:
    budget = None if user.budget is None else round(user.budget * 1_000_000)
    return KeyPolicy(rpm=user.rpm, tpm=user.tpm, concurrency=user.concurrency, budget_micro=budget)


def _authenticator(config: Config, store: Store, user_limits: KeyPolicy) -> Authenticator:
    auth = config.auth
    verifier, jwt_policy = None, KeyPolicy()
    if auth.jwt is not None:
        jwt = auth.jwt
        try:
            key = jwt.verification_key()
        except OSError as exc:
            raise ConfigError(f"auth.jwt.public_key_file: cannot read it: {exc.strerror}") from None
        try:
            verifier = JWTVerifier(
                algorithm=jwt.algorithm,
                key=key,
                issuer=jwt.issuer,
                audience=jwt.audience,
                max_ttl_s=jwt.max_ttl_s,
                leeway_s=jwt.leeway_s,
            )
        except ValueError as exc:
            raise ConfigError(f"auth.jwt: {exc}") from None
        jwt_policy = KeyPolicy(
            models=jwt.models,
            max_tokens=jwt.max_tokens,
            allow_system=jwt.allow_system,
            templates=jwt.templates,
        )
    return Authenticator(
        auth.keys,
        anonymous=auth.anonymous,
        store=store,
        jwt=verifier,
        jwt_policy=jwt_policy,
        user_limits=user_limits,
        admin_key=auth.admin_key,
        cache_s=auth.key_cache_s,
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
    """The ASGI app over `runtime`, closing it when the server shuts down; it runs the reloads
    `runtime.request_reload()` asks for, and `POST /admin/reload` when there is a config file."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await runtime.start()
        try:
            async with asyncio.TaskGroup() as tasks:
                reloads = tasks.create_task(runtime.reload_when_asked())
                try:
                    yield
                finally:
                    reloads.cancel()
        finally:
            await runtime.aclose()

    reload = runtime.reload if runtime.source is not None else None
    return create_app(runtime.services, lifespan=lifespan, reload=reload)


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
            flavor=config.preset,
        )
    if config.format == "gemini":
        return GeminiProvider(
            name,
            base_url=config.base_url,
            api_key=config.api_key,
            pool=pool,
            headers=config.headers,
            redact=redactor,
        )
    if config.format == "anthropic":
        return AnthropicProvider(
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
