"""Aliases → routes: the targets to try in order, their timeouts and the per-alias caps.

Must not import the HTTP layer.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from estuary.core.errors import ModelNotFound
from estuary.providers.base import Provider, Timeouts
from estuary.routing.breaker import Breakers

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
    weights: tuple[float, ...] | None = None  # spread first attempts; 0 = fallback only
    degrade_to: str | None = None  # the alias for callers whose budget runs low …
    degrade_at: float = 0.8  # … once they have spent this share of it
    midstream_failover: bool = False  # continue a died answer on a later target (experimental)

    def order(self, rng: random.Random) -> tuple[Target, ...]:
        """The targets in the order to try them: a weighted pick first, then the list order."""
        if self.weights is None:
            return self.targets
        (first,) = rng.choices(range(len(self.targets)), weights=self.weights)
        return (self.targets[first], *(t for i, t in enumerate(self.targets) if i != first))


class Router:
    """Resolves the `model` a client sent (or the default) to a `Route`."""

    def __init__(
        self,
        routes: Mapping[str, Route],
        *,
        default: str | None = None,
        breakers: Breakers | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not routes:
            raise ValueError("a router needs at least one route")
        self._routes = dict(routes)
        self._default = default if default is not None else next(iter(self._routes))
        self.breakers = breakers if breakers is not None else Breakers()
        self.rng = rng if rng is not None else random.Random()  # noqa: S311 - load spreading

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
