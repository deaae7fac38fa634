"""A separate process for the ledger tests: one that gets killed mid-write, one that just starts.

    python -m tests.ledger.child crash URL INSTANCE N   # open N rows, settle the even ones,
                                                        # print "ready", then open rows forever,
                                                        # printing "acked <id>" once each is durable
    python -m tests.ledger.child start URL INSTANCE AT  # at time.time() == AT (so that several
                                                        # children collide): start (migrate),
                                                        # print the count, close

Run from the repository root, so `tests` is importable.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time

from estuary.ledger import open_store
from tests.ledger.helpers import opened, settled

WORKERS = 8  # concurrent writers after "ready", so writes are in flight when the kill comes


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def crash(url: str, instance: str, count: int) -> None:
    """Write, report, keep writing until killed; never closes the store on purpose."""
    store = open_store(url)
    await store.start(instance)
    await asyncio.gather(*(store.open(opened(f"row_{n}", instance=instance)) for n in range(count)))
    await asyncio.gather(*(store.settle(settled(f"row_{n}")) for n in range(0, count, 2)))
    _say("ready")
    ids = itertools.count()

    async def keep_opening() -> None:
        while True:
            request_id = f"late_{next(ids)}"
            await store.open(opened(request_id, instance=instance))
            _say(f"acked {request_id}")

    await asyncio.gather(*(keep_opening() for _ in range(WORKERS)))


async def start(url: str, instance: str, at: float) -> None:
    """At `at`, start a store (which migrates) and say how many rows it interrupted."""
    store = open_store(url)
    await asyncio.sleep(max(0.0, at - time.time()))
    try:
        _say(str(await store.start(instance)))
    finally:
        await store.aclose()


def main(argv: list[str]) -> None:
    match argv:
        case ["crash", url, instance, count]:
            asyncio.run(crash(url, instance, int(count)))
        case ["start", url, instance, at]:
            asyncio.run(start(url, instance, float(at)))
        case _:
            raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
