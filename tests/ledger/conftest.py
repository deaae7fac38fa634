"""Ledger fixtures: one fresh database per test on each backend, and a started store over it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from estuary.ledger import Store
from tests.ledger.helpers import (
    ALL_BACKENDS,
    INSTANCE,
    SQL_BACKENDS,
    Backend,
    Database,
    fresh_database,
)


@pytest.fixture(params=ALL_BACKENDS)
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A fresh database on every backend (memory, SQLite, PostgreSQL, MariaDB)."""
    backend: Backend = request.param
    async with fresh_database(backend, tmp_path) as db:
        yield db


@pytest.fixture(params=SQL_BACKENDS)
async def sql_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A fresh database on every SQL backend."""
    backend: Backend = request.param
    async with fresh_database(backend, tmp_path) as db:
        yield db


@pytest.fixture
async def store(database: Database) -> AsyncIterator[Store]:
    """A started store on `database`, closed after the test."""
    opened = database.store()
    await opened.start(INSTANCE)
    try:
        yield opened
    finally:
        await opened.aclose()
