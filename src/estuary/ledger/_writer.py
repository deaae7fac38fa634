"""Group commit: one writer task turns every pending open and settle into a single transaction.

    open()/settle() ──put──▶ queue ──▶ writer task: take all that is pending (≤ max_batch)
         ▲                                 │ BEGIN; INSERT … (executemany); UPDATE … WHERE
         └──── future resolved ◀───────────┘ status='open' (executemany); COMMIT

A caller waits for its own future, so `open()` returns only once its row is committed, while a
thousand concurrent callers share a handful of commits. Two waits make the batches larger:

- A settle alone waits up to `settle_linger_s` (a few ms) for company: a stream that just ended
  is in no hurry, while the request that often arrives right after it is. That request's
  admission runs first, and the open row it queues ends the wait and shares the commit.
- Under load, commits are at least `commit_interval_s` (10 ms) apart: rows that arrive meanwhile
  share the next one. An idle writer commits at once, so a lone request's open is not delayed;
  a busy one's waits at most the interval, while its upstream request is on the way (the row
  must be committed before the first upstream byte is relayed). At most 100 commits a second
  instead of two per stream; on PostgreSQL each commit saved is a WAL flush saved.

`flush()` ends every wait: a read of the ledger (usage, a row) sees every row whose stream has
ended.

Inserts run before updates, so an open and the settle of the same row may share a batch. When a
batch fails on its data (a duplicate request id), its jobs are retried one by one so only the
faulty one fails; on any other error (the database is down) every job of the batch gets the
exception. Either way the writer goes on with the next batch. `aclose()` lets it drain what was
queued, then ends it.

With a backlog (`backlog_max > 0`, `[ledger] on_failure = "queue"`), a batch the database cannot
take (it is down: not a data error) is kept in memory instead — its callers are told it is
written, so streams go on — and written ahead of the next batch, or retried every `retry_s` while
nothing else comes. Once the backlog is full, new rows fail as without one (the caller refuses
the request). Rows still in the backlog when the store closes are logged as lost, with their
number; a process killed during an outage loses them too — the price of staying up.

Must not import the HTTP layer or routing.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import structlog
from sqlalchemy import Connection, Update, bindparam, insert, update
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from estuary.ledger.schema import REQUESTS

__all__ = ["GroupWriter"]

_SETTLED_COLUMNS: Final = (
    "status",
    "ended_at",
    "finish_reason",
    "provider",
    "upstream_model",
    "target",
    "prompt_tokens",
    "completion_tokens",
    "token_source",
    "cost_micro",
    "error_code",
    "ttft_ms",
    "duration_ms",
    "attempts",
    "failures",
)
_INSERT: Final = insert(REQUESTS)
_log: Final = structlog.get_logger("estuary.ledger")
_RETRY: Final = "retry"  # from `_next`: no new job, time to try the backlog again


def _settle_statement() -> Update:
    """UPDATE requests SET … WHERE request_id = :s_request_id AND status = 'open'."""
    return (
        update(REQUESTS)
        .where(REQUESTS.c.request_id == bindparam("s_request_id"))
        .where(REQUESTS.c.status == "open")
        .values({name: bindparam(f"s_{name}") for name in _SETTLED_COLUMNS})
    )


_SETTLE: Final = _settle_statement()


@dataclass(slots=True, kw_only=True)
class _Job:
    kind: Literal["open", "settle", "flush"]  # a flush writes nothing: it waits for the others
    params: Mapping[str, Any]
    done: asyncio.Future[None]


class GroupWriter:
    """The single writer of one store's `requests` rows."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        max_batch: int = 2000,
        backlog_max: int = 0,
        retry_s: float = 1.0,
        settle_linger_s: float = 0.005,
        commit_interval_s: float = 0.01,
    ) -> None:
        self._engine = engine
        self._settle_linger_s = settle_linger_s
        self._commit_interval_s = commit_interval_s
        self._last_commit = -math.inf  # loop time of the last commit
        self._max_batch = max_batch
        self._backlog_max = backlog_max
        self._retry_s = retry_s
        self._backlog: list[_Job] = []  # accepted, not yet written (the database is down)
        self.refused = 0  # rows failed because the database was down and the backlog full
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._connection: AsyncConnection | None = None  # the writer's own, kept between batches
        self._pause: asyncio.Future[None] | None = None  # the writer waiting for company
        self._open_ends_pause = False  # an open ends this pause (a settle's linger)
        self._hurry = False  # a flush is queued

    @property
    def backlogged(self) -> int:
        """Rows accepted while the database was down and not written yet."""
        return len(self._backlog)

    @property
    def started(self) -> bool:
        """Whether `start()` has been called (and the writer may still be running)."""
        return self._task is not None

    def start(self) -> None:
        """Start the writer task in the running loop."""
        if self._task is not None:
            raise RuntimeError("the ledger writer is already running")
        # The store owns this task: `aclose()` drains and awaits it, and it never raises.
        self._task = asyncio.create_task(self._run(), name="estuary-ledger-writer")  # noqa: TID251

    async def settle(self, row: Mapping[str, Any]) -> None:
        """Close one open row (given by its column values); returns once committed."""
        await self.enqueue("settle", {f"s_{name}": value for name, value in row.items()})

    def enqueue(
        self, kind: Literal["open", "settle", "flush"], params: Mapping[str, Any]
    ) -> asyncio.Future[None]:
        """Queue a write now; the future completes once it is committed.

        If whoever awaits the future is cancelled, the row is still written.
        """
        if self._closing:
            raise RuntimeError("the ledger store is closed")
        if self._task is None:
            raise RuntimeError("the ledger store is not started: call `await store.start()` first")
        done = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(kind=kind, params=params, done=done))
        if kind == "flush":
            self._hurry = True  # no more waiting until it is written
            self._end_pause()
        elif kind == "open" and self._open_ends_pause:
            self._end_pause()
        return done

    async def flush(self) -> None:
        """Return once every row queued before this call is committed, or has failed (the
        read that follows reports a database that is down by itself)."""
        if self._task is None or self._closing:
            return
        with contextlib.suppress(Exception):
            await self.enqueue("flush", {})

    async def aclose(self) -> None:
        """Write everything queued so far, then stop. Safe to call twice."""
        if self._closing:
            if self._task is not None:
                await asyncio.shield(self._task)
            return
        self._closing = True
        if self._task is not None:
            self._queue.put_nowait(None)  # after every job already queued
            self._end_pause()
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        try:
            while (first := await self._next()) is not None:
                if first != _RETRY:
                    await self._wait_for_company(first)
                self._hurry = False  # the flushes queued so far are in this batch
                batch, more = ([], True) if first == _RETRY else self._take_pending(first)
                await self._commit(batch)
                self._last_commit = asyncio.get_running_loop().time()
                if not more:
                    break
            if self._backlog:
                await self._commit([])  # a last try
        finally:
            if self._backlog:
                _log.error("ledger.rows_lost", rows=len(self._backlog), logger="estuary.ledger")
            self._fail_pending()
            await self._drop_connection()

    async def _next(self) -> _Job | Literal["retry"] | None:
        """The next queued job; `_RETRY` when a backlog has waited `retry_s` for company."""
        if not self._backlog:
            return await self._queue.get()
        try:
            async with asyncio.timeout(self._retry_s):
                return await self._queue.get()
        except TimeoutError:
            return _RETRY

    async def _wait_for_company(self, first: _Job) -> None:
        """Let `first` wait for more rows to share its commit (see the module docstring): a
        lone settle up to `settle_linger_s`, until an open comes; then any batch until
        `commit_interval_s` after the last commit. A flush or the close ends every wait;
        `first` is never dropped."""
        try:
            if first.kind == "settle" and self._queue.empty():
                await self._pause_for(self._settle_linger_s, open_ends_it=True)
            since = asyncio.get_running_loop().time() - self._last_commit
            await self._pause_for(self._commit_interval_s - since, open_ends_it=False)
        except BaseException:
            _finish(first, RuntimeError("the ledger writer stopped before this row was written"))
            raise

    async def _pause_for(self, seconds: float, *, open_ends_it: bool) -> None:
        if seconds <= 0 or self._closing or self._hurry:
            return
        loop = asyncio.get_running_loop()
        self._pause = pause = loop.create_future()
        self._open_ends_pause = open_ends_it
        timer = loop.call_later(seconds, _resolve, pause)
        try:
            await pause
        finally:
            timer.cancel()
            self._pause = None
            self._open_ends_pause = False

    def _end_pause(self) -> None:
        if (pause := self._pause) is not None:
            _resolve(pause)

    def _take_pending(self, first: _Job) -> tuple[list[_Job], bool]:
        """`first` and whatever else is queued now, up to a batch; False once the stop is seen."""
        batch = [first]
        while len(batch) < self._max_batch and not self._queue.empty():
            job = self._queue.get_nowait()
            if job is None:
                return batch, False
            batch.append(job)
        return batch, True

    async def _commit(self, batch: list[_Job]) -> None:
        jobs = self._backlog + batch  # what waited goes first, in order
        try:
            await self._write(jobs)
        except (IntegrityError, DataError) as exc:
            self._backlog = []
            if len(jobs) == 1:
                _finish(jobs[0], _data_error(jobs[0], exc))
                return
            for job in jobs:  # find the faulty job; the others still get written
                await self._commit([job])
        except Exception as exc:  # every waiter must hear of it; the writer goes on
            self._keep(jobs, batch, exc)
        except BaseException:  # the writer itself is being cancelled: nobody may wait forever
            for job in batch:
                _finish(job, RuntimeError("the ledger writer stopped before this row was written"))
            raise
        else:
            self._backlog = []
            if len(jobs) > len(batch):
                _log.info("ledger.backlog_written", rows=len(jobs) - len(batch))
            for job in batch:
                _finish(job, None)

    def _keep(self, jobs: list[_Job], batch: list[_Job], exc: Exception) -> None:
        """The database is down: keep the jobs for later if the backlog has room, else fail
        the new ones (the backlog stays as it was)."""
        if len(jobs) <= self._backlog_max:
            if len(jobs) == len(batch):
                _log.warning("ledger.queueing", error=type(exc).__name__, logger="estuary.ledger")
            self._backlog = jobs
            for job in batch:
                _finish(job, None)
            return
        self._backlog = jobs[: len(jobs) - len(batch)]
        self.refused += len(batch)
        for job in batch:
            _finish(job, exc)

    async def _write(self, batch: list[_Job]) -> None:
        opens = [job.params for job in batch if job.kind == "open"]
        settles = [job.params for job in batch if job.kind == "settle"]
        if not opens and not settles:
            return  # flushes only
        for attempt in (1, 2):
            try:
                if self._connection is None:
                    self._connection = await self._engine.connect()
                await self._connection.run_sync(_write_batch, opens, settles)
                return
            except DBAPIError as exc:
                # A pooled connection the server dropped (restart, idle timeout) fails once and
                # is discarded; the batch then gets one fresh connection rather than a ping
                # before every batch.
                if exc.connection_invalidated:
                    await self._drop_connection()
                if attempt == 2 or not exc.connection_invalidated:
                    raise

    async def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()

    def _fail_pending(self) -> None:
        """Nobody may wait forever: fail whatever the writer will no longer write."""
        self._closing = True
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if job is not None:
                _finish(job, RuntimeError("the ledger store closed before this row was written"))


def _write_batch(
    connection: Connection, opens: list[Mapping[str, Any]], settles: list[Mapping[str, Any]]
) -> None:
    """One transaction, run in one hop to the driver's side (one greenlet switch per batch)."""
    with connection.begin():
        if opens:
            connection.execute(_INSERT, opens)
        if settles:
            connection.execute(_SETTLE, settles)


def _data_error(job: _Job, exc: Exception) -> Exception:
    if job.kind == "open" and isinstance(exc, IntegrityError):
        request_id = job.params.get("request_id")
        error = ValueError(f"request {request_id!r} is already in the ledger")
        error.__cause__ = exc
        return error
    return exc


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _finish(job: _Job, error: BaseException | None) -> None:
    if job.done.done():
        return  # its caller was cancelled; the outcome is still in the database
    if error is None:
        job.done.set_result(None)
    else:
        job.done.set_exception(error)
