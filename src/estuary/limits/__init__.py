"""Rate limits and budgets: reserve an estimate at admission, settle with real usage (to come)."""

__all__: list[str] = []
