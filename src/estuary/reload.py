"""Config reload: where the running config came from, and which of its keys a reload may change.

A reload (SIGHUP or `POST /admin/reload`) reads the file again through the same `load_config` as
the start, with the same command-line overrides. Providers, models, prices, templates, `[auth]`,
`[limits]` and `[server] default_model` change for new requests; the keys that shape the process
itself — the rest of `[server]`, `[ledger]`, `[state]`, `[routing]`, `[telemetry]` — need a
restart, and a file that changes one of them is refused as a whole (`RestartRequired`). Applying a
config is `estuary.server.Runtime.reload`. Imports `estuary.config` and nothing else of estuary.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from estuary.config import Config, ConfigError, load_config

__all__ = ["ConfigSource", "RestartRequired", "restart_needed"]

# Tables a running process cannot take over, and the keys of theirs that it can.
_FIXED_TABLES: Final = ("server", "ledger", "state", "routing", "telemetry")
_RELOADABLE: Final = frozenset({"server.default_model"})


class RestartRequired(ConfigError):
    """The file is valid, but changes keys that only a restart applies; nothing was reloaded."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigSource:
    """The file and command-line overrides the running config was loaded from."""

    path: Path
    overrides: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    environ: Mapping[str, str] | None = None  # None: this process's environment

    def load(self) -> Config:
        """Read and validate the file again; raises `ConfigError` (messages hold no secret)."""
        return load_config(self.path, environ=self.environ, overrides=self.overrides)


def restart_needed(running: Config, new: Config) -> list[str]:
    """The dotted keys (`server.port`) whose value in `new` differs and needs a restart."""
    changed = []
    for table in _FIXED_TABLES:
        old, fresh = getattr(running, table), getattr(new, table)
        for name in type(old).model_fields:
            key = f"{table}.{name}"
            if key not in _RELOADABLE and getattr(old, name) != getattr(fresh, name):
                changed.append(key)
    return changed
