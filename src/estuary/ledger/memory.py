"""A ledger and key store kept in memory: for tests, and for running without any database.

It follows the same contract as the SQL store (tests/ledger/test_contract.py runs against both),
except that nothing survives the process. It needs no `start()` before use, so tests and the dev
server may hand a fresh one to the gateway directly. Must not import the HTTP layer or routing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from estuary.core.policy import KeyRecord
from estuary.ledger._usage import (
    ERROR_STATUSES,
    check_filter,
    dimensions,
    sorted_totals,
    utc,
    utc_or_none,
)
from estuary.ledger.base import (
    LedgerRecord,
    OpenedRow,
    RowStatus,
    SettledRow,
    UsageDimension,
    UsageFilter,
    UsageTotal,
)

__all__ = ["LedgerRow", "MemoryLedger"]


@dataclass(slots=True)
class LedgerRow:
    """One request's row as the memory ledger holds it."""

    opened: OpenedRow
    status: RowStatus = "open"
    settled: SettledRow | None = None

    def dimension(self, name: UsageDimension) -> str | None:
        """This row's value for one usage dimension, as `UsageTotal.group` spells it."""
        match name:
            case "day":
                return self.opened.started_at.astimezone(UTC).date().isoformat()
            case "alias":
                return self.opened.alias
            case "target":
                return self.settled.target if self.settled is not None else None
            case "key":
                return self.opened.key_id
            case "user":
                return self.opened.end_user
            case "status":
                return self.status


@dataclass(slots=True)
class _Sums:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_micro: int = 0
    group: dict[str, str | None] = field(default_factory=dict)

    def add(self, row: LedgerRow) -> None:
        self.requests += 1
        self.errors += row.status in ERROR_STATUSES
        if (settled := row.settled) is not None:
            self.prompt_tokens += settled.prompt_tokens or 0
            self.completion_tokens += settled.completion_tokens or 0
            self.cost_micro += settled.cost_micro or 0


def _matches(row: LedgerRow, where: UsageFilter) -> bool:
    opened = row.opened
    return (
        (where.since is None or opened.started_at >= where.since)
        and (where.until is None or opened.started_at < where.until)
        and (where.key_id is None or opened.key_id == where.key_id)
        and (where.end_user is None or opened.end_user == where.end_user)
    )


class MemoryLedger:
    """Keeps every row in a dict by request id; `rows` is for tests and the dev server."""

    def __init__(self) -> None:
        self.rows: dict[str, LedgerRow] = {}
        self._keys: dict[str, KeyRecord] = {}  # by key id, in insertion order

    async def start(self, instance: str) -> int:
        """Mark `instance`'s open rows interrupted (only rows this same object holds)."""
        count = 0
        for row in self.rows.values():
            if row.status == "open" and row.opened.instance == instance:
                row.status = "interrupted"
                count += 1
        return count

    async def open(self, row: OpenedRow) -> None:
        """Add a row with status `open`; `ValueError` if the request id is already there."""
        await self.open_soon(row)

    def open_soon(self, row: OpenedRow) -> asyncio.Future[None]:
        """As `open`, at once: the future is already done (or failed)."""
        done = asyncio.get_running_loop().create_future()
        try:
            row = replace(row, started_at=utc(row.started_at, "started_at"))
            if row.request_id in self.rows:
                raise ValueError(f"request {row.request_id!r} is already in the ledger")
        except ValueError as exc:
            done.set_exception(exc)
            return done
        self.rows[row.request_id] = LedgerRow(opened=row)
        done.set_result(None)
        return done

    async def settle(self, row: SettledRow) -> None:
        """Close an open row; a closed or unknown row is left as it is."""
        row = replace(row, ended_at=utc(row.ended_at, "ended_at"))
        entry = self.rows.get(row.request_id)
        if entry is not None and entry.status == "open":
            entry.status = row.status
            entry.settled = row

    async def get(self, request_id: str) -> LedgerRecord | None:
        entry = self.rows.get(request_id)
        if entry is None:
            return None
        return LedgerRecord(opened=entry.opened, status=entry.status, settled=entry.settled)

    async def usage(
        self, where: UsageFilter, by: Sequence[UsageDimension] = ()
    ) -> list[UsageTotal]:
        dims = dimensions(by)
        check_filter(where)
        groups: dict[tuple[str | None, ...], _Sums] = {}
        if not dims:
            groups[()] = _Sums()  # one total, even over no rows
        for row in self.rows.values():
            if _matches(row, where):
                values = tuple(row.dimension(d) for d in dims)
                groups.setdefault(values, _Sums(group=dict(zip(dims, values, strict=True)))).add(
                    row
                )
        totals = (
            UsageTotal(
                group=sums.group,
                requests=sums.requests,
                errors=sums.errors,
                prompt_tokens=sums.prompt_tokens,
                completion_tokens=sums.completion_tokens,
                cost_micro=sums.cost_micro,
            )
            for sums in groups.values()
        )
        return sorted_totals(totals, dims)

    async def spent(self, *, key_id: str, end_user: str | None = None) -> int:
        where = UsageFilter(key_id=key_id, end_user=end_user)
        return sum(
            row.settled.cost_micro or 0
            for row in self.rows.values()
            if row.settled is not None and _matches(row, where)
        )

    async def add_key(self, record: KeyRecord) -> None:
        record = replace(
            record,
            created_at=utc(record.created_at, "created_at"),
            expires_at=utc_or_none(record.expires_at, "expires_at"),
            revoked_at=utc_or_none(record.revoked_at, "revoked_at"),
        )
        if record.key_id in self._keys:
            raise ValueError(f"key id {record.key_id!r} is already taken")
        if any(k.digest == record.digest for k in self._keys.values()):
            raise ValueError("a key with this digest is already stored")
        self._keys[record.key_id] = record

    async def find_key(self, digest: str) -> KeyRecord | None:
        return next((k for k in self._keys.values() if k.digest == digest), None)

    async def list_keys(self) -> list[KeyRecord]:
        return sorted(self._keys.values(), key=lambda k: (k.created_at, k.key_id))

    async def revoke_key(self, key_id: str, at: datetime) -> bool:
        at = utc(at, "at")
        record = self._keys.get(key_id)
        if record is None or record.revoked_at is not None:
            return False
        self._keys[key_id] = replace(record, revoked_at=at)
        return True

    async def aclose(self) -> None:
        """Nothing to flush."""
