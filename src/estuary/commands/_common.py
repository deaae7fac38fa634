"""What the administration commands share: the config option, the store session, times, money.

Every command reads the config with `--config/-c` (no file: the default config, whose ledger is
`sqlite:///estuary.db` in the working directory) and works on the store that `[ledger] url` names.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Final, NoReturn, TypeVar

import typer
from rich.console import Console

from estuary.config import Config, ConfigError, load_config
from estuary.core.periods import parse_instant
from estuary.ledger import open_store
from estuary.ledger.base import Store

__all__ = [
    "ConfigOption",
    "fail",
    "format_time",
    "load",
    "parse_moment",
    "stdout_console",
    "utc_now",
    "with_store",
]

T = TypeVar("T")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="TOML file (default: none; the ledger is sqlite:///estuary.db)"
    ),
]

_PIPE_WIDTH: Final = 200  # rich assumes 80 columns off a terminal, which would fold the tables


def fail(message: str, code: int = 1) -> NoReturn:
    """Say what went wrong on stderr, one line, and stop with `code`."""
    typer.echo(f"estuary: {message}", err=True)
    raise typer.Exit(code)


def load(path: Path | None) -> Config:
    """The config from `path` (or the default one); a `ConfigError` stops with exit code 2."""
    try:
        return load_config(path)
    except ConfigError as exc:
        fail(str(exc), 2)


def utc_now() -> datetime:
    """Now, timezone-aware UTC, as the store holds times."""
    return datetime.now(UTC)


def with_store(config: Config, action: Callable[[Store], Awaitable[T]]) -> T:
    """Open the config's store, run `action` on it, close it; all in one event loop."""
    return asyncio.run(_session(config.ledger.url, action))


async def _session(url: str, action: Callable[[Store], Awaitable[T]]) -> T:
    # The SQL stores' errors; imported here so that a memory:// ledger never loads SQLAlchemy.
    from sqlalchemy.exc import SQLAlchemyError

    scheme = url.partition(":")[0]  # the URL may hold a password: never show more than this
    try:
        store = open_store(url)
    except ValueError as exc:
        fail(f"ledger.url: {exc}", 2)
    try:
        try:
            # An instance name no server uses: start() interrupts the open rows of its instance.
            await store.start(f"cli:{os.getpid()}")
            return await action(store)
        finally:
            await store.aclose()
    except (OSError, SQLAlchemyError) as exc:
        fail(f"the {scheme} ledger failed: {_reason(exc)}")


def _reason(exc: BaseException) -> str:
    """The driver's own first line (never SQLAlchemy's, which may quote statements and values)."""
    cause = getattr(exc, "orig", None) or exc
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    text = str(cause).strip().splitlines()
    return text[0] if text and cause is not exc else type(exc).__name__


def parse_moment(text: str, now: datetime, *, ahead: bool, option: str) -> datetime:
    """A duration from now (`30d`, `12h`, `90m`, `2w`, `45s`) or a date/time (UTC if naive).

    With `ahead` a duration counts forward (`--expires 30d`), else back (`--since 7d`). A bare
    date means 00:00 UTC of that day. A bad value ends the command with exit 2.
    """
    try:
        return parse_instant(text, now=now, future=ahead)
    except ValueError as exc:
        fail(f"{option}: {exc}", 2)


def format_time(moment: datetime | None, *, never: str = "never") -> str:
    """`2026-12-31 00:00 UTC`, or `never` for no time."""
    if moment is None:
        return never
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def stdout_console() -> Console:
    """A console for tables on stdout, wide enough when the output goes to a pipe or file."""
    console = Console(highlight=False, emoji=False)
    if not console.is_terminal:
        console.width = _PIPE_WIDTH
    return console
