"""Gateway keys as stored, and the per-key policy that limits what a key may do.

A key used from a public page must not become a free general-purpose LLM: its policy names the
aliases it may call, caps `max_tokens`, may forbid client `system` messages and may require one of
the server's prompt templates. Limits (`rpm`, `tpm`, `concurrency`, `budget_micro`) are enforced by
`estuary.limits`. Plain data, stdlib only; `to_json`/`from_json` are the stored form.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final

__all__ = ["UNRESTRICTED", "KeyPolicy", "KeyRecord", "Principal"]


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyPolicy:
    """What one key may do. `None` means no limit; an empty `templates` means none required."""

    models: tuple[str, ...] | None = None
    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    budget_micro: int | None = None
    max_tokens: int | None = None
    allow_system: bool = True
    templates: tuple[str, ...] = ()
    resume_grace_s: float | None = None  # None: the server's `[server] resume_grace_s`

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with only the fields that differ from the defaults."""
        default = _UNLIMITED_FIELDS
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in asdict(self).items()
            if v != default[k]
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyPolicy:
        """The inverse of `to_json`; unknown fields are ignored (written by a newer version)."""
        known = {k: v for k, v in data.items() if k in _UNLIMITED_FIELDS}
        for name in ("models", "templates"):
            if isinstance(known.get(name), list):
                known[name] = tuple(known[name])
        return cls(**known)


_UNLIMITED_FIELDS: Final = MappingProxyType(asdict(KeyPolicy()))


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyRecord:
    """A gateway key as the store holds it: never the key itself, only its SHA-256 digest."""

    key_id: str
    name: str
    digest: str  # hex SHA-256 of the whole key
    prefix: str  # the first characters, to recognise a key in a list ("sk-est-Ab3x")
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    policy: KeyPolicy = KeyPolicy()

    def usable_at(self, now: datetime) -> bool:
        """Neither revoked nor expired at `now`."""
        if self.revoked_at is not None and self.revoked_at <= now:
            return False
        return self.expires_at is None or now < self.expires_at


UNRESTRICTED: Final = KeyPolicy()


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    """The caller a request is limited and billed to.

    `policy` is the key's (for an end-user JWT: the `[auth.jwt]` policy); `user` holds the limits
    of the end user, when there is one; `client_ip` is set for anonymous callers, who are limited
    per address.
    """

    key_id: str
    end_user: str | None = None
    policy: KeyPolicy = UNRESTRICTED
    user: KeyPolicy | None = None
    client_ip: str | None = None
    digest: str | None = None  # a stored key's digest, so a ticket can re-check revocation
