"""Gateway keys: a bearer token in, a `Principal` out.

Keys are held only as SHA-256 digests; a lookup hashes the presented token, so neither timing nor
memory dumps reveal a key. Must not import the HTTP layer or routing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from estuary.core.errors import AuthenticationFailed

__all__ = ["ANONYMOUS", "Authenticator", "Principal", "key_id"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    """The caller a request is limited and billed to."""

    key_id: str
    end_user: str | None = None


ANONYMOUS = Principal(key_id="anonymous")


def key_id(key: str) -> str:
    """A stable, non-secret id for a key, safe for logs and the ledger."""
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:16]


class Authenticator:
    """Checks `Authorization: Bearer <key>` against the static keys."""

    def __init__(self, keys: Iterable[str], *, anonymous: bool = False) -> None:
        self._ids = {hashlib.sha256(k.encode()).digest(): key_id(k) for k in keys}
        self._anonymous = anonymous

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal for an `Authorization` header value; raises `AuthenticationFailed`.

        With anonymous access on (loopback only), a request without a known key is anonymous —
        so SDKs that insist on sending some key work against the demo server unchanged.
        """
        if not authorization:
            if self._anonymous:
                return ANONYMOUS
            raise AuthenticationFailed("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationFailed("malformed Authorization header: expected 'Bearer <key>'")
        found = self._ids.get(hashlib.sha256(token.strip().encode()).digest())
        if found is None:
            if self._anonymous:
                return ANONYMOUS
            raise AuthenticationFailed("invalid API key")
        return Principal(key_id=found)
