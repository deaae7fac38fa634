"""Points in time as people type them: `7d`, `24h`, `30m`, `2026-11-01`, `2026-11-01T12:00:00Z`.

Used by the usage API and the CLI. Stdlib only.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Final

__all__ = ["parse_instant"]

_RELATIVE: Final = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_S: Final = MappingProxyType({"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800})


def parse_instant(text: str, *, now: datetime, future: bool = False) -> datetime:
    """An aware UTC datetime: a span back from `now` (forward if `future`), or an ISO date/time.

    Raises `ValueError` with a message fit for a user.
    """
    text = text.strip()
    if match := _RELATIVE.fullmatch(text):
        span = timedelta(seconds=float(match[1]) * _UNIT_S[match[2]])
        return now + span if future else now - span
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a span like 7d, 24h, 30m nor a date like 2026-11-01"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
