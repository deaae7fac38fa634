"""A gateway key is stored as its digest only: the key itself is nowhere in the database files."""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from estuary.auth.keys import generate_key
from estuary.core.policy import KeyPolicy, KeyRecord
from estuary.ledger import Store
from tests.ledger.helpers import INSTANCE, fresh_database


async def _store_new_key(store: Store) -> tuple[str, KeyRecord]:
    key, record = generate_key("grep-me", KeyPolicy(rpm=5), now=datetime.now(UTC))
    await store.add_key(record)
    assert await store.find_key(record.digest) == record
    return key, record


def _read(*paths: Path) -> bytes:
    return b"".join(path.read_bytes() for path in paths if path.exists())


async def test_sqlite_files_hold_the_digest_not_the_key(tmp_path: Path) -> None:
    """Neither the SQLite file nor its WAL contains the plain key; the digest is found."""
    async with fresh_database("sqlite", tmp_path) as database:
        store = database.store()
        await store.start(INSTANCE)
        try:
            key, record = await _store_new_key(store)
            contents = _read(Path(database.name), Path(database.name + "-wal"))
        finally:
            await store.aclose()
        contents += _read(Path(database.name))  # after the checkpoint on close as well
    assert key.encode() not in contents
    assert record.digest.encode() in contents


@pytest.mark.postgres
async def test_a_postgres_dump_holds_the_digest_not_the_key(tmp_path: Path) -> None:
    """pg_dump of the ledger database shows the digest, never the plain key."""
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        pytest.skip("pg_dump is not installed")
    async with fresh_database("postgresql", tmp_path) as database:
        store = database.store()
        await store.start(INSTANCE)
        try:
            key, record = await _store_new_key(store)
        finally:
            await store.aclose()
        dump = await asyncio.create_subprocess_exec(
            pg_dump, "-h", "127.0.0.1", "-U", "postgres", database.name,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await dump.communicate()
        assert dump.returncode == 0, err.decode()
    assert b"CREATE TABLE public.api_keys" in out
    assert key.encode() not in out
    assert record.digest.encode() in out
