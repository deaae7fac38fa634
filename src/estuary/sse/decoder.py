"""Sans-IO decoder for Server-Sent Events: byte chunks in, complete messages out.

Follows the WHATWG HTML "server-sent events" parsing rules: lines end with CRLF, LF or CR (a CRLF
may be split across chunks), a leading UTF-8 BOM is skipped, invalid UTF-8 is replaced, comments
and unknown fields are ignored, and a blank line dispatches the buffered message. The decoder sits
on the gateway's hot path, so the common case (whole `data: ...\\n\\n` blocks with LF endings) is
handled with C-level `str` operations rather than per-character Python loops, and a partial line
is never re-scanned until the chunk that completes it arrives.

Stdlib only; must not import I/O (no sockets, files or asyncio) nor anything from `estuary`.
"""

from __future__ import annotations

from codecs import utf_8_decode
from contextlib import suppress
from dataclasses import dataclass

__all__ = ["SSEDecoder", "SSEMessage"]

_BOM = "\ufeff"


@dataclass(frozen=True, slots=True)
class SSEMessage:
    """One dispatched event.

    `event` is "" when the block had no `event:` field (the default "message" type); `id` is the
    last event id in effect when the message was dispatched (None if the stream never set one);
    `retry` is the value of a valid `retry:` field inside this message's own block, else None.
    """

    data: str
    event: str = ""
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Turns byte chunks, split anywhere, into complete messages. No I/O.

    Call `feed()` with each chunk as it arrives and `finish()` once at the end of the stream.
    """

    __slots__ = (
        "_at_start",
        "_data",
        "_event",
        "_finished",
        "_id_buffer",
        "_in_block",
        "_last_id",
        "_pending",
        "_retry",
        "_skip_lf",
        "_truncated",
        "_undecoded",
    )

    def __init__(self) -> None:
        self._undecoded = b""  # the incomplete UTF-8 sequence that ended the last chunk
        self._at_start = True  # no character decoded yet: a BOM may still come
        self._skip_lf = False  # the last chunk ended with CR: a leading LF completes a CRLF
        self._pending: list[str] = []  # pieces of a line whose line break has not come yet
        self._data: list[str] = []  # the current block's data lines
        self._event = ""
        self._retry: int | None = None
        self._in_block = False  # a field line came since the last blank line
        self._id_buffer: str | None = None  # set by `id:`, becomes the last id at a blank line
        self._last_id: str | None = None
        self._finished = False
        self._truncated = False

    @property
    def last_event_id(self) -> str | None:
        """The id a reconnecting client should send: only ids of completed blocks count."""
        return self._last_id

    @property
    def truncated(self) -> bool:
        """True after `finish()` if the stream ended inside a block or inside a line."""
        return self._truncated

    def feed(self, chunk: bytes) -> list[SSEMessage]:
        """Decode one chunk and return the messages it completes, in order."""
        if self._finished:
            raise RuntimeError("feed() after finish(): the stream has ended")
        if self._undecoded:
            chunk = self._undecoded + chunk
        text, used = utf_8_decode(chunk, "replace", False)
        self._undecoded = chunk[used:]
        if self._at_start:
            if not text:
                return []  # a BOM may still be arriving byte by byte
            self._at_start = False
            if text[0] == _BOM:
                text = text[1:]
        if self._skip_lf and text:
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]  # the second half of a CRLF whose CR ended the last chunk
        if "\r" in text:
            # A CR at the very end is handled as a line break now (so the message is not held
            # back); `_skip_lf` drops the LF if the next chunk turns it into a CRLF.
            self._skip_lf = text[-1] == "\r"
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        elif "\n" not in text:
            if text:
                self._pending.append(text)  # still inside one line: do not scan it again
            return []
        lines = text.split("\n")
        if self._pending:
            self._pending.append(lines[0])
            lines[0] = "".join(self._pending)
            self._pending.clear()
        if tail := lines.pop():
            self._pending.append(tail)
        return self._take_lines(lines)

    def finish(self) -> list[SSEMessage]:
        """End of stream: discard an unfinished block (per the spec) and set `truncated`.

        A CR that ended the last chunk was already handled as a line break, so nothing buffered
        can complete a message here and the result is always empty; it is a list so callers
        can treat `feed()` and `finish()` alike. Calling it again does nothing.
        """
        if self._finished:
            return []
        self._finished = True
        partial_line = bool(self._pending or self._undecoded)
        self._truncated = partial_line or self._in_block
        self._undecoded = b""
        self._pending.clear()
        self._data.clear()
        self._event = ""
        self._retry = None
        self._in_block = False
        return []

    def _take_lines(self, lines: list[str]) -> list[SSEMessage]:
        messages: list[SSEMessage] = []
        data = self._data
        for line in lines:
            if not line:
                if self._in_block and (message := self._end_block()) is not None:
                    messages.append(message)
            elif line.startswith("data:"):  # the hot path: handled without `partition()`
                data.append(line[6:] if line[5:6] == " " else line[5:])
                self._in_block = True
            elif line[0] != ":":  # lines starting with ":" are comments (keep-alives)
                self._take_field(line)
        return messages

    def _take_field(self, line: str) -> None:
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        match name:
            case "data":
                self._data.append(value)
            case "event":
                self._event = value
            case "id":
                if "\0" not in value:
                    self._id_buffer = value
            case "retry":
                if value.isascii() and value.isdigit():
                    # More digits than Python's int-from-str limit: ignored, never raised.
                    with suppress(ValueError):
                        self._retry = int(value)
            case _:
                pass  # unknown fields are ignored
        self._in_block = True

    def _end_block(self) -> SSEMessage | None:
        """A blank line ended a block: dispatch it if it had data, then reset the block."""
        self._last_id = self._id_buffer
        message = None
        if self._data:
            message = SSEMessage("\n".join(self._data), self._event, self._id_buffer, self._retry)
            self._data.clear()
        self._event = ""
        self._retry = None
        self._in_block = False
        return message
