"""What every store shares when it answers a usage query, and the checks it applies to rows.

Stdlib and `estuary.ledger.base` only; must not import the HTTP layer or routing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Final, get_args

from estuary.ledger.base import UsageDimension, UsageFilter, UsageTotal

__all__ = [
    "ERROR_STATUSES",
    "check_filter",
    "dimensions",
    "require_aware",
    "sorted_totals",
    "utc",
    "utc_or_none",
]

ERROR_STATUSES: Final = ("error", "interrupted")
_KNOWN: Final = frozenset(get_args(UsageDimension))


def dimensions(by: Sequence[UsageDimension]) -> tuple[UsageDimension, ...]:
    """`by` without repeats; `ValueError` on a dimension no store knows."""
    unknown = [d for d in by if d not in _KNOWN]
    if unknown:
        raise ValueError(f"unknown usage dimension(s) {unknown}; known: {sorted(_KNOWN)}")
    return tuple(dict.fromkeys(by))


def sorted_totals(totals: Iterable[UsageTotal], by: Sequence[UsageDimension]) -> list[UsageTotal]:
    """Totals ordered by their group values in `by` order, None before any string."""

    def key(total: UsageTotal) -> tuple[tuple[bool, str], ...]:
        values = (total.group.get(d) for d in by)
        return tuple((v is not None, v or "") for v in values)

    return sorted(totals, key=key)


def require_aware(value: datetime, name: str) -> None:
    """`ValueError` unless `value` carries a timezone (the ledger speaks UTC instants)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime (UTC)")


def check_filter(where: UsageFilter) -> None:
    """`ValueError` if a time bound of `where` is a naive datetime."""
    for name in ("since", "until"):
        if (value := getattr(where, name)) is not None:
            require_aware(value, name)


def utc(value: datetime, name: str) -> datetime:
    """`value` in UTC, as every store reads datetimes back; `ValueError` if it is naive."""
    require_aware(value, name)
    return value.astimezone(UTC)


def utc_or_none(value: datetime | None, name: str) -> datetime | None:
    """`utc()` of a datetime that may be missing."""
    return None if value is None else utc(value, name)
