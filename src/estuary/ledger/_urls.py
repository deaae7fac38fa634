"""Which store a ledger URL names, and the async driver each SQL backend is reached through.

Stdlib only, so choosing the memory store loads no database library. Messages never repeat a URL:
it may hold a password. Must not import the HTTP layer or routing.
"""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Final

__all__ = ["ASYNC_DRIVERS", "backend_of", "split_scheme"]

# SQLAlchemy dialect name and async driver for each scheme we accept.
ASYNC_DRIVERS: Final = MappingProxyType(
    {
        "sqlite": ("sqlite", "aiosqlite"),
        "postgresql": ("postgresql", "asyncpg"),
        "postgres": ("postgresql", "asyncpg"),
        "mysql": ("mysql", "asyncmy"),
        "mariadb": ("mariadb", "asyncmy"),
    }
)
_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9.+-]*")
_SUPPORTED: Final = "memory://, sqlite:///file.db, postgresql://…, mysql://… or mariadb://…"


def split_scheme(url: str) -> tuple[str, str | None]:
    """The backend and explicit driver of a URL (`"postgresql+asyncpg://…"` → both parts)."""
    scheme, sep, _ = url.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        raise ValueError(
            f"the ledger URL is not a URL (it is not shown here); expected {_SUPPORTED}"
        )
    backend, plus, driver = scheme.lower().partition("+")
    return backend, (driver if plus else None)


def backend_of(url: str) -> str:
    """`memory`, or the SQLAlchemy dialect name (`sqlite`, `postgresql`, `mysql`, `mariadb`)."""
    backend, driver = split_scheme(url)
    if backend == "memory" and driver is None:
        return "memory"
    if backend not in ASYNC_DRIVERS:
        raise ValueError(f"unsupported ledger URL scheme {backend!r}; expected {_SUPPORTED}")
    return ASYNC_DRIVERS[backend][0]
