"""The fallback rule, written once: switch target only before the first event.

A provider yields its first event (`StreamStart`) only after the upstream answered and sent a
well-formed message, so everything that can go wrong before any byte of the answer exists — refused
connection, timeout, 429, 5xx, an error object as the first message — moves on to the next target.
After the first event the stream stays with its target; a later failure propagates to the caller,
which turns it into an in-band error. Must not import the HTTP layer.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

from estuary.core.errors import UpstreamError, UpstreamProtocolError
from estuary.core.events import StreamEvent
from estuary.core.requests import UpstreamRequest
from estuary.routing.routes import Route

__all__ = ["stream_with_fallback"]


async def stream_with_fallback(
    route: Route, request: UpstreamRequest, failures: list[UpstreamError]
) -> AsyncGenerator[StreamEvent, None]:
    """Try `route`'s targets in order until one yields its first event; then stay with it.

    Each failed attempt is appended to `failures`. When every target failed, the last failure is
    raised (its status is the most specific answer for the client).
    """
    for target in route.targets:
        async with aclosing(
            target.provider.stream(request, target.model, route.timeouts)
        ) as events:
            try:
                first = await anext(events)
            except StopAsyncIteration:
                failures.append(UpstreamProtocolError(target.provider.name, "empty stream"))
                continue
            except UpstreamError as exc:
                failures.append(exc)
                if not exc.fallback:
                    raise
                continue
            yield first
            async for event in events:
                yield event
            return
    raise failures[-1]
