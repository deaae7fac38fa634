"""A separate process for the Redis state tests: a producer that gets killed mid-stream.

    python -m tests.state.child produce URL PREFIX REQUEST_ID OWNER  # open the log, append
                                                                     # frames 1 and 2, print
                                                                     # "ready", then wait forever

Run from the repository root, so `tests` is importable.
"""

from __future__ import annotations

import asyncio
import sys

from estuary.state.redis import RedisState


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def produce(url: str, prefix: str, request_id: str, owner: str) -> None:
    """Write two frames of a log, say so, and never close the log or the store on purpose."""
    store = RedisState(url, prefix=prefix, on_failure="closed")
    await store.start()
    log = store.open_log(request_id, owner, ttl_s=60)
    log.append(1, b"one")
    log.append(2, b"two")
    # Wait until the log is in Redis (with its liveness key): nothing local to wait on.
    while await store.read_log(request_id, owner, 0) is None:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    _say("ready")
    await asyncio.Event().wait()


if __name__ == "__main__":
    match sys.argv[1:]:
        case ["produce", url, prefix, request_id, owner]:
            asyncio.run(produce(url, prefix, request_id, owner))
        case _:
            raise SystemExit(__doc__)
