"""A request's life, independent of the transport that carries it.

`Gateway.admit()` resolves the alias, applies the key's policy and the route's caps, reserves
against the caller's limits, opens the ledger row and registers the stream's cancel signal — in
that order, so no stream ever runs without a row and nothing refused leaves one. The transport then
iterates `StreamSession.events()` and calls `settle()` exactly once with how the stream ended; the
session works out the token counts (reported, or estimated and marked so) and their cost, settles
the reservation and closes the row. Metrics (`gateway.metrics`) are counted at admission and from
the settled row, never per token.

Must not import the HTTP layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

import structlog

from estuary.core.errors import (
    BudgetExceeded,
    EstuaryError,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
    StreamFinished,
    UpstreamError,
)
from estuary.core.events import Failover, StreamEnd, StreamEvent, StreamStart, TextDelta, Usage
from estuary.core.ids import new_request_id
from estuary.core.policy import Principal
from estuary.core.prices import Prices
from estuary.core.requests import UpstreamRequest, prompt_text
from estuary.core.usage import TokenCount, estimate_tokens
from estuary.gateway.health import readiness
from estuary.gateway.metrics import GatewayMetrics
from estuary.ledger.base import LedgerStore, OpenedRow, SettledRow
from estuary.limits.limiter import Limiter, Reservation
from estuary.limits.policy import PolicyEnforcer, PromptTemplate
from estuary.routing.breaker import Breakers
from estuary.routing.fallback import Attempt, stream_continuation, stream_with_fallback
from estuary.routing.routes import Route, Router, Target
from estuary.state.base import EventLog, StateStore

__all__ = ["REVOKED_CHANNEL", "Gateway", "Outcome", "StreamSession"]

_log: Final = structlog.get_logger("estuary.gateway")
REVOKED_CHANNEL: Final = "keys.revoked"  # message: the key id; subscribers forget its lookups
_CHECK_CHARS: Final = 256  # how much answer text between checks of a watched reservation


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """How a stream ended, as the transport saw it."""

    status: Literal["completed", "canceled", "error"]
    finish_reason: str | None = None
    error: EstuaryError | None = None


class Gateway:
    """Admits requests and cancels running streams; owns no transport."""

    def __init__(
        self,
        *,
        router: Router,
        ledger: LedgerStore,
        state: StateStore,
        limiter: Limiter,
        policy: PolicyEnforcer | None = None,
        prices: Prices | None = None,
        instance: str = "local",
        clock: Callable[[], float] = time.perf_counter,
        metrics: GatewayMetrics | None = None,
        on_settled: Callable[[SettledRow, StreamSession], None] | None = None,
    ) -> None:
        self.router = router
        self.on_settled = on_settled  # told of every settled row (tracing); must not raise
        self.metrics = metrics if metrics is not None else GatewayMetrics(router)
        self._ledger = ledger
        self._state = state
        self._limiter = limiter
        self._policy = policy or PolicyEnforcer()
        self._prices = prices or Prices()
        self._instance = instance
        self._clock = clock

    @property
    def templates(self) -> Mapping[str, PromptTemplate]:
        return self._policy.templates

    def allowed_aliases(self, principal: Principal) -> list[str]:
        """The aliases this caller may use (for `/v1/models`)."""
        allowed = [principal.policy.models, principal.user.models if principal.user else None]
        return [a for a in self.router.aliases if all(m is None or a in m for m in allowed)]

    async def admit(
        self,
        principal: Principal,
        request: UpstreamRequest,
        *,
        api: Literal["openai", "anthropic", "app"],
        taking_over: tuple[str, str] | None = None,
        traceparent: str | None = None,
    ) -> StreamSession:
        """Check, reserve, open the ledger row, register for cancel; nothing has streamed yet.

        `traceparent`: the caller's W3C trace context, for the stream's span (telemetry).

        `taking_over` = (stream id, answer so far): this request continues a stream whose
        instance died. It gets a ledger row of its own, but is cancelled by the stream's id, and
        its events are the continuation of the answer (`stream_continuation`).
        """
        route = self.router.resolve(request.model)
        user = principal.user
        if user is not None and user.models is not None and route.alias not in user.models:
            raise PermissionDenied(f"this user may not use the model '{route.alias}'")
        request = self._policy.apply(principal.policy, route.alias, request)
        if route.degrade_to is not None and (
            await self._limiter.budget_used(principal) >= route.degrade_at
        ):
            route = self.router.resolve(route.degrade_to)  # a cheaper model for a low budget
        if route.max_tokens is not None and (
            request.max_tokens is None or request.max_tokens > route.max_tokens
        ):
            request = dataclasses.replace(request, max_tokens=route.max_tokens)
        targets = [target.label for target in route.targets]
        try:
            reservation = await self._limiter.admit(principal, targets, request)
        except (RateLimited, BudgetExceeded) as exc:
            self.metrics.refused(exc.code)
            raise
        request_id = new_request_id()
        started, started_at = self._clock(), datetime.now(UTC)
        try:
            # Queued now, committed while the upstream request goes out; the session waits for
            # the commit before it relays the first upstream byte (see `StreamSession.events`).
            opened = self._ledger.open_soon(
                OpenedRow(
                    request_id=request_id,
                    instance=self._instance,
                    started_at=started_at,
                    key_id=principal.key_id,
                    end_user=principal.end_user,
                    alias=route.alias,
                    api=api,
                )
            )
            stream_id = request_id if taking_over is None else taking_over[0]
            canceled = await self._state.register_stream(stream_id, principal.key_id)
        except BaseException:
            await reservation.release()
            raise
        self.metrics.opened()
        return StreamSession(
            request_id=request_id,
            route=route,
            request=request,
            canceled=canceled,
            started=started,
            clock=self._clock,
            end_stream=self._end_stream,
            record=self._record,
            reservation=reservation,
            prices=self._prices,
            principal=principal,
            opened=opened,
            order=route.order(self.router.rng),
            breakers=self.router.breakers,
            metrics=self.metrics,
            taking_over=taking_over,
            api=api,
            started_at=started_at,
            on_settled=self.on_settled,
            traceparent=traceparent,
        )

    @property
    def shared_state(self) -> bool:
        """Whether the state (and so resume logs) outlives this process (Redis)."""
        return self._state.shared

    async def claim(self, request_id: str) -> bytes | None:
        """The request kept with a running stream's log (`open_log(request=…)`), to this caller
        only: None if another instance took the stream over already, or it ended."""
        return await self._state.claim_request(request_id)

    async def revoked(self, key_id: str) -> None:
        """Tell every instance that `key_id` was revoked (see `REVOKED_CHANNEL`)."""
        try:
            await self._state.publish(REVOKED_CHANNEL, key_id)
        except Exception as exc:  # the others still see it within their key cache's lifetime
            _log.warning("keys.revocation_not_broadcast", key_id=key_id, error=type(exc).__name__)

    def open_log(
        self, session: StreamSession, ttl_s: float, request: bytes | None = None
    ) -> EventLog:
        """Start `session`'s resume log, readable by the same caller for `ttl_s` after it ends;
        for a stream taken over, go on with the log of the stream it continues. `request`, if
        given, is kept with the log while it runs, for an instance that may take it over."""
        return self._state.open_log(
            session.stream_id,
            _owner(session.principal),
            ttl_s,
            taken_over=session.stream_id != session.request_id,
            request=request,
        )

    async def read_log(
        self, principal: Principal, request_id: str, after: int
    ) -> AsyncIterator[bytes]:
        """The frames of a stream's resume log after seq `after`; raises `NotFound`."""
        frames = await self._state.read_log(request_id, _owner(principal), after)
        if frames is None:
            raise NotFound(
                f"no resumable stream '{request_id}' for this caller (unknown, or it expired)"
            )
        return frames

    def reconfigure(self, *, router: Router, prices: Prices, policy: PolicyEnforcer) -> None:
        """Admit new requests with `router`, `prices` and `policy` from now on (a config reload).

        Sessions already admitted keep the route, prices and policy they were admitted with;
        the breakers go on where they were as long as `router` shares them. The limiter
        reserves at the new prices too; metrics read breaker states through `router`.
        """
        self.router = router
        self._prices = prices
        self._policy = policy
        self._limiter.reprice(prices)
        self.metrics.follow(router)

    async def readiness(self) -> dict[str, str]:
        """`ok` or the reason per check: ledger, state store, a usable target per alias."""
        return await readiness(self._ledger, self._state, self.router)

    async def cancel(self, principal: Principal, request_id: str) -> None:
        """Stop a running stream started with the same key; raises `NotFound`/`StreamFinished`."""
        result = await self._state.cancel_stream(request_id, principal.key_id)
        if result == "not_found":
            raise NotFound(f"no stream '{request_id}' for this key")
        if result == "finished":
            raise StreamFinished(f"stream '{request_id}' has already finished")

    async def _end_stream(self, stream_id: str) -> None:
        """Mark the stream finished: a cancel now gets `StreamFinished`. A state store that is
        down is logged (and counted by the store), never raised into the response."""
        try:
            await self._state.finish_stream(stream_id)
        except Exception as exc:
            _log.warning("state.finish_failed", request_id=stream_id, error=type(exc).__name__)

    async def _record(self, row: SettledRow) -> None:
        """Close the row. A database that is down now is logged, never raised into the
        response; a row left open becomes `interrupted` at the instance's next start."""
        try:
            await self._ledger.settle(row)
        except Exception as exc:
            _log.error("ledger.settle_failed", request_id=row.request_id, error=type(exc).__name__)


def _owner(principal: Principal) -> str:
    """Who may resume a stream: the same key, and the same end user when there is one."""
    if principal.end_user is None:
        return principal.key_id
    return f"{principal.key_id}\x00{principal.end_user}"


async def _committed(opened: asyncio.Future[None]) -> None:
    """Wait for a row's commit; a ledger that cannot take it stops the stream (503)."""
    try:
        await asyncio.shield(opened)
    except Exception as exc:
        _log.error("ledger.open_failed", logger="estuary.gateway", error=type(exc).__name__)
        raise ServiceUnavailable("the usage ledger cannot record this request right now") from None


class StreamSession:
    """One admitted request: its events, its bookkeeping, and its single settlement."""

    def __init__(
        self,
        *,
        request_id: str,
        route: Route,
        request: UpstreamRequest,
        canceled: asyncio.Future[None],
        started: float,
        clock: Callable[[], float],
        end_stream: Callable[[str], Awaitable[None]],
        record: Callable[[SettledRow], Awaitable[None]],
        reservation: Reservation,
        prices: Prices,
        principal: Principal,
        opened: asyncio.Future[None],
        order: tuple[Target, ...],
        breakers: Breakers,
        metrics: GatewayMetrics,
        taking_over: tuple[str, str] | None = None,
        api: Literal["openai", "anthropic", "app"] = "app",
        started_at: datetime | None = None,
        on_settled: Callable[[SettledRow, StreamSession], None] | None = None,
        traceparent: str | None = None,
    ) -> None:
        self.request_id = request_id
        self.api = api
        self.traceparent = traceparent  # as the caller sent it; telemetry validates it
        self.started_at = started_at or datetime.now(UTC)  # admission, wall clock (= the row's)
        self._on_settled = on_settled
        # The id clients know the stream by: this request's, or the one it takes over.
        self.stream_id = request_id if taking_over is None else taking_over[0]
        self._continuing = None if taking_over is None else taking_over[1]
        self.route = route
        self.request = request
        self.canceled = canceled
        self.provider: str | None = None
        self.upstream_model: str | None = None
        self.usage: Usage | None = None
        self.failures: list[Attempt] = []
        self._started = started
        self._clock = clock
        self._end_stream = end_stream
        self._record = record
        self._first_token_at: float | None = None
        self._text: list[str] = []
        self._settled = False
        self._reservation = reservation
        self._prices = prices
        self._principal = principal
        self._opened = opened
        self._order = order
        self._breakers = breakers
        self._metrics = metrics
        self.budget_stopped = False
        # Mid-stream failover: the text chunks relayed before each seam, and the usage the
        # earlier attempts reported together (None once one of them reported none).
        self._seams: tuple[int, ...] = ()
        self._earlier: Usage | None = None

    async def events(self) -> AsyncGenerator[StreamEvent, None]:
        """The upstream's events through fallback, noting provider, first token, text and usage."""
        text = self._text
        reservation = self._reservation if self._reservation.watches else None
        chars = checked = counted = 0  # answer characters: seen, at the last check; tokens so far
        opened: asyncio.Future[None] | None = self._opened
        if self._continuing is None:
            upstream = stream_with_fallback(
                self.route, self.request, self.failures, order=self._order, breakers=self._breakers
            )
        else:
            upstream = stream_continuation(
                self.route,
                self.request,
                self._continuing,
                self.failures,
                order=self._order,
                breakers=self._breakers,
            )
        async with aclosing(upstream) as events:
            async for event in events:
                if opened is not None:  # the first event: its ledger row must exist first
                    await _committed(opened)
                    opened = None
                if type(event) is TextDelta:
                    text.append(event.text)
                    if self._first_token_at is None:
                        self._first_token_at = self._clock()
                    if reservation is not None:
                        chars += len(event.text)
                        if chars - checked >= _CHECK_CHARS:
                            counted += estimate_tokens("".join(text)[checked:])
                            checked = chars
                            if not await reservation.progress(counted):
                                self.budget_stopped = True
                                yield event
                                yield StreamEnd(reason="budget")
                                return
                elif isinstance(event, StreamStart):
                    self.provider, self.upstream_model = event.provider, event.model
                elif isinstance(event, Usage):
                    self.usage = event  # the running attempt's; a later report replaces it
                elif type(event) is Failover:
                    if self.provider is None and self._continuing is not None:
                        # a takeover's seam: the target answering from here, not a failover
                        self.provider, self.upstream_model = event.provider, event.model
                    else:
                        self._failed_over(event, len(text))
                elif self._first_token_at is None and event.kind in ("reasoning", "tool_call"):
                    self._first_token_at = self._clock()
                yield event

    @property
    def principal(self) -> Principal:
        return self._principal

    def _failed_over(self, event: Failover, chunks: int) -> None:
        """Another target continues the answer from here; the row names it from now on."""
        if self.usage is None or (self._seams and self._earlier is None):
            self._earlier = None  # an attempt reported nothing: the whole count is estimated
        else:
            self._earlier = _added(self._earlier, self.usage)
        self.usage = None
        self._seams += (chunks,)
        self.provider, self.upstream_model = event.provider, event.model

    def token_count(self, *, complete: bool) -> TokenCount:
        """Reported usage if the upstream gave it, else an estimate (`partial` if cut short).

        After a mid-stream failover the usage is the sum over the attempts when every one of
        them reported it; else all is estimated, each attempt's prompt with the answer text it
        was given to continue.
        """
        usage = self.usage
        if self._seams:
            usage = None if usage is None or self._earlier is None else _added(self._earlier, usage)
        if usage is not None:
            return TokenCount(
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                source="reported",
            )
        prompt = estimate_tokens(prompt_text(self.request))
        given = sum(estimate_tokens("".join(self._text[:seam])) for seam in self._seams)
        return TokenCount(
            prompt_tokens=prompt * (len(self._seams) + 1) + given,
            completion_tokens=estimate_tokens("".join(self._text)),
            source="estimated" if complete and not self.budget_stopped else "partial",
        )

    async def settle(self, outcome: Outcome) -> TokenCount:
        """Settle the reservation (the caller's concurrency slot is free at once), mark the
        stream finished, count it in the metrics and close its ledger row; only the first call
        counts. The log line comes once the row is committed."""
        tokens = self.token_count(complete=outcome.status == "completed")
        if self._settled:
            return tokens
        self._settled = True
        now, ended_at = self._clock(), datetime.now(UTC)
        started = self.provider is not None
        prompt = tokens.prompt_tokens if started else None  # no upstream answered: unknown
        completion = tokens.completion_tokens if started else None
        target = f"{self.provider}/{self.upstream_model}" if started else None
        cost = self._prices.cost_micro(target, prompt, completion)
        try:
            await self._reservation.settle(prompt, completion, cost)
        except Exception as exc:  # the state store is down: its buckets refill by themselves
            _log.warning(
                "limits.settle_failed", request_id=self.request_id, error=type(exc).__name__
            )
        await self._end_stream(self.stream_id)
        ttft = self._first_token_at
        row = SettledRow(
            request_id=self.request_id,
            ended_at=ended_at,
            status=outcome.status,
            finish_reason=outcome.finish_reason,
            provider=self.provider,
            upstream_model=self.upstream_model,
            prompt_tokens=prompt,
            completion_tokens=completion,
            token_source=tokens.source if started else None,
            cost_micro=cost,
            error_code=outcome.error.code if outcome.error is not None else None,
            ttft_ms=None if ttft is None else (ttft - self._started) * 1000,
            duration_ms=(now - self._started) * 1000,
            attempts=len(self.failures) + started,
            failures=tuple(f"{f.target}: {f.error.code}" for f in self.failures),
        )
        self._count(row, outcome.error)
        if self._on_settled is not None:
            self._on_settled(row, self)
        with contextlib.suppress(Exception):  # a row that could not be opened: nothing to close
            await self._opened
            await self._record(row)
        self._log_end(row, outcome)
        return tokens

    def _log_end(self, row: SettledRow, outcome: Outcome) -> None:
        _log.info(
            "stream.end",
            logger="estuary.gateway",
            request_id=row.request_id,
            key_id=self._principal.key_id,
            end_user=self._principal.end_user,
            alias=self.route.alias,
            provider=row.provider,
            status=row.status,
            finish_reason=row.finish_reason,
            error=outcome.error.message if outcome.error is not None else None,
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
            token_source=row.token_source,
            cost_micro=row.cost_micro,
            ttft_ms=None if row.ttft_ms is None else round(row.ttft_ms, 1),
            duration_ms=round(row.duration_ms, 1),
            attempts=row.attempts,
        )

    def _count(self, row: SettledRow, error: EstuaryError | None) -> None:
        """The row in the metrics (once per stream, never per token)."""
        # The answering target's own failure; one before any answer is among `failures`.
        upstream = (
            error
            if isinstance(error, UpstreamError)
            and self.provider is not None
            and not any(f.error is error for f in self.failures)
            else None
        )
        self._metrics.settled(
            alias=self.route.alias,
            target=row.target,
            status=row.status,
            ttft_s=None if row.ttft_ms is None else row.ttft_ms / 1000,
            duration_s=row.duration_ms / 1000,
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
            cost_micro=row.cost_micro,
            failures=self.failures,
            error=upstream,
        )


def _added(earlier: Usage | None, later: Usage) -> Usage:
    """Two attempts' usage together (mid-stream failover); `later` alone if there is no other."""
    if earlier is None:
        return later
    return Usage(
        prompt_tokens=earlier.prompt_tokens + later.prompt_tokens,
        completion_tokens=earlier.completion_tokens + later.completion_tokens,
    )
