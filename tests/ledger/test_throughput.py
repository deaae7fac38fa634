"""Write latency and throughput of the SQL stores, reported (run with -s to see), never asserted."""

from __future__ import annotations

import asyncio
import sys
import time

from estuary.ledger import UsageFilter
from tests.ledger.helpers import INSTANCE, Database, opened, settled

SEQUENTIAL = 300
CONCURRENT = 1000


async def test_write_latency_and_throughput_are_reported(sql_database: Database) -> None:
    """Mean latency of one open() alone, and throughput of 1,000 concurrent opens (and settles)."""
    store = sql_database.store()
    await store.start(INSTANCE)
    try:
        began = time.perf_counter()
        for n in range(SEQUENTIAL):
            await store.open(opened(f"seq_{n}"))
        latency_ms = (time.perf_counter() - began) / SEQUENTIAL * 1000

        began = time.perf_counter()
        await asyncio.gather(*(store.open(opened(f"par_{n}")) for n in range(CONCURRENT)))
        opens_s = CONCURRENT / (time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(store.settle(settled(f"par_{n}")) for n in range(CONCURRENT)))
        settles_s = CONCURRENT / (time.perf_counter() - began)

        (total,) = await store.usage(UsageFilter())
        assert total.requests == SEQUENTIAL + CONCURRENT
    finally:
        await store.aclose()
    sys.stdout.write(
        f"\n[{sql_database.backend}] one open(): {latency_ms:.3f} ms mean over {SEQUENTIAL}; "
        f"{CONCURRENT} concurrent opens: {opens_s:,.0f}/s; settles: {settles_s:,.0f}/s\n"
    )
