"""Writing a pre-encoded `StreamPlan` to a live aiohttp response, on the scenario's clock.

Each `response.write()` goes straight to the transport (aiohttp only waits on drain when
more than 64 KiB are buffered, and sets TCP_NODELAY), so every chunk leaves when written.
Imports nothing from estuary.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from ._record import SeenRequest, mark_client_gone
from ._scenario import Scenario
from ._wire import ERROR_FRAME, StreamPlan

__all__ = ["pause", "send_stream", "split_inside_utf8"]


async def pause(seconds: float) -> None:
    """Sleep when there is something to wait for; a zero delay costs no loop iteration."""
    if seconds > 0:
        await asyncio.sleep(seconds)


def split_inside_utf8(message: bytes) -> tuple[bytes, ...]:
    """Cut after the lead byte of the first multi-byte UTF-8 character, if there is one."""
    for index, byte in enumerate(message):
        if byte >= 0xC0:  # a lead byte; continuation bytes follow it
            return (message[: index + 1], message[index + 1 :])
    return (message,)


class _Writer:
    """Writes messages whole, or cut the way the scenario asks."""

    __slots__ = ("_response", "_scenario")

    def __init__(self, response: web.StreamResponse, scenario: Scenario) -> None:
        self._response = response
        self._scenario = scenario

    async def send(self, *messages: bytes) -> None:
        scenario = self._scenario
        if not scenario.split_utf8 and scenario.chunk_bytes is None:
            await self._response.write(b"".join(messages))
            return
        pieces = [
            piece
            for message in messages
            if message
            for piece in (split_inside_utf8(message) if scenario.split_utf8 else (message,))
        ]
        if (size := scenario.chunk_bytes) is not None:
            pieces = [p[i : i + size] for p in pieces for i in range(0, len(p), size)]
        for number, piece in enumerate(pieces):
            if number:
                await pause(scenario.fragment_pause_s)
            await self._response.write(piece)


async def send_stream(
    request: web.Request,
    response: web.StreamResponse,
    plan: StreamPlan,
    scenario: Scenario,
    seen: SeenRequest,
    stopping: asyncio.Event,
) -> None:
    """Write the plan to a prepared response; a failed write marks the client gone."""
    try:
        await _write_plan(request, response, plan, scenario, seen, stopping)
    except ConnectionResetError:
        # aiohttp raises ClientConnectionResetError (a ConnectionResetError) when the client
        # closed the socket between two writes.
        mark_client_gone(seen)


async def _write_plan(
    request: web.Request,
    response: web.StreamResponse,
    plan: StreamPlan,
    scenario: Scenario,
    seen: SeenRequest,
    stopping: asyncio.Event,
) -> None:
    writer = _Writer(response, scenario)
    count = len(plan.tokens) if plan.fault is None else plan.cut
    await pause(scenario.ttft_s)
    if count == 0 and plan.head:
        await writer.send(plan.head)
    for index in range(count):
        if index == 0:
            await writer.send(plan.head, plan.tokens[0])
            seen.first_chunk_at = time.monotonic()
        else:
            await pause(scenario.gap_s)
            await writer.send(plan.tokens[index])
        seen.chunks_sent += 1
    match plan.fault:
        case None:
            await writer.send(*plan.tail)
        case "error":
            await writer.send(ERROR_FRAME)
            await response.write_eof()
        case "drop":
            _close(request)
        case "stall":
            # Keep the connection open and silent; the client leaving cancels this handler.
            await stopping.wait()
            _close(request)


def _close(request: web.Request) -> None:
    """Close the connection mid-body: what was written is flushed, then FIN, no last chunk."""
    if (transport := request.transport) is not None:
        transport.close()
