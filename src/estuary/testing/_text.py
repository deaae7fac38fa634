"""Deterministic text for the fake upstream: default tokens, argument fragments, prompt sizes.

Pure functions over plain values; imports nothing from estuary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["count_prompt_chars", "default_chunks", "split_arguments"]

# Mixed English and Chinese (three-byte UTF-8) words, plus one four-byte emoji, so a default
# stream always carries multi-byte characters that a careless relay could cut in half.
_WORDS = (
    "Hello",
    " 世界",
    ",",
    " stream",
    "ing",
    " 你好",
    " token",
    "s",
    " 流",
    "式",
    " 🌊",
    ".",
)

# Tool-call arguments are streamed in at least this many fragments, like real upstreams do.
_MIN_ARGUMENT_FRAGMENTS = 3
_ARGUMENT_FRAGMENT_CHARS = 16


def default_chunks(count: int) -> tuple[str, ...]:
    """`count` content chunks, chunk i being word i of a fixed rotating list."""
    return tuple(_WORDS[i % len(_WORDS)] for i in range(count))


def split_arguments(arguments: str) -> tuple[str, ...]:
    """Cut JSON argument text into >= 3 pieces that join back to it (pieces may be empty)."""
    parts = max(_MIN_ARGUMENT_FRAGMENTS, -(-len(arguments) // _ARGUMENT_FRAGMENT_CHARS))
    size = -(-len(arguments) // parts) if arguments else 0
    pieces = [arguments[i * size : (i + 1) * size] for i in range(parts - 1)]
    pieces.append(arguments[(parts - 1) * size :])
    return tuple(pieces)


def count_prompt_chars(body: object) -> int:
    """Characters of every message's text plus the legacy `prompt` text in a request body.

    Message `content` may be a string or a list of parts; only `text` parts count.
    `prompt` may be a string or a list of strings. A Gemini body counts the `text` parts of
    its `contents` and of its `systemInstruction`. An Anthropic body counts its `system` (a
    string or text blocks) and the content of `tool_result` blocks too. Anything else counts
    as zero.
    """
    if not isinstance(body, Mapping):
        return 0
    total = _prompt_text_chars(body.get("prompt"))
    messages = body.get("messages")
    if isinstance(messages, Sequence) and not isinstance(messages, str):
        for message in messages:
            if isinstance(message, Mapping):
                total += _content_chars(message.get("content"))
    contents = body.get("contents")
    if isinstance(contents, list):
        total += sum(_gemini_chars(content) for content in contents)
    total += _content_chars(body.get("system"))  # Anthropic's top-level system prompt
    return total + _gemini_chars(body.get("systemInstruction"))


def _prompt_text_chars(prompt: object) -> int:
    if isinstance(prompt, str):
        return len(prompt)
    if isinstance(prompt, list):
        return sum(len(item) for item in prompt if isinstance(item, str))
    return 0


def _content_chars(content: object) -> int:
    if isinstance(content, str):
        return len(content)
    if not isinstance(content, list):
        return 0
    total = 0
    for part in content:
        if isinstance(part, Mapping) and isinstance(text := part.get("text"), str):
            total += len(text)
        elif isinstance(part, Mapping) and part.get("type") == "tool_result":
            total += _content_chars(part.get("content"))  # Anthropic: a tool's answer
    return total


def _gemini_chars(content: object) -> int:
    """Characters of the `text` parts of one Gemini `Content` (`{"parts": [{"text": …}]}`)."""
    parts = content.get("parts") if isinstance(content, Mapping) else None
    if not isinstance(parts, list):
        return 0
    return _content_chars(parts)
