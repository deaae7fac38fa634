"""Errors that carry their own HTTP policy.

Every error Estuary raises on purpose is an `EstuaryError`; the HTTP layer turns it into OpenAI's
error shape `{"error": {"message", "type", "code"}}` with `status_code`. `retryable` tells a client
whether the same request may succeed later; `fallback` tells routing whether another target may be
tried. Messages never contain secrets: upstream text is redacted before it is put into one.

    EstuaryError                      500 internal_error
    ├── InvalidRequest                400 invalid_request
    │   ├── InvalidConfig             400 invalid_config            a reload of an invalid file
    │   ├── RequestTooLarge           413 request_too_large
    │   └── UnsupportedMediaType      415 unsupported_media_type
    ├── AuthenticationFailed          401 invalid_api_key
    ├── BudgetExceeded                402 budget_exceeded
    ├── PermissionDenied              403 model_not_allowed
    │   └── PolicyViolation           403 policy_violation
    ├── NotFound                      404 not_found
    │   └── ModelNotFound             404 model_not_found
    ├── MethodNotAllowed              405 method_not_allowed
    ├── StreamFinished                409 stream_finished
    ├── ReloadRefused                 409 reload_refused            a reload needs a restart
    ├── StreamInterrupted             502 stream_interrupted        (retryable) a resume that
    │                                                               cannot reach the stream's end
    ├── RateLimited                   429 rate_limited (+ Retry-After)
    ├── ServiceUnavailable            503 unavailable
    └── UpstreamError                 502 upstream_error            fallback
        ├── UpstreamTimeout           504 upstream_timeout          fallback (also a TimeoutError)
        ├── UpstreamRateLimited       429 upstream_rate_limited     fallback (+ Retry-After)
        ├── UpstreamAuthFailed        502 upstream_auth_failed      fallback
        ├── UpstreamRejected          400 upstream_rejected         no fallback: the request itself
        ├── UpstreamUnavailable       503 upstream_unavailable      every target's breaker is open
        └── UpstreamProtocolError     502 upstream_protocol_error   fallback
"""

from __future__ import annotations

from typing import ClassVar, TypeVar

__all__ = [
    "AuthenticationFailed",
    "BudgetExceeded",
    "EstuaryError",
    "InvalidConfig",
    "InvalidRequest",
    "MethodNotAllowed",
    "ModelNotFound",
    "NotFound",
    "PermissionDenied",
    "PolicyViolation",
    "RateLimited",
    "ReloadRefused",
    "RequestTooLarge",
    "ServiceUnavailable",
    "StreamFinished",
    "StreamInterrupted",
    "UnsupportedMediaType",
    "UpstreamAuthFailed",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamRateLimited",
    "UpstreamRejected",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "kept",
]


class EstuaryError(Exception):
    """Base of every deliberate error; subclasses set the policy as class attributes."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    type: ClassVar[str] = "server_error"
    retryable: ClassVar[bool] = False
    fallback: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def retry_after_s(self) -> float | None:
        """Seconds a client should wait before retrying, when known."""
        return None


class InvalidRequest(EstuaryError):
    status_code, code, type = 400, "invalid_request", "invalid_request_error"


class InvalidConfig(InvalidRequest):
    """A config reload read a file that does not validate; the running config stays."""

    code = "invalid_config"


class RequestTooLarge(InvalidRequest):
    status_code, code = 413, "request_too_large"


class UnsupportedMediaType(InvalidRequest):
    status_code, code = 415, "unsupported_media_type"


class AuthenticationFailed(EstuaryError):
    status_code, code, type = 401, "invalid_api_key", "authentication_error"


class PermissionDenied(EstuaryError):
    status_code, code, type = 403, "model_not_allowed", "permission_error"


class PolicyViolation(PermissionDenied):
    """The key's policy forbids this request (a system message, a missing template, …)."""

    code = "policy_violation"


class BudgetExceeded(EstuaryError):
    """The key's or end user's spend budget is used up; retrying will not help."""

    status_code, code, type = 402, "budget_exceeded", "insufficient_quota"


class NotFound(EstuaryError):
    status_code, code, type = 404, "not_found", "invalid_request_error"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(EstuaryError):
    status_code, code, type = 405, "method_not_allowed", "invalid_request_error"


class StreamFinished(EstuaryError):
    status_code, code, type = 409, "stream_finished", "invalid_request_error"


class ReloadRefused(EstuaryError):
    """A config reload that cannot be applied without a restart (or there is no file)."""

    status_code, code, type = 409, "reload_refused", "invalid_request_error"


class StreamInterrupted(EstuaryError):
    status_code, code, type = 502, "stream_interrupted", "server_error"
    retryable = True


class _WithRetryAfter(EstuaryError):
    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self._retry_after_s = retry_after_s

    @property
    def retry_after_s(self) -> float | None:
        return self._retry_after_s


class RateLimited(_WithRetryAfter):
    status_code, code, type, retryable = 429, "rate_limited", "rate_limit_error", True


class ServiceUnavailable(EstuaryError):
    status_code, code, retryable = 503, "unavailable", True


class UpstreamError(EstuaryError):
    """A provider failed; routing may try the next target while nothing reached the client."""

    status_code, code, type, retryable, fallback = (
        502,
        "upstream_error",
        "upstream_error",
        True,
        True,
    )

    def __init__(self, provider: str, detail: str) -> None:
        super().__init__(f"{provider}: {detail}")
        self.provider = provider
        self.detail = detail


class UpstreamTimeout(UpstreamError, TimeoutError):
    status_code, code = 504, "upstream_timeout"


class UpstreamRateLimited(UpstreamError):
    status_code, code, type = 429, "upstream_rate_limited", "rate_limit_error"

    def __init__(self, provider: str, detail: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(provider, detail)
        self._retry_after_s = retry_after_s

    @property
    def retry_after_s(self) -> float | None:
        return self._retry_after_s


class UpstreamAuthFailed(UpstreamError):
    """The upstream refused Estuary's own credentials; the client's key was fine."""

    code, retryable = "upstream_auth_failed", False


class UpstreamRejected(UpstreamError):
    """The upstream found the request itself invalid (too long, bad parameter): no fallback."""

    status_code, code, type = 400, "upstream_rejected", "invalid_request_error"
    retryable, fallback = False, False


class UpstreamUnavailable(UpstreamError):
    """Every target of the alias is paused by its circuit breaker: retry after `retry_after_s`."""

    status_code, code, fallback = 503, "upstream_unavailable", False

    def __init__(self, alias: str, detail: str, *, retry_after_s: float) -> None:
        super().__init__(alias, detail)
        self._retry_after_s = retry_after_s

    @property
    def retry_after_s(self) -> float | None:
        return self._retry_after_s


class UpstreamProtocolError(UpstreamError):
    code = "upstream_protocol_error"


_E = TypeVar("_E", bound=BaseException)


def kept(exc: _E) -> _E:
    """`exc`, fit to be kept after its `except` block (a stream's failure, a failed attempt).

    Its traceback's frames, and those of the exceptions chained to it, hold the objects that
    keep it: a reference cycle per failed stream, which only the cyclic GC frees, pausing every
    stream while it does. The message, status and code are all that is used later.
    """
    exc.__traceback__ = None
    exc.__context__ = None
    exc.__cause__ = None
    return exc
