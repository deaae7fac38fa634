"""Plain data shared by every layer: events, requests, usage, errors, ids. Stdlib only."""

__all__: list[str] = []
