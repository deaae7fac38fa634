"""Usage totals as people read them: exact money from micro-units, and CSV.

Shared by the usage API and `estuary usage`, so both export the same columns.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Final

from estuary.ledger.base import UsageTotal

__all__ = ["CSV_NUMBERS", "format_micro", "usage_csv"]

CSV_NUMBERS: Final = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cost",
    "cost_micro",
)
_MICRO: Final = 1_000_000


def format_micro(micro: int) -> str:
    """Micro-units as currency units with 6 decimals, exactly (integer arithmetic)."""
    sign = "-" if micro < 0 else ""
    whole, fraction = divmod(abs(micro), _MICRO)
    return f"{sign}{whole}.{fraction:06d}"


def usage_csv(
    totals: Sequence[UsageTotal], dimensions: Sequence[str], labels: Sequence[str] | None = None
) -> str:
    """A header row (`labels`, default the dimension names, then `CSV_NUMBERS`), then one row
    per group; `cost` in currency units, `cost_micro` exact."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*(labels or dimensions), *CSV_NUMBERS])
    for total in totals:
        writer.writerow(
            [total.group.get(d) or "" for d in dimensions]
            + [
                total.requests,
                total.errors,
                total.prompt_tokens,
                total.completion_tokens,
                format_micro(total.cost_micro),
                total.cost_micro,
            ]
        )
    return out.getvalue()
