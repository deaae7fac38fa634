"""A finished stream is freed by reference counting alone: it leaves no reference cycles.

The cyclic garbage collector stops the event loop while it runs, so every open stream stalls for
as long as a collection takes (13-15 ms at 200 concurrent streams, measured: the tail of the time
to first token, docs/benchmarks.md). A server whose streams leave no cycles triggers hardly any
collections. This checks the kinds of stream that run most — OpenAI chunks, the app API's
events, a client that hangs up mid-answer — and the failures an outage brings in numbers.
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp

from estuary.testing import FakeUpstream, Scenario
from tests.support import AUTH, RunningGateway, read_app_stream

OPENAI = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": True}
APP = {"model": "chat", "message": "hi"}
_OURS = ("estuary.", "uvicorn.", "starlette.", "uvloop")  # not the test's own client


@contextmanager
def saved_garbage() -> Iterator[Counter[str]]:
    """What the cyclic collector finds among the objects of the servers' modules meanwhile."""
    found: Counter[str] = Counter()
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield found
        gc.collect()
        for thing in gc.garbage:
            kind = type(thing)
            if kind.__module__.startswith(_OURS):
                found[f"{kind.__module__}.{kind.__qualname__}"] += 1
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


async def streams(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    for _ in range(3):
        upstream.enqueue(Scenario(tokens=4))
        async with http.post(f"{gateway.url}/v1/chat/completions", json=OPENAI, headers=AUTH) as r:
            assert r.status == 200
            assert b"[DONE]" in await r.read()
        upstream.enqueue(Scenario(tokens=4))
        async with http.post(f"{gateway.url}/api/chat/stream", json=APP, headers=AUTH) as r:
            assert (await read_app_stream(r)).events[-1]["type"] == "done"
        upstream.enqueue(Scenario(tokens=50, gap_s=0.02))
        async with http.post(f"{gateway.url}/v1/chat/completions", json=OPENAI, headers=AUTH) as r:
            await r.content.readany()  # then hang up mid-answer
    await asyncio.sleep(0.3)  # the server notices the hang-up and settles the stream


async def failures(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """Streams that fail: a fallback, a target dying mid-answer, one failing before any token,
    and a request refused as bad input. Each keeps an exception for later, whose traceback
    would hold the objects that keep it."""
    url = f"{gateway.url}/api/chat/stream"
    for _ in range(3):
        upstream.script("primary-model", Scenario(fail_status=500))
        upstream.script("backup-model", Scenario(tokens=4))
        async with http.post(url, json={**APP, "model": "fallback-chat"}, headers=AUTH) as r:
            assert (await read_app_stream(r)).events[-1]["type"] == "done"
        upstream.script("fake-model", Scenario(tokens=10, drop_after=5))
        async with http.post(url, json=APP, headers=AUTH) as r:
            assert (await read_app_stream(r)).events[-1]["type"] == "error"
        upstream.script("fake-model", Scenario(fail_status=500))
        async with http.post(f"{gateway.url}/v1/chat/completions", json=OPENAI, headers=AUTH) as r:
            assert r.status == 502
        async with http.post(f"{gateway.url}/v1/chat/completions", json={}, headers=AUTH) as r:
            assert r.status == 400
        upstream.script("fake-model", Scenario())


async def test_finished_streams_leave_no_reference_cycles(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    await streams(gateway, upstream, http)  # first use: caches, pools, lazy imports
    with saved_garbage() as found:
        await streams(gateway, upstream, http)
    assert found == Counter()


async def test_failed_streams_leave_no_reference_cycles(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    await failures(gateway, upstream, http)
    with saved_garbage() as found:
        await failures(gateway, upstream, http)
    assert found == Counter()
