"""A process killed with SIGKILL mid-write loses nothing it acknowledged; its next start says so."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from estuary.ledger import UsageFilter
from tests.ledger.helpers import SQL_BACKENDS, Backend, Database, fresh_database

ROOT = Path(__file__).parents[2]
ROWS = 200
ACKED_BEFORE_KILL = 40


async def _run_and_kill(url: str, instance: str) -> set[str]:
    """Start the crash child, wait until it has written and kept writing, SIGKILL it.

    Returns the ids of the rows written after "ready" that the child saw acknowledged.
    """
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.ledger.child", "crash", url, instance, str(ROWS),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert child.stdout is not None
    acked: set[str] = set()
    try:
        line = await asyncio.wait_for(child.stdout.readline(), timeout=30)
        assert line == b"ready\n", line
        while len(acked) < ACKED_BEFORE_KILL:
            line = await asyncio.wait_for(child.stdout.readline(), timeout=30)
            assert line.startswith(b"acked "), line
            acked.add(line.split()[1].decode())
    finally:
        child.kill()  # SIGKILL: no cleanup, no flush, no aclose
        await child.wait()
    assert child.returncode == -9
    return acked


@pytest.mark.parametrize("backend", SQL_BACKENDS)
async def test_a_killed_process_leaves_interrupted_rows_not_missing_ones(
    backend: Backend, tmp_path: Path
) -> None:
    """After kill -9: every acknowledged row is there; the open ones read back interrupted."""
    async with fresh_database(backend, tmp_path) as database:
        acked = await _run_and_kill(database.url, "doomed")
        await _check_after_crash(database, acked)


async def _check_after_crash(database: Database, acked: set[str]) -> None:
    store = database.store()
    try:
        count = await store.start("doomed")
        for n in range(ROWS):
            record = await store.get(f"row_{n}")
            assert record is not None, f"row_{n} is missing"
            assert record.status == ("completed" if n % 2 == 0 else "interrupted")
            assert (record.settled is not None) == (n % 2 == 0)
        for request_id in acked:
            record = await store.get(request_id)
            assert record is not None, f"{request_id} was acknowledged, then lost"
            assert record.status == "interrupted"
        (late,) = [
            t
            for t in await store.usage(UsageFilter(), by=["status"])
            if t.group["status"] != "completed"
        ]
        # Rows committed but not yet acknowledged when the kill came count too; none stay open.
        assert late.group == {"status": "interrupted"}
        assert count == late.requests >= ROWS // 2 + len(acked)
    finally:
        await store.aclose()
