"""The ledger and key store in a SQL database: SQLite, PostgreSQL or MySQL/MariaDB.

SQLAlchemy Core (async, no ORM) over aiosqlite, asyncpg or asyncmy. `start()` migrates the schema
(Alembic), marks this instance's rows left open by a crash `interrupted` and starts the group-commit
writer (`_writer.py`): `open()`/`settle()` return once their row is committed, and concurrent
callers share commits. SQLite runs in WAL mode with `synchronous=NORMAL`: a commit survives the
process being killed (not necessarily a power cut) and readers never block the writer.

Never put a URL in a message: it may hold a password. Must not import the HTTP layer or routing.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from datetime import date, datetime
from types import MappingProxyType
from typing import Any, Final, TypeVar, cast

from sqlalchemy import (
    URL,
    ColumnElement,
    Row,
    Select,
    case,
    event,
    func,
    insert,
    literal_column,
    make_url,
    select,
    update,
)
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    InvalidRequestError,
    OperationalError,
)
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from estuary.core.policy import KeyPolicy, KeyRecord
from estuary.ledger._migrate import migrate
from estuary.ledger._urls import ASYNC_DRIVERS, split_scheme
from estuary.ledger._usage import (
    ERROR_STATUSES,
    check_filter,
    dimensions,
    require_aware,
    sorted_totals,
)
from estuary.ledger._writer import GroupWriter
from estuary.ledger.base import (
    LedgerRecord,
    OpenedRow,
    RowStatus,
    SettledRow,
    UsageDimension,
    UsageFilter,
    UsageTotal,
)
from estuary.ledger.schema import API_KEYS, REQUESTS

__all__ = ["SQLStore", "async_url"]

_SQLITE_PRAGMAS: Final = (
    "PRAGMA busy_timeout = 15000",  # wait up to 15 s for another process's write lock
    "PRAGMA synchronous = NORMAL",  # in WAL: durable across a process kill, fsync at checkpoints
)
_SQLITE_WAL_WAIT_S: Final = 15.0  # as long as busy_timeout: how long start() retries the switch
_MYSQL_RECYCLE_S: Final = 3600  # below the server's wait_timeout (8 h by default)
_R: Final = REQUESTS.c
_K: Final = API_KEYS.c
_DIMENSION_COLUMNS: Final = MappingProxyType(
    {"alias": "alias", "target": "target", "key": "key_id", "user": "end_user", "status": "status"}
)
_S = TypeVar("_S", bound=Select[Any])


def async_url(url: str) -> URL:
    """The SQLAlchemy URL of `url` with its async driver (`postgresql://…` → `+asyncpg`).

    An explicit `+driver` is kept. MySQL/MariaDB get `charset=utf8mb4` unless one is given.
    In-memory SQLite is refused (`memory://` is the in-memory store).
    """
    backend, driver = split_scheme(url)
    if backend not in ASYNC_DRIVERS:
        raise ValueError(f"unsupported SQL ledger URL scheme {backend!r}")
    dialect, default_driver = ASYNC_DRIVERS[backend]
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # a bad port is a ValueError
        raise ValueError("the ledger URL could not be parsed (it is not shown here)") from None
    parsed = parsed.set(drivername=f"{dialect}+{driver or default_driver}")
    if dialect == "sqlite" and parsed.database in (None, "", ":memory:"):
        # One shared connection would interleave the writer's and the readers' transactions.
        raise ValueError("an in-memory SQLite ledger is not supported: use memory://")
    if dialect in ("mysql", "mariadb") and "charset" not in parsed.query:
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    return parsed


def _set_sqlite_pragmas(dbapi_connection: Any, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    try:
        for pragma in _SQLITE_PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()


def _create_engine(url: URL) -> AsyncEngine:
    options: dict[str, Any] = {}
    # No pool_pre_ping: it costs a round trip on every write. A connection the server dropped
    # fails one statement, is discarded, and the writer and readers retry once on a fresh one.
    if url.get_backend_name() in ("mysql", "mariadb"):
        options["pool_recycle"] = _MYSQL_RECYCLE_S
    try:
        engine = create_async_engine(url, **options)
    except (ArgumentError, InvalidRequestError) as exc:  # their messages never hold the URL
        raise ValueError(f"cannot open the ledger with driver {url.drivername!r}: {exc}") from None
    if url.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _set_sqlite_pragmas)
    return engine


async def _enable_wal(engine: AsyncEngine) -> None:
    """Put the SQLite file in WAL mode (which persists in the file), retrying while it is busy.

    Switching a new file's journal mode needs its exclusive lock, and SQLite answers "database is
    locked" at once, without its busy handler, while another process holds it, as happens when
    several processes start together on a new file. So this retries here, off the connect hook.
    """
    deadline = time.monotonic() + _SQLITE_WAL_WAIT_S
    delay = 0.01
    while True:
        try:
            async with engine.connect() as connection:
                mode = await connection.exec_driver_sql("PRAGMA journal_mode = WAL")
                if str(mode.scalar()).lower() == "wal":
                    return
        except OperationalError:
            if time.monotonic() >= deadline:
                raise
        if time.monotonic() >= deadline:
            raise RuntimeError("the SQLite ledger could not be put in WAL mode")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.25)


class SQLStore:
    """`Store` over a SQL database; call `start()` before use and `aclose()` at the end."""

    def __init__(
        self,
        url: str,
        *,
        max_batch: int = 2000,
        backlog_max: int = 0,
        settle_linger_s: float = 0.005,
        commit_interval_s: float = 0.01,
    ) -> None:
        """Prepare (without connecting) a store for a SQLAlchemy-style `url`; `settle_linger_s`
        and `commit_interval_s`: see `GroupWriter`."""
        self._engine = _create_engine(async_url(url))
        self._writer = GroupWriter(
            self._engine,
            max_batch=max_batch,
            backlog_max=backlog_max,
            settle_linger_s=settle_linger_s,
            commit_interval_s=commit_interval_s,
        )
        self._closed = False

    @property
    def backlogged(self) -> int:
        """Rows accepted while the database was down, not written yet (`on_failure = "queue"`)."""
        return self._writer.backlogged

    @property
    def refused(self) -> int:
        """Rows refused because the database was down and the backlog full (or not allowed)."""
        return self._writer.refused

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy engine, for tools and tests that look at the database directly."""
        return self._engine

    async def start(self, instance: str) -> int:
        """Migrate, mark `instance`'s open rows interrupted, start the writer; return that count."""
        if self._closed:
            raise RuntimeError("the ledger store is closed")
        if self._writer.started:
            raise RuntimeError("the ledger store is already started")
        if self._engine.dialect.name == "sqlite":
            await _enable_wal(self._engine)
        await migrate(self._engine)
        interrupt = (
            update(REQUESTS)
            .where(_R.instance == instance, _R.status == "open")
            .values(status="interrupted")
        )
        async with self._engine.begin() as connection:
            result = await connection.execute(interrupt)
        self._writer.start()
        return result.rowcount

    async def open(self, row: OpenedRow) -> None:
        await self.open_soon(row)

    def open_soon(self, row: OpenedRow) -> asyncio.Future[None]:
        require_aware(row.started_at, "started_at")
        return self._writer.enqueue(
            "open",
            {
                "request_id": row.request_id,
                "instance": row.instance,
                "started_at": row.started_at,
                "key_id": row.key_id,
                "end_user": row.end_user,
                "alias": row.alias,
                "api": row.api,
                "status": "open",
            },
        )

    async def settle(self, row: SettledRow) -> None:
        require_aware(row.ended_at, "ended_at")
        await self._writer.settle(
            {
                "request_id": row.request_id,
                "status": row.status,
                "ended_at": row.ended_at,
                "finish_reason": row.finish_reason,
                "provider": row.provider,
                "upstream_model": row.upstream_model,
                "target": row.target,
                "prompt_tokens": row.prompt_tokens,
                "completion_tokens": row.completion_tokens,
                "token_source": row.token_source,
                "cost_micro": row.cost_micro,
                "error_code": row.error_code,
                "ttft_ms": row.ttft_ms,
                "duration_ms": row.duration_ms,
                "attempts": row.attempts,
                "failures": json.dumps(list(row.failures), ensure_ascii=False),
            }
        )

    async def get(self, request_id: str) -> LedgerRecord | None:
        found = await self._rows(select(REQUESTS).where(_R.request_id == request_id))
        return _record(found[0]) if found else None

    async def usage(
        self, where: UsageFilter, by: Sequence[UsageDimension] = ()
    ) -> list[UsageTotal]:
        dims = dimensions(by)
        check_filter(where)
        groups = [self._dimension(d).label(f"g{i}") for i, d in enumerate(dims)]
        query: Select[Any] = select(
            *groups,
            func.count().label("requests"),
            func.coalesce(func.sum(case((_R.status.in_(ERROR_STATUSES), 1), else_=0)), 0),
            func.coalesce(func.sum(_R.prompt_tokens), 0),
            func.coalesce(func.sum(_R.completion_tokens), 0),
            func.coalesce(func.sum(_R.cost_micro), 0),
        )
        query = _filtered(query, where)
        if groups:
            query = query.group_by(*(label.element for label in groups))
        rows = await self._rows(query)
        totals = (
            UsageTotal(
                group={d: _group_value(v) for d, v in zip(dims, row[: len(dims)], strict=True)},
                requests=int(row[len(dims)]),
                errors=int(row[len(dims) + 1]),
                prompt_tokens=int(row[len(dims) + 2]),
                completion_tokens=int(row[len(dims) + 3]),
                cost_micro=int(row[len(dims) + 4]),
            )
            for row in rows
        )
        return sorted_totals(totals, dims)

    async def spent(self, *, key_id: str, end_user: str | None = None) -> int:
        query = select(func.coalesce(func.sum(_R.cost_micro), 0))
        query = _filtered(query, UsageFilter(key_id=key_id, end_user=end_user))
        ((total,),) = await self._rows(query)
        return int(total or 0)

    async def add_key(self, record: KeyRecord) -> None:
        require_aware(record.created_at, "created_at")
        values = {
            "key_id": record.key_id,
            "digest": record.digest,
            "name": record.name,
            "prefix": record.prefix,
            "created_at": record.created_at,
            "expires_at": record.expires_at,
            "revoked_at": record.revoked_at,
            "policy": json.dumps(record.policy.to_json(), sort_keys=True, ensure_ascii=False),
        }
        try:
            async with self._engine.begin() as connection:
                await connection.execute(insert(API_KEYS).values(values))
        except IntegrityError:
            raise ValueError(
                f"key id {record.key_id!r} or its digest is already in the key store"
            ) from None

    async def find_key(self, digest: str) -> KeyRecord | None:
        found = await self._rows(select(API_KEYS).where(_K.digest == digest))
        return _key_record(found[0]) if found else None

    async def list_keys(self) -> list[KeyRecord]:
        rows = await self._rows(select(API_KEYS).order_by(_K.created_at, _K.key_id))
        return [_key_record(row) for row in rows]

    async def revoke_key(self, key_id: str, at: datetime) -> bool:
        require_aware(at, "at")
        revoke = (
            update(API_KEYS)
            .where(_K.key_id == key_id, _K.revoked_at.is_(None))
            .values(revoked_at=at)
        )
        async with self._engine.begin() as connection:
            result = await connection.execute(revoke)
        return result.rowcount == 1

    async def aclose(self) -> None:
        """Write what is queued, stop the writer, close every connection. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._writer.aclose()
        finally:
            await self._engine.dispose()

    async def _rows(self, query: Select[Any]) -> Sequence[Row[Any]]:
        """Run a read, after the rows queued so far; once more on a fresh connection if the
        server had dropped the pooled one."""
        await self._writer.flush()
        for attempt in (1, 2):
            try:
                async with self._engine.connect() as connection:
                    rows: Sequence[Row[Any]] = (await connection.execute(query)).all()
                return rows
            except DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    def _dimension(self, name: UsageDimension) -> ColumnElement[Any]:
        if name == "day":
            return self._utc_day()
        return REQUESTS.c[_DIMENSION_COLUMNS[name]]

    def _utc_day(self) -> ColumnElement[Any]:
        """The UTC date a row started; literal SQL, so GROUP BY matches the SELECT on PostgreSQL."""
        if self._engine.dialect.name == "postgresql":
            return func.date(func.timezone(literal_column("'UTC'"), _R.started_at))
        return func.date(_R.started_at)  # stored as naive UTC on SQLite and MySQL/MariaDB


def _filtered(query: _S, where: UsageFilter) -> _S:
    if where.since is not None:
        query = query.where(_R.started_at >= where.since)
    if where.until is not None:
        query = query.where(_R.started_at < where.until)
    if where.key_id is not None:
        query = query.where(_R.key_id == where.key_id)
    if where.end_user is not None:
        query = query.where(_R.end_user == where.end_user)
    return query


def _group_value(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _record(row: Row[Any]) -> LedgerRecord:
    opened = OpenedRow(
        request_id=row.request_id,
        instance=row.instance,
        started_at=row.started_at,
        key_id=row.key_id,
        end_user=row.end_user,
        alias=row.alias,
        api=row.api,
    )
    status = cast(RowStatus, row.status)
    if status in ("open", "interrupted") or row.ended_at is None:
        return LedgerRecord(opened=opened, status=status, settled=None)
    settled = SettledRow(
        request_id=row.request_id,
        ended_at=row.ended_at,
        status=row.status,
        finish_reason=row.finish_reason,
        provider=row.provider,
        upstream_model=row.upstream_model,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        token_source=row.token_source,
        cost_micro=row.cost_micro,
        error_code=row.error_code,
        ttft_ms=row.ttft_ms,
        duration_ms=row.duration_ms,
        attempts=row.attempts,
        failures=tuple(json.loads(row.failures or "[]")),
    )
    return LedgerRecord(opened=opened, status=status, settled=settled)


def _key_record(row: Row[Any]) -> KeyRecord:
    return KeyRecord(
        key_id=row.key_id,
        name=row.name,
        digest=row.digest,
        prefix=row.prefix,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        policy=KeyPolicy.from_json(json.loads(row.policy)),
    )
