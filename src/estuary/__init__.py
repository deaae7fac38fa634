"""Estuary: a self-hosted streaming gateway between apps and upstream LLM APIs."""

__version__ = "0.1.0"
__all__ = ["__version__"]
