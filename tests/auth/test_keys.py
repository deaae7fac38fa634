"""The authenticator: static keys, stored keys (cached, revoked, expired), JWTs, the admin key."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from estuary.auth.jwt import JWTVerifier
from estuary.auth.keys import JWT_KEY_ID, Authenticator, generate_key, key_digest, key_id
from estuary.core.errors import AuthenticationFailed
from estuary.core.policy import KeyPolicy, KeyRecord

STATIC = "sk-est-static-key-0000000000000001"
ADMIN = "sk-est-admin-key-00000000000000002"
SECRET = "a-jwt-secret-that-is-long-enough-0123456789"


class Keys:
    """A key store in a dict, counting lookups."""

    def __init__(self) -> None:
        self.records: dict[str, KeyRecord] = {}
        self.lookups = 0

    async def find_key(self, digest: str) -> KeyRecord | None:
        self.lookups += 1
        return self.records.get(digest)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def stored(keys: Keys, **policy: object) -> tuple[str, KeyRecord]:
    plain, record = generate_key("page", KeyPolicy(**policy), now=datetime.now(UTC))  # type: ignore[arg-type]
    keys.records[record.digest] = record
    return plain, record


def bearer(token: str) -> str:
    return f"Bearer {token}"


async def test_static_keys_have_no_policy_and_a_stable_id() -> None:
    auth = Authenticator([STATIC])
    principal = await auth.authenticate(bearer(STATIC))
    assert principal.key_id == key_id(STATIC)
    assert principal.policy == KeyPolicy()
    with pytest.raises(AuthenticationFailed, match="invalid API key"):
        await auth.authenticate(bearer("sk-est-unknown"))
    with pytest.raises(AuthenticationFailed, match="missing"):
        await auth.authenticate(None)
    with pytest.raises(AuthenticationFailed, match="malformed"):
        await auth.authenticate("Basic abc")


async def test_stored_keys_carry_their_policy_and_are_cached_for_key_cache_s() -> None:
    keys, clock = Keys(), Clock()
    auth = Authenticator([], store=keys, cache_s=1.0, clock=clock)
    plain, record = stored(keys, models=("chat",), rpm=5)
    principal = await auth.authenticate(bearer(plain))
    assert (principal.key_id, principal.policy, principal.digest) == (
        record.key_id,
        record.policy,
        key_digest(plain),
    )
    await auth.authenticate(bearer(plain))
    assert keys.lookups == 1  # the second came from the cache
    # Revoked by another process: seen once the cache entry is older than key_cache_s.
    keys.records[record.digest] = dataclasses.replace(record, revoked_at=datetime.now(UTC))
    await auth.authenticate(bearer(plain))
    clock.now += 1.0
    with pytest.raises(AuthenticationFailed, match="revoked"):
        await auth.authenticate(bearer(plain))


async def test_forget_makes_a_revocation_count_at_once() -> None:
    keys = Keys()
    auth = Authenticator([], store=keys, cache_s=3600)
    plain, record = stored(keys)
    await auth.authenticate(bearer(plain))
    keys.records[record.digest] = dataclasses.replace(record, revoked_at=datetime.now(UTC))
    auth.forget(record.key_id)
    with pytest.raises(AuthenticationFailed, match="revoked"):
        await auth.authenticate(bearer(plain))


async def test_an_expired_key_is_refused() -> None:
    keys = Keys()
    auth = Authenticator([], store=keys)
    plain, record = stored(keys)
    keys.records[record.digest] = dataclasses.replace(
        record, expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    with pytest.raises(AuthenticationFailed, match="expired"):
        await auth.authenticate(bearer(plain))


async def test_a_jwt_names_an_end_user_with_claims_over_the_defaults() -> None:
    verifier = JWTVerifier(algorithm="HS256", key=SECRET)
    auth = Authenticator(
        [],
        jwt=verifier,
        jwt_policy=KeyPolicy(models=("chat",)),
        user_limits=KeyPolicy(rpm=10, tpm=1000, budget_micro=5),
    )
    now = int(time.time())
    token = jwt.encode({"sub": "u1", "iat": now, "exp": now + 60, "tpm": 99}, SECRET)
    principal = await auth.authenticate(bearer(token))
    assert (principal.key_id, principal.end_user) == (JWT_KEY_ID, "u1")
    assert principal.policy.models == ("chat",)
    assert principal.user == KeyPolicy(rpm=10, tpm=99, budget_micro=5)


async def test_anonymous_mode_takes_unknown_keys_as_anonymous_with_their_address() -> None:
    auth = Authenticator([STATIC], anonymous=True)
    principal = await auth.authenticate(bearer("anything"), client_ip="127.0.0.1")
    assert (principal.key_id, principal.client_ip) == ("anonymous", "127.0.0.1")
    assert (await auth.authenticate(bearer(STATIC))).key_id == key_id(STATIC)


def test_the_admin_key_is_only_the_admin_key() -> None:
    auth = Authenticator([STATIC], admin_key=ADMIN)
    assert auth.is_admin(bearer(ADMIN))
    assert not auth.is_admin(bearer(STATIC))
    assert not auth.is_admin(None)
    assert not Authenticator([STATIC]).is_admin(bearer(ADMIN))
