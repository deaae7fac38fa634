"""The shipped Alembic migrations: they build exactly the schema module's tables, once, even when
several processes start on a new database at the same moment."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, column, func, select, table

from estuary.ledger.schema import METADATA, VERSION_TABLE
from estuary.ledger.sql import SQLStore
from tests.ledger.helpers import INSTANCE, Database

ROOT = Path(__file__).parents[2]
PROCESSES = 4
START_DELAY_S = 2.5


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE, "compare_type": True}
    )
    return list(compare_metadata(context, METADATA))


async def test_the_migrations_build_the_schema_module_exactly(sql_database: Database) -> None:
    """After start(), autogenerate finds nothing to change between the database and schema.py."""
    store = sql_database.store()
    assert isinstance(store, SQLStore)
    await store.start(INSTANCE)
    try:
        async with store.engine.connect() as connection:
            assert await connection.run_sync(_differences) == []
            version = await connection.scalar(
                select(column("version_num")).select_from(table(VERSION_TABLE))
            )
        assert version == "0001"
    finally:
        await store.aclose()


async def _start_in_a_child(url: str, instance: str, at: float) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.ledger.child", "start", url, instance, str(at),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def test_processes_starting_together_on_a_new_database_all_succeed(
    sql_database: Database,
) -> None:
    """Several processes migrating one new database at once all start, and migrate it once."""
    at = time.time() + START_DELAY_S  # all have imported by then, so their migrations collide
    children = [await _start_in_a_child(sql_database.url, f"p{n}", at) for n in range(PROCESSES)]
    outputs = [await child.communicate() for child in children]
    for child, (out, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err.decode()
        assert out == b"0\n"
    store = sql_database.store()
    assert isinstance(store, SQLStore)
    await store.start(INSTANCE)
    try:
        async with store.engine.connect() as connection:
            count = select(func.count()).select_from(table(VERSION_TABLE))
            assert await connection.scalar(count) == 1
    finally:
        await store.aclose()
