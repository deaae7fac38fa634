"""The price table: tokens in, integer cost in micro-units out.

Prices are currency units per million tokens, so one token costs exactly `price` micro-units:
`cost = prompt_tokens × input_per_mtok + completion_tokens × output_per_mtok`, rounded once to an
integer. A target with no price has an unknown cost (`None`), never a silent zero. Stdlib only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["Price", "Prices"]


@dataclass(frozen=True, slots=True)
class Price:
    """Currency units per million input and output tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def cost_micro(self, prompt_tokens: int, completion_tokens: int) -> int:
        """The cost of these tokens in micro-units (millionths of a currency unit)."""
        return round(prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok)


class Prices:
    """Prices by target ("provider/model")."""

    def __init__(self, table: Mapping[str, Price] | None = None) -> None:
        self._table = MappingProxyType(dict(table or {}))

    def __contains__(self, target: object) -> bool:
        return target in self._table

    def cost_micro(
        self, target: str | None, prompt_tokens: int | None, completion_tokens: int | None
    ) -> int | None:
        """The cost of a row, or None when the target has no price or the tokens are unknown."""
        price = self._table.get(target) if target is not None else None
        if price is None or prompt_tokens is None or completion_tokens is None:
            return None
        return price.cost_micro(prompt_tokens, completion_tokens)

    def dearest(self, targets: Iterable[str]) -> Price | None:
        """The highest price among `targets` (for reserving before the target is known)."""
        known = [self._table[t] for t in targets if t in self._table]
        if not known:
            return None
        return Price(max(p.input_per_mtok for p in known), max(p.output_per_mtok for p in known))
