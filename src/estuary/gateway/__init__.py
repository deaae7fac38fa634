"""One request's life, independent of any transport: admission, fallback, accounting, settlement."""

from estuary.gateway.session import Gateway, Outcome, StreamSession

__all__ = ["Gateway", "Outcome", "StreamSession"]
