"""The benchmark run: start the fake upstream and every target, drive each scenario, measure.

All targets point at the same `estuary fake-upstream` process. The direct target is that upstream
itself — the physical limit every gateway is compared with. Each target runs alone while it is
measured (the others are idle), and is measured by CPU time from /proc, so the numbers are per
gateway, not per machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import os
import resource
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import aiohttp

from estuary.bench.loadgen import StreamResult, Target, run_closed_loop, run_sequential
from estuary.bench.peers import PeerLaunch, litellm_launch, missing_peers, portkey_launch
from estuary.bench.proc import Process, cpu_seconds, rss_bytes, start_process, wait_ready

__all__ = ["BenchPlan", "Measurement", "run_benchmark"]

HOST: Final = "127.0.0.1"
UPSTREAM_PORT: Final = 9100
UPSTREAM_KEY: Final = "sk-bench-upstream-key"
GATEWAY_KEY: Final = "sk-est-bench-key"
TOKENS: Final = 50
LONG_TOKENS: Final = 2000
CANCEL_AFTER: Final = 5
STREAM_S: Final = 0.1 + 0.02 * (TOKENS - 1)  # how long one standard stream lasts
PORTS: Final = MappingProxyType(
    {"estuary": 9200, "estuary-app": 9200, "litellm": 9300, "portkey": 9400}
)

Drive = Callable[[], Awaitable[list[StreamResult]]]


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchPlan:
    """What to run. `scale` shrinks every count for a quick look (1.0 = the recorded run)."""

    targets: tuple[str, ...] = ("direct", "estuary", "litellm", "portkey")
    concurrency: tuple[int, ...] = (50, 200, 1000)
    rounds: int = 3
    latency_streams: int = 50
    long_streams: int = 10
    cancel_streams: int = 200
    repo_root: Path = field(default_factory=Path.cwd)
    workdir: Path = field(default_factory=lambda: Path("bench/results"))
    workers: int = 1
    state_url: str = "memory://"  # Redis for more than one worker


@dataclass(slots=True, kw_only=True)
class Measurement:
    """One scenario against one target."""

    target: str
    scenario: str
    concurrency: int
    streams: int
    errors: int
    wall_s: float
    target_cpu_s: float
    loadgen_cpu_s: float
    peak_rss: int
    idle_rss: int
    ttft_s: list[float]
    gaps_s: list[float]
    tokens: int
    upstream: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Running:
    target: Target
    process: Process | None


async def run_benchmark(
    plan: BenchPlan, on_result: Callable[[Measurement], None], log: Callable[[str], None]
) -> list[Measurement]:
    """Run every scenario of `plan` on every available target; report each result as it lands."""
    plan.workdir.mkdir(parents=True, exist_ok=True)
    targets = [t for t in plan.targets if t not in missing_peers(plan.repo_root)]
    for skipped in sorted(set(plan.targets) - set(targets)):
        log(f"skipping {skipped}: not installed (run bench/peers/setup.sh)")
    results: list[Measurement] = []
    async with _upstream(plan) as upstream:
        for name in targets:
            async with _target(name, plan) as running:
                log(f"measuring {name}")
                for measurement in await _scenarios(running, plan, upstream, log):
                    results.append(measurement)
                    on_result(measurement)
    return results


async def _scenarios(
    running: _Running, plan: BenchPlan, upstream: aiohttp.ClientSession, log: Callable[[str], None]
) -> list[Measurement]:
    target = running.target
    tag = target.name
    long = dataclasses.replace(target, model="long-model")
    await run_sequential(target, count=3, tag=f"{tag}-warmup")
    spread = STREAM_S  # arrivals spread over one stream's length, as users' are
    steps: list[tuple[str, int, Drive, int]] = [
        (
            "latency",
            1,
            partial(run_sequential, target, count=plan.latency_streams, tag=f"{tag}-l"),
            TOKENS,
        ),
        *(
            (
                f"c{n}",
                n,
                partial(
                    run_closed_loop,
                    target,
                    concurrency=n,
                    total=n * plan.rounds,
                    tag=f"{tag}-c{n}",
                    stagger_s=spread,
                ),
                TOKENS,
            )
            for n in plan.concurrency
        ),
        (
            "c200-burst",
            200,
            partial(
                run_closed_loop, target, concurrency=200, total=200 * plan.rounds, tag=f"{tag}-b"
            ),
            TOKENS,
        ),
        (
            "long",
            plan.long_streams,
            partial(
                run_closed_loop,
                long,
                concurrency=plan.long_streams,
                total=plan.long_streams,
                tag=f"{tag}-long",
            ),
            LONG_TOKENS,
        ),
        (
            "cancel",
            100,
            partial(
                run_closed_loop,
                target,
                concurrency=100,
                total=plan.cancel_streams,
                tag=f"{tag}-cancel",
                close_after=CANCEL_AFTER,
                stagger_s=spread,
            ),
            CANCEL_AFTER,
        ),
    ]
    out = []
    for scenario, concurrency, drive, expected in steps:
        log(f"  {tag}: {scenario}")
        out.append(
            await _measure(running, scenario, concurrency, upstream, drive, expected=expected)
        )
    return out


async def _measure(
    running: _Running,
    scenario: str,
    concurrency: int,
    upstream: aiohttp.ClientSession,
    drive: Drive,
    *,
    expected: int,
) -> Measurement:
    pid = running.process.pid if running.process is not None else None
    await upstream.delete(f"http://{HOST}:{UPSTREAM_PORT}/_fake/requests")
    idle_rss = rss_bytes(pid) if pid else 0
    peak = [idle_rss]
    sampler_stop = asyncio.Event()

    async def sample() -> None:
        while not sampler_stop.is_set() and pid:
            peak[0] = max(peak[0], rss_bytes(pid))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sampler_stop.wait(), 0.05)

    cpu_before = cpu_seconds(pid) if pid else 0.0
    own_before = _own_cpu()
    started = time.monotonic()
    with _no_gc():
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(sample())
            results: list[StreamResult] = await drive()
            sampler_stop.set()
    wall = time.monotonic() - started
    await asyncio.sleep(1.0)  # let the upstream notice closed connections
    async with upstream.get(f"http://{HOST}:{UPSTREAM_PORT}/_fake/requests") as answer:
        records = await answer.json()
    return Measurement(
        target=running.target.name,
        scenario=scenario,
        concurrency=concurrency,
        streams=len(results),
        errors=sum(not r.ok(expected, cancel=scenario == "cancel") for r in results),
        wall_s=wall,
        target_cpu_s=(cpu_seconds(pid) - cpu_before) if pid else 0.0,
        loadgen_cpu_s=_own_cpu() - own_before,
        peak_rss=peak[0],
        idle_rss=idle_rss,
        ttft_s=[t for r in results if (t := r.ttft_s) is not None],
        gaps_s=[g for r in results if (g := r.mean_gap_s) is not None],
        tokens=sum(r.tokens for r in results),
        upstream=_upstream_view(results, records) if scenario == "cancel" else {},
    )


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """No cyclic GC in the load generator while it measures (as `timeit` does): a collection
    pauses every client of the scenario at once, which shows up as the target's latency."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _upstream_view(
    results: Sequence[StreamResult], records: list[dict[str, Any]]
) -> dict[str, Any]:
    """For the cancel scenario: did each upstream stream end, how fast, and how much was wasted."""
    by_user = {r["user"]: r for r in records if r.get("user")}
    aborted, waste, delays = 0, 0, []
    for result in results:
        record = by_user.get(result.user)
        if record is None or result.closed_by_client_at is None:
            continue
        gone = record["client_gone_at"]
        if gone is not None:
            aborted += 1
            delays.append(gone - result.closed_by_client_at)
        waste += max(0, record["chunks_sent"] - result.tokens)
    return {
        "closed": sum(r.closed_by_client_at is not None for r in results),
        "aborted": aborted,
        "wasted_tokens": waste,
        "abort_delays_s": delays,
    }


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextlib.asynccontextmanager
async def _upstream(plan: BenchPlan) -> AsyncIterator[aiohttp.ClientSession]:
    argv = [
        sys.executable,
        "-m",
        "estuary",
        "fake-upstream",
        "--host",
        HOST,
        "--port",
        str(UPSTREAM_PORT),
        "--ttft",
        "0.1",
        "--gap",
        "0.02",
        "--tokens",
        str(TOKENS),
        "--api-key",
        UPSTREAM_KEY,
        "--record",
        "--script",
        f"long-model={LONG_TOKENS},0.001,0.1",
    ]
    process = start_process(
        "fake-upstream",
        argv,
        env=_env(),
        cwd=plan.repo_root,
        log_path=plan.workdir / "fake-upstream.log",
    )
    try:
        await wait_ready(process, HOST, UPSTREAM_PORT)
        async with aiohttp.ClientSession() as session:
            yield session
    finally:
        process.stop()


@contextlib.asynccontextmanager
async def _target(name: str, plan: BenchPlan) -> AsyncIterator[_Running]:
    upstream_url = f"http://{HOST}:{UPSTREAM_PORT}/v1"
    if name == "direct":
        yield _Running(
            Target(
                name="direct",
                host=HOST,
                port=UPSTREAM_PORT,
                path="/v1/chat/completions",
                model="fake-model",
                headers={"Authorization": f"Bearer {UPSTREAM_KEY}"},
            ),
            None,
        )
        return
    if name in ("estuary", "estuary-app"):
        launch = _estuary_launch(plan, upstream_url)
        if name == "estuary-app":  # the app API: normalised events, each kept for resume
            launch = dataclasses.replace(launch, chat_path="/api/chat/stream")
    elif name == "litellm":
        launch = litellm_launch(
            plan.repo_root, upstream_url, PORTS[name], plan.workdir, UPSTREAM_KEY
        )
    else:
        launch = portkey_launch(plan.repo_root, upstream_url, PORTS[name], UPSTREAM_KEY)
    process = start_process(
        name,
        launch.argv,
        env={**_env(), **launch.env},
        cwd=launch.cwd,
        log_path=plan.workdir / f"{name}.log",
    )
    try:
        await wait_ready(process, HOST, PORTS[name], within_s=120)
        yield _Running(
            Target(
                name=name,
                host=HOST,
                port=PORTS[name],
                path=launch.chat_path,
                model=launch.model,
                headers=dict(launch.headers),
            ),
            process,
        )
    finally:
        process.stop()


def _estuary_launch(plan: BenchPlan, upstream_url: str) -> PeerLaunch:
    config = plan.workdir / "estuary-bench.toml"
    ledger = (plan.workdir / "estuary-bench.db").resolve()
    for stale in (
        ledger,
        ledger.with_name(ledger.name + "-wal"),
        ledger.with_name(ledger.name + "-shm"),
    ):
        stale.unlink(missing_ok=True)  # each run starts with an empty ledger
    config.write_text(
        f"""[server]
port = {PORTS["estuary"]}
workers = {plan.workers}

[ledger]
url = "sqlite:///{ledger}"

[state]
url = "{plan.state_url}"
prefix = "estuary-bench:"

[auth]
keys = ["${{BENCH_GATEWAY_KEY}}"]

[providers.fake]
format = "openai"
base_url = "{upstream_url}"
api_key = "${{BENCH_UPSTREAM_KEY}}"

[models.fake-model]
targets = ["fake/fake-model"]

[models.long-model]
targets = ["fake/long-model"]
"""
    )
    return PeerLaunch(
        name="estuary",
        argv=(sys.executable, "-m", "estuary", "serve", "--config", str(config.resolve())),
        env={"BENCH_GATEWAY_KEY": GATEWAY_KEY, "BENCH_UPSTREAM_KEY": UPSTREAM_KEY},
        cwd=plan.repo_root,
        base_url=f"http://{HOST}:{PORTS['estuary']}",
        chat_path="/v1/chat/completions",
        headers={"Authorization": f"Bearer {GATEWAY_KEY}"},
        model="fake-model",
        ready_url=f"http://{HOST}:{PORTS['estuary']}/healthz",
    )


def _env() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")
    return {k: v for k in keep if (v := os.environ.get(k)) is not None}  # noqa: TID251 - child env
