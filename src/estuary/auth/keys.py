"""Gateway keys and end-user tokens: a bearer credential in, a `Principal` out.

Keys are held only as SHA-256 digests; a lookup hashes the presented token, so neither timing nor
memory dumps reveal a key. Must not import the HTTP layer, routing or the ledger (stored keys are
found through the `KeyLookup` protocol, which the ledger's store satisfies).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Final, Protocol

from estuary.auth.jwt import EndUser, JWTVerifier, looks_like_jwt
from estuary.core.errors import AuthenticationFailed
from estuary.core.policy import UNRESTRICTED, KeyPolicy, KeyRecord, Principal

__all__ = [
    "ANONYMOUS",
    "JWT_KEY_ID",
    "KEY_PREFIX",
    "Authenticator",
    "KeyLookup",
    "Principal",
    "generate_key",
    "key_digest",
    "key_id",
]

KEY_PREFIX: Final = "sk-est-"
JWT_KEY_ID: Final = "jwt"  # the key id end users with a JWT are billed under
ANONYMOUS: Final = Principal(key_id="anonymous")
_CACHE_SIZE: Final = 10_000


def key_digest(key: str) -> str:
    """The hex SHA-256 of a key: what the key store holds instead of the key."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(key: str) -> str:
    """A stable, non-secret id for a key, safe for logs and the ledger."""
    return "key_" + key_digest(key)[:16]


def generate_key(
    name: str, policy: KeyPolicy, *, now: datetime, expires_at: datetime | None = None
) -> tuple[str, KeyRecord]:
    """A new random key (`sk-est-` and 43 URL-safe characters) and the record to store for it.

    The plain key is returned once, to show to whoever asked; it is never stored.
    """
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    record = KeyRecord(
        key_id=key_id(key),
        name=name,
        digest=key_digest(key),
        prefix=key[: len(KEY_PREFIX) + 4],
        created_at=now,
        expires_at=expires_at,
        policy=policy,
    )
    return key, record


class KeyLookup(Protocol):
    """Where stored keys are found (the ledger's database, structurally)."""

    async def find_key(self, digest: str) -> KeyRecord | None: ...


class Authenticator:
    """Turns credentials into a `Principal`: static keys, stored keys, end-user JWTs.

    Static keys (`[auth] keys`) have no policy. Stored keys are looked up by digest and cached for
    `cache_s` seconds (a revocation through the admin API is seen at once through `forget`, one
    made by the CLI in another process within `cache_s`). A JWT, when `[auth.jwt]` is configured,
    names an end user of the `jwt` key, limited by its claims or the `[limits.user]` defaults.
    """

    def __init__(
        self,
        keys: Iterable[str],
        *,
        anonymous: bool = False,
        store: KeyLookup | None = None,
        jwt: JWTVerifier | None = None,
        jwt_policy: KeyPolicy = UNRESTRICTED,
        user_limits: KeyPolicy | None = None,
        admin_key: str | None = None,
        cache_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._static = {key_digest(k): key_id(k) for k in keys}
        self._anonymous = anonymous
        self._store = store
        self._jwt = jwt
        self._jwt_policy = jwt_policy
        self._user_limits = user_limits or KeyPolicy()
        self._admin = key_digest(admin_key) if admin_key else None
        self._cache_s = cache_s
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, KeyRecord | None]] = OrderedDict()

    def adopt(self, other: Authenticator) -> None:
        """Take over `other`'s settings — static keys, anonymous access, the JWT verifier and
        policy, end-user limits, admin key, cache lifetime — for a config reload.

        The key store, the clock and the cache of stored-key lookups stay: stored keys do not
        come from the config. A static key no longer configured fails from the next request on.
        """
        self._static = other._static
        self._anonymous = other._anonymous
        self._jwt = other._jwt
        self._jwt_policy = other._jwt_policy
        self._user_limits = other._user_limits
        self._admin = other._admin
        self._cache_s = other._cache_s

    async def authenticate(
        self, authorization: str | None, *, client_ip: str | None = None
    ) -> Principal:
        """The principal for an `Authorization` header value; raises `AuthenticationFailed`.

        With anonymous access on (loopback only), a request without a known key is anonymous —
        so SDKs that insist on sending some key work against the demo server unchanged. Anonymous
        callers are limited per `client_ip`.
        """
        if not authorization:
            if self._anonymous:
                return Principal(key_id=ANONYMOUS.key_id, client_ip=client_ip)
            raise AuthenticationFailed("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationFailed("malformed Authorization header: expected 'Bearer <key>'")
        if self._jwt is not None and looks_like_jwt(token):
            return self.principal_for_user(self._jwt.verify(token))
        digest = key_digest(token)
        found = self._static.get(digest)
        if found is not None:
            return Principal(key_id=found)
        try:
            return await self.principal_for_digest(digest)
        except AuthenticationFailed:
            if self._anonymous:
                return Principal(key_id=ANONYMOUS.key_id, client_ip=client_ip)
            raise

    async def principal_for_digest(self, digest: str) -> Principal:
        """The principal of a key known only by its digest (a ticket's), checked again now."""
        found = self._static.get(digest)
        if found is not None:
            return Principal(key_id=found)
        record = await self._lookup(digest)
        if record is None:
            raise AuthenticationFailed("invalid API key")
        now = datetime.now(UTC)
        if record.revoked_at is not None and record.revoked_at <= now:
            raise AuthenticationFailed("this API key has been revoked")
        if not record.usable_at(now):
            raise AuthenticationFailed("this API key has expired")
        return Principal(key_id=record.key_id, policy=record.policy, digest=digest)

    def principal_for_user(self, user: EndUser) -> Principal:
        """The principal of a verified end user: the `jwt` key's policy, the user's limits."""
        base = self._user_limits
        limits = dataclasses.replace(
            base,
            rpm=user.rpm or base.rpm,
            tpm=user.tpm or base.tpm,
            concurrency=user.concurrency or base.concurrency,
            budget_micro=base.budget_micro if user.budget_micro is None else user.budget_micro,
            models=user.models if user.models is not None else base.models,
        )
        return Principal(
            key_id=JWT_KEY_ID, end_user=user.subject, policy=self._jwt_policy, user=limits
        )

    def is_admin(self, authorization: str | None) -> bool:
        """Whether the header carries the admin key (compared by digest, in constant time)."""
        if self._admin is None or not authorization:
            return False
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(key_digest(token.strip()), self._admin)

    def forget(self, key_id: str | None = None) -> None:
        """Drop cached lookups (of one key, or all), so a revocation counts at once."""
        if key_id is None:
            self._cache.clear()
            return
        for digest, (_, record) in list(self._cache.items()):
            if record is not None and record.key_id == key_id:
                del self._cache[digest]

    async def _lookup(self, digest: str) -> KeyRecord | None:
        if self._store is None:
            return None
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < self._cache_s:
            return cached[1]
        record = await self._store.find_key(digest)
        self._cache[digest] = (now, record)
        self._cache.move_to_end(digest)
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return record
