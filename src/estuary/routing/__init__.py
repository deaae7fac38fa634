"""Model aliases to ordered upstream targets, and the fallback rule."""

from estuary.routing.fallback import stream_with_fallback
from estuary.routing.routes import Route, Router, Target

__all__ = ["Route", "Router", "Target", "stream_with_fallback"]
