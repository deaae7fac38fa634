"""Resume logs in Redis Streams: written in the background, read by any instance.

Keys, for a request id `r` under the store's prefix `p`:

    p log:r        a Stream; entry `<seq>-0 {f: frame}` per event, then the sentinel
                   `18446744073709551615-0 {end: 1}` (greater than any seq, so every reader sees it)
    p logmeta:r    hash {owner}: whose log it is (checked before a read starts)
    p alive:r      exists while its producer runs the stream (refreshed every 2 s, 6 s TTL)
    p followers:r  how many readers iterate the log now (refreshed by them, 10 s TTL)

`append` and `close` only queue; one flusher task writes whatever accumulated in one pipeline.
The queue is bounded: when Redis is slow or down, entries are dropped and counted, and a reader
that meets the gap stops with `LogAbandoned` instead of resuming with events missing.

Must not import the HTTP layer, routing, auth or the ledger.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Final, Literal

from redis.asyncio import Redis
from redis.exceptions import RedisError

from estuary.state.base import LogAbandoned

__all__ = ["LogKeys", "LogOp", "RedisEventLog", "RedisLogs"]

SENTINEL_ID: Final = "18446744073709551615-0"
RUNNING_TTL_MS: Final = 3_600_000  # a running log lives an hour past its last append
ALIVE_EVERY_S: Final = 2.0
ALIVE_TTL_MS: Final = 6_000
FOLLOWER_TTL_MS: Final = 10_000
BLOCK_MS: Final = 1_000
READ_COUNT: Final = 500
MAX_PENDING: Final = 10_000
RETRY_AFTER_FAILURE_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class LogKeys:
    """The Redis keys of one log."""

    prefix: str

    def log(self, request_id: str) -> str:
        return f"{self.prefix}log:{request_id}"

    def meta(self, request_id: str) -> str:
        return f"{self.prefix}logmeta:{request_id}"

    def alive(self, request_id: str) -> str:
        return f"{self.prefix}alive:{request_id}"

    def followers(self, request_id: str) -> str:
        return f"{self.prefix}followers:{request_id}"


@dataclass(frozen=True, slots=True)
class LogOp:
    kind: Literal["open", "reopen", "frame", "close", "publish"]
    request_id: str
    seq: int = 0
    frame: bytes = b""  # a frame; for "open"/"reopen", the stream's request (if kept)
    owner: str = ""
    ttl_ms: int = 0


class RedisEventLog:
    """One stream's log in Redis (an `EventLog`); writes are queued, never awaited."""

    def __init__(
        self, logs: RedisLogs, request_id: str, followed: Callable[[str], Awaitable[bool]]
    ) -> None:
        self._logs = logs
        self._request_id = request_id
        self._followed = followed
        self._closed = False

    def append(self, seq: int, frame: bytes) -> None:
        if not self._closed:
            self._logs.enqueue(LogOp("frame", self._request_id, seq=seq, frame=frame))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._logs.close(self._request_id)

    async def followed(self) -> bool:
        return await self._followed(self._request_id)


class RedisLogs:
    """This instance's side of every resume log: the write queue, its flusher and liveness."""

    def __init__(
        self, client: Redis, keys: LogKeys, leave: Callable[..., Awaitable[Any]], log: Any
    ) -> None:
        self._client = client
        self._log = log  # a structlog logger
        self._keys = keys
        self.keys = keys
        self._leave = leave  # the LEAVE script
        self._pending: list[LogOp] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._busy = False
        self._running: dict[str, int] = {}  # request id -> its close TTL (ms), until closed
        self.dropped = 0  # entries dropped because Redis could not take them in time

    def open(
        self,
        request_id: str,
        owner: str,
        ttl_s: float,
        *,
        keep: bool = False,
        request: bytes | None = None,
    ) -> None:
        """Start a log (`keep`: go on with the frames an earlier producer left), with the
        `request` that started the stream kept beside it while it runs."""
        ttl_ms = max(1, math.ceil(ttl_s * 1000))
        self._running[request_id] = ttl_ms
        kind: Literal["open", "reopen"] = "reopen" if keep else "open"
        self.enqueue(LogOp(kind, request_id, owner=owner, ttl_ms=ttl_ms, frame=request or b""))

    def close(self, request_id: str) -> None:
        ttl_ms = self._running.pop(request_id, 0)
        self.enqueue(LogOp("close", request_id, ttl_ms=ttl_ms or 1))

    def enqueue(self, op: LogOp) -> None:
        """Queue a write; drop it (and count it) if the queue is full."""
        if len(self._pending) >= MAX_PENDING:
            self.dropped += 1
            return
        self._pending.append(op)
        self._wake.set()

    async def drain(self) -> None:
        """Wait until every write queued so far has been tried."""
        if not self._pending and not self._busy:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake.set()
        await asyncio.wait_for(asyncio.shield(waiter), timeout=5.0)

    async def flush_forever(self) -> None:
        """The flusher task: write whatever accumulated, in one pipeline per round."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                batch, waiters = self._pending, self._waiters
                self._pending, self._waiters = [], []
                self._busy = True
                failed = not await self._write(batch)
                self._busy = False
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
                if failed:
                    await asyncio.sleep(RETRY_AFTER_FAILURE_S)  # entries meanwhile queue up
        finally:
            for waiter in self._waiters:
                waiter.cancel()

    async def _write(self, batch: list[LogOp]) -> bool:
        if not batch:
            return True
        pipe = self._client.pipeline(transaction=False)
        touched: set[str] = set()
        for op in batch:
            self._queue_op(pipe, op, touched)
        for request_id in touched:
            pipe.pexpire(self._keys.log(request_id), RUNNING_TTL_MS)
            pipe.pexpire(self._keys.meta(request_id), RUNNING_TTL_MS)
        try:
            results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            dropped = sum(op.kind == "frame" for op in batch)
            self.dropped += dropped
            self._log.warning("state.log_writes_dropped", entries=dropped, error=type(exc).__name__)
            return False
        self.dropped += sum(isinstance(result, Exception) for result in results)
        return True

    def _queue_op(self, pipe: Any, op: LogOp, touched: set[str]) -> None:
        keys, rid = self._keys, op.request_id
        if op.kind in ("open", "reopen"):
            if op.kind == "open":
                pipe.delete(keys.log(rid), keys.followers(rid))  # a new log for this id
            pipe.hset(keys.meta(rid), "owner", op.owner)
            if op.frame:  # the request, for a takeover (`CLAIM`), until the log closes
                pipe.hset(keys.meta(rid), "request", op.frame)
            pipe.pexpire(keys.meta(rid), RUNNING_TTL_MS + op.ttl_ms)
            pipe.set(keys.alive(rid), b"1", px=ALIVE_TTL_MS)
        elif op.kind == "frame":
            pipe.xadd(keys.log(rid), {"f": op.frame}, id=f"{op.seq}-0")
            touched.add(rid)
        elif op.kind == "publish":  # `request_id` is the whole channel name here
            pipe.publish(rid, op.frame)
        else:
            pipe.xadd(keys.log(rid), {"end": b"1"}, id=SENTINEL_ID)
            pipe.hdel(keys.meta(rid), "request")  # ended: nothing left to take over
            pipe.pexpire(keys.log(rid), op.ttl_ms)
            pipe.pexpire(keys.meta(rid), op.ttl_ms)
            pipe.delete(keys.alive(rid))
            touched.discard(rid)

    async def keep_alive_forever(self) -> None:
        """The liveness task: refresh the alive key of every running log of this instance."""
        while True:
            await asyncio.sleep(ALIVE_EVERY_S)
            if not self._running:
                continue
            pipe = self._client.pipeline(transaction=False)
            for request_id in list(self._running):
                pipe.set(self._keys.alive(request_id), b"1", px=ALIVE_TTL_MS)
            with suppress(RedisError, OSError):
                await pipe.execute()

    async def abandon(self) -> None:
        """This instance stops: say so at once to the readers of its running logs."""
        if self._running:
            with suppress(RedisError, OSError):
                await self._client.delete(*(self._keys.alive(r) for r in self._running))
        self._running.clear()

    async def owner(self, request_id: str) -> str | None:
        """The owner of the log, None if there is no such log (for this instance's own logs,
        after its queued writes are done)."""
        await self.drain()
        owner = await self._client.hget(self._keys.meta(request_id), "owner")
        return owner.decode() if isinstance(owner, bytes) else owner

    async def followed(self, request_id: str) -> bool:
        value = await self._client.get(self._keys.followers(request_id))
        return value is not None and int(value) > 0

    async def follow(
        self, request_id: str, after: int, unreachable: Callable[[BaseException], Exception]
    ) -> AsyncIterator[bytes]:
        """The frames after seq `after`, then the live rest, until the sentinel."""
        followers = self._keys.followers(request_id)
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.incr(followers)
            pipe.pexpire(followers, FOLLOWER_TTL_MS)
            await pipe.execute()
            async for frame in self._frames(request_id, after):
                yield frame
        except (RedisError, OSError) as exc:
            raise unreachable(exc) from None
        finally:
            with suppress(RedisError, OSError):
                await self._leave(keys=[followers])

    async def _frames(self, request_id: str, after: int) -> AsyncIterator[bytes]:
        log_key = self._keys.log(request_id)
        last, refreshed = max(0, after), time.monotonic()
        while True:
            entries = await self._read(log_key, last, BLOCK_MS)
            if not entries or time.monotonic() - refreshed > ALIVE_EVERY_S:
                refreshed = time.monotonic()
                if not await self._still_alive(request_id) and not entries:
                    # The sentinel is written before `alive` goes: look once more.
                    entries = await self._read(log_key, last, None)
                    if not entries:
                        raise LogAbandoned("the stream's producer went away")
            for entry_id, fields in entries:
                if b"end" in fields:
                    return
                seq = int(bytes(entry_id).split(b"-")[0])
                if seq != last + 1:
                    raise LogAbandoned(f"events {last + 1}–{seq - 1} of the stream were lost")
                last = seq
                yield fields[b"f"]

    async def _read(self, key: str, last: int, block: int | None) -> list[Any]:
        reply: Any = await self._client.xread({key: f"{last}-0"}, count=READ_COUNT, block=block)
        return list(reply[0][1]) if reply else []  # [[key, [(id, fields), …]]]

    async def _still_alive(self, request_id: str) -> bool:
        pipe = self._client.pipeline(transaction=False)
        pipe.exists(self._keys.alive(request_id))
        pipe.pexpire(self._keys.followers(request_id), FOLLOWER_TTL_MS)
        alive, _ = await pipe.execute()
        return bool(alive)
