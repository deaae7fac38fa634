"""The ledger's tables, as SQLAlchemy Core metadata, and the UTC datetime column type.

`requests` holds one row per request (what `OpenedRow` and `SettledRow` carry, its status, the
failed attempts as JSON text, and the derived "provider/model" `target` for grouping); `api_keys`
holds gateway keys as digests, never the keys. The Alembic migrations in `migrations/` create the
same tables and must be kept in step with this module (a test compares them).

Datetimes are stored as UTC: `timestamptz` on PostgreSQL, naive UTC `DATETIME(6)` on MySQL/MariaDB
and SQLite, and always read back timezone-aware UTC. MySQL/MariaDB tables use `utf8mb4_bin`, so
key ids, users and aliases compare and group case-sensitively, as on the other backends.

Must not import the HTTP layer or routing.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.types import TypeEngine

__all__ = ["API_KEYS", "METADATA", "REQUESTS", "VERSION_TABLE", "UTCDateTime"]

VERSION_TABLE: Final = "estuary_alembic_version"  # our own, so a shared database stays tidy

# MySQL and MariaDB read table options under their own dialect name; give both.
_MYSQL_OPTIONS: Final[Mapping[str, Any]] = MappingProxyType(
    {
        f"{dialect}_{option}": value
        for dialect in ("mysql", "mariadb")
        for option, value in (
            ("engine", "InnoDB"),
            ("charset", "utf8mb4"),
            ("collate", "utf8mb4_bin"),
        )
    }
)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend; naive datetimes are refused."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[datetime]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))  # microseconds, like the others
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("the ledger stores timezone-aware datetimes only")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


METADATA: Final = MetaData()

REQUESTS: Final = Table(
    "requests",
    METADATA,
    Column("request_id", String(64), primary_key=True),
    Column("instance", String(255), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("end_user", String(255)),
    Column("alias", String(255), nullable=False),
    Column("api", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("ended_at", UTCDateTime()),
    Column("finish_reason", String(64)),
    Column("provider", String(255)),
    Column("upstream_model", String(255)),
    Column("target", String(511)),  # "provider/model", stored so usage can group by it
    Column("prompt_tokens", Integer),  # NULL: unknown, which is not 0
    Column("completion_tokens", Integer),
    Column("token_source", String(16)),
    Column("cost_micro", BigInteger),
    Column("error_code", String(64)),
    Column("ttft_ms", Double()),
    Column("duration_ms", Double()),
    Column("attempts", Integer),
    Column("failures", Text),  # JSON array of "provider/model: code"
    Index("ix_requests_started_at", "started_at"),
    Index("ix_requests_key_started", "key_id", "started_at"),
    Index("ix_requests_instance_status", "instance", "status"),
    **_MYSQL_OPTIONS,
)

API_KEYS: Final = Table(
    "api_keys",
    METADATA,
    Column("key_id", String(64), primary_key=True),
    Column("digest", String(64), nullable=False, unique=True),  # hex SHA-256; never the key
    Column("name", String(255), nullable=False),
    Column("prefix", String(32), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime()),
    Column("revoked_at", UTCDateTime()),
    Column("policy", Text, nullable=False),  # KeyPolicy.to_json() as JSON text
    **_MYSQL_OPTIONS,
)
