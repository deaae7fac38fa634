"""The `estuary` command: serve, fake-upstream (and, with later work, keys, usage, bench)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn

from estuary.config import ConfigError, load_config
from estuary.logs import configure_logging
from estuary.server import build_app, build_runtime
from estuary.testing import Scenario, run_fake_upstream

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Estuary: a self-hosted streaming gateway between apps and upstream LLM APIs.",
)


@app.command()
def serve(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML file (default: the demo setup)")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Listen address (overrides the file)")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (overrides the file)")] = None,
) -> None:
    """Run the gateway. Without --config: the demo provider, anonymous access on loopback."""
    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["server.host"] = host
    if port is not None:
        overrides["server.port"] = port
    try:
        settings = load_config(config, overrides=overrides)
    except ConfigError as exc:
        typer.echo(f"estuary: {exc}", err=True)
        raise typer.Exit(2) from None
    runtime = build_runtime(settings)
    configure_logging(settings.server.log_level, runtime.redactor)
    server = settings.server
    where = f"http://{server.host}:{server.port}"
    typer.echo(f"Estuary on {where}  (models: {', '.join(settings.models)})", err=True)
    if config is None:
        typer.echo(f"Try: curl -N '{where}/api/chat/stream?message=hi'", err=True)
    uvicorn.run(
        build_app(runtime),
        host=server.host,
        port=server.port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
    )


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
) -> None:
    """Run the scripted OpenAI-compatible server used by tests, demos and the benchmark."""
    run_fake_upstream(host, port, Scenario(ttft_s=ttft, gap_s=gap, tokens=tokens), api_key=api_key)


def main() -> None:
    """Entry point of the `estuary` script."""
    app()
