"""The encoders' token fast paths write exactly what the general path would."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from estuary.core.events import TextDelta
from estuary.http.encoders import AppSSEEncoder, OpenAIChatEncoder, OpenAICompletionEncoder
from estuary.sse import SSEDecoder


def _data(wire: bytes) -> object:
    (message,) = SSEDecoder().feed(wire)
    return orjson.loads(message.data)


@given(st.text())
def test_app_content_event_is_the_documented_json(text: str) -> None:
    """`{"type":"content","content":…}` with the next sequence number in the id."""
    encoder = AppSSEEncoder("req_1", "chat")
    wire = encoder.event(TextDelta(text=text))
    assert wire.startswith(b"id: req_1:1\ndata: ")
    assert _data(wire) == {"type": "content", "content": text}


@given(st.text())
def test_openai_chat_chunk_matches_openais_shape(text: str) -> None:
    """A text delta is a whole `chat.completion.chunk` with the alias as the model."""
    chunk = _data(
        OpenAIChatEncoder("req_1", "chat", include_usage=False).event(TextDelta(text=text))
    )
    assert isinstance(chunk, dict)
    assert chunk["id"] == "chatcmpl-req_1"
    assert (chunk["object"], chunk["model"]) == ("chat.completion.chunk", "chat")
    assert chunk["choices"] == [{"index": 0, "delta": {"content": text}, "finish_reason": None}]
    assert list(chunk) == ["id", "object", "created", "model", "choices"]


@given(st.text())
def test_legacy_completion_chunk_matches_openais_shape(text: str) -> None:
    """A text delta of the legacy API is a `text_completion` chunk."""
    encoder = OpenAICompletionEncoder("req_1", "chat", include_usage=False)
    chunk = _data(encoder.event(TextDelta(text=text)))
    assert isinstance(chunk, dict)
    assert chunk["object"] == "text_completion"
    assert chunk["choices"] == [{"index": 0, "text": text, "finish_reason": None, "logprobs": None}]
