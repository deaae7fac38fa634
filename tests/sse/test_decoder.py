"""Tests for `estuary.sse.decoder`: WHATWG SSE parsing over bytes split anywhere."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import estuary.sse
from estuary.sse import SSEDecoder, SSEMessage

BOM = b"\xef\xbb\xbf"


def fragments(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def cut(data: bytes, points: Iterable[int]) -> list[bytes]:
    bounds = [0, *sorted(set(points)), len(data)]
    return [data[a:b] for a, b in pairwise(bounds)]


def decode(parts: Iterable[bytes]) -> tuple[list[SSEMessage], SSEDecoder]:
    decoder = SSEDecoder()
    messages = [message for part in parts for message in decoder.feed(part)]
    messages += decoder.finish()
    return messages, decoder


def decode_all(stream: bytes) -> list[SSEMessage]:
    return decode([stream])[0]


def reference_decode(stream: bytes) -> tuple[list[SSEMessage], str | None, bool]:
    """The spec's algorithm, written plainly over the whole stream at once."""
    text = stream.decode("utf-8", "replace").removeprefix("\ufeff")
    *lines, tail = re.split(r"\r\n|\r|\n", text)
    messages: list[SSEMessage] = []
    data, event, retry, id_buffer, last_id, in_block = "", "", None, None, None, False
    for line in lines:
        if line == "":
            last_id = id_buffer
            if data:
                messages.append(SSEMessage(data[:-1], event, id_buffer, retry))
            data, event, retry, in_block = "", "", None, False
            continue
        if line.startswith(":"):
            continue
        in_block = True
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data += value + "\n"
        elif name == "event":
            event = value
        elif name == "id" and "\0" not in value:
            id_buffer = value
        elif name == "retry" and re.fullmatch("[0-9]{1,4000}", value):
            retry = int(value)
    return messages, last_id, bool(tail) or in_block


TOKENS = [
    b"data",
    b"data:",
    b"data: ",
    b"event: ",
    b"id:",
    b"id: ",
    b"retry: ",
    b"foo: ",
    b":",
    b" ",
    b"\r",
    b"\n",
    b"\r\n",
    b"\n\n",
    b"x",
    b"42",
    b"\0",
    "中".encode(),
    "😀".encode(),
    BOM,
    b"\xff",
    b"\xe4\xb8",
    b"\xf0\x9f",
]
sse_like_streams = st.lists(
    st.one_of(st.sampled_from(TOKENS), st.binary(max_size=4)), max_size=60
).map(b"".join)


def test_public_surface_is_pinned() -> None:
    """The package exports exactly the decoder, its message and the two encoders."""
    assert sorted(estuary.sse.__all__) == [
        "SSEDecoder",
        "SSEMessage",
        "encode_comment",
        "encode_message",
    ]


@settings(max_examples=400, deadline=None)
@given(stream=sse_like_streams, data=st.data())
def test_any_chunking_matches_the_spec_read_over_the_whole_stream(
    stream: bytes, data: st.DataObject
) -> None:
    """Messages, last id and truncation equal the plain spec algorithm, however bytes are cut."""
    points = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    messages, decoder = decode(cut(stream, points))
    assert (messages, decoder.last_event_id, decoder.truncated) == reference_decode(stream)


EOL_STREAM = (
    ": hello\n"
    "retry: 2500\n"
    "data: first\n"
    "\n"
    "event: update\n"
    "id: 7\n"
    'data: {"k": "中文😀"}\n'
    "data:second line\n"
    "\n"
    "\n"
    "event: ignored-no-data\n"
    "\n"
    "data\n"
    "\n"
)
EOL_EXPECTED = [
    SSEMessage("first", retry=2500),
    SSEMessage('{"k": "中文😀"}\nsecond line', event="update", id="7"),
    SSEMessage("", id="7"),
]


@pytest.mark.parametrize("eol", ["\n", "\r", "\r\n"], ids=["lf", "cr", "crlf"])
@pytest.mark.parametrize("size", [1, 7, 1 << 20], ids=["1", "7", "whole"])
def test_results_do_not_depend_on_chunking_or_line_ending(eol: str, size: int) -> None:
    """The same stream yields the same messages whole, in 1- and 7-byte fragments, any EOL."""
    stream = EOL_STREAM.replace("\n", eol).encode()
    messages, decoder = decode(fragments(stream, size))
    assert messages == EOL_EXPECTED
    assert decoder.last_event_id == "7"
    assert decoder.truncated is False


@pytest.mark.parametrize("size", [1, 2, 1 << 20], ids=["1", "2", "whole"])
def test_bom_at_start_is_skipped(size: int) -> None:
    """A UTF-8 BOM opening the stream is dropped, even when it arrives a byte at a time."""
    stream = BOM + b"data: x\n\n"
    assert decode(fragments(stream, size))[0] == [SSEMessage("x")]


def test_bom_is_skipped_only_once() -> None:
    """A second BOM right after the first is part of the first line (an unknown field here)."""
    assert decode_all(BOM + BOM + b"data: x\n\ndata: y\n\n") == [SSEMessage("y")]


def test_bom_in_the_middle_is_kept() -> None:
    """A BOM later in the stream is ordinary text, not skipped."""
    stream = b"data: a\n\ndata: " + BOM + b"b\n\n" + BOM + b"data: c\n\n"
    assert decode_all(stream) == [SSEMessage("a"), SSEMessage("\ufeffb")]


def test_cr_ending_a_chunk_and_lf_starting_the_next_are_one_line_break() -> None:
    """A CRLF split across chunks is one line break, not a line break plus a blank line."""
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\ndata: b\r\n\r") == [SSEMessage("a\nb")]
    assert decoder.feed(b"\n") == []
    assert decoder.finish() == []
    assert decoder.truncated is False


def test_cr_ending_a_chunk_dispatches_without_waiting_for_the_next_chunk() -> None:
    """A block ended by CR at the end of a chunk is returned by that same feed call."""
    assert SSEDecoder().feed(b"data: a\r\r") == [SSEMessage("a")]


def test_multi_line_data_joins_with_lf() -> None:
    """Several data lines in one block join with a single LF."""
    assert decode_all(b"data: a\ndata:\ndata: b\n\n") == [SSEMessage("a\n\nb")]


def test_id_containing_nul_is_ignored() -> None:
    """An id with a NUL character leaves the previous id in effect."""
    stream = b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n"
    messages, decoder = decode([stream])
    assert [m.id for m in messages] == ["1", "1"]
    assert decoder.last_event_id == "1"


def test_empty_id_resets_last_event_id_to_empty_string() -> None:
    """`id:` with no value sets the last event id to "", not None."""
    messages, decoder = decode([b"id: 1\ndata: a\n\nid\ndata: b\n\n"])
    assert [m.id for m in messages] == ["1", ""]
    assert decoder.last_event_id == ""


def test_last_event_id_persists_across_messages() -> None:
    """Messages after an id carry it until another id replaces it."""
    stream = b"data: a\n\nid: x\ndata: b\n\ndata: c\n\nid: y\ndata: d\n\ndata: e\n\n"
    messages, decoder = decode([stream])
    assert [m.id for m in messages] == [None, "x", "x", "y", "y"]
    assert decoder.last_event_id == "y"


def test_last_event_id_counts_only_completed_blocks() -> None:
    """An id in a block the stream never finished is not the id to resume from."""
    messages, decoder = decode([b"id: 1\ndata: a\n\nid: 2\ndata: b\n"])
    assert messages == [SSEMessage("a", id="1")]
    assert decoder.last_event_id == "1"
    assert decoder.truncated is True


def test_id_in_a_block_without_data_still_takes_effect() -> None:
    """A block with only an id dispatches nothing but sets the last event id."""
    messages, decoder = decode([b"id: 5\n\ndata: a\n\n"])
    assert messages == [SSEMessage("a", id="5")]
    assert decoder.last_event_id == "5"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"3000", 3000),
        (b"0", 0),
        (b"abc", None),
        (b"", None),
        (b"-1", None),
        (b"1.5", None),
        (b" 10", None),
        ("\u0661\u0662".encode(), None),  # Arabic-Indic digits are digits, but not ASCII
        (b"9" * 5000, None),  # longer than Python's int-from-str limit: ignored, not raised
    ],
)
def test_retry_accepts_only_ascii_digits(value: bytes, expected: int | None) -> None:
    """`retry` keeps only an all-ASCII-digit value; anything else is ignored."""
    assert decode_all(b"retry: " + value + b"\ndata: x\n\n") == [SSEMessage("x", retry=expected)]


def test_retry_belongs_to_its_own_block_only() -> None:
    """A retry value is reported on its block's message, not on later ones."""
    messages = decode_all(b"retry: 10\ndata: a\n\ndata: b\n\nretry: 1\nretry: 20\ndata: c\n\n")
    assert [m.retry for m in messages] == [10, None, 20]


def test_field_without_colon_has_an_empty_value() -> None:
    """A line that is only a field name sets that field to ""."""
    assert decode_all(b"event: a\nevent\ndata\n\n") == [SSEMessage("")]


def test_only_one_space_after_the_colon_is_stripped() -> None:
    """`data:x` keeps x; `data:  x` keeps one leading space."""
    assert decode_all(b"data:x\n\ndata:  y\n\ndata:\tz\n\n") == [
        SSEMessage("x"),
        SSEMessage(" y"),
        SSEMessage("\tz"),
    ]


def test_value_may_contain_colons() -> None:
    """Only the first colon separates the field name from the value."""
    assert decode_all(b'event: a:b\ndata: {"u": "http://x"}\n\n') == [
        SSEMessage('{"u": "http://x"}', event="a:b")
    ]


def test_comment_lines_are_ignored_even_inside_a_block() -> None:
    """Lines starting with ":" change nothing, wherever they appear."""
    stream = b": open\ndata: a\n: keep-alive\n:\ndata: b\n\n: ping\n\n"
    messages, decoder = decode([stream])
    assert messages == [SSEMessage("a\nb")]
    assert decoder.truncated is False


def test_unknown_fields_are_ignored() -> None:
    """Fields other than data, event, id and retry have no effect."""
    assert decode_all(b"foo: bar\nDATA: no\ndata : no\ndata: yes\n\n") == [SSEMessage("yes")]


def test_blank_lines_without_data_dispatch_nothing_and_reset_the_event_type() -> None:
    """A block with no data line dispatches nothing and its event type does not leak."""
    assert decode_all(b"\n\n\nevent: a\n\ndata: x\n\n") == [SSEMessage("x")]


def test_empty_data_line_dispatches_an_empty_message() -> None:
    """`data:` with no value still counts as data."""
    assert decode_all(b"event: ping\ndata:\n\n") == [SSEMessage("", event="ping")]


@pytest.mark.parametrize("split", [1, 2], ids=["1+2", "2+1"])
def test_cjk_character_split_across_chunks_decodes(split: int) -> None:
    """A 3-byte character cut between two chunks decodes to the character."""
    encoded = "中".encode()
    parts = [b"data: " + encoded[:split], encoded[split:] + b"\n\n"]
    assert decode(parts)[0] == [SSEMessage("中")]


@pytest.mark.parametrize("split", [1, 2, 3], ids=["1+3", "2+2", "3+1"])
def test_emoji_split_across_chunks_decodes(split: int) -> None:
    """A 4-byte character cut between two chunks decodes to the character."""
    encoded = "😀".encode()
    parts = [b"data: " + encoded[:split], encoded[split:] + b"\n\n"]
    assert decode(parts)[0] == [SSEMessage("😀")]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    """Bytes that are not UTF-8 become U+FFFD, split across chunks or not."""
    assert decode_all(b"data: a\xffb\xc0\n\n") == [SSEMessage("a\ufffdb\ufffd")]
    assert decode([b"data: \xe4\xb8", b"x\n\n"])[0] == [SSEMessage("\ufffdx")]


def test_clean_stream_is_not_truncated() -> None:
    """A stream ending with its blank line, maybe followed by a comment, is complete."""
    messages, decoder = decode([b"data: a\n\n: bye\n"])
    assert messages == [SSEMessage("a")]
    assert decoder.truncated is False


@pytest.mark.parametrize(
    "tail",
    [b"data: b\n", b"data: b", b"event: end\n", b"da", b"data: \xe4\xb8", b"\xe4\xb8", b": bye"],
)
def test_unfinished_stream_is_truncated_and_its_last_block_discarded(tail: bytes) -> None:
    """finish() drops an unfinished block or line, returns nothing and sets truncated."""
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\n" + tail) == [SSEMessage("a")]
    assert decoder.truncated is False
    assert decoder.finish() == []
    assert decoder.truncated is True


def test_finish_is_idempotent_and_feed_after_finish_raises() -> None:
    """A second finish() changes nothing; feeding a finished decoder is a bug."""
    decoder = SSEDecoder()
    decoder.feed(b"data: a")
    decoder.finish()
    assert decoder.finish() == []
    assert decoder.truncated is True
    with pytest.raises(RuntimeError):
        decoder.feed(b"\n\n")


def test_long_line_fed_byte_by_byte_is_kept_whole() -> None:
    """A line spanning many chunks is reassembled exactly once its break arrives."""
    payload = "é" * 5000
    assert decode(fragments(f"data: {payload}\n\n".encode(), 1))[0] == [SSEMessage(payload)]
