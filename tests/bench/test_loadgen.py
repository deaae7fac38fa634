"""The benchmark's load generator counts what really arrived, and its cancel really hangs up."""

from __future__ import annotations

import asyncio

from estuary.bench.harness import Measurement
from estuary.bench.loadgen import Target, run_closed_loop
from estuary.bench.report import summarize
from estuary.testing import FakeUpstream, Scenario


def target(fake: FakeUpstream) -> Target:
    return Target(
        name="direct", host="127.0.0.1", port=fake.port, path="/v1/chat/completions", model="m"
    )


async def test_streams_are_timed_and_counted() -> None:
    """Every token and the [DONE] of each stream are seen; TTFT and gaps are measured."""
    async with FakeUpstream(Scenario(tokens=5, gap_s=0.01)) as fake:
        results = await run_closed_loop(target(fake), concurrency=3, total=6, tag="t")
    assert len(results) == 6
    assert all(r.ok(5) for r in results)
    assert {r.user for r in results} == {f"t-{n}" for n in range(6)}
    assert all(r.ttft_s is not None and r.ttft_s > 0 for r in results)
    assert all(r.mean_gap_s is not None and r.mean_gap_s > 0 for r in results)


async def test_close_after_hangs_up_and_the_upstream_sees_it() -> None:
    """`close_after` hangs up after N tokens; the upstream records that the client left."""
    async with FakeUpstream(Scenario(tokens=50, gap_s=0.02)) as fake:
        (result,) = await run_closed_loop(
            target(fake), concurrency=1, total=1, tag="c", close_after=3
        )
        (seen,) = fake.requests
        await asyncio.wait_for(seen.client_gone.wait(), timeout=5)
    assert result.tokens == 3
    assert result.closed_by_client_at is not None
    assert not result.done
    assert seen.chunks_sent < 50


def test_summary_derives_rates_and_percentiles() -> None:
    """The report's derived numbers follow from the raw measurement."""
    m = Measurement(
        target="estuary",
        scenario="c2",
        concurrency=2,
        streams=4,
        errors=0,
        wall_s=2.0,
        target_cpu_s=0.4,
        loadgen_cpu_s=0.1,
        peak_rss=3 * 2**20,
        idle_rss=2**20,
        ttft_s=[0.1, 0.2, 0.3, 0.4],
        gaps_s=[0.02, 0.02],
        tokens=200,
    )
    row = summarize(m)
    assert row["streams_per_s"] == 2.0
    assert row["cpu_s_per_1k_streams"] == 100.0
    assert row["cpu_us_per_chunk"] == 2000.0
    assert row["ttft_p50_ms"] in (200.0, 300.0)
    assert row["rss_kb_per_stream"] == 1024.0
