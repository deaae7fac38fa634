"""End-user JWTs: a valid token gives an `EndUser`; any other is refused without being echoed."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from estuary.auth.jwt import EndUser, JWTVerifier, looks_like_jwt
from estuary.core.errors import AuthenticationFailed

SECRET = "an-hs256-shared-secret-of-at-least-32-bytes!"
NOW = 1_800_000_000.0


def clock() -> float:
    return NOW


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sub": "user-42", "iat": int(NOW), "exp": int(NOW) + 600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs256(payload: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


def verifier(**kwargs: Any) -> JWTVerifier:
    options: dict[str, Any] = {"algorithm": "HS256", "key": SECRET, "clock": clock}
    options.update(kwargs)
    return JWTVerifier(**options)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def rsa_pair() -> tuple[str, str]:
    """A fresh RSA key pair as PEM: (private, public)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private_pem, public_pem


def refused(check: JWTVerifier, token: str, fragment: str) -> str:
    """Assert `token` is refused with a message containing `fragment`, never the token or key."""
    with pytest.raises(AuthenticationFailed) as caught:
        check.verify(token)
    message = str(caught.value)
    assert fragment in message
    assert token not in message
    assert SECRET not in message
    assert caught.value.status_code == 401
    return message


def test_valid_hs256_token_gives_the_end_user() -> None:
    """A well-signed HS256 token yields its subject and expiry, with no limits set."""
    user = verifier().verify(hs256(claims()))
    assert user == EndUser(subject="user-42", expires_at=NOW + 600)


def test_valid_rs256_token_gives_the_end_user(rsa_pair: tuple[str, str]) -> None:
    """An RS256 token signed with the app's private key verifies against its public key."""
    private_pem, public_pem = rsa_pair
    token = jwt.encode(claims(), private_pem, algorithm="RS256")
    user = verifier(algorithm="RS256", key=public_pem).verify(token)
    assert user.subject == "user-42"


def test_limit_claims_are_parsed() -> None:
    """rpm, tpm, concurrency, budget_micro and models come through typed; models as a tuple."""
    token = hs256(
        claims(rpm=10, tpm=5000, concurrency=2, budget_micro=0, models=["chat", "fast-chat"])
    )
    user = verifier().verify(token)
    assert (user.rpm, user.tpm, user.concurrency, user.budget_micro) == (10, 5000, 2, 0)
    assert user.models == ("chat", "fast-chat")


def test_null_limit_claims_mean_no_limit() -> None:
    """A limit claim set to null is the same as one left out."""
    payload = claims()
    payload.update(rpm=None, models=None)
    user = verifier().verify(hs256(payload))
    assert user.rpm is None
    assert user.models is None


def test_issuer_and_audience_are_accepted_when_they_match() -> None:
    """With iss and aud configured, a token naming both is accepted."""
    check = verifier(issuer="https://app.example", audience="estuary")
    user = check.verify(hs256(claims(iss="https://app.example", aud="estuary")))
    assert user.subject == "user-42"


def test_leeway_is_honoured() -> None:
    """Clock skew within the leeway is tolerated, for exp, iat and nbf alike."""
    check = verifier(leeway_s=5)
    just_expired = claims(iat=int(NOW) - 600, exp=int(NOW) - 3)
    assert check.verify(hs256(just_expired)).subject == "user-42"
    slightly_ahead = claims(iat=int(NOW) + 3, nbf=int(NOW) + 3, exp=int(NOW) + 600)
    assert check.verify(hs256(slightly_ahead)).subject == "user-42"
    refused(verifier(leeway_s=0), hs256(just_expired), "expired")
    refused(verifier(leeway_s=0), hs256(slightly_ahead), "future")


def test_alg_none_is_refused() -> None:
    """An unsigned token (`alg: none`, empty signature) is refused."""
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims()).encode())
    token = f"{header}.{payload}."
    assert looks_like_jwt(token)
    refused(verifier(), token, "algorithm not accepted")


def test_hs256_signed_with_the_public_key_is_refused(rsa_pair: tuple[str, str]) -> None:
    """The algorithm-confusion attack (HS256 keyed with the RS256 public key) fails."""
    _, public_pem = rsa_pair
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims()).encode())
    signing_input = f"{header}.{payload}".encode()
    hmac_alg = jwt.get_algorithm_by_name("HS256")
    signature = b64url(hmac_alg.sign(signing_input, public_pem.encode()))
    token = f"{header}.{payload}.{signature}"
    message = refused(verifier(algorithm="RS256", key=public_pem), token, "RS256 only")
    assert "BEGIN PUBLIC KEY" not in message


def test_wrong_signature_is_refused() -> None:
    """A token signed with another secret is refused."""
    forged = hs256(claims(), secret="another-secret-that-is-32-bytes-long!!")
    refused(verifier(), forged, "signature")


def test_tampered_payload_is_refused() -> None:
    """Changing the payload after signing breaks the signature."""
    header, _, signature = hs256(claims()).split(".")
    forged = b64url(json.dumps(claims(sub="admin")).encode())
    refused(verifier(), f"{header}.{forged}.{signature}", "signature")


def test_expired_token_is_refused() -> None:
    """A token past its exp (beyond the leeway) is refused."""
    refused(verifier(), hs256(claims(iat=int(NOW) - 700, exp=int(NOW) - 100)), "expired")


@pytest.mark.parametrize(
    ("claim", "fragment"), [("nbf", "not valid yet (nbf)"), ("iat", "future (iat)")]
)
def test_not_yet_valid_token_is_refused(claim: str, fragment: str) -> None:
    """nbf or iat in the future beyond the leeway is refused."""
    payload = claims(exp=int(NOW) + 900)
    payload[claim] = int(NOW) + 60
    refused(verifier(), hs256(payload), fragment)


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (claims(iss="https://evil.example"), "issuer"),
        (claims(), "'iss'"),
        (claims(iss="https://app.example", aud="someone-else"), "audience"),
        (claims(iss="https://app.example"), "'aud'"),
    ],
)
def test_wrong_issuer_or_audience_is_refused(payload: dict[str, Any], fragment: str) -> None:
    """With iss/aud configured, a token with another or no iss/aud is refused."""
    check = verifier(issuer="https://app.example", audience="estuary")
    refused(check, hs256(payload), fragment)


def test_audience_without_configured_audience_is_refused() -> None:
    """A token meant for a named audience is not accepted by a gateway that has none."""
    refused(verifier(), hs256(claims(aud="other-service")), "none is configured")


@pytest.mark.parametrize("missing", ["sub", "exp", "iat"])
def test_missing_required_claim_is_refused(missing: str) -> None:
    """sub, exp and iat are all required."""
    payload = claims()
    del payload[missing]
    refused(verifier(), hs256(payload), f"'{missing}'")


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (claims(sub=42), "'sub' must be a string"),
        (claims(sub=""), "'sub' must be a non-empty string"),
        (claims(sub="x" * 257), "longer than 256"),
        (claims(exp="tomorrow"), "'exp' must be a NumericDate"),
        (claims(iat=True), "'iat' must be a NumericDate"),
        (claims(nbf=[1]), "'nbf' must be a NumericDate"),
        (claims(rpm=0), "'rpm' must be a positive integer"),
        (claims(tpm="1000"), "'tpm' must be a positive integer"),
        (claims(concurrency=1.5), "'concurrency' must be a positive integer"),
        (claims(budget_micro=-1), "'budget_micro' must be a non-negative integer"),
        (claims(rpm=True), "'rpm' must be a positive integer"),
        (claims(models="chat"), "'models' must be a list"),
        (claims(models=["chat", 3]), "'models' must be a list"),
    ],
)
def test_wrong_claim_types_are_refused(payload: dict[str, Any], fragment: str) -> None:
    """Claims of the wrong type or range are refused with the claim's name."""
    refused(verifier(), hs256(payload), fragment)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not-a-token",
        "a.b",
        "a.b.c.d",
        "!!!.???.***",
        b64url(b'{"alg":"HS256"}') + "." + b64url(b"[1, 2]") + ".c2ln",
        b64url(b"not json") + "." + b64url(b"{}") + ".c2ln",
        b64url(b'{"alg":"HS256","crit":["exp-x"]}') + "." + b64url(b"{}") + ".c2ln",
    ],
)
def test_malformed_token_is_refused(token: str) -> None:
    """Anything that is not header.payload.signature of base64url JSON is refused."""
    with pytest.raises(AuthenticationFailed, match="invalid token"):
        verifier().verify(token)


def test_over_long_token_is_refused() -> None:
    """A token far beyond any real one is refused before any decoding."""
    refused(verifier(), hs256(claims(pad="x" * 9000)), "longer than")


def test_over_long_lifetime_is_refused() -> None:
    """exp - iat beyond max_ttl_s is refused, so an app cannot mint year-long tokens."""
    year = claims(exp=int(NOW) + 365 * 86400)
    refused(verifier(), hs256(year), "exceeds the maximum of 3600 s")
    refused(verifier(max_ttl_s=60), hs256(claims()), "exceeds the maximum of 60 s")
    assert verifier(max_ttl_s=600).verify(hs256(claims())).subject == "user-42"


def test_exp_before_iat_is_refused() -> None:
    """A token that expires before it was issued is refused."""
    refused(verifier(), hs256(claims(iat=int(NOW), exp=int(NOW) - 1)), "later than iat")


@pytest.mark.parametrize(
    ("algorithm", "key", "fragment"),
    [
        ("HS256", "short", "at least 32 bytes"),
        ("RS256", SECRET, "RSA public key in PEM"),
        ("ES256", SECRET, "unsupported JWT algorithm"),
    ],
)
def test_unfit_keys_are_refused_at_construction(algorithm: str, key: str, fragment: str) -> None:
    """A short secret, a non-PEM RSA key or another algorithm fail when the verifier is built."""
    with pytest.raises(ValueError, match=fragment) as caught:
        JWTVerifier(algorithm=algorithm, key=key)  # type: ignore[arg-type]  # testing bad input
    assert key not in str(caught.value)


def test_pem_keys_are_refused_where_they_do_not_belong(rsa_pair: tuple[str, str]) -> None:
    """A PEM key is no HS256 secret; the RS256 verifier wants the public key, not the private."""
    private_pem, public_pem = rsa_pair
    with pytest.raises(ValueError, match="not a PEM key"):
        JWTVerifier(algorithm="HS256", key=public_pem)
    with pytest.raises(ValueError, match="must be the public key"):
        JWTVerifier(algorithm="RS256", key=private_pem)


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (hs256(claims()), True),
        ("sk-est-" + "A" * 43, False),
        ("sk-est-abc.def.ghi", False),
        ("", False),
        ("a.b.c", False),
        (b64url(b'{"alg":"HS256"}') + ".e30", False),
        (b64url(b"[1]") + ".e30.sig", False),
        (b64url(b'{"alg":"HS256"}') + ".e30.", True),
    ],
)
def test_looks_like_jwt_tells_tokens_from_gateway_keys(token: str, expected: bool) -> None:
    """Three base64url segments with a JSON-object header look like a JWT; keys do not."""
    assert looks_like_jwt(token) is expected
