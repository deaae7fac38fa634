"""The ledger row lifecycle and the `LedgerStore` protocol every store implements.

A row is opened before a stream starts and settled when it ends, so a crash leaves an open row that
the next start marks `interrupted` — never a missing one. Must not import the HTTP layer or routing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from estuary.core.usage import TokenSource

__all__ = ["LedgerStore", "OpenedRow", "RowStatus", "SettledRow"]

RowStatus = Literal["open", "completed", "canceled", "error", "interrupted"]


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenedRow:
    """What is known when a request is admitted."""

    request_id: str
    started_at: datetime
    key_id: str
    end_user: str | None
    alias: str
    api: Literal["openai", "app"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SettledRow:
    """What is known when the stream has ended, for whatever reason."""

    request_id: str
    status: Literal["completed", "canceled", "error"]
    finish_reason: str | None
    provider: str | None
    upstream_model: str | None
    prompt_tokens: int
    completion_tokens: int
    token_source: TokenSource
    error_code: str | None
    ttft_ms: float | None
    duration_ms: float
    attempts: int


class LedgerStore(Protocol):
    """Usage records; the memory store here, SQL stores with the billing work."""

    async def open(self, row: OpenedRow) -> None: ...

    async def settle(self, row: SettledRow) -> None: ...

    async def aclose(self) -> None: ...
