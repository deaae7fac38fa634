"""The one pub/sub connection of a `RedisState`: cancel signals and broadcast messages.

It subscribes once to the cancel channel and to the pattern of every bus channel, so that
`subscribe()` after start needs no Redis command (it is sync in the protocol): a new callback
is only a new entry in a local table. It reconnects with backoff while Redis is away, and
after each (re)connection `on_connected` looks for cancels sent while it was deaf.

Must not import the HTTP layer, routing, auth or the ledger.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any, Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

__all__ = ["Bus"]

_GLOB: Final = re.compile(r"([\\*?\[\]])")
_FIRST_BACKOFF_S: Final = 0.1
_MAX_BACKOFF_S: Final = 5.0


class Bus:
    """Reads the pub/sub connection and dispatches to local callbacks."""

    def __init__(
        self,
        client: Redis,
        *,
        cancel_channel: str,
        bus_prefix: str,
        on_cancel: Callable[[str], None],
        on_connected: Callable[[], Awaitable[None]],
        log: Any,
    ) -> None:
        self._client = client
        self._log = log  # a structlog logger
        self._cancel_channel = cancel_channel.encode()
        self._bus_prefix = bus_prefix
        self._on_cancel = on_cancel
        self._on_connected = on_connected
        self._callbacks: dict[str, list[Callable[[str], None]]] = {}
        self.connected = asyncio.Event()

    def channel(self, name: str) -> str:
        """The Redis channel of bus channel `name`."""
        return self._bus_prefix + name

    def subscribe(self, name: str, callback: Callable[[str], None]) -> None:
        self._callbacks.setdefault(name, []).append(callback)

    async def run_forever(self) -> None:
        """The reader task: (re)connect, subscribe, dispatch; back off while Redis is away."""
        backoff = _FIRST_BACKOFF_S
        while True:
            try:
                async with self._client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self._cancel_channel)
                    await pubsub.psubscribe(_GLOB.sub(r"\\\1", self._bus_prefix) + "*")
                    self.connected.set()
                    backoff = _FIRST_BACKOFF_S
                    await self._on_connected()
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=1.0
                        )
                        if message is not None:
                            self._dispatch(message)
            except (RedisError, OSError) as exc:
                self.connected.clear()
                self._log.debug("state.pubsub_reconnect", error=type(exc).__name__, in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)

    def _dispatch(self, message: dict[str, Any]) -> None:
        channel, data = bytes(message["channel"]), bytes(message["data"])
        if message["type"] == "message" and channel == self._cancel_channel:
            self._on_cancel(data.decode())
            return
        if message["type"] != "pmessage":
            return
        self.deliver(channel.decode().removeprefix(self._bus_prefix), data.decode())

    def deliver(self, name: str, text: str) -> None:
        """Call this instance's callbacks for a message on bus channel `name`."""
        for callback in list(self._callbacks.get(name, ())):
            try:
                callback(text)
            except Exception:  # one bad subscriber must not stop the others, nor the reader
                self._log.exception("state.subscriber_failed", channel=name)
