"""Ledger test helpers: fresh databases on the real servers, and rows to write into them.

Each server test gets a database of its own (`estuary_t_<hex>`), created on the server's admin
database and dropped afterwards. An unreachable server skips the test with its host:port, or
fails it when `CI` is set.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, NoReturn

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from estuary.ledger import OpenedRow, SettledRow, Store, open_store

Backend = Literal["memory", "sqlite", "postgresql", "mariadb"]

PG_HOST, PG_PORT = "127.0.0.1", 5432
MARIADB_HOST, MARIADB_PORT = "127.0.0.1", 3306
ALL_BACKENDS = (
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb),
)
SQL_BACKENDS = ALL_BACKENDS[1:]
T0 = datetime(2024, 3, 1, 10, 0, tzinfo=UTC)
INSTANCE = "test-instance"


@dataclass(frozen=True, slots=True)
class Database:
    """A database a test may open any number of stores on (`memory`: a fresh store each time)."""

    backend: Backend
    url: str
    name: str = ""  # the server's database name, for pg_dump and friends

    def store(self) -> Store:
        """A new, not yet started store on this database."""
        return open_store(self.url)


def _unreachable(what: str, host: str, port: int, exc: BaseException) -> NoReturn:
    reason = f"{what} at {host}:{port} is not reachable ({type(exc).__name__}: {exc})"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI needs it")
    pytest.skip(reason)


async def _require_server(what: str, host: str, port: int) -> None:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=3)
    except (OSError, TimeoutError) as exc:
        _unreachable(what, host, port, exc)
    writer.close()
    await writer.wait_closed()


async def _admin(url: str, *statements: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


@asynccontextmanager
async def fresh_database(backend: Backend, tmp_path: Path) -> AsyncIterator[Database]:
    """A new, empty database on `backend`, dropped after use."""
    name = "estuary_t_" + secrets.token_hex(6)
    if backend == "memory":
        yield Database("memory", "memory://")
    elif backend == "sqlite":
        yield Database("sqlite", f"sqlite:///{tmp_path / 'ledger.db'}", str(tmp_path / "ledger.db"))
    elif backend == "postgresql":
        await _require_server("PostgreSQL", PG_HOST, PG_PORT)
        admin = f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/postgres"
        await _admin(admin, f'CREATE DATABASE "{name}"')
        try:
            yield Database("postgresql", f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}", name)
        finally:
            await _admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    else:
        await _require_server("MariaDB", MARIADB_HOST, MARIADB_PORT)
        admin = f"mysql+asyncmy://root@{MARIADB_HOST}:{MARIADB_PORT}/"
        await _admin(admin, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        try:
            yield Database("mariadb", f"mariadb://root@{MARIADB_HOST}:{MARIADB_PORT}/{name}", name)
        finally:
            await _admin(admin, f"DROP DATABASE IF EXISTS `{name}`")


def opened(
    request_id: str,
    *,
    instance: str = INSTANCE,
    started_at: datetime = T0,
    key_id: str = "key_a",
    end_user: str | None = None,
    alias: str = "chat",
) -> OpenedRow:
    """An opened row with defaults for what a test does not care about."""
    return OpenedRow(
        request_id=request_id,
        instance=instance,
        started_at=started_at,
        key_id=key_id,
        end_user=end_user,
        alias=alias,
        api="app",
    )


def settled(
    request_id: str,
    *,
    status: Literal["completed", "canceled", "error"] = "completed",
    target: str | None = "prov/model",
    prompt_tokens: int | None = 10,
    completion_tokens: int | None = 20,
    cost_micro: int | None = 100,
    ended_at: datetime = T0 + timedelta(seconds=2),
) -> SettledRow:
    """A settled row with defaults for what a test does not care about."""
    provider, _, model = target.partition("/") if target else (None, None, None)
    return SettledRow(
        request_id=request_id,
        ended_at=ended_at,
        status=status,
        finish_reason="stop" if status == "completed" else None,
        provider=provider,
        upstream_model=model,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        token_source="reported" if prompt_tokens is not None else None,
        cost_micro=cost_micro,
        error_code="upstream_error" if status == "error" else None,
        ttft_ms=12.5,
        duration_ms=2000.25,
        attempts=1,
    )
