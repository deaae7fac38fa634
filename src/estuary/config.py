"""The configuration file: one TOML document, validated, with secrets only as `${ENV}` references.

`load_config()` reads the file, applies the command line's dotted-key overrides, expands `${NAME}`
references from the environment, and validates the result with pydantic. Every problem is a
`ConfigError` whose message names the file (when there is one) and the dotted key, and never holds
a secret's value: messages are built from pydantic's `loc` and `msg`, never from `str(exc)`, and
every value taken from the environment is masked in them as a last line of defence.

This is the only module that reads the process environment. It may import `estuary.core` and
`estuary.providers.presets`, nothing else of estuary. The reference is `docs/configuration.md`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from estuary.providers.presets import PRESETS, preset

__all__ = [
    "AuthConfig",
    "Config",
    "ConfigError",
    "LedgerConfig",
    "ModelConfig",
    "PriceConfig",
    "ProviderConfig",
    "ServerConfig",
    "StateConfig",
    "Target",
    "default_config",
    "load_config",
    "secret_values",
]

Loc = tuple[str | int, ...]

_REFERENCE: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")  # also the rule for provider names
_ALIAS: Final = re.compile(r"[A-Za-z0-9_.:-]+")
_ORIGIN: Final = re.compile(r"https?://[^/\s?#]+")
_HTTP_URL: Final = re.compile(r"https?://[^/\s?#]+(/\S*)?")
_STORE_URL: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")
_TOML_WHERE: Final = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_OVERRIDE_PART: Final = re.compile(r'"([^"]*)"|([^.]+)')
# None matches any key or index. Secrets must be exactly one `${NAME}`; sensitive values may hold
# references anywhere (a password in a DSN, a token in a header) and are masked in logs.
_SECRET: Final = (("auth", "admin_key"), ("auth", "keys", None), ("providers", None, "api_key"))
_SENSITIVE: Final = (("providers", None, "headers", None), ("ledger", "url"), ("state", "url"))
_DEMO_SETUP: Final = "the built-in demo setup (no --config)"


class ConfigError(Exception):
    """A configuration problem; the message names the file (if any) and the dotted key."""


class _Invalid(ValueError):
    """Validation problems that know their keys, relative to where pydantic raised them."""

    def __init__(self, problems: Sequence[tuple[Loc, str]]) -> None:
        super().__init__("; ".join(message for _, message in problems))
        self.problems = tuple(problems)


@dataclass(frozen=True, slots=True)
class Target:
    """One entry of `targets`: a provider name and the upstream's model name."""

    provider: str
    model: str

    @classmethod
    def parse(cls, text: str) -> Target:
        """Split "provider/model" at the first "/" (upstream model names may contain more)."""
        provider, slash, model = text.partition("/")
        if not slash or not model or not _BARE_KEY.fullmatch(provider):
            raise ValueError('expected "provider/model", e.g. "kimi/moonshot-v1-8k"')
        return cls(provider, model)

    @property
    def label(self) -> str:
        """ "provider/model" again, as `[prices]` keys and logs spell it."""
        return f"{self.provider}/{self.model}"


def _target(value: object) -> Target:
    if isinstance(value, Target):
        return value
    if not isinstance(value, str):
        raise ValueError('expected a string "provider/model"')  # pydantic reports ValueErrors
    return Target.parse(value)


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Table):
    """`[server]`: where and how the gateway listens."""

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8080, ge=0, le=65535)
    cors_origins: tuple[str, ...] = ()
    heartbeat_s: float = Field(default=15.0, gt=0)
    header_hold_s: float = Field(default=10.0, ge=0)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    default_model: str | None = None
    ticket_ttl_s: float = Field(default=60.0, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    workers: int = Field(default=1, ge=1)

    @field_validator("cors_origins")
    @classmethod
    def _exact_origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        bad = [i for i, o in enumerate(origins) if o != "*" and not _ORIGIN.fullmatch(o)]
        if bad:
            message = 'an origin is "scheme://host[:port]" with no path or trailing slash, or "*"'
            raise _Invalid([((i,), message) for i in bad])
        return origins


class AuthConfig(_Table):
    """`[auth]`: who may call the gateway. Keys are `${ENV}` references, resolved."""

    admin_key: str | None = None
    keys: tuple[str, ...] = ()
    anonymous: bool = False


class LedgerConfig(_Table):
    """`[ledger]`: where usage rows go (SQLAlchemy-style URL)."""

    url: str = Field(default="sqlite:///estuary.db", pattern=_STORE_URL.pattern)


class StateConfig(_Table):
    """`[state]`: shared state for limits, cancel and resume (`memory://` or `redis://…`)."""

    url: str = Field(default="memory://", pattern=_STORE_URL.pattern)


class ProviderConfig(_Table):
    """`[providers.NAME]`: one upstream. `format` and `base_url` are resolved from `preset`."""

    preset: str | None = None
    format: Literal["openai", "anthropic", "gemini", "demo"]
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
            formats = "openai, anthropic, gemini, demo"
            raise _Invalid(
                [((), f"set preset (one of {', '.join(PRESETS)}) or format ({formats})")]
            )
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
            wanted = "an http:// or https:// URL"
            message = (
                wanted if self.base_url else f"required for the {self.format!r} format: {wanted}"
            )
            raise _Invalid([(("base_url",), message)])
        if self.preset is not None and preset(self.preset).needs_key and self.api_key is None:
            message = f'the {self.preset!r} preset needs api_key = "${{ENV_VAR}}"'
            raise _Invalid([(("api_key",), message)])
        return self


class ModelConfig(_Table):
    """`[models.ALIAS]`: the targets an alias falls back through, in order, and its limits."""

    targets: tuple[Annotated[Target, PlainValidator(_target)], ...] = Field(min_length=1)
    first_token_timeout_s: float = Field(default=30.0, gt=0)
    idle_timeout_s: float = Field(default=60.0, gt=0)
    max_tokens: int | None = Field(default=None, ge=1)


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
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    prices: dict[str, PriceConfig] = Field(default_factory=dict)
    _secrets: frozenset[str] = PrivateAttr(default_factory=frozenset)  # filled by the loader

    @field_validator("providers", "models")
    @classmethod
    def _names(cls, tables: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        rule, allowed = (
            (_BARE_KEY, "letters, digits, _ and -")
            if info.field_name == "providers"
            else (_ALIAS, "letters, digits, _ - . and :")
        )
        bad = [name for name in tables if not rule.fullmatch(name)]
        if bad:
            raise _Invalid([((name,), f"a name may only use {allowed}") for name in bad])
        return tables

    @model_validator(mode="after")
    def _cross_check(self) -> Self:
        problems = list(self._target_problems())
        server, auth = self.server, self.auth
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

    def _target_problems(self) -> list[tuple[Loc, str]]:
        if not self.models:
            return [(("models",), "define at least one model alias, e.g. [models.chat]")]
        problems: list[tuple[Loc, str]] = []
        for alias, model in self.models.items():
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
        return problems


def load_config(
    path: Path | None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Read, override, expand and validate `path`; with no path, `default_config(overrides=…)`.

    `overrides` maps dotted keys to values (`{"server.port": 9000}`, from command-line flags) and
    is applied after reading the file and before validation, under the same rules as the file.
    """
    if path is None:
        return default_config(overrides=overrides)
    where = str(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: the file is not UTF-8 text") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_toml_problem(where, str(exc))) from None
    _apply_overrides(raw, overrides or {}, where)
    return _build(raw, os.environ if environ is None else environ, where)


def default_config(*, overrides: Mapping[str, Any] | None = None) -> Config:
    """What `estuary serve` runs with no file: the demo provider, anonymous access on loopback."""
    raw: dict[str, Any] = {
        "server": {"default_model": "demo"},
        "auth": {"anonymous": True},
        "ledger": {"url": "sqlite:///estuary.db"},
        "state": {"url": "memory://"},
        "providers": {"demo": {"format": "demo"}},
        "models": {"demo": {"targets": ["demo/estuary-demo"]}},
    }
    _apply_overrides(raw, overrides or {}, None)
    host = raw["server"].get("host") if isinstance(raw["server"], dict) else None
    if isinstance(host, str) and raw["auth"].get("anonymous") is True and not _is_loopback(host):
        raise ConfigError(
            f"server.host: {_DEMO_SETUP} allows anonymous access, so it listens on loopback only,"
            f" not {host!r}; write a config file with [auth] keys (see docs/configuration.md)"
            " and pass it with --config"
        )
    return _build(raw, os.environ, None)


def secret_values(config: Config) -> frozenset[str]:
    """Every secret resolved from the environment (keys, upstream keys, `${ENV}` in headers and
    store URLs, and the variables' own values), for redacting logs and errors."""
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


def _expand(
    value: Any, loc: Loc, environ: Mapping[str, str], where: str | None, secrets: set[str]
) -> Any:
    """Replace `${NAME}` references in every string; secrets must be exactly one reference."""
    if isinstance(value, dict):
        return {k: _expand(v, (*loc, k), environ, where, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, (*loc, i), environ, where, secrets) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    secret = _matches(loc, _SECRET)
    if secret and not _REFERENCE.fullmatch(value):
        message = "secrets must be ${ENV_VAR} references, not literal values"
        raise ConfigError(_line(where, loc, message))
    found: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise ConfigError(_line(where, loc, f"environment variable {name} is not set"))
        if secret and not environ[name]:
            raise ConfigError(_line(where, loc, f"environment variable {name} is empty"))
        found.append(environ[name])
        return environ[name]

    expanded = _REFERENCE.sub(substitute, value)
    if found and (secret or _matches(loc, _SENSITIVE)):
        secrets.update([expanded, *found])
    return expanded


def _matches(loc: Loc, patterns: tuple[tuple[str | None, ...], ...]) -> bool:
    return any(
        len(pattern) == len(loc)
        and all(p is None or p == part for p, part in zip(pattern, loc, strict=True))
        for pattern in patterns
    )


def _apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any], where: str | None) -> None:
    """Set each dotted key (quote a part that holds dots: `models."gpt-4.1".max_tokens`)."""
    for dotted, value in overrides.items():
        parts: Loc = tuple(m.group(1) or m.group(2) for m in _OVERRIDE_PART.finditer(dotted))
        table = raw
        for depth, part in enumerate(parts[:-1]):
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise ConfigError(_line(where, parts[: depth + 1], "not a table, cannot override"))
        if parts:
            table[parts[-1]] = value


def _describe(exc: ValidationError, where: str | None) -> str:
    """One line per problem, 'file: key: message', from `loc` and `msg` only (never the input)."""
    lines: list[str] = []
    for error in exc.errors(include_url=False, include_input=False, include_context=True):
        loc: Loc = tuple(error["loc"])
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, _Invalid):
            lines.extend(_line(where, (*loc, *sub), message) for sub, message in cause.problems)
        elif error["type"] == "extra_forbidden":
            lines.append(_line(where, loc, "unknown key"))
        elif error["type"] == "missing":
            lines.append(_line(where, loc, "required key is missing"))
        elif isinstance(cause, ValueError):
            lines.append(_line(where, loc, str(cause)))
        else:
            lines.append(_line(where, loc, error["msg"]))
    return "\n".join(dict.fromkeys(lines))


def _line(where: str | None, loc: Loc, message: str) -> str:
    return ": ".join(part for part in (where, _dotted(loc), message) if part)


def _dotted(loc: Loc) -> str:
    """`models."gpt-4.1".targets[0]`: TOML's spelling of a key path."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        name = part if _BARE_KEY.fullmatch(part) else '"' + part.replace('"', '\\"') + '"'
        out += f".{name}" if out else name
    return out


def _mask(text: str, secrets: set[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _toml_problem(where: str, message: str) -> str:
    if (at := _TOML_WHERE.search(message)) is None:
        return f"{where}: invalid TOML: {message}"
    reason = message[: at.start()]
    return f"{where}: line {at.group(1)}: invalid TOML: {reason} (column {at.group(2)})"


def _is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
