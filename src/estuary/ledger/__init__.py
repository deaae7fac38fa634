"""The usage ledger: one row per request, opened before the upstream call, settled after."""

from estuary.ledger.base import LedgerStore, OpenedRow, RowStatus, SettledRow
from estuary.ledger.memory import MemoryLedger

__all__ = ["LedgerStore", "MemoryLedger", "OpenedRow", "RowStatus", "SettledRow"]
