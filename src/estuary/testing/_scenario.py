"""What the fake upstream does for one request: a frozen, hashable `Scenario`.

Plain values only; imports nothing from estuary.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from ._text import count_prompt_chars, default_chunks

__all__ = ["FakeToolCall", "Fault", "Scenario", "fake_usage"]

Fault = Literal["drop", "stall", "error"]


@dataclass(frozen=True, slots=True, kw_only=True)
class FakeToolCall:
    """One tool call the fake model makes; `arguments` is streamed in at least 3 fragments."""

    id: str
    name: str
    arguments: str  # JSON text, exactly as the model "produced" it


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """A script for one response of the fake upstream.

    Stream order: (wait `headers_delay_s`) headers, (wait `ttft_s`) the role chunk together with
    the first token, then reasoning chunks, content chunks, tool-call fragments (with `gap_s`
    between tokens), the finish chunk, the usage chunk when it applies, and `data: [DONE]`.

    The three faults (`drop_after`, `stall_after`, `error_after`; at most one may be set) count
    *content* chunks: the fault happens after all reasoning chunks and the first N content
    chunks (or after all content chunks, before any tool call, when N is larger). The legacy
    `/v1/completions` endpoint streams only the content; it ignores reasoning and tool calls.

    `transcript` replays a recorded chat stream instead: exactly those bytes, cut after each
    blank line (one SSE message per write, `gap_s` between them, after `ttft_s`). The faults then
    count *messages* (comment-only blocks included), and nothing is added: no `[DONE]` that the
    transcript lacks, no usage. Only streamed chat requests use it.

    Non-streaming requests wait `headers_delay_s + ttft_s + gap_s * (tokens - 1)` and then
    answer the whole object; there `drop_after` closes the connection without an answer,
    `stall_after` never answers and `error_after` answers 500 with the `overloaded` error.
    """

    headers_delay_s: float = 0.0
    ttft_s: float = 0.0
    gap_s: float = 0.0
    tokens: int = 8
    text: tuple[str, ...] | None = None
    reasoning: tuple[str, ...] = ()
    tool_calls: tuple[FakeToolCall, ...] = ()
    finish_reason: str | None = None
    usage: bool | None = None
    fail_status: int | None = None
    fail_body: str | None = None
    retry_after: str | None = None
    drop_after: int | None = None
    stall_after: int | None = None
    error_after: int | None = None
    split_utf8: bool = False
    chunk_bytes: int | None = None
    done: bool = True
    transcript: bytes | None = None  # raw SSE bytes to replay instead of generated chunks
    # Pause between the writes of one fragmented message (`split_utf8`, `chunk_bytes`), so that
    # a reader in the same event loop (or a thread waiting for the GIL) really receives the
    # pieces in separate reads. It costs ~1 ms per write: chunk_bytes=1 on a short stream of
    # ~1 KiB takes over a second; use larger pieces, or 0 when real splits do not matter.
    fragment_pause_s: float = 0.001

    def __post_init__(self) -> None:
        # Accept lists for convenience, but keep the value frozen and hashable.
        for name in ("text", "reasoning", "tool_calls"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        self._validate()

    def _validate(self) -> None:
        delays = (self.headers_delay_s, self.ttft_s, self.gap_s, self.fragment_pause_s)
        if min(delays) < 0:
            raise ValueError("Scenario delays must not be negative")
        if self.tokens < 0:
            raise ValueError("Scenario.tokens must not be negative")
        if self.chunk_bytes is not None and self.chunk_bytes < 1:
            raise ValueError("Scenario.chunk_bytes must be at least 1")
        faults = [f for f in (self.drop_after, self.stall_after, self.error_after) if f is not None]
        if len(faults) > 1:
            raise ValueError("set at most one of drop_after, stall_after, error_after")
        if faults and faults[0] < 0:
            raise ValueError("Scenario fault positions must not be negative")
        if self.fail_status is not None and not 400 <= self.fail_status <= 599:
            raise ValueError("Scenario.fail_status must be an HTTP error status (400-599)")
        if self.transcript is not None and not isinstance(self.transcript, bytes):
            raise ValueError("Scenario.transcript must be bytes")

    def content_chunks(self) -> tuple[str, ...]:
        """The exact content delta strings this scenario streams (before any fault)."""
        return self.text if self.text is not None else default_chunks(self.tokens)

    def expected_text(self) -> str:
        """All content as a client should reassemble it."""
        return "".join(self.content_chunks())

    def continued(self, body: object) -> Scenario:
        """This scenario as an answer to `body`: only the rest, when `body` ends with an
        assistant prefix to continue (Kimi's `partial`, DeepSeek's `prefix`) that this answer
        starts with — as a real upstream continues a partial answer; else unchanged."""
        messages = body.get("messages") if isinstance(body, dict) else None
        last = messages[-1] if isinstance(messages, list) and messages else None
        if (
            self.transcript is not None
            or not isinstance(last, dict)
            or last.get("role") != "assistant"
            or not (last.get("partial") is True or last.get("prefix") is True)
            or not isinstance(prefix := last.get("content"), str)
            or not self.expected_text().startswith(prefix)
        ):
            return self
        rest: list[str] = []
        consumed = 0
        for chunk in self.content_chunks():
            if consumed + len(chunk) > len(prefix):
                rest.append(chunk[max(0, len(prefix) - consumed) :])
            consumed += len(chunk)
        return dataclasses.replace(self, text=tuple(rest))

    def resolved_finish_reason(self, *, legacy: bool = False) -> str:
        """`finish_reason` if set, else "tool_calls" when there are tool calls, else "stop"."""
        if self.finish_reason is not None:
            return self.finish_reason
        return "tool_calls" if self.tool_calls and not legacy else "stop"

    @property
    def fault(self) -> tuple[Fault, int] | None:
        """The mid-stream fault and after how many content chunks it happens, if any."""
        if self.drop_after is not None:
            return ("drop", self.drop_after)
        if self.stall_after is not None:
            return ("stall", self.stall_after)
        if self.error_after is not None:
            return ("error", self.error_after)
        return None

    def usage_for(self, body: object) -> tuple[int, int]:
        """`(prompt_tokens, completion_tokens)` the fake reports for a request body.

        prompt_tokens = (characters of all message text and of `prompt`) // 4 + 1, counting
        string contents and the `text` of content parts (for a Gemini body: the `text` parts
        of `contents` and `systemInstruction`; for an Anthropic body: `system` and the content
        of `tool_result` blocks too).
        completion_tokens = content chunks + reasoning chunks + 1 per tool call for chat; for a
        legacy completion body (a `prompt` and no `messages`) only the content chunks count.
        """
        prompt_tokens = count_prompt_chars(body) // 4 + 1
        content = len(self.content_chunks())
        if _is_legacy(body):
            return prompt_tokens, content
        return prompt_tokens, content + len(self.reasoning) + len(self.tool_calls)


def fake_usage(body: object, scenario: Scenario) -> tuple[int, int]:
    """`scenario.usage_for(body)`: the exact usage the fake reports for that request body."""
    return scenario.usage_for(body)


def _is_legacy(body: object) -> bool:
    return isinstance(body, dict) and "prompt" in body and "messages" not in body
