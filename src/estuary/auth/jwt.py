"""End-user JWTs: an app's backend signs a short-lived token for its user; Estuary verifies it.

The app then gets limited and billed per end user (`EndUser.subject`), with optional per-user
limits carried in the token (`rpm`, `tpm`, `concurrency`, `budget_micro`, `models`). PyJWT checks
the signature, `iss`, `aud` and the presence of `sub`, `exp` and `iat`; the time claims are checked
here against an injectable clock, with a leeway, and a token may not live longer than `max_ttl_s`
(`exp - iat`), so an app cannot mint year-long tokens.

The accepted algorithm is fixed when the verifier is built, never read from the token: `alg: none`
and HS256 tokens signed with an RS256 public key are refused like any bad signature. Every refusal
is an `AuthenticationFailed` whose message names the problem, never the token or the key. A token
that carries an `aud` is refused when no audience is configured (RFC 7519 §4.1.3).

Must not import the HTTP layer or routing.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from estuary.core.errors import AuthenticationFailed

__all__ = ["EndUser", "JWTAlgorithm", "JWTVerifier", "looks_like_jwt"]

JWTAlgorithm = Literal["HS256", "RS256"]

_MAX_TOKEN_CHARS: Final = 8192  # far above any real end-user token; bounds the work per request
_MAX_HEADER_CHARS: Final = 1024
_MAX_SUBJECT_CHARS: Final = 256
_MIN_HMAC_BYTES: Final = 32  # RFC 7518 §3.2: at least the size of the hash output
_SEGMENT: Final = re.compile(r"[A-Za-z0-9_-]*")


@dataclass(frozen=True, slots=True, kw_only=True)
class EndUser:
    """A verified end user: who it is, until when, and the limits the app set for it.

    `None` means the token set no such limit (the key's own limits still apply).
    """

    subject: str
    expires_at: float  # the token's `exp`, seconds since the epoch
    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    budget_micro: int | None = None
    models: tuple[str, ...] | None = None


class JWTVerifier:
    """Verifies end-user tokens signed with one fixed algorithm and key."""

    def __init__(
        self,
        *,
        algorithm: JWTAlgorithm,
        key: str,
        issuer: str | None = None,
        audience: str | None = None,
        max_ttl_s: float = 3600,
        leeway_s: float = 5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Check the key once, here; a `ValueError` (which never quotes the key) if it is unfit."""
        if algorithm not in ("HS256", "RS256"):
            raise ValueError(f"unsupported JWT algorithm {algorithm!r}: use HS256 or RS256")
        if not max_ttl_s > 0 or not leeway_s >= 0:
            raise ValueError("max_ttl_s must be > 0 and leeway_s >= 0")
        self._algorithm = algorithm
        self._key = _prepare_key(algorithm, key)
        self._issuer = issuer
        self._audience = audience
        self._max_ttl_s = max_ttl_s
        self._leeway_s = leeway_s
        self._clock = clock
        # Time claims are checked in `_check_times` against `clock`, not PyJWT's wall clock.
        self._decoder = jwt.PyJWT(
            options={
                "require": ["sub", "exp", "iat"],
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "enforce_minimum_key_length": True,
            }
        )

    @property
    def algorithm(self) -> JWTAlgorithm:
        """The one algorithm this verifier accepts."""
        return self._algorithm

    def verify(self, token: str) -> EndUser:
        """The end user a valid token names; `AuthenticationFailed` for any other token."""
        if len(token) > _MAX_TOKEN_CHARS:
            raise AuthenticationFailed(f"invalid token: longer than {_MAX_TOKEN_CHARS} characters")
        try:
            claims = self._decoder.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                issuer=self._issuer,
                audience=self._audience,
            )
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed(self._explain(exc)) from None
        expires_at = self._check_times(claims)
        return EndUser(
            subject=_subject(claims),
            expires_at=expires_at,
            rpm=_int_claim(claims, "rpm", minimum=1),
            tpm=_int_claim(claims, "tpm", minimum=1),
            concurrency=_int_claim(claims, "concurrency", minimum=1),
            budget_micro=_int_claim(claims, "budget_micro", minimum=0),
            models=_models_claim(claims),
        )

    def _check_times(self, claims: Mapping[str, Any]) -> float:
        """`exp`, `iat` and `nbf` against the clock, within the leeway; returns `exp`."""
        now, leeway = self._clock(), self._leeway_s
        exp, iat = _time_claim(claims, "exp"), _time_claim(claims, "iat")
        if exp <= now - leeway:
            raise AuthenticationFailed("invalid token: expired (exp)")
        if iat > now + leeway:
            raise AuthenticationFailed("invalid token: issued in the future (iat)")
        if claims.get("nbf") is not None and _time_claim(claims, "nbf") > now + leeway:
            raise AuthenticationFailed("invalid token: not valid yet (nbf)")
        if exp <= iat:
            raise AuthenticationFailed("invalid token: exp must be later than iat")
        if exp - iat > self._max_ttl_s:
            raise AuthenticationFailed(
                f"invalid token: lifetime (exp - iat) of {exp - iat:g} s exceeds the maximum"
                f" of {self._max_ttl_s:g} s"
            )
        return exp

    def _explain(self, exc: jwt.PyJWTError) -> str:
        """A message for a PyJWT refusal, written here so it can never echo the token or key."""
        match exc:
            case jwt.InvalidAlgorithmError():
                reason = f"algorithm not accepted (this gateway accepts {self._algorithm} only)"
            case jwt.InvalidSignatureError():
                reason = "signature does not match"
            case jwt.MissingRequiredClaimError():
                reason = f"missing the required claim {exc.claim!r}"
            case jwt.InvalidIssuerError():
                reason = "issuer (iss) is not the configured one"
            case jwt.InvalidAudienceError() if self._audience is None:
                reason = "carries an audience (aud), but none is configured"
            case jwt.InvalidAudienceError():
                reason = "audience (aud) is not the configured one"
            case jwt.exceptions.InvalidSubjectError():
                reason = "claim 'sub' must be a string"
            case jwt.exceptions.InvalidJTIError():
                reason = "claim 'jti' must be a string"
            case jwt.DecodeError():
                reason = "malformed (expected header.payload.signature, base64url-encoded JSON)"
            case _:
                reason = "unsupported header or claim"
        return f"invalid token: {reason}"


def looks_like_jwt(token: str) -> bool:
    """Whether `token` has a JWT's shape: three base64url segments, the first a JSON object.

    Tells an end-user JWT from a gateway key (`sk-est-…`, which has no dots); it verifies nothing.
    """
    parts = token.split(".")
    if len(parts) != 3 or not parts[0] or not parts[1] or len(parts[0]) > _MAX_HEADER_CHARS:
        return False
    if not all(_SEGMENT.fullmatch(part) for part in parts):
        return False
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        return False
    return isinstance(header, dict)


def _prepare_key(algorithm: JWTAlgorithm, key: str) -> bytes | RSAPublicKey:
    """Parse and check the key once; the messages describe the key, never quote it."""
    try:
        prepared = jwt.get_algorithm_by_name(algorithm).prepare_key(key)
    except jwt.InvalidKeyError:
        if algorithm == "HS256":
            raise ValueError("the HS256 key must be a shared secret, not a PEM key") from None
        raise ValueError("the RS256 key must be an RSA public key in PEM format") from None
    if algorithm == "HS256":
        if len(prepared) < _MIN_HMAC_BYTES:
            raise ValueError(f"the HS256 secret must be at least {_MIN_HMAC_BYTES} bytes long")
        return bytes(prepared)
    if not isinstance(prepared, RSAPublicKey):
        raise ValueError("the RS256 key must be the public key; keep the private key with the app")
    if prepared.key_size < 2048:
        raise ValueError("the RS256 key must be at least 2048 bits long")
    return prepared


def _time_claim(claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AuthenticationFailed(f"invalid token: claim {name!r} must be a NumericDate (seconds)")
    return float(value)


def _subject(claims: Mapping[str, Any]) -> str:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject.strip():
        raise AuthenticationFailed("invalid token: claim 'sub' must be a non-empty string")
    if len(subject) > _MAX_SUBJECT_CHARS:
        message = f"invalid token: claim 'sub' is longer than {_MAX_SUBJECT_CHARS} characters"
        raise AuthenticationFailed(message)
    return subject


def _int_claim(claims: Mapping[str, Any], name: str, *, minimum: int) -> int | None:
    """An optional integer limit; absent or null means no limit."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum > 0 else "a non-negative integer"
        raise AuthenticationFailed(f"invalid token: claim {name!r} must be {kind}")
    return value


def _models_claim(claims: Mapping[str, Any]) -> tuple[str, ...] | None:
    """An optional list of model aliases; absent or null means any the key allows."""
    value = claims.get("models")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(m, str) and m for m in value):
        raise AuthenticationFailed("invalid token: claim 'models' must be a list of alias names")
    return tuple(value)
