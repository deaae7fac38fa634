"""Identifiers: request ids, stream tickets. Random, URL-safe, never derived from secrets."""

from __future__ import annotations

import secrets

__all__ = ["new_request_id", "new_ticket"]


def new_request_id() -> str:
    """A request id such as `req_3f9a…` (96 random bits)."""
    return "req_" + secrets.token_hex(12)


def new_ticket() -> str:
    """A single-use stream ticket (192 random bits)."""
    return "tkt_" + secrets.token_urlsafe(24)
