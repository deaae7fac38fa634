"""A ledger kept in memory: for tests, and for running without any database.

Must not import the HTTP layer or routing.
"""

from __future__ import annotations

from dataclasses import dataclass

from estuary.ledger.base import OpenedRow, RowStatus, SettledRow

__all__ = ["LedgerRow", "MemoryLedger"]


@dataclass(slots=True)
class LedgerRow:
    """One request's row as the memory ledger holds it."""

    opened: OpenedRow
    status: RowStatus = "open"
    settled: SettledRow | None = None


class MemoryLedger:
    """Keeps every row in a dict by request id; `rows` is for tests and the dev server."""

    def __init__(self) -> None:
        self.rows: dict[str, LedgerRow] = {}

    async def open(self, row: OpenedRow) -> None:
        self.rows[row.request_id] = LedgerRow(opened=row)

    async def settle(self, row: SettledRow) -> None:
        entry = self.rows[row.request_id]
        entry.status = row.status
        entry.settled = row

    async def aclose(self) -> None:
        """Nothing to flush."""
