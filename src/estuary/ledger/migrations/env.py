"""Alembic's environment for the ledger schema; run by `SQLStore.start()`, not by an alembic.ini.

`estuary.ledger._migrate` passes an open connection, already inside the transaction (and holding the
lock) it wants the migrations to run in, as `config.attributes["connection"]`. A developer writing
a new revision can instead set the `sqlalchemy.url` main option to an async URL
(`sqlite+aiosqlite:///dev.db`); `target_metadata` is the schema module, for `--autogenerate`.

Must not import the HTTP layer or routing.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from estuary.ledger.schema import METADATA, VERSION_TABLE

__all__: list[str] = []


def _run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=METADATA,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_on_url(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_run_on)
    finally:
        await engine.dispose()


def _main() -> None:
    if context.is_offline_mode():
        raise RuntimeError("the ledger migrations run online only")
    connection = context.config.attributes.get("connection")
    if isinstance(connection, Connection):
        _run_on(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection given: set config.attributes['connection']")
    asyncio.run(_run_on_url(url))


_main()
