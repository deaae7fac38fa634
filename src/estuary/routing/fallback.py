"""The fallback rule, written once: switch target only before the first event.

A provider yields its first event (`StreamStart`) only after the upstream answered and sent a
well-formed message, so everything that can go wrong before any byte of the answer exists — refused
connection, timeout, 429, 5xx, an error object as the first message — moves on to the next target.
After the first event the stream stays with its target; a later failure propagates to the caller,
which turns it into an in-band error. Targets whose circuit breaker is open are skipped; each
attempt's outcome is reported to its breaker. Must not import the HTTP layer.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass

from estuary.core.errors import UpstreamError, UpstreamProtocolError, UpstreamUnavailable
from estuary.core.events import StreamEvent
from estuary.core.requests import UpstreamRequest
from estuary.routing.breaker import Breaker, Breakers
from estuary.routing.routes import Route, Target

__all__ = ["Attempt", "stream_with_fallback"]


@dataclass(frozen=True, slots=True)
class Attempt:
    """A target that was tried and failed, and why."""

    target: str  # "provider/model"
    error: UpstreamError


async def stream_with_fallback(
    route: Route,
    request: UpstreamRequest,
    failures: list[Attempt],
    *,
    order: Sequence[Target] | None = None,
    breakers: Breakers | None = None,
) -> AsyncGenerator[StreamEvent, None]:
    """Try `route`'s targets (in `order`, default the route's) until one yields its first event.

    Each failed attempt is appended to `failures`. When every target failed, the last failure is
    raised (its status is the most specific answer for the client); when every target's breaker
    is open, `UpstreamUnavailable` with the time until the first one lets a probe through.
    """
    skipped: list[Breaker] = []
    for target in order or route.targets:
        breaker = breakers[target.label] if breakers is not None else None
        if breaker is not None and not breaker.allow():
            skipped.append(breaker)
            continue
        settled = False
        try:
            async with aclosing(
                target.provider.stream(request, target.model, route.timeouts)
            ) as events:
                try:
                    first = await anext(events)
                except StopAsyncIteration:
                    error = UpstreamProtocolError(target.provider.name, "empty stream")
                    failures.append(Attempt(target.label, error))
                    _failed(breaker, error)
                    settled = True
                    continue
                except UpstreamError as exc:
                    failures.append(Attempt(target.label, exc))
                    if exc.fallback:
                        _failed(breaker, exc)
                        settled = True
                        continue
                    raise
                if breaker is not None:
                    breaker.succeeded()
                settled = True
                yield first
                try:
                    async for event in events:
                        yield event
                except UpstreamError as exc:
                    _failed(breaker, exc)  # the target died mid-stream
                    raise
                return
        finally:
            if breaker is not None and not settled:
                breaker.released()  # a probe that proved nothing (the client left, a 400)
    if failures:
        raise failures[-1].error
    wait = min(b.retry_in() for b in skipped) if skipped else 0.0
    raise UpstreamUnavailable(
        route.alias,
        "every target is failing and paused (circuit breaker open)",
        retry_after_s=max(1.0, wait),
    )


def _failed(breaker: Breaker | None, error: UpstreamError) -> None:
    if breaker is not None:
        breaker.failed(error.retry_after_s)
