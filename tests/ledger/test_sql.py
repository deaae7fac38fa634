"""What only the SQL store does: URLs and drivers, lifecycle, SQLite settings, group commit."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import create_async_engine

from estuary.ledger import MemoryLedger, UsageFilter, open_store
from estuary.ledger.sql import SQLStore, async_url
from tests.ledger.helpers import (
    INSTANCE,
    MARIADB_HOST,
    MARIADB_PORT,
    PG_HOST,
    PG_PORT,
    Database,
    opened,
    settled,
)

SECRET = "hunter2-Pa55"


@pytest.fixture
async def sql_store(sql_database: Database) -> AsyncIterator[SQLStore]:
    """A started SQL store on a fresh database of each SQL backend."""
    store = sql_database.store()
    assert isinstance(store, SQLStore)
    await store.start(INSTANCE)
    try:
        yield store
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///relative.db", "sqlite+aiosqlite:///relative.db"),
        ("sqlite:////abs/path.db", "sqlite+aiosqlite:////abs/path.db"),
        ("postgresql://est@db.internal:5433/ledger", "postgresql+asyncpg://est@db.internal:5433/ledger"),
        ("postgres://est@db/ledger", "postgresql+asyncpg://est@db/ledger"),
        ("postgresql+asyncpg://est@db/ledger", "postgresql+asyncpg://est@db/ledger"),
        ("mysql://root@db:3306/ledger", "mysql+asyncmy://root@db:3306/ledger?charset=utf8mb4"),
        ("mariadb://root@db/ledger", "mariadb+asyncmy://root@db/ledger?charset=utf8mb4"),
        ("mariadb://root@db/ledger?charset=utf8", "mariadb+asyncmy://root@db/ledger?charset=utf8"),
        (f"postgresql://est:{SECRET}@db/ledger", "postgresql+asyncpg://est:***@db/ledger"),
    ],
)  # fmt: skip
def test_urls_get_their_async_driver(url: str, expected: str) -> None:
    """SQLAlchemy-style URLs are rewritten to the async driver; an explicit driver is kept."""
    assert async_url(url).render_as_string(hide_password=True) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"redis://user:{SECRET}@cache:6379/0", "unsupported ledger URL scheme 'redis'"),
        (f"user:{SECRET}@db/ledger", "not a URL"),
        (f"postgresql://est:{SECRET}@db:port/ledger", "could not be parsed"),
        (f"sqlite+nosuchdriver:///{SECRET}.db", "driver"),
        (f"sqlite+pysqlite:///{SECRET}.db", "async"),
        ("sqlite://", "in-memory SQLite"),
        ("sqlite:///:memory:", "in-memory SQLite"),
    ],
)
def test_bad_urls_are_value_errors_that_never_show_the_password(url: str, message: str) -> None:
    """An unusable URL is a ValueError that says why, without repeating the URL's secret."""
    with pytest.raises(ValueError, match=message) as caught:
        open_store(url)
    assert SECRET not in "".join(traceback.format_exception(caught.value))  # chained ones too


async def test_open_store_picks_the_store_a_url_names(tmp_path: object) -> None:
    """memory:// is the memory store; a database URL a SQL store."""
    assert isinstance(open_store("memory://"), MemoryLedger)
    store = open_store(f"sqlite:///{tmp_path}/x.db")
    assert isinstance(store, SQLStore)
    await store.aclose()


async def test_writes_before_start_or_after_close_are_refused(sql_database: Database) -> None:
    """open/settle before start() or after aclose() raise a RuntimeError that says so."""
    store = sql_database.store()
    with pytest.raises(RuntimeError, match=r"not started: call `await store.start\(\)` first"):
        await store.open(opened("req_1"))
    with pytest.raises(RuntimeError, match="not started"):
        await store.settle(settled("req_1"))
    await store.start(INSTANCE)
    with pytest.raises(RuntimeError, match="already started"):
        await store.start(INSTANCE)
    await store.aclose()
    await store.aclose()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        await store.open(opened("req_1"))


async def test_a_store_never_started_closes_cleanly(sql_database: Database) -> None:
    """aclose() without start() releases what little there is, twice if need be."""
    store = sql_database.store()
    await store.aclose()
    await store.aclose()


async def test_sqlite_runs_in_wal_mode_with_normal_sync_and_a_busy_timeout(
    tmp_path: object,
) -> None:
    """Every SQLite connection gets WAL, synchronous=NORMAL and a busy timeout."""
    store = open_store(f"sqlite:///{tmp_path}/ledger.db")
    assert isinstance(store, SQLStore)
    await store.start(INSTANCE)
    try:
        async with store.engine.connect() as connection:
            mode = await connection.scalar(text("PRAGMA journal_mode"))
            sync = await connection.scalar(text("PRAGMA synchronous"))
            busy = await connection.scalar(text("PRAGMA busy_timeout"))
        assert (mode, sync, busy) == ("wal", 1, 15000)
    finally:
        await store.aclose()


async def test_concurrent_writes_share_commits(sql_store: SQLStore) -> None:
    """1,000 concurrent opens take far fewer than 1,000 commits (group commit)."""
    commits = 0

    def count(_connection: object) -> None:
        nonlocal commits
        commits += 1

    event.listen(sql_store.engine.sync_engine, "commit", count)
    await asyncio.gather(*(sql_store.open(opened(f"req_{n}")) for n in range(1000)))
    event.remove(sql_store.engine.sync_engine, "commit", count)
    assert commits <= 100, commits
    (total,) = await sql_store.usage(UsageFilter())
    assert total.requests == 1000


async def test_a_settle_waits_for_the_next_open_and_shares_its_commit(
    sql_database: Database,
) -> None:
    """A stream's settle lingers (here: as long as it takes) until a new request's open comes,
    then both are written in one commit."""
    store = SQLStore(sql_database.url, settle_linger_s=3600)
    await store.start(INSTANCE)
    commits = 0

    def count(_connection: object) -> None:
        nonlocal commits
        commits += 1

    try:
        await store.open(opened("req_ended"))
        event.listen(store.engine.sync_engine, "commit", count)
        async with asyncio.timeout(10):
            settling = asyncio.create_task(store.settle(settled("req_ended")))
            for _ in range(5):  # the writer takes the settle and waits with it
                await asyncio.sleep(0)
            assert not settling.done()
            assert commits == 0
            await store.open(opened("req_next"))
            await settling
        event.remove(store.engine.sync_engine, "commit", count)
        assert commits == 1
        ended = await store.get("req_ended")
        assert ended is not None
        assert ended.settled is not None
        assert ended.settled.status == "completed"
    finally:
        await store.aclose()


async def test_under_load_commits_keep_their_interval_and_an_idle_writer_commits_at_once(
    sql_database: Database,
) -> None:
    """The first row after a quiet spell is committed at once; rows that follow within the
    commit interval (here: as long as it takes) wait and share the next commit."""
    store = SQLStore(sql_database.url, settle_linger_s=0, commit_interval_s=3600)
    await store.start(INSTANCE)
    commits = 0

    def count(_connection: object) -> None:
        nonlocal commits
        commits += 1

    event.listen(store.engine.sync_engine, "commit", count)
    try:
        async with asyncio.timeout(10):
            await store.open(opened("req_first"))  # idle: at once
            assert commits == 1
            waiting = [asyncio.create_task(store.open(opened(f"req_{n}"))) for n in range(3)]
            for _ in range(5):
                await asyncio.sleep(0)
            assert not any(task.done() for task in waiting)
            assert commits == 1
            (total,) = await store.usage(UsageFilter())  # a read ends the wait
            await asyncio.gather(*waiting)
        assert total.requests == 4
        assert commits == 2
    finally:
        event.remove(store.engine.sync_engine, "commit", count)
        await store.aclose()


async def test_a_read_sees_a_settle_that_is_still_waiting(sql_database: Database) -> None:
    """Reads flush the writer: a usage query right after a stream ended counts it."""
    store = SQLStore(sql_database.url, settle_linger_s=3600)
    await store.start(INSTANCE)
    try:
        await store.open(opened("req_a"))
        async with asyncio.timeout(10):
            settling = asyncio.create_task(store.settle(settled("req_a", completion_tokens=7)))
            await asyncio.sleep(0)
            (total,) = await store.usage(UsageFilter())
            await settling
        assert (total.requests, total.completion_tokens) == (1, 7)
    finally:
        await store.aclose()


async def test_one_bad_row_in_a_batch_fails_alone(sql_store: SQLStore) -> None:
    """A duplicate id in a group commit fails its own open only; the batch's others are written."""
    await sql_store.open(opened("dup"))
    rows = [opened(f"req_{n}") for n in range(50)] + [opened("dup")]
    results = await asyncio.gather(*(sql_store.open(r) for r in rows), return_exceptions=True)
    assert [type(r) for r in results] == [type(None)] * 50 + [ValueError]
    (total,) = await sql_store.usage(UsageFilter())
    assert total.requests == 51


async def test_a_database_error_reaches_the_writers_and_writing_goes_on(
    sql_store: SQLStore,
) -> None:
    """If the database refuses a batch, its callers get the error; later batches still commit."""
    rename = "ALTER TABLE {} RENAME TO {}"
    async with sql_store.engine.begin() as connection:
        await connection.execute(text(rename.format("requests", "requests_away")))
    with pytest.raises(Exception, match="requests") as caught:
        await sql_store.open(opened("req_lost"))
    assert not isinstance(caught.value, RuntimeError)
    async with sql_store.engine.begin() as connection:
        await connection.execute(text(rename.format("requests_away", "requests")))
    await sql_store.open(opened("req_kept"))
    assert await sql_store.get("req_kept") is not None
    assert await sql_store.get("req_lost") is None


async def test_a_cancelled_caller_still_gets_its_row_written(sql_database: Database) -> None:
    """Cancelling open() after it was queued does not lose the row; aclose() flushes it."""
    store = sql_database.store()
    await store.start(INSTANCE)
    task = asyncio.ensure_future(store.open(opened("req_cancelled")))
    await asyncio.sleep(0)  # queued now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await store.aclose()
    again = sql_database.store()
    await again.start("other")
    try:
        assert await again.get("req_cancelled") is not None
    finally:
        await again.aclose()


async def _drop_server_connections(database: Database) -> int:
    """Make the server end every connection to `database` (as a restart or idle timeout would)."""
    if database.backend == "postgresql":
        admin = create_async_engine(f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/postgres")
        query = (
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = :db AND pid <> pg_backend_pid()"
        )
    else:
        admin = create_async_engine(f"mysql+asyncmy://root@{MARIADB_HOST}:{MARIADB_PORT}/")
        query = "SELECT id FROM information_schema.processlist WHERE db = :db"
    try:
        async with admin.connect() as connection:
            rows = (await connection.execute(text(query), {"db": database.name})).all()
            if database.backend == "mariadb":
                for (thread,) in rows:
                    await connection.execute(text(f"KILL {int(thread)}"))
        return len(rows)
    finally:
        await admin.dispose()


async def test_connections_the_server_dropped_are_replaced_without_an_error(
    sql_database: Database,
) -> None:
    """After the server closed the pooled connections, writes and reads still succeed."""
    if sql_database.backend == "sqlite":
        pytest.skip("SQLite has no server to drop connections")
    store = sql_database.store()
    await store.start(INSTANCE)
    try:
        await store.open(opened("req_before"))
        assert await store.get("req_before") is not None
        assert await _drop_server_connections(sql_database) >= 1
        await store.open(opened("req_after"))  # the writer's pooled connection is gone
        assert await _drop_server_connections(sql_database) >= 1
        assert await store.get("req_after") is not None  # and so is the readers'
    finally:
        await store.aclose()
