"""The benchmark's numbers: derived per measurement, compared with the direct baseline, printed.

One JSON line per measurement goes to disk; the terminal gets rich tables; `markdown()` renders the
same tables for docs/benchmarks.md.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from estuary.bench.harness import Measurement

__all__ = ["markdown", "print_tables", "summarize"]


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarize(m: Measurement) -> dict[str, Any]:
    """The derived numbers of one measurement (times in ms, memory in KB/MB)."""
    out: dict[str, Any] = {
        "target": m.target,
        "scenario": m.scenario,
        "concurrency": m.concurrency,
        "streams": m.streams,
        "errors": m.errors,
        "ttft_p50_ms": _ms(_pct(m.ttft_s, 0.5)),
        "ttft_p99_ms": _ms(_pct(m.ttft_s, 0.99)),
        "gap_ms": _ms(statistics.fmean(m.gaps_s) if m.gaps_s else None),
        "streams_per_s": m.streams / m.wall_s if m.wall_s else None,
        "cpu_s_per_1k_streams": m.target_cpu_s / m.streams * 1000 if m.streams else None,
        "cpu_us_per_chunk": m.target_cpu_s / m.tokens * 1e6 if m.tokens else None,
        "peak_rss_mb": m.peak_rss / 2**20,
        "rss_kb_per_stream": max(0, m.peak_rss - m.idle_rss) / 1024 / max(1, m.concurrency),
        "loadgen_cpu_pct": 100 * m.loadgen_cpu_s / m.wall_s if m.wall_s else None,
    }
    if m.upstream:
        view = m.upstream
        closed = view["closed"] or 1
        out["aborted_pct"] = 100 * view["aborted"] / closed
        out["wasted_tokens_per_stream"] = view["wasted_tokens"] / closed
        out["abort_p50_ms"] = _ms(_pct(view["abort_delays_s"], 0.5))
        out["abort_p99_ms"] = _ms(_pct(view["abort_delays_s"], 0.99))
    return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _with_baseline(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    direct = {r["scenario"]: r for r in rows if r["target"] == "direct"}
    for row in rows:
        base = direct.get(row["scenario"])
        if base is None:
            continue
        for name in ("ttft_p50_ms", "ttft_p99_ms", "gap_ms"):
            if row[name] is not None and base[name] is not None:
                row["added_" + name] = row[name] - base[name]
        if row["streams_per_s"] and base["streams_per_s"]:
            row["x_direct"] = row["streams_per_s"] / base["streams_per_s"]
    return rows


_LOAD_COLUMNS = (
    ("target", "target", "{}"),
    ("scenario", "scenario", "{}"),
    ("added TTFT p50", "added_ttft_p50_ms", "{:+.1f} ms"),
    ("added TTFT p99", "added_ttft_p99_ms", "{:+.1f} ms"),
    ("added gap", "added_gap_ms", "{:+.2f} ms"),
    ("streams/s", "streams_per_s", "{:.0f}"),
    ("× direct", "x_direct", "{:.2f}"),
    ("errors", "errors", "{}"),
    ("CPU s/1k streams", "cpu_s_per_1k_streams", "{:.2f}"),
    ("CPU µs/chunk", "cpu_us_per_chunk", "{:.1f}"),
    ("peak RSS", "peak_rss_mb", "{:.0f} MB"),
    ("RSS/stream", "rss_kb_per_stream", "{:.1f} KB"),
    ("loadgen CPU", "loadgen_cpu_pct", "{:.0f} %"),
)
_CANCEL_COLUMNS = (
    ("target", "target", "{}"),
    ("upstream aborted", "aborted_pct", "{:.0f} %"),
    ("tokens after client left", "wasted_tokens_per_stream", "{:.2f}"),
    ("disconnect→abort p50", "abort_p50_ms", "{:.1f} ms"),
    ("disconnect→abort p99", "abort_p99_ms", "{:.1f} ms"),
)


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    return "–" if value is None else fmt.format(value)


def _tables(
    measurements: Sequence[Measurement],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows = _with_baseline([summarize(m) for m in measurements])
    return [r for r in rows if r["scenario"] != "cancel"], [
        r for r in rows if r["scenario"] == "cancel"
    ]


def print_tables(measurements: Sequence[Measurement], console: Console) -> None:
    """Rich tables: load scenarios, then the cancel scenario."""
    load, cancel = _tables(measurements)
    for title, columns, rows in (
        ("Load", _LOAD_COLUMNS, load),
        ("Cancel", _CANCEL_COLUMNS, cancel),
    ):
        table = Table(title=title)
        for header, _, _ in columns:
            table.add_column(header, justify="right")
        for row in rows:
            table.add_row(*(_cell(row, key, fmt) for _, key, fmt in columns))
        console.print(table)


def markdown(measurements: Sequence[Measurement]) -> str:
    """The same tables in Markdown."""
    load, cancel = _tables(measurements)
    parts = []
    for columns, rows in ((_LOAD_COLUMNS, load), (_CANCEL_COLUMNS, cancel)):
        parts.append("| " + " | ".join(h for h, _, _ in columns) + " |")
        parts.append("|" + "---|" * len(columns))
        parts.extend(
            "| " + " | ".join(_cell(row, key, fmt) for _, key, fmt in columns) + " |"
            for row in rows
        )
        parts.append("")
    return "\n".join(parts)
