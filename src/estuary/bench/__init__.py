"""The load benchmark behind `estuary bench`: Estuary, its peers and the direct upstream, side by
side against one fake upstream. A measurement tool, not a test; results go to docs/benchmarks.md."""

__all__: list[str] = []
