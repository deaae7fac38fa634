"""Shared state behind one small Protocol: cancel signals, stream tickets, rate-limit buckets and
counters, resume logs and broadcast messages. The memory store serves one process; the Redis
store, every instance of a deployment."""

from estuary.state.base import CancelResult, EventLog, StateStore, StateUnavailable
from estuary.state.memory import MemoryState
from estuary.state.redis import RedisState

__all__ = [
    "CancelResult",
    "EventLog",
    "MemoryState",
    "RedisState",
    "StateStore",
    "StateUnavailable",
]
