"""Upstream adapters, one per wire format, behind the `Provider` protocol; and the presets."""

from estuary.providers.base import Provider, Timeouts

__all__ = ["Provider", "Timeouts"]
