"""The demo provider: streamed text with no network, honouring max_tokens, reporting usage."""

from __future__ import annotations

from estuary.core.events import StreamEnd, StreamStart, TextDelta, Usage
from estuary.core.requests import parse_app_chat
from estuary.providers.base import Timeouts
from estuary.providers.demo import DemoProvider, demo_answer


async def test_demo_streams_its_answer_piece_by_piece() -> None:
    """Start, many small text pieces with Chinese in them, usage, then a normal end."""
    request = parse_app_chat({"message": "hello"})
    events = [e async for e in DemoProvider(ttft_s=0, gap_s=0).stream(request, "m", Timeouts())]
    assert events[0] == StreamStart(provider="demo", model="m")
    pieces = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(pieces) > 20
    assert "".join(pieces) == "".join(demo_answer(request))
    assert any("\u4e00" <= ch <= "\u9fff" for ch in "".join(pieces))
    assert events[-2] == Usage(prompt_tokens=1, completion_tokens=len(pieces))
    assert events[-1] == StreamEnd(reason="stop")


async def test_demo_stops_at_max_tokens_with_length() -> None:
    """`max_tokens` cuts the answer and the finish reason says so."""
    request = parse_app_chat({"message": "hello", "max_tokens": 3})
    events = [e async for e in DemoProvider(ttft_s=0, gap_s=0).stream(request, "m", Timeouts())]
    assert sum(isinstance(e, TextDelta) for e in events) == 3
    assert events[-1] == StreamEnd(reason="length")
