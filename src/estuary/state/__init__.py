"""Shared state behind one small Protocol: stream cancel signals and stream tickets today; rate-limit
buckets and resume buffers next. The in-memory store serves one process; a Redis store serves many."""

from estuary.state.base import CancelResult, StateStore
from estuary.state.memory import MemoryState

__all__ = ["CancelResult", "MemoryState", "StateStore"]
