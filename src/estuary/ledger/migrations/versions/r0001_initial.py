"""The initial ledger schema: `requests` (one row per request) and `api_keys` (key digests).

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Self-contained on purpose: a migration describes the schema as it was at this revision, so it
does not import the (changing) schema module.
"""

from __future__ import annotations

from typing import Any, Final

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision: Final = "0001"
down_revision: Final = None
branch_labels: Final = None
depends_on: Final = None


def _utc() -> sa.types.TypeEngine[Any]:
    """UTC datetimes: timestamptz on PostgreSQL, DATETIME(6) holding UTC on MySQL/MariaDB."""
    return sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def _table_options() -> dict[str, Any]:
    """InnoDB, utf8mb4 and a binary collation on MySQL/MariaDB (both read their own prefix)."""
    options: dict[str, Any] = {"engine": "InnoDB", "charset": "utf8mb4", "collate": "utf8mb4_bin"}
    return {f"{d}_{k}": v for d in ("mysql", "mariadb") for k, v in options.items()}


def upgrade() -> None:
    op.create_table(
        "requests",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("instance", sa.String(255), nullable=False),
        sa.Column("started_at", _utc(), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("end_user", sa.String(255)),
        sa.Column("alias", sa.String(255), nullable=False),
        sa.Column("api", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("ended_at", _utc()),
        sa.Column("finish_reason", sa.String(64)),
        sa.Column("provider", sa.String(255)),
        sa.Column("upstream_model", sa.String(255)),
        sa.Column("target", sa.String(511)),
        sa.Column("prompt_tokens", sa.Integer),
        sa.Column("completion_tokens", sa.Integer),
        sa.Column("token_source", sa.String(16)),
        sa.Column("cost_micro", sa.BigInteger),
        sa.Column("error_code", sa.String(64)),
        sa.Column("ttft_ms", sa.Double()),
        sa.Column("duration_ms", sa.Double()),
        sa.Column("attempts", sa.Integer),
        sa.Column("failures", sa.Text),
        **_table_options(),
    )
    op.create_index("ix_requests_started_at", "requests", ["started_at"])
    op.create_index("ix_requests_key_started", "requests", ["key_id", "started_at"])
    op.create_index("ix_requests_instance_status", "requests", ["instance", "status"])
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(64), primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("expires_at", _utc()),
        sa.Column("revoked_at", _utc()),
        sa.Column("policy", sa.Text, nullable=False),
        **_table_options(),
    )


def downgrade() -> None:
    op.drop_table("api_keys")
    op.drop_index("ix_requests_instance_status", table_name="requests")
    op.drop_index("ix_requests_key_started", table_name="requests")
    op.drop_index("ix_requests_started_at", table_name="requests")
    op.drop_table("requests")
