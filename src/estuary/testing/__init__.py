"""Public test helpers: a scripted, OpenAI-compatible fake upstream over real sockets.

Used by the gateway's end-to-end tests (in-process, on a loopback port), by
`estuary fake-upstream` for demos, and by the load benchmark as the direct baseline::

    async with FakeUpstream(Scenario(tokens=4, gap_s=0.01)) as upstream:
        upstream.enqueue(Scenario(fail_status=429, retry_after="1"))
        ...  # point a client or the gateway at upstream.base_url
        (seen,) = await upstream.wait_for_requests(1)

Must not import other estuary modules (only `estuary.core`, and it needs none of it).
"""

from __future__ import annotations

from ._record import SeenRequest
from ._run import run_fake_upstream
from ._scenario import FakeToolCall, Scenario, fake_usage
from ._server import DEFAULT_MODEL, FakeUpstream

__all__ = [
    "DEFAULT_MODEL",
    "FakeToolCall",
    "FakeUpstream",
    "Scenario",
    "SeenRequest",
    "fake_usage",
    "run_fake_upstream",
]
