"""Shared state in Redis, for a deployment of several instances (`[state] url = "redis://…"`).

Every `StateStore` operation is one Redis round trip (a Lua script where it must be atomic:
buckets, cancel); resume logs are Redis Streams written in the background (`_redis_log`);
cancel signals and bus messages travel on one pub/sub connection (`_redis_bus`).

When Redis cannot be reached, `on_failure` decides: "closed" raises `StateUnavailable`;
"open" (the default) serves each operation from a `MemoryState` inside this instance — limits
become per instance, cancel and resume work for this instance's own streams — and goes back to
Redis by itself once it answers again (probed at most once a second). The URL may hold a
password: it appears in no exception and no log line.

Tasks: the store owns three (log flusher, log liveness, pub/sub reader), started by `start()`
or else by the first operation, and stopped by `aclose()`.

Must not import the HTTP layer, routing, auth or the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Final, Literal, TypeVar

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from estuary.state._redis_bus import Bus
from estuary.state._redis_health import Health
from estuary.state._redis_log import LogKeys, LogOp, RedisEventLog, RedisLogs
from estuary.state._redis_scripts import ADD, CANCEL, CLAIM, FINISH, GIVE, LEAVE, TAKE
from estuary.state.base import (
    Bucket,
    CancelResult,
    EventLog,
    LogAbandoned,
    Shortfall,
    StateUnavailable,
)
from estuary.state.memory import MemoryState

__all__ = ["RedisState"]

T = TypeVar("T")

# What "Redis cannot be reached" looks like; any other error is a bug and propagates.
_UNREACHABLE: Final = (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError)
_CONNECT_TIMEOUT_S: Final = 1.0
_MAX_CONNECTIONS: Final = 1024
_LOCAL_KEEP_S: Final = 30.0
_POOL_WAIT_S: Final = 2.0
_SOCKET_TIMEOUT_S: Final = 2.0  # above the 1 s XREAD BLOCK of log readers
_RUNNING_STREAM_MS: Final = 24 * 3_600_000  # a stream's record while it runs (or its instance died)
_IDLE_BUCKET_MS: Final = 24 * 3_600_000  # a bucket that never refills, untouched this long, is full
_UNAVAILABLE: Final = "the shared state store (Redis) is unreachable"


class RedisState:
    """A `StateStore` shared by every instance that uses the same Redis and `prefix`."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "estuary:",
        on_failure: Literal["open", "closed"] = "open",
        keep_s: float = 600.0,
    ) -> None:
        try:
            # A blocking pool: a burst waits a moment for a connection instead of failing (and
            # so counting as an outage). Each live resume reader holds one while it blocks.
            pool = BlockingConnectionPool.from_url(
                url,
                max_connections=_MAX_CONNECTIONS,
                timeout=_POOL_WAIT_S,
                socket_connect_timeout=_CONNECT_TIMEOUT_S,
                socket_timeout=_SOCKET_TIMEOUT_S,
                retry=Retry(NoBackoff(), 1),  # one retry: a pooled connection may be stale
            )
            self._client = Redis.from_pool(pool)
        except ValueError:
            raise ValueError("invalid Redis URL in [state] url") from None  # hide the URL
        self._prefix = prefix
        self._on_failure = on_failure
        self._keep_ms = max(1, math.ceil(keep_s * 1000))
        # The local mirror only answers for this instance during an outage; Redis keeps the
        # finished streams for `keep_s`, so the mirror need not keep them long (memory).
        self._local = MemoryState(keep_s=min(keep_s, _LOCAL_KEEP_S))
        # A logger per store, so that tests can capture what each store says.
        self._log = structlog.get_logger("estuary.state")
        self._health = Health(on_failure, self._log)
        self._scripts = {
            name: self._client.register_script(text)
            for name, text in {
                "take": TAKE,
                "give": GIVE,
                "add": ADD,
                "cancel": CANCEL,
                "finish": FINISH,
                "leave": LEAVE,
                "claim": CLAIM,
            }.items()
        }
        self._futures: dict[str, asyncio.Future[None]] = {}  # this instance's running streams
        self._logs = RedisLogs(self._client, LogKeys(prefix), self._scripts["leave"], self._log)
        self._bus = Bus(
            self._client,
            cancel_channel=f"{prefix}cancel",
            bus_prefix=f"{prefix}bus:",
            on_cancel=self._canceled,
            on_connected=self._resync_cancels,
            log=self._log,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    @property
    def shared(self) -> bool:
        return True

    @property
    def degraded(self) -> bool:
        """Whether Redis is unreachable now (operations are served locally or refused)."""
        return self._health.down

    @property
    def degraded_ops(self) -> int:
        """How many operations were served by the local fallback, ever."""
        return self._health.degraded_ops

    @property
    def dropped_log_entries(self) -> int:
        """How many resume-log entries could not be written to Redis."""
        return self._logs.dropped

    async def start(self) -> None:
        """Start the store's tasks and check that Redis answers.

        Optional: the first operation starts the tasks too. Raises `StateUnavailable` if
        Redis is unreachable and the store fails closed; fails open with a warning otherwise.
        """
        self._ensure_started()
        with contextlib.suppress(StateUnavailable):
            await self._shared(self._client.ping, self._nothing)

    async def wait_subscribed(self, timeout_s: float = 5.0) -> None:
        """Wait until the pub/sub connection listens (tests, and start-up checks)."""
        self._ensure_started()
        await asyncio.wait_for(self._bus.connected.wait(), timeout_s)

    # -- streams and cancel ------------------------------------------------------------------

    async def register_stream(self, request_id: str, owner: str) -> asyncio.Future[None]:
        future = await self._local.register_stream(request_id, owner)
        self._futures[request_id] = future
        key = self._key("stream", request_id)

        async def shared() -> None:
            pipe = self._client.pipeline(transaction=True)
            pipe.delete(key)
            pipe.hset(key, mapping={"owner": owner, "status": "running"})
            pipe.pexpire(key, _RUNNING_STREAM_MS)
            await pipe.execute()

        try:
            await self._shared(shared, self._nothing)
        except BaseException:
            self._futures.pop(request_id, None)
            raise
        return future

    async def finish_stream(self, request_id: str) -> None:
        self._futures.pop(request_id, None)
        await self._local.finish_stream(request_id)
        key = self._key("stream", request_id)

        async def shared() -> None:
            await self._scripts["finish"](keys=[key], args=[self._keep_ms])

        await self._shared(shared, self._nothing)

    async def cancel_stream(self, request_id: str, owner: str) -> CancelResult:
        key, channel = self._key("stream", request_id), f"{self._prefix}cancel"

        async def shared() -> CancelResult:
            answer = await self._scripts["cancel"](keys=[key], args=[owner, channel, request_id])
            if answer == b"canceled":
                self._canceled(request_id)  # ours? then at once, not after the round trip
                return "canceled"
            if answer == b"finished":
                return "finished"
            # Not in Redis: perhaps registered here during an outage.
            return await self._local.cancel_stream(request_id, owner)

        return await self._shared(shared, lambda: self._local.cancel_stream(request_id, owner))

    def _canceled(self, request_id: str) -> None:
        """A cancel reached this instance (pub/sub or our own call): stop the stream if ours."""
        future = self._futures.pop(request_id, None)
        if future is not None and not future.done():
            future.set_result(None)

    async def _resync_cancels(self) -> None:
        """After (re)subscribing: cancels published while we were deaf are in the records."""
        ids = list(self._futures)
        if not ids:
            return
        pipe = self._client.pipeline(transaction=False)
        for request_id in ids:
            pipe.hget(self._key("stream", request_id), "status")
        for request_id, status in zip(ids, await pipe.execute(), strict=True):
            if status == b"canceled":
                self._canceled(request_id)

    # -- tickets, buckets, counters -------------------------------------------------------------

    async def put_ticket(self, ticket: str, payload: bytes, ttl_s: float) -> None:
        key, ttl_ms = self._key("ticket", ticket), max(1, math.ceil(ttl_s * 1000))

        async def shared() -> None:
            await self._client.set(key, payload, px=ttl_ms)

        await self._shared(shared, lambda: self._local.put_ticket(ticket, payload, ttl_s))

    async def take_ticket(self, ticket: str) -> bytes | None:
        key = self._key("ticket", ticket)

        async def shared() -> bytes | None:
            payload = await self._client.getdel(key)
            if payload is None:  # perhaps put here during an outage
                return await self._local.take_ticket(ticket)
            return payload.encode() if isinstance(payload, str) else payload

        return await self._shared(shared, lambda: self._local.take_ticket(ticket))

    async def take(self, takes: Sequence[tuple[Bucket, float]]) -> Shortfall | None:
        if not takes:
            return None
        keys = [self._key("bucket", bucket.name) for bucket, _ in takes]
        args: list[str | int] = [_IDLE_BUCKET_MS]
        for bucket, amount in takes:
            args += [repr(float(bucket.capacity)), repr(float(bucket.per_s)), repr(float(amount))]

        async def shared() -> Shortfall | None:
            short = await self._scripts["take"](keys=keys, args=args)
            if short is None:
                return None
            index, wait = short
            wait_s = math.inf if wait == b"inf" else float(wait)
            return Shortfall(takes[int(index) - 1][0].name, wait_s)

        return await self._shared(shared, lambda: self._local.take(takes))

    async def give(self, bucket: Bucket, amount: float) -> None:
        key = self._key("bucket", bucket.name)
        args: list[str | int] = [_IDLE_BUCKET_MS, repr(float(bucket.capacity))]
        args.append(repr(float(bucket.per_s)))

        async def shared() -> None:
            await self._scripts["give"](keys=[key], args=[*args, repr(float(amount))])

        await self._shared(shared, lambda: self._local.give(bucket, amount))

    async def add(self, name: str, delta: float) -> float:
        key = self._key("counter", name)

        async def shared() -> float:
            return float(await self._scripts["add"](keys=[key], args=[repr(float(delta))]))

        return await self._shared(shared, lambda: self._local.add(name, delta))

    # -- resume logs --------------------------------------------------------------------------

    def open_log(
        self,
        request_id: str,
        owner: str,
        ttl_s: float,
        *,
        taken_over: bool = False,
        request: bytes | None = None,
    ) -> EventLog:
        self._ensure_started()
        if self._health.down:  # no probe here (this is sync): the next async operation probes
            if self._on_failure == "closed":
                raise StateUnavailable(_UNAVAILABLE)
            self._health.degraded_ops += 1
            return self._local.open_log(
                request_id, owner, ttl_s, taken_over=taken_over, request=request
            )
        self._logs.open(request_id, owner, ttl_s, keep=taken_over, request=request)
        return RedisEventLog(self._logs, request_id, self._followed)

    async def claim_request(self, request_id: str) -> bytes | None:
        key = self._logs.keys.meta(request_id)

        async def shared() -> bytes | None:
            claimed = await self._scripts["claim"](keys=[key])
            return None if claimed is None else bytes(claimed)

        return await self._shared(shared, lambda: self._local.claim_request(request_id))

    async def _followed(self, request_id: str) -> bool:
        return await self._shared(lambda: self._logs.followed(request_id), self._false)

    async def read_log(
        self, request_id: str, owner: str, after: int
    ) -> AsyncIterator[bytes] | None:
        async def shared() -> AsyncIterator[bytes] | None:
            if await self._logs.owner(request_id) == owner:
                return self._logs.follow(request_id, after, self._lost_redis)
            # Not in Redis: perhaps kept here during an outage.
            return await self._local.read_log(request_id, owner, after)

        return await self._shared(shared, lambda: self._local.read_log(request_id, owner, after))

    def _lost_redis(self, exc: BaseException) -> Exception:
        """What a log reader raises when Redis goes away under it."""
        self._health.failed(exc)
        if self._on_failure == "closed":
            return StateUnavailable(_UNAVAILABLE)
        return LogAbandoned("the shared state store became unreachable")

    # -- bus ----------------------------------------------------------------------------------

    async def publish(self, channel: str, message: str) -> None:
        async def shared() -> None:
            await self._client.publish(self._bus.channel(channel), message)

        async def local() -> None:
            self._bus.deliver(channel, message)

        await self._shared(shared, local)

    def publish_soon(self, channel: str, message: str) -> None:
        self._ensure_started()
        if self._health.down:
            self._bus.deliver(channel, message)  # this instance at least
            return
        self._logs.enqueue(LogOp("publish", self._bus.channel(channel), frame=message.encode()))

    def subscribe(self, channel: str, callback: Callable[[str], None]) -> None:
        # Only registers the callback: the bus (one pattern subscription) hears every channel
        # once `start()` or the first operation has started it, in the loop that serves.
        self._bus.subscribe(channel, callback)

    async def ping(self) -> None:
        """Raise `StateUnavailable` if Redis does not answer (whatever `on_failure` says)."""
        try:
            await self._client.ping()
        except _UNREACHABLE as exc:
            self._health.failed(exc)
            raise StateUnavailable(_UNAVAILABLE) from None
        self._health.answered()

    async def aclose(self) -> None:
        """Write what is queued (briefly), tell readers of running logs, stop, disconnect."""
        if self._closed:
            return
        self._closed = True
        if self._tasks and not self._health.down:
            with contextlib.suppress(*_UNREACHABLE):
                await asyncio.wait_for(self._logs.drain(), 1.0)
            await self._logs.abandon()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self._client.aclose()
        await self._local.aclose()

    # -- plumbing -----------------------------------------------------------------------------

    def _key(self, kind: str, name: str) -> str:
        return f"{self._prefix}{kind}:{name}"

    def _ensure_started(self) -> None:
        """Start the store's tasks in the running loop, once (raises RuntimeError without one)."""
        if self._tasks or self._closed:
            return
        asyncio.get_running_loop()  # RuntimeError outside a loop, before any task is made
        # The store owns these tasks, like the ledger its writer: `aclose()` cancels and awaits
        # them, and they never raise.
        jobs = {
            "estuary-state-log-flusher": self._logs.flush_forever,
            "estuary-state-log-alive": self._logs.keep_alive_forever,
            "estuary-state-pubsub": self._bus.run_forever,
        }
        self._tasks = [
            asyncio.create_task(job(), name=name)  # noqa: TID251  # owned by the store
            for name, job in jobs.items()
        ]

    async def _shared(
        self, shared: Callable[[], Awaitable[T]], local: Callable[[], Awaitable[T]]
    ) -> T:
        """Run `shared` against Redis; if Redis is unreachable, `local` (or refuse)."""
        if self._closed:
            raise RuntimeError("the state store is closed")
        self._ensure_started()
        if self._health.should_try():
            try:
                result = await shared()
            except _UNREACHABLE as exc:
                self._health.failed(exc)
            else:
                self._health.answered()
                return result
        if self._on_failure == "closed":
            raise StateUnavailable(_UNAVAILABLE)
        self._health.degraded_ops += 1
        return await local()

    @staticmethod
    async def _nothing() -> None:
        return None

    @staticmethod
    async def _false() -> bool:
        return False
