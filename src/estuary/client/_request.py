"""The body of an app-API chat request, from the client's keyword arguments."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

__all__ = ["chat_body"]

_OPTIONS: Final = frozenset(
    {"model", "system", "max_tokens", "temperature", "tools", "template", "variables"}
)


def chat_body(
    messages: Sequence[Mapping[str, Any]] | None, message: str | None, options: Mapping[str, Any]
) -> dict[str, Any]:
    """`messages` (OpenAI-shaped turns) or one user `message`, plus any of: model, system,
    max_tokens, temperature, tools, template, variables. Unknown options are a `TypeError`."""
    unknown = set(options) - _OPTIONS
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
    if (messages is None) == (message is None):
        raise TypeError("give messages or message")
    body: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    if messages is not None:
        body["messages"] = [dict(m) for m in messages]
    else:
        body["message"] = message
    return body
