"""Tests for `estuary.sse.encoder`, and that what it writes `SSEDecoder` reads back."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from estuary.sse import SSEDecoder, SSEMessage, encode_comment, encode_message


@dataclass(frozen=True, slots=True)
class Sent:
    data: str
    id: str | None
    event: str | None
    retry: int | None


def normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def expected(sent: Iterable[Sent]) -> list[SSEMessage]:
    """What a reader sees: LF-only data, "" for no event, the id in effect so far."""
    last_id: str | None = None
    messages = []
    for s in sent:
        last_id = s.id if s.id is not None else last_id
        messages.append(SSEMessage(normalise(s.data), s.event or "", last_id, s.retry))
    return messages


def decode_cut(stream: bytes, points: Iterable[int]) -> tuple[list[SSEMessage], SSEDecoder]:
    bounds = [0, *sorted(set(points)), len(stream)]
    decoder = SSEDecoder()
    messages = [m for a, b in pairwise(bounds) for m in decoder.feed(stream[a:b])]
    messages += decoder.finish()
    return messages, decoder


SAMPLES = [
    "中",
    "文",
    "😀",
    "👩‍💻",
    "é",
    "\ufeff",
    "\0",
    ":",
    " ",
    "data: ",
    "\t",
    "\x85",
    "\u2028",
]
EOLS = ["\n", "\r", "\r\n"]
chars = st.characters(codec="utf-8")
texts = st.lists(st.one_of(st.text(chars, max_size=8), st.sampled_from(SAMPLES + EOLS))).map(
    "".join
)
single_line = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\0"), max_size=12)
sents = st.builds(
    Sent,
    data=texts,
    id=st.none() | single_line,
    event=st.none() | single_line,
    retry=st.none() | st.integers(0, 10**12),
)


@settings(max_examples=300, deadline=None)
@given(sent=st.lists(sents, max_size=8), data=st.data())
def test_encoded_messages_decode_back_however_the_bytes_are_cut(
    sent: list[Sent], data: st.DataObject
) -> None:
    """encode → concatenate → cut anywhere (even inside a character) → decode is lossless."""
    stream = b"".join(encode_message(s.data, id=s.id, event=s.event, retry=s.retry) for s in sent)
    points = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    messages, decoder = decode_cut(stream, points)
    assert messages == expected(sent)
    assert decoder.truncated is False


@settings(max_examples=200, deadline=None)
@given(
    items=st.lists(st.one_of(sents, texts.map(encode_comment)), max_size=10),
    data=st.data(),
)
def test_comments_between_messages_change_nothing(
    items: list[Sent | bytes], data: st.DataObject
) -> None:
    """Heartbeat comments interleaved with messages are invisible to the reader."""
    sent = [item for item in items if isinstance(item, Sent)]
    stream = b"".join(
        item
        if isinstance(item, bytes)
        else encode_message(item.data, id=item.id, event=item.event, retry=item.retry)
        for item in items
    )
    points = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    messages, decoder = decode_cut(stream, points)
    assert messages == expected(sent)
    assert decoder.truncated is False


@settings(max_examples=300, deadline=None)
@given(text=texts, id=st.none() | single_line, event=st.none() | single_line)
def test_bytes_data_encodes_exactly_like_the_same_str(
    text: str, id: str | None, event: str | None
) -> None:
    """The bytes path gives the same output as the str path for the same UTF-8 text."""
    assert encode_message(text.encode(), id=id, event=event) == encode_message(
        text, id=id, event=event
    )


def test_single_line_bytes_is_framed_as_is() -> None:
    """Hot path: one line of bytes with an id becomes an id line, a data line, a blank line."""
    payload = b'{"type":"content","text":"\xe4\xb8\xad"}'
    assert encode_message(payload, id="req_x:3") == b"id: req_x:3\ndata: " + payload + b"\n\n"


def test_fields_come_in_a_fixed_order() -> None:
    """id, event and retry precede the data lines; a blank line ends the message."""
    assert encode_message("x", retry=3000, event="delta", id="7") == (
        b"id: 7\nevent: delta\nretry: 3000\ndata: x\n\n"
    )


def test_plain_data_has_no_other_fields() -> None:
    """Without id, event or retry only the data line and the blank line are written."""
    assert encode_message("hello") == b"data: hello\n\n"


def test_empty_data_is_one_empty_data_line() -> None:
    """Empty data still writes a data line, so the reader dispatches an empty message."""
    assert encode_message("") == b"data: \n\n"
    assert SSEDecoder().feed(encode_message("")) == [SSEMessage("")]


def test_multi_line_data_writes_one_data_line_per_line() -> None:
    """LF, CR and CRLF in data each start a new data line."""
    assert encode_message("a\nb\r\nc\rd\n") == (b"data: a\ndata: b\ndata: c\ndata: d\ndata: \n\n")
    assert encode_message(b"a\r\n\rb") == b"data: a\ndata: \ndata: b\n\n"


def test_empty_id_and_event_are_written() -> None:
    """An empty id is a real value (it resets the reader's last id), unlike None."""
    assert encode_message("x", id="", event="") == b"id: \nevent: \ndata: x\n\n"


BAD_LINES = ["a\nb", "a\rb", "\r\n", "a\0b", "end\n"]


@pytest.mark.parametrize("bad", BAD_LINES)
def test_line_breaks_or_nul_in_id_are_rejected(bad: str) -> None:
    """An id that would break the framing, or be ignored by the reader, raises ValueError."""
    with pytest.raises(ValueError, match="id"):
        encode_message("x", id=bad)


@pytest.mark.parametrize("bad", BAD_LINES)
def test_line_breaks_or_nul_in_event_are_rejected(bad: str) -> None:
    """An event type that would break the framing raises ValueError."""
    with pytest.raises(ValueError, match="event"):
        encode_message("x", event=bad)


def test_negative_retry_is_rejected() -> None:
    """A reconnection delay cannot be negative."""
    with pytest.raises(ValueError, match="retry"):
        encode_message("x", retry=-1)


def test_comment_is_a_colon_line_and_a_blank_line() -> None:
    """encode_comment("ping") is the heartbeat b": ping\\n\\n"."""
    assert encode_comment("ping") == b": ping\n\n"
    assert encode_comment() == b": \n\n"


def test_multi_line_comment_writes_one_comment_line_per_line() -> None:
    """Each line of a comment, whatever its line ending, gets its own ": " prefix."""
    assert encode_comment("a\nb\r\nc\rd") == b": a\n: b\n: c\n: d\n\n"


def test_comment_decodes_to_nothing() -> None:
    """A reader ignores a comment, even a multi-line one, and the stream stays complete."""
    decoder = SSEDecoder()
    assert decoder.feed(encode_comment("x\ndata: y\n\nz")) == []
    assert decoder.finish() == []
    assert decoder.truncated is False
