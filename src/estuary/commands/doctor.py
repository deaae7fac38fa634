"""`estuary doctor [--config FILE] [--probe]`: is this deployment able to run?

Checks, in order, one verdict line each on stdout (`ok`, `warn` or `fail`, then the item and the
reason): the config loads (naming every `${ENV}` variable it references that is not set), the
ledger opens and migrates, each provider's base URL is reachable (a TCP connection, then an
unauthenticated `GET` of the base URL; with `--probe` a one-token streamed request through the
real provider), and the state store answers. Exit code 1 if any check failed.

A verdict never holds a secret: URLs are shown as `host:port` or their scheme, errors by the
driver's own first line or their type, upstream answers through the provider's redactor.
"""

from __future__ import annotations

import asyncio
import os
import re
import tomllib
from collections.abc import Callable, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

import aiohttp
import typer

from estuary.commands._common import ConfigOption
from estuary.config import Config, ConfigError, ProviderConfig, load_config
from estuary.core.errors import UpstreamError
from estuary.core.events import StreamEnd
from estuary.core.requests import ChatRequest
from estuary.ledger import open_store
from estuary.ledger.memory import MemoryLedger
from estuary.providers.base import Provider, Timeouts
from estuary.state.base import StateUnavailable
from estuary.state.memory import MemoryState
from estuary.state.redis import RedisState

__all__ = ["Verdict", "doctor"]

_STATE_TIMEOUT_S: Final = 3.0

Level = Literal["ok", "warn", "fail"]
_REFERENCE: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_LEDGER_S: Final = 15.0  # opening and migrating a database
_HTTP_S: Final = 5.0  # longest wait for a provider's TCP connection or GET
_PROBE_S: Final = 30.0  # a one-token answer


@dataclass(frozen=True, slots=True)
class Verdict:
    """One check's result."""

    level: Level
    item: str
    reason: str

    def line(self) -> str:
        return f"{self.level:<4}  {self.item}: {self.reason}"


Emit = Callable[[Verdict], None]


def doctor(
    config: ConfigOption = None,
    probe: Annotated[
        bool, typer.Option("--probe", help="Also stream a one-token answer from each provider")
    ] = False,
) -> None:
    """Check the config, the ledger, each provider and the state store; exit 1 if one fails."""
    verdicts: list[Verdict] = []

    def emit(verdict: Verdict) -> None:
        verdicts.append(verdict)
        typer.echo(verdict.line())

    asyncio.run(_examine(config, probe=probe, emit=emit))
    if any(v.level == "fail" for v in verdicts):
        raise typer.Exit(1)


async def _examine(path: Path | None, *, probe: bool, emit: Emit) -> None:
    config = _load(path, emit)
    if config is None:
        return
    emit(await _ledger(config))
    for name, provider in config.providers.items():
        emit(await _reachable(name, provider))
    if probe:
        await _probe_all(config, emit)
    emit(await _state(config))


async def _state(config: Config) -> Verdict:
    """memory:// needs nothing; Redis must answer a PING (the URL is never shown)."""
    url = config.state.url
    if url == "memory://":
        return Verdict("ok", "state", "memory:// (this process only: fine for one instance)")
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return Verdict("fail", "state", "use memory:// or redis://host:6379/0")
    try:
        state = RedisState(url, prefix=config.state.prefix, on_failure="closed")
    except ValueError as exc:
        return Verdict("fail", "state", str(exc))
    try:
        await asyncio.wait_for(state.ping(), _STATE_TIMEOUT_S)
    except (StateUnavailable, TimeoutError):
        return Verdict("fail", "state", "Redis does not answer (is it running, is the URL right?)")
    finally:
        await state.aclose()
    return Verdict("ok", "state", f"Redis answers (prefix {config.state.prefix!r})")


def _load(path: Path | None, emit: Emit) -> Config | None:
    try:
        config = load_config(path)
    except ConfigError as exc:
        missing = _unset_variables(path) if path is not None else []
        if missing:
            emit(Verdict("fail", "config", f"environment variables not set: {', '.join(missing)}"))
        else:
            emit(Verdict("fail", "config", str(exc)))
        return None
    where = str(path) if path is not None else "no file, the demo setup"
    counts = f"{len(config.providers)} providers, {len(config.models)} models"
    emit(Verdict("ok", "config", f"{where} ({counts})"))
    return config


def _unset_variables(path: Path) -> list[str]:
    """The `${NAME}` references of the file whose variable is unset or empty (names only)."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []  # the ConfigError already says what is wrong with the file
    names = {name for text in _strings(raw) for name in _REFERENCE.findall(text)}
    # Presence only, never a value: the one read of the environment outside estuary.config.
    environ = os.environ  # noqa: TID251 - doctor names the variables config.py would miss
    return sorted(name for name in names if not environ.get(name))


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


async def _ledger(config: Config) -> Verdict:
    url = config.ledger.url
    scheme = url.partition(":")[0]  # the URL may hold a password: never show more than this
    try:
        store = open_store(url)
    except ValueError as exc:
        return Verdict("fail", "ledger", f"ledger.url: {exc}")
    try:
        async with asyncio.timeout(_LEDGER_S):
            try:
                await store.start(f"doctor:{os.getpid()}")
            finally:
                await store.aclose()
    except TimeoutError:
        return Verdict("fail", "ledger", f"the {scheme} ledger did not open within {_LEDGER_S:g} s")
    except Exception as exc:
        return Verdict("fail", "ledger", f"the {scheme} ledger failed: {_reason(exc)}")
    if isinstance(store, MemoryLedger):
        return Verdict("warn", "ledger", "memory:// keeps usage rows only while the server runs")
    return Verdict("ok", "ledger", f"{scheme}: opened and migrated")


def _reason(exc: BaseException) -> str:
    """The driver's own first line (never SQLAlchemy's, which may quote statements and values)."""
    cause = getattr(exc, "orig", None) or exc
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    text = str(cause).strip().splitlines()
    return text[0] if text and cause is not exc else type(exc).__name__


async def _reachable(name: str, provider: ProviderConfig) -> Verdict:
    item = f"providers.{name}"
    if provider.format == "demo":
        return Verdict("ok", item, "the built-in demo provider (no network)")
    parts = urlsplit(provider.base_url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    where = f"{host}:{port}"
    wait = min(provider.connect_timeout_s, _HTTP_S)
    try:
        async with asyncio.timeout(wait):
            _, writer = await asyncio.open_connection(host, port)
        writer.close()
        await writer.wait_closed()
    except TimeoutError:
        return Verdict("fail", item, f"no TCP connection to {where} within {wait:g} s")
    except OSError as exc:
        return Verdict("fail", item, f"cannot connect to {where}: {exc.strerror or exc}")
    try:
        timeout = aiohttp.ClientTimeout(total=_HTTP_S)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(provider.base_url, allow_redirects=False) as response,
        ):
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Verdict(
            "fail", item, f"{where} accepts connections but no HTTP: {type(exc).__name__}"
        )
    if status >= 500:
        return Verdict("warn", item, f"{where} answers a GET of the base URL with HTTP {status}")
    return Verdict("ok", item, f"{where} reachable (HTTP {status} to a GET without credentials)")


async def _probe_all(config: Config, emit: Emit) -> None:
    """A one-token streamed answer from each provider, through the classes the server uses."""
    # The server builds the providers exactly as `estuary serve` does; imported only for --probe
    # so that the other checks (and the other commands) never load the HTTP layer.
    from estuary.server import build_runtime

    try:
        runtime = build_runtime(config, ledger=MemoryLedger(), state=MemoryState())
    except (ConfigError, NotImplementedError) as exc:
        emit(Verdict("fail", "probe", str(exc)))
        return
    try:
        for name, provider in runtime.providers.items():
            model = next(
                (t.model for m in config.models.values() for t in m.targets if t.provider == name),
                None,
            )
            if model is None:
                emit(Verdict("warn", f"probe.{name}", "no model uses this provider; not probed"))
            else:
                emit(await _probe(name, provider, model))
    finally:
        await runtime.aclose()


async def _probe(name: str, provider: Provider, model: str) -> Verdict:
    item = f"probe.{name}"
    request = ChatRequest(
        model=None, messages=({"role": "user", "content": "Say OK."},), max_tokens=1
    )
    timeouts = Timeouts(connect_s=_HTTP_S, first_token_s=_PROBE_S, idle_s=_PROBE_S)
    try:
        async with (
            asyncio.timeout(_PROBE_S),
            aclosing(provider.stream(request, model, timeouts)) as events,
        ):
            async for event in events:
                if isinstance(event, StreamEnd):
                    break
    except UpstreamError as exc:
        return Verdict("fail", item, f"{model}: {exc.code}: {exc.detail}")
    except TimeoutError:
        return Verdict("fail", item, f"{model}: no complete answer within {_PROBE_S:g} s")
    return Verdict("ok", item, f"{model} streamed an answer")
