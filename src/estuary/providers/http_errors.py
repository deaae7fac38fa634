"""Mapping an upstream's failure to Estuary's error tree, for every wire format, written once.

Two ways in: `error_for_status()` for an answer with a non-2xx status, and `error_in_stream()`
for an error object an upstream sends inside a 200 stream (the Chinese OpenAI-compatible APIs do
this for moderation, quota and overload, each with its own code field). Both read the upstream's
own code through one table per preset flavour (`_FLAVORS`, then the codes every flavour shares),
so a Zhipu `1113`, a Kimi `exceeded_current_quota_error` and a DashScope `Arrearage` all become
the same "balance exhausted" failure. The table, with the source of every row, is in
`docs/configuration.md` (Presets).

The upstream's own message is kept (it often says what is wrong, e.g. a context that is too long),
but only after redaction, and cut short: some upstreams echo request headers back in error bodies.
Must not import the HTTP layer, routing or storage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal

import orjson

from estuary.core.errors import (
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)
from estuary.core.redaction import Redactor

__all__ = ["connection_failure", "error_for_status", "error_in_stream", "parse_retry_after"]

_MAX_DETAIL = 300
_MAX_STREAM_DETAIL = 500

# What an upstream's code means. `moderation` is about the input unless the upstream says it is
# about the output (`moderation_output`); `unavailable` is an overload or an internal failure.
_Kind = Literal[
    "auth", "quota", "rate_limit", "rejected", "moderation", "moderation_output", "unavailable"
]


def _table(rows: Mapping[str, _Kind]) -> Mapping[str, _Kind]:
    return MappingProxyType(dict(rows))


# Codes (or `type`s) every flavour may send: OpenAI's own, which compatible servers copy.
_COMMON: Final = _table(
    {
        "invalid_api_key": "auth",
        "authentication_error": "auth",
        "insufficient_quota": "quota",
        "rate_limit_exceeded": "rate_limit",
        "rate_limit_error": "rate_limit",
        "context_length_exceeded": "rejected",
        "content_filter": "moderation",
    }
)

# Per preset: the upstream's `error.code`, else its `error.type` (Kimi has only a type), else (for
# DeepSeek, whose codes say nothing) its message. Sources: see docs/configuration.md.
_FLAVORS: Final[Mapping[str, Mapping[str, _Kind]]] = MappingProxyType(
    {
        "moonshot": _table(
            {
                "content_filter": "moderation",
                "invalid_request_error": "rejected",
                "invalid_authentication_error": "auth",
                "incorrect_api_key_error": "auth",
                "permission_denied_error": "auth",
                "exceeded_current_quota_error": "quota",  # a 429, but a balance, not a rate
                "rate_limit_reached_error": "rate_limit",
                "engine_overloaded_error": "unavailable",
                "server_error": "unavailable",
                "unexpected_output": "unavailable",
            }
        ),
        "deepseek": _table(
            {
                "insufficient balance": "quota",
                "content exists risk": "moderation",
            }
        ),
        "zhipu": _table(
            {
                **dict.fromkeys(("1000", "1001", "1002", "1003", "1004", "1220"), "auth"),
                **dict.fromkeys(("1110", "1111", "1112", "1121", "1311"), "auth"),
                **dict.fromkeys(("1113", "1304", "1308", "1309", "1310"), "quota"),
                **dict.fromkeys(("1210", "1212", "1213", "1214", "1215", "1261"), "rejected"),
                "1300": "moderation",
                "1301": "moderation",
                **dict.fromkeys(("1231", "1302", "1303", "1305", "1313"), "rate_limit"),
                **dict.fromkeys(("500", "1120", "1230", "1234", "1312"), "unavailable"),
            }
        ),
        "dashscope": _table(
            {
                "data_inspection_failed": "moderation",
                "DataInspectionFailed": "moderation",
                "Arrearage": "quota",  # an HTTP 400 that is really an unpaid account
                "invalid_api_key": "auth",
                "InvalidApiKey": "auth",
                "AccessDenied": "auth",
                "AccessDenied.Unpurchased": "auth",
                "InvalidParameter": "rejected",
                "invalid_parameter_error": "rejected",
                "limit_requests": "rate_limit",
                "Throttling": "rate_limit",
                "Throttling.RateQuota": "rate_limit",
                "Throttling.AllocationQuota": "rate_limit",
                "Throttling.BurstRate": "rate_limit",
                "InternalError": "unavailable",
                "InternalError.Algo": "unavailable",
                "ServiceUnavailable": "unavailable",
            }
        ),
        "qianfan": _table(
            {
                **dict.fromkeys(
                    ("malformed_json", "invalid_model", "invalid_messages", "invalid_argument"),
                    "rejected",
                ),
                **dict.fromkeys(("characters_too_long", "tokens_too_long"), "rejected"),
                **dict.fromkeys(
                    ("no_parameter_permission", "invalid_appid", "invalid_iam_token"), "auth"
                ),
                **dict.fromkeys(
                    ("system_unsafe", "user_setting_unsafe", "functions_unsafe"), "moderation"
                ),
                "image_url_unsafe": "moderation",
                **dict.fromkeys(
                    (
                        "rpm_rate_limit_exceeded",
                        "tpm_rate_limit_exceeded",
                        "input_tpm_rate_limit_exceeded",
                        "output_tpm_rate_limit_exceeded",
                        "user_rate_limit_exceeded",
                        "preemptible_rate_limit_exceeded",
                        "cluster_rate_limit_exceeded",
                        "cluster_rpm_rate_limit_exceeded",
                        "cluster_tpm_rate_limit_exceeded",
                    ),
                    "rate_limit",
                ),
                **dict.fromkeys(("internal_error", "dispatch_internal_error"), "unavailable"),
            }
        ),
        "spark": _table(
            {
                **dict.fromkeys(("10013", "10019", "10021"), "moderation"),
                **dict.fromkeys(("10014", "10022"), "moderation_output"),
                **dict.fromkeys(("10006", "10007", "11202", "11203"), "rate_limit"),
                "11201": "quota",
                **dict.fromkeys(("10015", "10016", "11200"), "auth"),
                **dict.fromkeys(("10003", "10004", "10005", "10163", "10907"), "rejected"),
                **dict.fromkeys(
                    ("10008", "10009", "10010", "10011", "10012", "10110", "10222"), "unavailable"
                ),
            }
        ),
    }
)
_NO_FLAVOR: Final[Mapping[str, _Kind]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class _Fault:
    """An upstream error object, read the same way whatever its shape."""

    code: str
    type: str
    message: str
    about_output: bool  # the upstream said the moderation was of its own output


def error_for_status(
    provider: str,
    status: int,
    body: bytes,
    retry_after: str | None,
    redact: Redactor,
    *,
    flavor: str | None = None,
) -> UpstreamError:
    """The error for an upstream answer with a non-2xx `status` and this `body`.

    The upstream's own code wins over the status where the flavour knows it (Kimi's quota is a
    429, DashScope's unpaid account a 400, Qianfan's moderation a 403); else the status decides.
    """
    fault = _parse_body(body)
    detail = f"HTTP {status}: {redact(_text(fault))[:_MAX_DETAIL]}"
    kind = _kind(fault, flavor)
    if kind == "unavailable":
        kind = None  # the status says it as well, and better (429 keeps its Retry-After)
    if status == 401 or (status == 403 and kind in (None, "rejected")):
        kind = "auth"
    if kind is None:
        if status in (408, 504):
            return UpstreamTimeout(provider, detail)
        kind = _by_status(status)
        if kind is None:
            return UpstreamError(provider, detail)
    if kind == "rate_limit":
        return UpstreamRateLimited(provider, detail, retry_after_s=parse_retry_after(retry_after))
    return _error(kind, provider, detail)


def error_in_stream(
    provider: str,
    chunk: Mapping[str, Any],
    redact: Redactor,
    *,
    flavor: str | None = None,
    answered: bool,
) -> UpstreamError | Literal["content_filter"]:
    """What an error object inside a 200 stream means: an error to raise, or a moderation stop.

    `chunk` is the whole message: `{"error": {...}}` (OpenAI, Kimi, Zhipu, DashScope, Qianfan) or,
    for Spark, the message itself with a non-zero `code`. Moderation of the output — or any
    moderation once the answer has begun (`answered`) — ends the stream with `content_filter`, as
    OpenAI's own output filter does; moderation of the input is the request's fault
    (`UpstreamRejected`, no fallback).
    """
    fault = _parse_stream(chunk)
    kind = _kind(fault, flavor)
    if kind == "moderation_output" or (kind == "moderation" and answered):
        return "content_filter"
    code = f" ({fault.code})" if fault.code else ""
    detail = f"error in stream{code}: {_text(fault)}"
    return _error(kind or "unavailable", provider, redact(detail)[:_MAX_STREAM_DETAIL])


def _error(kind: _Kind, provider: str, detail: str) -> UpstreamError:
    match kind:
        case "auth":
            return UpstreamAuthFailed(provider, detail)
        case "quota":
            return UpstreamAuthFailed(provider, "balance or quota exhausted: " + detail)
        case "rate_limit":
            return UpstreamRateLimited(provider, detail)
        case "rejected" | "moderation" | "moderation_output":
            return UpstreamRejected(provider, detail)
        case "unavailable":
            return UpstreamError(provider, detail)


def _by_status(status: int) -> _Kind | None:
    if status == 402:
        return "quota"
    if status == 429:
        return "rate_limit"
    if status in (400, 413, 422):
        return "rejected"
    return None


def _kind(fault: _Fault | None, flavor: str | None) -> _Kind | None:
    """The flavour's reading of the fault's code, type or message, else the shared one."""
    if fault is None:
        return None
    own = _FLAVORS.get(flavor, _NO_FLAVOR) if flavor is not None else _NO_FLAVOR
    kind = _lookup(fault, own)
    if kind == "moderation" and fault.about_output:
        return "moderation_output"
    return kind


def _lookup(fault: _Fault, own: Mapping[str, _Kind]) -> _Kind | None:
    for table in (own, _COMMON):
        for key in (fault.code, fault.type):
            if key and (kind := table.get(key)) is not None:
                return kind
    return own.get(fault.message.strip().lower())


def _parse_body(body: bytes) -> _Fault | None:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip() or "no body"
        return _Fault(code="", type="", message=text, about_output=False)
    if isinstance(parsed, list) and parsed:
        parsed = parsed[0]  # Gemini sometimes wraps its error in a list
    if isinstance(parsed, dict):
        return _parse_stream(parsed)
    return _Fault(code="", type="", message=str(parsed), about_output=False)


def _parse_stream(chunk: Mapping[str, Any]) -> _Fault:
    """Read `{"error": {...}}`, `{"error": "text"}` or a flat `{"code", "message"}` (Spark)."""
    error = chunk.get("error")
    if error is None:
        error = chunk  # flat: the message itself carries code and message
    if not isinstance(error, Mapping):
        return _Fault(code="", type="", message=str(error), about_output=False)
    message = error.get("message") or error.get("msg") or ""
    return _Fault(
        code=_str(error.get("code")),
        type=_str(error.get("type")),
        message=str(message),
        about_output=_about_output(chunk, str(message)),
    )


def _about_output(chunk: Mapping[str, Any], message: str) -> bool:
    """Zhipu names the checked role in `contentFilter`; DashScope starts its message "Output"."""
    checks = chunk.get("contentFilter") or chunk.get("content_filter")
    if isinstance(checks, list) and checks:
        return any(isinstance(c, dict) and c.get("role") == "assistant" for c in checks)
    return message.startswith("Output")


def _text(fault: _Fault | None) -> str:
    if fault is None:
        return "no body"
    return fault.message or fault.code or fault.type or "error"


def _str(value: object) -> str:
    return "" if value is None else str(value)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header in its delta-seconds form; None otherwise."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def connection_failure(exc: BaseException) -> str:
    """A plain description of a transport failure (never the exception's text: it may hold URLs)."""
    if isinstance(exc, ConnectionRefusedError):
        return "could not connect to the upstream (connection refused)"
    if isinstance(exc, ConnectionError):
        return "the upstream closed the connection before the answer was complete"
    return f"could not reach the upstream ({type(exc).__name__})"
