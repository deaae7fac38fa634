"""The configuration file: one TOML document, validated, with secrets only as `${ENV}` references.

`load_config()` reads the file, applies the command line's dotted-key overrides, expands `${NAME}`
from the environment and validates with pydantic. Every problem is a `ConfigError` naming the file
(if any) and the dotted key, built from pydantic's `loc` + `msg` (never `str(exc)`, which quotes
inputs), with environment values masked as a last defence. The only module that reads the
environment; imports `estuary.providers.presets` and nothing else of estuary. Reference:
`docs/configuration.md`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, model_validator

from estuary.providers.presets import Format, preset

__all__ = [
    "AuthConfig",
    "Config",
    "ConfigError",
    "JWTConfig",
    "LedgerConfig",
    "LimitsConfig",
    "ModelConfig",
    "PriceConfig",
    "ProviderConfig",
    "RoutingConfig",
    "ServerConfig",
    "StateConfig",
    "Target",
    "TelemetryConfig",
    "TemplateConfig",
    "UserLimitsConfig",
    "default_config",
    "load_config",
    "secret_values",
]

_Loc = tuple[str | int, ...]

_REFERENCE: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME: Final = r"^[A-Za-z0-9_-]+$"  # a provider name, and a TOML bare key
_ALIAS: Final = r"^[A-Za-z0-9_.:-]+$"
_ORIGIN: Final = re.compile(r"https?://[^/\s?#]+")
_HTTP_URL: Final = re.compile(r"https?://[^/\s?#]+(/\S*)?")
_STORE_URL: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")
_TOML_WHERE: Final = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_PLAIN = MappingProxyType({"extra_forbidden": "unknown key", "missing": "required, but missing"})
_OVERRIDE_PART: Final = re.compile(r'"([^"]*)"|([^.]+)')
# None matches any key or index. Secrets are one `${NAME}`; sensitive values are masked in logs.
_SECRET: Final = (
    ("auth", "admin_key"),
    ("auth", "keys", None),
    ("auth", "jwt", "secret"),
    ("providers", None, "api_key"),
)
_PLACEHOLDER: Final = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_SENSITIVE: Final = (
    ("providers", None, "headers", None),
    ("ledger", "url"),
    ("state", "url"),
    ("telemetry", "headers", None),
)


class ConfigError(Exception):
    """A configuration problem; the message names the file (if any) and the dotted key."""


class _Invalid(ValueError):
    """Validation problems that know their keys, relative to where pydantic raised them."""

    def __init__(self, problems: Sequence[tuple[_Loc, str]]) -> None:
        super().__init__("; ".join(message for _, message in problems))
        self.problems = tuple(problems)


@dataclass(frozen=True, slots=True)
class Target:
    """One entry of `targets`: a provider name and the upstream's model name."""

    provider: str
    model: str

    @classmethod
    def parse(cls, text: object) -> Target:
        """Split "provider/model" at the first "/" (upstream model names may contain more)."""
        if isinstance(text, Target):
            return text
        if not isinstance(text, str):  # a ValueError, which pydantic turns into a message
            raise ValueError('expected a string "provider/model"')
        provider, slash, model = text.partition("/")
        if not slash or not model or not re.match(_NAME, provider):
            raise ValueError('expected "provider/model", e.g. "kimi/moonshot-v1-8k"')
        return cls(provider, model)

    @property
    def label(self) -> str:
        """ "provider/model" again, as `[prices]` keys and logs spell it."""
        return f"{self.provider}/{self.model}"


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Table):
    """`[server]`: where and how the gateway listens."""

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8080, ge=0, le=65535)
    cors_origins: tuple[str, ...] = ()
    heartbeat_s: float = Field(default=15.0, gt=0)
    header_hold_s: float = Field(default=10.0, ge=0)
    resume_grace_s: float = Field(default=30.0, ge=0, le=3600)
    resume_ttl_s: float = Field(default=120.0, gt=0, le=86400)
    shutdown_drain_s: float = Field(default=20.0, ge=0, le=3600)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    default_model: str | None = None
    ticket_ttl_s: float = Field(default=60.0, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    workers: int = Field(default=1, ge=1)
    instance: str | None = Field(default=None, min_length=1, max_length=200)


class JWTConfig(_Table):
    """`[auth.jwt]`: end-user tokens signed by the app's backend, and what they may do."""

    algorithm: Literal["HS256", "RS256"] = "HS256"
    secret: str | None = None  # HS256: a `${ENV}` reference
    public_key: str | None = None  # RS256: the PEM text …
    public_key_file: Path | None = None  # … or a file holding it
    issuer: str | None = None
    audience: str | None = None
    max_ttl_s: float = Field(default=3600.0, gt=0)
    leeway_s: float = Field(default=5.0, ge=0)
    models: tuple[str, ...] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    allow_system: bool = True
    templates: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _has_key(self) -> Self:
        if self.algorithm == "HS256" and (self.secret is None or self.public_key_file):
            raise _Invalid([(("secret",), 'HS256 needs secret = "${ENV_VAR}" (and no public key)')])
        if self.algorithm == "RS256" and (self.public_key is None) == (
            self.public_key_file is None
        ):
            message = "RS256 needs exactly one of public_key (PEM text) or public_key_file"
            raise _Invalid([(("public_key",), message)])
        return self

    def verification_key(self) -> str:
        """The HS256 secret or the RS256 public key PEM (read from its file if given)."""
        if self.public_key_file is not None:
            return self.public_key_file.read_text(encoding="utf-8")
        return (
            self.public_key if self.algorithm == "RS256" and self.public_key else self.secret or ""
        )


class UserLimitsConfig(_Table):
    """`[limits.user]`: limits for each end user, unless their token sets its own."""

    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    concurrency: int | None = Field(default=None, ge=1)
    budget: float | None = Field(default=None, ge=0)  # currency units, like [prices]


class LimitsConfig(_Table):
    """`[limits]`: how requests reserve against limits, and the anonymous and end-user defaults."""

    default_completion_tokens: int = Field(default=1024, ge=1)
    anonymous_rpm: int | None = Field(default=120, ge=1)
    anonymous_concurrency: int | None = Field(default=20, ge=1)
    budget_overrun: Literal["finish", "stop"] = "finish"
    user: UserLimitsConfig = Field(default_factory=UserLimitsConfig)


class TemplateConfig(_Table):
    """`[templates.NAME]`: a server-side system prompt whose `{{variables}}` clients fill in."""

    system: str = Field(min_length=1)
    variables: tuple[str, ...] = ()
    max_chars: int = Field(default=4000, ge=1)

    @model_validator(mode="after")
    def _placeholders_match(self) -> Self:
        used = set(_PLACEHOLDER.findall(self.system))
        if used != set(self.variables):
            message = f"must list exactly the {{{{placeholders}}}} of system: {sorted(used)}"
            raise _Invalid([(("variables",), message)])
        return self


class AuthConfig(_Table):
    """`[auth]`: who may call the gateway. Keys are `${ENV}` references, resolved."""

    admin_key: str | None = None
    keys: tuple[str, ...] = ()
    anonymous: bool = False
    key_cache_s: float = Field(default=1.0, ge=0)
    jwt: JWTConfig | None = None


class LedgerConfig(_Table):
    """`[ledger]`: where usage rows go (SQLAlchemy-style URL)."""

    url: str = Field(default="sqlite:///estuary.db", pattern=_STORE_URL.pattern)
    on_failure: Literal["refuse", "queue"] = "refuse"
    queue_max: int = Field(default=10_000, ge=1, le=1_000_000)


class StateConfig(_Table):
    """`[state]`: shared state for limits, cancel and resume (`memory://` or `redis://…`)."""

    url: str = Field(default="memory://", pattern=_STORE_URL.pattern)
    prefix: str = Field(default="estuary:", min_length=1, max_length=100)
    on_failure: Literal["open", "closed"] = "open"


class ProviderConfig(_Table):
    """`[providers.NAME]`: one upstream. `format` and `base_url` are resolved from `preset`."""

    preset: str | None = None
    format: Format
    base_url: str = ""
    api_key: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    connect_timeout_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """A preset supplies `format` and `base_url`; a `base_url` in the table wins."""
        if not isinstance(data, dict):
            return data
        name = data.get("preset")
        if name is None and "format" not in data:
            raise _Invalid([((), f"set preset, or format ({', '.join(get_args(Format))})")])
        if not isinstance(name, str):
            return data  # no preset, or a wrong type that pydantic reports on `preset`
        try:
            known = preset(name)
        except ValueError as exc:
            raise _Invalid([(("preset",), str(exc))]) from None
        if data.get("format", known.format) != known.format:
            message = f"the {name!r} preset speaks {known.format!r}; drop format or the preset"
            raise _Invalid([(("format",), message)])
        return {"format": known.format, "base_url": known.base_url, **data}

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if self.format != "demo" and not _HTTP_URL.fullmatch(self.base_url):
            url = "an http:// or https:// URL"
            message = f"must be {url}" if self.base_url else f"required ({url}) unless demo"
            raise _Invalid([(("base_url",), message)])
        if self.preset is not None and preset(self.preset).needs_key and self.api_key is None:
            message = f'the {self.preset!r} preset needs api_key = "${{ENV_VAR}}"'
            raise _Invalid([(("api_key",), message)])
        return self


class ModelConfig(_Table):
    """`[models.ALIAS]`: the targets an alias falls back through, in order, and its limits."""

    targets: tuple[Annotated[Target, PlainValidator(Target.parse)], ...] = Field(min_length=1)
    first_token_timeout_s: float = Field(default=30.0, gt=0)
    idle_timeout_s: float = Field(default=60.0, gt=0)
    max_tokens: int | None = Field(default=None, ge=1)
    weights: tuple[Annotated[float, Field(ge=0)], ...] | None = None
    degrade_to: str | None = None
    degrade_at: float = Field(default=0.8, gt=0, le=1)  # share of the budget spent
    midstream_failover: bool = False  # experimental: see docs/configuration.md

    @model_validator(mode="after")
    def _weights_match(self) -> Self:
        if self.weights is not None and (
            len(self.weights) != len(self.targets) or not any(self.weights)
        ):
            message = "one weight per target, at least one above 0 (0 = fallback only)"
            raise _Invalid([(("weights",), message)])
        return self


class RoutingConfig(_Table):
    """`[routing]`: circuit breakers, per target."""

    breaker_failures: int = Field(default=5, ge=1)
    breaker_cooldown_s: float = Field(default=30.0, gt=0)


class TelemetryConfig(_Table):
    """`[telemetry]`: OpenTelemetry trace export (needs `pip install 'estuary[otel]'`)."""

    otlp_endpoint: str | None = None  # OTLP/HTTP traces URL; None: tracing is off
    service_name: str = Field(default="estuary", min_length=1, max_length=200)
    sample_ratio: float = Field(default=1.0, ge=0, le=1)
    headers: dict[str, str] = Field(default_factory=dict)  # e.g. a collector's auth token

    @model_validator(mode="after")
    def _endpoint_is_http(self) -> Self:
        if self.otlp_endpoint is not None and not _HTTP_URL.fullmatch(self.otlp_endpoint):
            message = 'must be an http:// or https:// URL, e.g. "http://127.0.0.1:4318/v1/traces"'
            raise _Invalid([(("otlp_endpoint",), message)])
        return self


class PriceConfig(_Table):
    """`[prices."provider/model"]`: currency units per million tokens."""

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


class Config(_Table):
    """The whole file, validated and cross-checked."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    providers: dict[Annotated[str, Field(pattern=_NAME)], ProviderConfig] = Field(
        default_factory=dict
    )
    models: dict[Annotated[str, Field(pattern=_ALIAS)], ModelConfig] = Field(default_factory=dict)
    prices: dict[str, PriceConfig] = Field(default_factory=dict)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    templates: dict[Annotated[str, Field(pattern=_NAME)], TemplateConfig] = Field(
        default_factory=dict
    )
    _secrets: frozenset[str] = frozenset()  # private: what the loader took from the environment

    @model_validator(mode="after")
    def _cross_check(self) -> Self:
        problems = self._reference_problems()
        server, auth = self.server, self.auth
        for i, origin in enumerate(server.cors_origins):
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                message = 'an origin is "scheme://host[:port]", no path or trailing slash (or "*")'
                problems.append((("server", "cors_origins", i), message))
        if server.default_model is not None and server.default_model not in self.models:
            problems.append((("server", "default_model"), "names no alias in [models]"))
        if auth.anonymous and not _is_loopback(server.host):
            message = f"refused on the non-loopback host {server.host!r}; use [auth] keys instead"
            problems.append((("auth", "anonymous"), message))
        if server.workers > 1 and self.state.url.startswith("memory:"):
            message = 'several workers need shared state: set [state] url = "redis://…"'
            problems.append((("server", "workers"), message))
        if problems:
            raise _Invalid(problems)
        return self

    def _reference_problems(self) -> list[tuple[_Loc, str]]:
        """Every "provider/model" must name a configured provider."""
        problems: list[tuple[_Loc, str]] = []
        if not self.models:
            problems.append((("models",), "define at least one model alias, e.g. [models.chat]"))
        for alias, model in self.models.items():
            if model.degrade_to is not None and model.degrade_to not in self.models:
                problems.append((("models", alias, "degrade_to"), "names no alias in [models]"))
            for i, target in enumerate(model.targets):
                if target.provider not in self.providers:
                    message = f"no provider {target.provider!r} in [providers]"
                    problems.append((("models", alias, "targets", i), message))
        for key in self.prices:
            try:
                provider = Target.parse(key).provider
            except ValueError as exc:
                problems.append((("prices", key), str(exc)))
                continue
            if provider not in self.providers:
                problems.append((("prices", key), f"no provider {provider!r} in [providers]"))
        jwt = self.auth.jwt
        if jwt is not None:
            for i, alias in enumerate(jwt.models or ()):
                if alias not in self.models:
                    problems.append((("auth", "jwt", "models", i), "names no alias in [models]"))
            for i, name in enumerate(jwt.templates):
                if name not in self.templates:
                    problems.append((("auth", "jwt", "templates", i), "no such [templates]"))
        return problems


def load_config(
    path: Path | None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Read `path`, apply `overrides` (dotted keys from flags), expand `${ENV}`, validate.

    With no path: `default_config(overrides=…)`. Overrides obey the same rules as the file.
    """
    if path is None:
        return default_config(overrides=overrides)
    where = str(path)
    try:
        raw = tomllib.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.reason if isinstance(exc, UnicodeDecodeError) else exc.strerror
        raise ConfigError(f"{where}: cannot read the file: {reason or exc}") from None
    except tomllib.TOMLDecodeError as exc:  # "Invalid value (at line 3, column 7)"
        message, at = str(exc), _TOML_WHERE.search(str(exc))
        if at is not None:
            message = f"line {at[1]}: invalid TOML: {message[: at.start()]} (column {at[2]})"
        raise ConfigError(f"{where}: {message if at else 'invalid TOML: ' + message}") from None
    _apply_overrides(raw, overrides or {}, where)
    return _build(raw, os.environ if environ is None else environ, where)


def default_config(*, overrides: Mapping[str, Any] | None = None) -> Config:
    """What `estuary serve` runs with no file: the demo provider, anonymous access on loopback."""
    raw: dict[str, Any] = {
        "server": {"default_model": "demo"},
        "auth": {"anonymous": True},
        "providers": {"demo": {"format": "demo"}},
        "models": {"demo": {"targets": ["demo/estuary-demo"]}},
    }
    overrides = overrides or {}
    _apply_overrides(raw, overrides, None)
    host = str(overrides.get("server.host", "127.0.0.1"))
    if overrides.get("auth.anonymous", True) and not _is_loopback(host):
        raise ConfigError(
            f"server.host: the demo setup (no --config) is anonymous, so loopback only, not"
            f" {host!r}; write a config file with [auth] keys (docs/configuration.md), use --config"
        )
    return _build(raw, os.environ, None)


def secret_values(config: Config) -> frozenset[str]:
    """Every secret taken from the environment (see docs/configuration.md), to redact logs."""
    values = {*config._secrets, *config.auth.keys, config.auth.admin_key}
    values.update(provider.api_key for provider in config.providers.values())
    return frozenset(v for v in values if v)


def _build(raw: dict[str, Any], environ: Mapping[str, str], where: str | None) -> Config:
    secrets: set[str] = set()
    expanded = _expand(raw, (), environ, where, secrets)
    try:
        config = Config.model_validate(expanded)
    except ValidationError as exc:
        raise ConfigError(_mask(_describe(exc, where), secrets)) from None
    config._secrets = frozenset(secrets)
    return config


def _expand(value: Any, loc: _Loc, env: Mapping[str, str], where: str | None, out: set[str]) -> Any:
    """Replace `${NAME}` references in every string; secrets must be exactly one reference."""
    if isinstance(value, dict):
        return {k: _expand(v, (*loc, k), env, where, out) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, (*loc, i), env, where, out) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    secret = _matches(loc, _SECRET)
    if secret and not _REFERENCE.fullmatch(value):
        message = "secrets must be ${ENV_VAR} references, not literal values"
        raise ConfigError(_line(where, loc, message))
    found: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise ConfigError(_line(where, loc, f"environment variable {name} is not set"))
        if secret and not env[name]:
            raise ConfigError(_line(where, loc, f"environment variable {name} is empty"))
        found.append(env[name])
        return env[name]

    expanded = _REFERENCE.sub(substitute, value)
    if found and (secret or _matches(loc, _SENSITIVE)):
        out.update([expanded, *found])
    return expanded


def _matches(loc: _Loc, patterns: tuple[tuple[str | None, ...], ...]) -> bool:
    same = (pat for pat in patterns if len(pat) == len(loc))
    return any(all(p in (None, x) for p, x in zip(pat, loc, strict=True)) for pat in same)


def _apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any], where: str | None) -> None:
    """Set each dotted key (quote a part that holds dots: `models."gpt-4.1".max_tokens`)."""
    for dotted, value in overrides.items():
        *parents, leaf = [m[1] or m[2] for m in _OVERRIDE_PART.finditer(dotted)] or [dotted]
        table = raw
        for depth, part in enumerate(parents):
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                message = "not a table, cannot override"
                raise ConfigError(_line(where, tuple(parents[: depth + 1]), message))
        table[leaf] = value


def _describe(exc: ValidationError, where: str | None) -> str:
    """One line per problem, 'file: key: message', from `loc` and `msg` only (never the input)."""
    lines: list[str] = []
    for error in exc.errors(include_url=False, include_input=False, include_context=True):
        loc: _Loc = tuple(error["loc"])
        message = _PLAIN.get(error["type"], error["msg"].removeprefix("Value error, "))
        if isinstance(cause := error.get("ctx", {}).get("error"), _Invalid):
            lines.extend(_line(where, (*loc, *sub), text) for sub, text in cause.problems)
        elif loc[-1:] == ("[key]",):  # a table name that breaks its pattern
            lines.append(_line(where, loc[:-1], f"invalid name: {message}"))
        else:
            lines.append(_line(where, loc, message))
    return "\n".join(dict.fromkeys(lines))


def _line(where: str | None, loc: _Loc, message: str) -> str:
    """'file: key: message', the key spelled as in TOML: `models."gpt-4.1".targets[0]`."""
    key = ""
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        else:
            name = part if re.match(_NAME, part) else json.dumps(part, ensure_ascii=False)
            key += f".{name}" if key else name
    return ": ".join(text for text in (where, key, message) if text)


def _mask(text: str, secrets: set[str]) -> str:
    for secret in sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost."""
    name = host.strip("[]").lower()
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(name).is_loopback
    return name == "localhost"
