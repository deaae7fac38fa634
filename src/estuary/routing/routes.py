"""Aliases → routes: the targets to try in order, their timeouts and the per-alias caps.

Must not import the HTTP layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from estuary.core.errors import ModelNotFound
from estuary.providers.base import Provider, Timeouts

__all__ = ["Route", "Router", "Target"]


@dataclass(frozen=True, slots=True)
class Target:
    """One upstream model of one provider."""

    provider: Provider
    model: str

    @property
    def label(self) -> str:
        return f"{self.provider.name}/{self.model}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """What a model alias resolves to."""

    alias: str
    targets: tuple[Target, ...]
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_tokens: int | None = None  # a cap on what a client may ask for


class Router:
    """Resolves the `model` a client sent (or the default) to a `Route`."""

    def __init__(self, routes: Mapping[str, Route], *, default: str | None = None) -> None:
        if not routes:
            raise ValueError("a router needs at least one route")
        self._routes = dict(routes)
        self._default = default if default is not None else next(iter(self._routes))

    @property
    def aliases(self) -> list[str]:
        return list(self._routes)

    @property
    def default_alias(self) -> str:
        return self._default

    def resolve(self, alias: str | None) -> Route:
        """The route for `alias`; raises `ModelNotFound` naming the aliases that exist."""
        route = self._routes.get(alias or self._default)
        if route is None:
            known = ", ".join(sorted(self._routes))
            raise ModelNotFound(f"model '{alias}' does not exist; available models: {known}")
        return route
