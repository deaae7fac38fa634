"""`estuary usage`: what was used and what it cost, grouped, from the ledger's database.

A table with a total line, or CSV on stdout (`--csv`). Costs are stored as integer micro-units and
shown as currency units with six decimals, exactly.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Final

import typer
from rich.markup import escape
from rich.table import Table

from estuary.commands._common import (
    ConfigOption,
    fail,
    format_time,
    load,
    parse_moment,
    stdout_console,
    utc_now,
    with_store,
)
from estuary.ledger.base import Store, UsageDimension, UsageFilter, UsageTotal
from estuary.ledger.report import format_micro, usage_csv

__all__ = ["By", "usage"]

_NUMBERS: Final = ("requests", "errors", "prompt tokens", "completion tokens", "cost")


class By(StrEnum):
    """A grouping dimension on the command line; `model` is the alias clients asked for."""

    model = "model"
    key = "key"
    user = "user"
    day = "day"
    target = "target"
    status = "status"

    @property
    def dimension(self) -> UsageDimension:
        """The store's name for it."""
        match self:
            case By.model:
                return "alias"
            case By.key:
                return "key"
            case By.user:
                return "user"
            case By.day:
                return "day"
            case By.target:
                return "target"
            case By.status:
                return "status"


def usage(
    since: Annotated[
        str, typer.Option(help="7d, 24h, … ago, or a date like 2026-11-01 (UTC)")
    ] = "7d",
    until: Annotated[
        str | None, typer.Option(help="Exclusive end, like --since (default: now)")
    ] = None,
    by: Annotated[
        list[By] | None, typer.Option(help="Group by (repeatable; default: model)")
    ] = None,
    key: Annotated[str | None, typer.Option("--key", help="Only this key id")] = None,
    user: Annotated[str | None, typer.Option("--user", help="Only this end user")] = None,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV with a header row on stdout")] = False,
    config: ConfigOption = None,
) -> None:
    """Requests, errors, tokens and cost per model (or key, user, day, target, status)."""
    settings = load(config)
    now = utc_now()
    start = parse_moment(since, now, ahead=False, option="--since")
    end = None if until is None else parse_moment(until, now, ahead=False, option="--until")
    if end is not None and end <= start:
        fail(f"--until ({format_time(end)}) must be later than --since ({format_time(start)})", 2)
    groups = list(dict.fromkeys(by or [By.model]))
    where = UsageFilter(since=start, until=end, key_id=key, end_user=user)
    dimensions = [group.dimension for group in groups]

    async def query(store: Store) -> list[UsageTotal]:
        return await store.usage(where, dimensions)

    totals = sorted(
        with_store(settings, query),
        key=lambda t: tuple(t.group.get(d) or "" for d in dimensions),
    )
    if as_csv:
        _write_csv(groups, dimensions, totals)
        return
    title = f"Usage from {format_time(start)} to {format_time(end, never='now')}"
    table = Table(title=title, title_justify="left", show_footer=bool(totals))
    for i, group in enumerate(groups):
        table.add_column(group.value, footer="total" if i == 0 else "")
    for name, value in zip(_NUMBERS, _numbers(_sum(totals)), strict=True):
        table.add_column(name, justify="right", footer=value)
    for total in totals:
        cells = [escape(total.group.get(d) or "—") for d in dimensions]
        table.add_row(*cells, *_numbers(total))
    console = stdout_console()
    console.print(table)
    if not totals:
        console.print("No requests in this period.")


def _sum(totals: Sequence[UsageTotal]) -> UsageTotal:
    return UsageTotal(
        requests=sum(t.requests for t in totals),
        errors=sum(t.errors for t in totals),
        prompt_tokens=sum(t.prompt_tokens for t in totals),
        completion_tokens=sum(t.completion_tokens for t in totals),
        cost_micro=sum(t.cost_micro for t in totals),
    )


def _numbers(total: UsageTotal) -> list[str]:
    return [
        f"{total.requests:,}",
        f"{total.errors:,}",
        f"{total.prompt_tokens:,}",
        f"{total.completion_tokens:,}",
        format_micro(total.cost_micro),
    ]


def _write_csv(
    groups: Sequence[By], dimensions: Sequence[UsageDimension], totals: Sequence[UsageTotal]
) -> None:
    """One header row, then one row per group; `cost` in units, `cost_micro` exact."""
    sys.stdout.write(usage_csv(totals, dimensions, [group.value for group in groups]))
