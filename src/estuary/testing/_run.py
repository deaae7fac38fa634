"""`run_fake_upstream`: the blocking entry point behind `estuary fake-upstream`.

Imports nothing from estuary but its own package.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from collections.abc import Callable, Mapping

from ._scenario import Scenario
from ._server import FakeUpstream

__all__ = ["run_fake_upstream"]


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop  # optional speed-up, imported only when running
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_fake_upstream(
    host: str,
    port: int,
    default: Scenario,
    *,
    api_key: str | None = None,
    control: bool = False,
    scripts: Mapping[str, Scenario] | None = None,
) -> None:
    """Serve a `FakeUpstream` on `host:port` (uvloop when installed) until SIGINT or SIGTERM.

    Prints `fake upstream listening on http://<host>:<port>/v1` once it accepts connections.
    With `control`, it records requests and serves them at `GET /_fake/requests` (cleared by
    `DELETE`), for a benchmark in another process. `scripts` maps model names to scenarios.
    """
    fake = FakeUpstream(default, api_key=api_key, record_requests=False, control=control)
    for model, scenario in (scripts or {}).items():
        fake.script(model, scenario)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve(fake, host, port))


async def _serve(fake: FakeUpstream, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await fake.start(host, port)
    _quiet_gc()
    try:
        sys.stdout.write(f"fake upstream listening on {fake.base_url}\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await fake.stop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _quiet_gc() -> None:
    """Keep the cyclic GC out of the measurements this server takes part in.

    With the default schedule a full collection paused it for 15-30 ms every few seconds under
    benchmark load, and every stream it was serving at that moment, through any gateway or none,
    got that much later: noise in every tail latency. Serving a stream leaves no cycles, so
    collections can be rare; start-up objects are frozen out of them.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
