"""The OpenAI-compatible provider: one adapter for OpenAI, Kimi, Qwen, DeepSeek, GLM, Ollama, vLLM….

The thin async part of the adapter: it sends the body built by `openai_wire` over the lean client
in `upstream_http`, maps a failed answer to an `UpstreamError`, feeds the body to
`OpenAIStreamParser` and enforces the timeouts. Leaving early (the consumer closed the iterator)
resets the upstream connection, which is how a cancel reaches the upstream at once.
Must not import the HTTP layer, routing or storage.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from estuary.core.errors import UpstreamError
from estuary.core.redaction import Redactor
from estuary.core.requests import ChatRequest, UpstreamRequest
from estuary.providers.base import with_assistant_prefix
from estuary.providers.http_errors import error_for_status
from estuary.providers.openai_wire import OpenAIStreamParser, chat_body, completion_body
from estuary.providers.streaming import StreamingProvider, StreamParser
from estuary.providers.upstream_http import (
    Endpoint,
    UpstreamPool,
    request_head,
)

__all__ = ["OpenAIProvider"]


def _prefix_flag(flavor: str | None, endpoint: Endpoint) -> str | None:
    """The message flag with which this upstream continues a trailing assistant message, if any.

    - Kimi "Partial Mode": the last message `{"role": "assistant", "content": …, "partial": true}`
      is continued, and the answer leaves that text out
      (https://platform.moonshot.cn/docs/api/partial).
    - DeepSeek "Chat Prefix Completion (Beta)": the same with `"prefix": true`, but only on the
      beta endpoint, `base_url = "https://api.deepseek.com/beta"`
      (https://api-docs.deepseek.com/guides/chat_prefix_completion); the preset's `/v1` is not.
    """
    if flavor == "moonshot":
        return "partial"
    if flavor == "deepseek" and endpoint.prefix.endswith("/beta"):
        return "prefix"
    return None


class OpenAIProvider(StreamingProvider):
    """Streams from an OpenAI-compatible `/chat/completions` and `/completions`."""

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        api_key: str | None,
        pool: UpstreamPool,
        headers: Mapping[str, str] | None = None,
        redact: Redactor | None = None,
        flavor: str | None = None,
    ) -> None:
        """`flavor` is the preset this upstream speaks (`"zhipu"`, `"spark"`, …), for its quirks."""
        super().__init__(
            name,
            endpoint=Endpoint.parse(base_url),
            pool=pool,
            redact=(redact or Redactor()).extended([api_key] if api_key else []),
        )
        self._flavor = flavor
        fixed = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "User-Agent": "estuary",
            **(headers or {}),
        }
        if api_key:
            fixed["Authorization"] = f"Bearer {api_key}"
        self._heads = {
            path: request_head(self._endpoint, path, fixed)
            for path in ("/chat/completions", "/completions")
        }
        self._prefix_flag = _prefix_flag(flavor, self._endpoint)

    @property
    def continues_prefix(self) -> bool:
        """Whether this upstream can continue a partial answer (`base.ContinuesPrefix`)."""
        return self._prefix_flag is not None

    def continuation(self, request: ChatRequest, partial: str) -> ChatRequest:
        """`request` with `partial` as the assistant's answer so far, flagged for this upstream."""
        return with_assistant_prefix(request, partial, self._prefix_flag)

    def _parser(self, request: UpstreamRequest) -> StreamParser:
        kind: Literal["chat", "completion"] = (
            "chat" if isinstance(request, ChatRequest) else "completion"
        )
        return OpenAIStreamParser(self._name, kind=kind, redact=self._redact, flavor=self._flavor)

    def _failure(self, status: int, body: bytes, retry_after: str | None) -> UpstreamError:
        return error_for_status(
            self._name, status, body, retry_after, self._redact, flavor=self._flavor
        )

    def _wire(self, request: UpstreamRequest, model: str) -> bytes:
        """The whole HTTP request: the pre-encoded head, its length, the JSON body."""
        if isinstance(request, ChatRequest):
            head, body = self._heads["/chat/completions"], chat_body(request, model)
        else:
            head, body = self._heads["/completions"], completion_body(request, model)
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
