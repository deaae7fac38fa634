"""The usage ledger and key store: one row per request, opened before the upstream call, settled
after; gateway keys as digests. `open_store(url)` picks the store a `[ledger] url` names.

Must not import the HTTP layer or routing.
"""

from __future__ import annotations

from estuary.ledger._urls import backend_of
from estuary.ledger.base import (
    KeyStore,
    LedgerRecord,
    LedgerStore,
    OpenedRow,
    RowStatus,
    SettledRow,
    Store,
    UsageDimension,
    UsageFilter,
    UsageTotal,
)
from estuary.ledger.memory import MemoryLedger

__all__ = [
    "KeyStore",
    "LedgerRecord",
    "LedgerStore",
    "MemoryLedger",
    "OpenedRow",
    "RowStatus",
    "SettledRow",
    "Store",
    "UsageDimension",
    "UsageFilter",
    "UsageTotal",
    "open_store",
]


def open_store(url: str, *, backlog_max: int = 0) -> Store:
    """The store for `url`, not yet started: call `await store.start(instance)` before use.

    `memory://` keeps everything in this process. SQLAlchemy-style URLs — `sqlite:///rel.db`,
    `sqlite:////abs/path.db`, `postgresql://user@host:5432/db`, `mysql://…`, `mariadb://…` — give
    a `SQLStore` over the async driver of that database (aiosqlite, asyncpg, asyncmy) unless the
    URL names one (`postgresql+asyncpg://…`). Anything else is a `ValueError` that does not repeat
    the URL, which may hold a password. `backlog_max` > 0 lets a SQL store accept up to that many
    rows in memory while its database is down (`[ledger] on_failure = "queue"`).
    """
    if backend_of(url) == "memory":
        return MemoryLedger()
    # Imported here so that a memory-only process never loads SQLAlchemy and Alembic (~0.4 s).
    from estuary.ledger.sql import SQLStore

    return SQLStore(url, backlog_max=backlog_max)
