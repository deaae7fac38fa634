"""The fallback rule, written once: switch target only before the first event.

A provider yields its first event (`StreamStart`) only after the upstream answered and sent a
well-formed message, so everything that can go wrong before any byte of the answer exists — refused
connection, timeout, 429, 5xx, an error object as the first message — moves on to the next target.
After the first event the stream stays with its target; a later failure propagates to the caller,
which turns it into an in-band error. Targets whose circuit breaker is open are skipped; each
attempt's outcome is reported to its breaker. Must not import the HTTP layer.

One exception, off by default (`Route.midstream_failover`, experimental): when a target dies
after answer text reached the client and before any tool call did, a later target that can
continue a partial answer (`providers.base.ContinuesPrefix`) is given the text so far as the start
of its answer. Routing then yields a `Failover` event (the seam) and that target's continuation,
without its `StreamStart` (the stream has started) and without its reasoning (thinking about how
to go on is not part of the answer). Only content text counts as "reached the client": a stream
that has shown only reasoning is not continued. With the flag off, relaying does no extra work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass

from estuary.core.errors import UpstreamError, UpstreamProtocolError, UpstreamUnavailable, kept
from estuary.core.events import (
    Failover,
    ReasoningDelta,
    StreamEvent,
    StreamStart,
    TextDelta,
    ToolCall,
)
from estuary.core.requests import ChatRequest, UpstreamRequest
from estuary.core.usage import estimate_tokens
from estuary.providers.base import ContinuesPrefix
from estuary.routing.breaker import Breaker, Breakers
from estuary.routing.routes import Route, Target

__all__ = ["Attempt", "stream_continuation", "stream_with_fallback"]


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
    is open, `UpstreamUnavailable` with the time until the first one lets a probe through. A
    target that dies mid-stream is in `failures` only once another one continued its answer.
    """
    targets = order or route.targets
    skipped: list[Breaker] = []
    for position, target in enumerate(targets):
        breaker = breakers[target.label] if breakers is not None else None
        if breaker is not None and not breaker.allow():
            skipped.append(breaker)
            continue
        answer = _Answer() if route.midstream_failover else None
        died: UpstreamError | None = None
        settled = False
        try:
            async with aclosing(
                target.provider.stream(request, target.model, route.timeouts)
            ) as events:
                first = await _first_event(target, events)
                if isinstance(first, UpstreamError):
                    failures.append(Attempt(target.label, first))
                    if not first.fallback:
                        raise first
                    _failed(breaker, first)
                    settled = True
                    continue
                if breaker is not None:
                    breaker.succeeded()
                settled = True
                yield first
                try:
                    if answer is None:  # the hot path: nothing but relaying
                        async for event in events:
                            yield event
                    else:
                        async for event in events:
                            answer.note(event)
                            yield event
                except UpstreamError as exc:
                    _failed(breaker, exc)  # the target died mid-stream
                    if answer is None or not answer.continuable(exc):
                        raise
                    died = kept(exc)
                else:
                    return
        finally:
            if breaker is not None and not settled:
                breaker.released()  # a probe that proved nothing (the client left, a 400)
        if died is not None:  # a continuable death, its stream closed: continue elsewhere
            rest = _continue(
                route, request, failures, breakers, targets[position + 1 :], answer, died, target
            )
            async with aclosing(rest):
                async for event in rest:
                    yield event
            return
    if failures:
        raise failures[-1].error
    wait = min(b.retry_in() for b in skipped) if skipped else 0.0
    raise UpstreamUnavailable(
        route.alias,
        "every target is failing and paused (circuit breaker open)",
        retry_after_s=max(1.0, wait),
    )


async def stream_continuation(
    route: Route,
    request: UpstreamRequest,
    partial: str,
    failures: list[Attempt],
    *,
    order: Sequence[Target] | None = None,
    breakers: Breakers | None = None,
) -> AsyncGenerator[StreamEvent, None]:
    """The rest of an answer whose producer is gone (a stream taken over from a dead instance).

    `partial` is the answer text the client already has. Yields `Failover` (the seam) and the
    continuation from the first target in `order` that can continue a partial answer; raises
    an `UpstreamError` when none of them can (or all failed).
    """
    answer = _Answer()
    answer.parts.append(partial)
    gone = UpstreamError(
        route.alias,
        "the stream's instance went away and no target of this model can continue an answer",
    )
    rest = _continue(route, request, failures, breakers, order or route.targets, answer, gone, None)
    async with aclosing(rest):
        async for event in rest:
            yield event


class _Answer:
    """What of the answer reached the client: its text, and whether a tool call did."""

    __slots__ = ("parts", "tool_called")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.tool_called = False

    def note(self, event: StreamEvent) -> None:
        if type(event) is TextDelta:
            self.parts.append(event.text)
        elif type(event) is ToolCall:
            self.tool_called = True

    def continuable(self, error: UpstreamError) -> bool:
        """A failure another target may take over from: text shown, no tool call, not a 400."""
        return error.fallback and not self.tool_called and any(self.parts)

    def passes(self, event: StreamEvent) -> bool:
        """Whether a continuation's `event` goes on to the client (then noted).

        Not its start (the stream has started) and not its reasoning (thinking about how to
        go on is not part of the answer).
        """
        if type(event) is StreamStart or type(event) is ReasoningDelta:
            return False
        self.note(event)
        return True


async def _continue(
    route: Route,
    request: UpstreamRequest,
    failures: list[Attempt],
    breakers: Breakers | None,
    later: Sequence[Target],
    answer: _Answer,
    died: UpstreamError,
    dead: Target | None,
) -> AsyncGenerator[StreamEvent, None]:
    """`Failover` and the rest of the answer from the first of `later` that can continue it.

    Raises `died` (the failure that ended `dead`'s stream) when none can. A target that takes
    over is asked for the whole text so far; if it dies too, the next capable one takes over
    from there. A death is recorded in `failures` once a successor answered.
    """
    for target in later:
        breaker = breakers[target.label] if breakers is not None else None
        prefixed = _continuation(target, request, "".join(answer.parts))
        if prefixed is None or (breaker is not None and not breaker.allow()):
            continue
        settled = False
        try:
            async with aclosing(
                target.provider.stream(prefixed, target.model, route.timeouts)
            ) as events:
                first = await _first_event(target, events)
                if isinstance(first, UpstreamError):
                    # Even a 400 only means that this target cannot continue: try the next one.
                    failures.append(Attempt(target.label, first))
                    if first.fallback:
                        _failed(breaker, first)
                        settled = True
                    continue
                if breaker is not None:
                    breaker.succeeded()
                settled = True
                if dead is not None:
                    failures.append(Attempt(dead.label, died))
                yield Failover(provider=target.provider.name, model=target.model, reason=died.code)
                try:
                    if answer.passes(first):
                        yield first
                    async for event in events:
                        if answer.passes(event):
                            yield event
                except UpstreamError as exc:
                    _failed(breaker, exc)
                    if not answer.continuable(exc):
                        raise
                    died, dead = kept(exc), target
                    continue
                return
        finally:
            if breaker is not None and not settled:
                breaker.released()
    raise died


def _continuation(target: Target, request: UpstreamRequest, partial: str) -> ChatRequest | None:
    """The request that makes `target` continue `partial`, or None when it cannot.

    Its `max_tokens` is what is left of the request's once `partial` (estimated) is counted, so
    the whole answer stays about as long as the client allowed.
    """
    provider = target.provider
    if not getattr(provider, "continues_prefix", False) or not isinstance(request, ChatRequest):
        return None
    if not isinstance(provider, ContinuesPrefix):
        return None  # says it can, but has no `continuation()`
    if request.max_tokens is not None:
        left = max(1, request.max_tokens - estimate_tokens(partial))
        request = dataclasses.replace(request, max_tokens=left)
    return provider.continuation(request, partial)


async def _first_event(
    target: Target, events: AsyncIterator[StreamEvent]
) -> StreamEvent | UpstreamError:
    """The stream's first event, or the failure that came instead (an empty stream is one)."""
    try:
        return await anext(events)
    except StopAsyncIteration:
        return UpstreamProtocolError(target.provider.name, "empty stream")
    except UpstreamError as exc:
        return kept(exc)


def _failed(breaker: Breaker | None, error: UpstreamError) -> None:
    if breaker is not None:
        breaker.failed(error.retry_after_s)
