"""Shared state behind one small Protocol: cancel signals and stream tickets today; rate-limit
buckets and resume buffers next. The memory store serves one process; a Redis store, many."""

from estuary.state.base import CancelResult, StateStore
from estuary.state.memory import MemoryState

__all__ = ["CancelResult", "MemoryState", "StateStore"]
