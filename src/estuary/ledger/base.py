"""The ledger row lifecycle, usage queries, and the `LedgerStore` protocol every store implements.

A row is opened before a stream starts and settled when it ends, so a crash leaves an open row that
the next start of the same instance marks `interrupted` — never a missing one. `open()` and
`settle()` return only once the row is durable (stores may group concurrent writes into one
commit). Gateway keys live in the same database (`KeyStore`). Must not import the HTTP layer or
routing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

from estuary.core.policy import KeyRecord
from estuary.core.usage import TokenSource

__all__ = [
    "KeyStore",
    "LedgerRecord",
    "LedgerStore",
    "OpenedRow",
    "RowStatus",
    "SettledRow",
    "Store",
    "UsageDimension",
    "UsageFilter",
    "UsageTotal",
]

RowStatus = Literal["open", "completed", "canceled", "error", "interrupted"]
UsageDimension = Literal["day", "alias", "target", "key", "user", "status"]


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenedRow:
    """What is known when a request is admitted."""

    request_id: str
    instance: str  # the process that serves it; its next start interrupts its open rows
    started_at: datetime  # timezone-aware UTC
    key_id: str
    end_user: str | None
    alias: str
    api: Literal["openai", "anthropic", "app"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SettledRow:
    """What is known when the stream has ended, for whatever reason.

    Token counts are `None` when unknown (no upstream ever answered), which is not the same as 0.
    """

    request_id: str
    ended_at: datetime  # timezone-aware UTC
    status: Literal["completed", "canceled", "error"]
    finish_reason: str | None
    provider: str | None
    upstream_model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    token_source: TokenSource | None
    cost_micro: int | None
    error_code: str | None
    ttft_ms: float | None
    duration_ms: float
    attempts: int
    failures: tuple[str, ...] = ()  # "provider/model: code" for each attempt that failed

    @property
    def target(self) -> str | None:
        """ "provider/model", as `[prices]` keys spell it."""
        if self.provider is None or self.upstream_model is None:
            return None
        return f"{self.provider}/{self.upstream_model}"


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerRecord:
    """A whole row as read back: what was opened and, once it has ended, how."""

    opened: OpenedRow
    status: RowStatus
    settled: SettledRow | None


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageFilter:
    """Which rows a usage query covers; `None` means no restriction. `until` is exclusive."""

    since: datetime | None = None
    until: datetime | None = None
    key_id: str | None = None
    end_user: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageTotal:
    """Totals over the rows of one group. `group` maps each requested dimension to its value.

    `day` is "YYYY-MM-DD" (UTC); `target` is "provider/model" or None; `key` the key id; `user`
    the end user or None. Unknown token counts (`None`) add nothing to the sums.
    """

    group: dict[str, str | None] = field(default_factory=dict)
    requests: int = 0
    errors: int = 0  # rows with status error or interrupted
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_micro: int = 0


class KeyStore(Protocol):
    """Gateway keys, stored as digests."""

    async def add_key(self, record: KeyRecord) -> None:
        """Store a new key; `ValueError` if its id or digest is taken."""

    async def find_key(self, digest: str) -> KeyRecord | None:
        """The key with this hex SHA-256 digest, revoked or not; None if there is none."""

    async def list_keys(self) -> list[KeyRecord]:
        """Every key, oldest first."""

    async def revoke_key(self, key_id: str, at: datetime) -> bool:
        """Mark a key revoked; False if there is no such key or it was already revoked."""


class LedgerStore(Protocol):
    """Usage records."""

    async def start(self, instance: str) -> int:
        """Migrate, start the writer, mark `instance`'s open rows interrupted; count them."""

    async def open(self, row: OpenedRow) -> None:
        """Record a new row with status `open`; durable when it returns."""

    def open_soon(self, row: OpenedRow) -> asyncio.Future[None]:
        """Queue a new row now (in order, ahead of anything queued later, such as its settle);
        the future completes once it is durable. Lets the gateway send the upstream request
        while the commit runs, and wait for it before the first upstream byte is relayed."""

    async def settle(self, row: SettledRow) -> None:
        """Close an open row; durable when it returns. A row already closed stays as it was."""

    async def get(self, request_id: str) -> LedgerRecord | None:
        """One row, or None."""

    async def usage(
        self, where: UsageFilter, by: Sequence[UsageDimension] = ()
    ) -> list[UsageTotal]:
        """Totals grouped by `by` (no dimensions: one total over all matching rows, even if 0)."""

    async def spent(self, *, key_id: str, end_user: str | None = None) -> int:
        """Cost in micro-units of every row of a key (and, if given, of one of its end users)."""

    async def aclose(self) -> None:
        """Flush pending writes and release connections."""


class Store(LedgerStore, KeyStore, Protocol):
    """One database holds both the ledger and the keys."""
