"""The `estuary` command: serve, keys, usage, doctor, fake-upstream and bench.

`keys`, `usage` and `doctor` live in `estuary.commands` and are registered on `app` here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from estuary.commands import doctor, keys_app, usage
from estuary.config import ConfigError, load_config
from estuary.reload import ConfigSource
from estuary.testing import Scenario, run_fake_upstream
from estuary.workers import run_single, run_workers

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Estuary: a self-hosted streaming gateway between apps and upstream LLM APIs.",
)
app.add_typer(keys_app, name="keys")
app.command("usage")(usage)
app.command("doctor")(doctor)


@app.command()
def serve(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML file (default: the demo setup)")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Listen address (overrides the file)")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (overrides the file)")] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Worker processes on one port (over 1 needs Redis state)"),
    ] = None,
) -> None:
    """Run the gateway. Without --config: the demo provider, anonymous access on loopback."""
    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["server.host"] = host
    if port is not None:
        overrides["server.port"] = port
    if workers is not None:
        overrides["server.workers"] = workers
    try:
        settings = load_config(config, overrides=overrides)
    except ConfigError as exc:
        typer.echo(f"estuary: {exc}", err=True)
        raise typer.Exit(2) from None
    server = settings.server
    where = f"http://{server.host}:{server.port}"
    typer.echo(f"Estuary on {where}  (models: {', '.join(settings.models)})", err=True)
    if config is None:
        typer.echo(f"Try: curl -N '{where}/api/chat/stream?message=hi'", err=True)
    try:
        if server.workers > 1:
            typer.echo(f"{server.workers} worker processes", err=True)
            run_workers(config, overrides, settings)
        else:
            source = None if config is None else ConfigSource(path=config, overrides=overrides)
            run_single(settings, source=source)
    except (NotImplementedError, ConfigError) as exc:
        typer.echo(f"estuary: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command("fake-upstream")
def fake_upstream(
    host: Annotated[str, typer.Option(help="Listen address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Listen port")] = 9100,
    ttft: Annotated[float, typer.Option(help="Seconds before the first token")] = 0.1,
    gap: Annotated[float, typer.Option(help="Seconds between tokens")] = 0.02,
    tokens: Annotated[int, typer.Option(help="Tokens per answer")] = 50,
    api_key: Annotated[
        str | None, typer.Option(envvar="FAKE_UPSTREAM_KEY", help="Require this bearer key")
    ] = None,
    record: Annotated[
        bool, typer.Option(help="Record requests, readable at GET /_fake/requests")
    ] = False,
    script: Annotated[
        list[str] | None,
        typer.Option(help="MODEL=TOKENS,GAP_S,TTFT_S: another timing for requests naming MODEL"),
    ] = None,
) -> None:
    """Run the scripted OpenAI-compatible server used by tests, demos and the benchmark."""
    scenario = Scenario(ttft_s=ttft, gap_s=gap, tokens=tokens)
    scripts = {}
    for item in script or ():
        model, _, spec = item.partition("=")
        try:
            count, gap_s, ttft_s = spec.split(",")
            scripts[model] = Scenario(tokens=int(count), gap_s=float(gap_s), ttft_s=float(ttft_s))
        except ValueError:
            raise typer.BadParameter(f"expected MODEL=TOKENS,GAP_S,TTFT_S, got '{item}'") from None
    run_fake_upstream(host, port, scenario, api_key=api_key, control=record, scripts=scripts)


@app.command()
def bench(
    targets: Annotated[
        str,
        typer.Option(help="Comma-separated: direct, estuary, estuary-app, litellm, portkey"),
    ] = "direct,estuary,litellm,portkey",
    quick: Annotated[bool, typer.Option(help="Smaller counts, for a quick look")] = False,
    out: Annotated[Path, typer.Option(help="Where results and logs go")] = Path("bench/results"),
    workers: Annotated[
        int, typer.Option(min=1, help="Estuary worker processes (over 1: Redis state)")
    ] = 1,
    state: Annotated[
        str, typer.Option(help="Estuary's [state] url when --workers is over 1")
    ] = "redis://127.0.0.1:6379/0",
) -> None:
    """Benchmark Estuary against the direct upstream and its peers (see docs/benchmarks.md)."""
    import asyncio
    import time

    import orjson
    from rich.console import Console

    from estuary.bench.harness import BenchPlan, Measurement, run_benchmark
    from estuary.bench.report import markdown, print_tables, summarize

    console = Console(stderr=True, width=200)
    shared = state if workers > 1 else "memory://"
    plan = BenchPlan(
        targets=tuple(t.strip() for t in targets.split(",") if t.strip()),
        workdir=out,
        workers=workers,
        state_url=shared,
    )
    if quick:
        plan = BenchPlan(
            targets=plan.targets,
            workdir=out,
            workers=workers,
            state_url=shared,
            concurrency=(50, 200),
            rounds=1,
            latency_streams=10,
            long_streams=4,
            cancel_streams=100,
        )
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    lines = (out / f"bench-{stamp}.jsonl").open("ab")

    def record(measurement: Measurement) -> None:
        lines.write(orjson.dumps(summarize(measurement)) + b"\n")
        lines.flush()

    try:
        results = asyncio.run(run_benchmark(plan, record, console.log))
    finally:
        lines.close()
    print_tables(results, console)
    (out / f"bench-{stamp}.md").write_text(markdown(results))
    console.log(f"results: {out}/bench-{stamp}.jsonl and .md")


def main() -> None:
    """Entry point of the `estuary` script."""
    app()
