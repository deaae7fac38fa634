"""Bring a database to the newest ledger schema with Alembic, safely from several processes at once.

The migration scripts ship inside the package (`migrations/`); Alembic is configured in code, so
no alembic.ini is needed. Concurrent starts take turns: a transaction-scoped advisory lock on
PostgreSQL, a named lock on MySQL/MariaDB (whose DDL is not transactional), and `BEGIN IMMEDIATE`
(the database's write lock) on SQLite. The second process then finds the schema current.

Must not import the HTTP layer or routing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["SCRIPTS", "alembic_config", "migrate"]

SCRIPTS: Final = Path(__file__).with_name("migrations")
_PG_LOCK_KEY: Final = 0x6573_7475_6172_7931  # "estuary1": one lock id for this schema
_MYSQL_LOCK: Final = "estuary.ledger.migrations"
_MYSQL_LOCK_TIMEOUT_S: Final = 60


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for the shipped scripts, sharing `connection` with env.py if given."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPTS).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection) -> None:
    command.upgrade(alembic_config(connection), "head")


async def migrate(engine: AsyncEngine) -> None:
    """Apply every migration not yet applied; a no-op on a current database."""
    async with engine.connect() as connection:
        if connection.dialect.name in ("mysql", "mariadb"):
            await _migrate_mysql(connection)
            return
        if connection.dialect.name == "sqlite":
            await connection.exec_driver_sql("BEGIN IMMEDIATE")
        elif connection.dialect.name == "postgresql":
            await connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY}
            )
        await connection.run_sync(_upgrade)
        await connection.commit()


async def _migrate_mysql(connection: AsyncConnection) -> None:
    lock = {"name": _MYSQL_LOCK, "timeout": _MYSQL_LOCK_TIMEOUT_S}
    got = await connection.scalar(text("SELECT GET_LOCK(:name, :timeout)"), lock)
    if got != 1:
        raise TimeoutError("another process held the ledger migration lock for too long")
    try:
        await connection.run_sync(_upgrade)
        await connection.commit()
    finally:
        # A named lock belongs to the session, and the session goes back to the pool: release it.
        await connection.rollback()
        await connection.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": _MYSQL_LOCK})
        await connection.commit()
