"""The built-in `demo` provider: realistic streamed text with no network and no key.

It is what `estuary serve` uses when nothing is configured, so a new user sees tokens arrive one by
one at a plausible pace before setting up any upstream. The answer mixes Chinese and English (so
UTF-8 handling is exercised from the first run), honours `max_tokens`, and reports usage.
Must not import the HTTP layer, routing or storage.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator
from typing import Final

from estuary.core.events import StreamEnd, StreamEvent, StreamStart, TextDelta, Usage
from estuary.core.requests import UpstreamRequest, prompt_text
from estuary.providers.base import Timeouts

__all__ = ["DemoProvider", "demo_answer"]

_ANSWERS: Final = (
    "Estuary is streaming this answer token by token. 这段文字来自内置的 demo 模型，"
    "没有调用任何外部 API。 Configure a real provider in estuary.toml — for example Kimi, "
    "Qwen or DeepSeek — and the same stream will carry its tokens instead.",
    "你好！这是一个流式回答的示例。 Each piece you see arrived as its own server-sent event, "
    "the moment it was generated. Close the tab and the generation stops; "
    "刷新页面也可以从断点继续。",
    "Here is what a gateway should do: 第一，立即转发每个 token；第二，永远不泄露上游密钥；"
    "第三，用户离开时取消上游请求。 That is the whole idea, done properly once.",
)
# Words with their following space, single CJK characters, and punctuation runs.
_PIECES: Final = re.compile(
    r"[A-Za-z0-9'\u2019]+[ ]?|[\u3400-\u9fff]|[^A-Za-z0-9'\u2019\u3400-\u9fff]+"
)


def demo_answer(request: UpstreamRequest) -> list[str]:
    """The pieces the demo streams for `request`: chosen by the prompt, so it is deterministic."""
    prompt = prompt_text(request)
    answer = _ANSWERS[sum(map(ord, prompt)) % len(_ANSWERS)]
    return _PIECES.findall(answer)


class DemoProvider:
    """Streams a canned answer at a realistic pace (first token after `ttft_s`, then `gap_s`)."""

    def __init__(self, name: str = "demo", *, ttft_s: float = 0.25, gap_s: float = 0.03) -> None:
        self._name = name
        self._ttft_s = ttft_s
        self._gap_s = gap_s

    @property
    def name(self) -> str:
        return self._name

    async def aclose(self) -> None:
        """Nothing to release."""

    async def stream(
        self, request: UpstreamRequest, model: str, timeouts: Timeouts
    ) -> AsyncGenerator[StreamEvent, None]:
        pieces = demo_answer(request)
        limit = request.max_tokens or len(pieces)
        await asyncio.sleep(self._ttft_s)
        yield StreamStart(provider=self._name, model=model)
        for i, piece in enumerate(pieces[:limit]):
            if i:
                await asyncio.sleep(self._gap_s)
            yield TextDelta(text=piece)
        sent = min(limit, len(pieces))
        yield Usage(prompt_tokens=max(1, len(prompt_text(request)) // 3), completion_tokens=sent)
        yield StreamEnd(reason="length" if limit < len(pieces) else "stop")
