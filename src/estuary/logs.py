"""Structured JSON logs, with every secret scrubbed from every line.

`configure_logging()` routes the standard library's records (ours, uvicorn's) through structlog's
JSON renderer and a redaction step that knows the configured secrets, so even an exception message
that somehow carries a key cannot print it. Called once by the CLI; importing does nothing.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

from estuary.core.redaction import Redactor

__all__ = ["configure_logging"]


def configure_logging(level: str, redactor: Redactor) -> None:
    """Send all logs to stderr as JSON lines, redacted.

    Estuary's own lines go straight through structlog's byte logger with orjson (one line per
    stream is on the hot path); the standard library's (uvicorn's, tracebacks) go through the
    same redaction and renderer by way of `ProcessorFormatter`.
    """

    def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for name, value in event.items():
            if isinstance(value, str):
                event[name] = redactor(value)
        return event

    def render(_: Any, __: str, event: MutableMapping[str, Any]) -> bytes:
        return orjson.dumps(event, default=str)

    shared: list[Any] = [
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, redact, render],
        logger_factory=structlog.BytesLoggerFactory(sys.stderr.buffer),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=True,
    )
