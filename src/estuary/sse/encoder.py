"""Sans-IO encoder for Server-Sent Events: message fields in, wire bytes out.

Writes fields in a fixed order (`id`, `event`, `retry`, then one `data:` line per line of data)
and ends each message with a blank line, so `SSEDecoder` reads back exactly what was written
(with CRLF and CR in data normalised to LF). The hot path is single-line UTF-8 `bytes` data, which
is framed without decoding or re-encoding it.

Stdlib only; must not import I/O (no sockets, files or asyncio) nor anything from `estuary`.
"""

from __future__ import annotations

__all__ = ["encode_comment", "encode_message"]


def encode_message(
    data: str | bytes,
    *,
    id: str | None = None,
    event: str | None = None,
    retry: int | None = None,
) -> bytes:
    """Frame one message; `bytes` data must be UTF-8 and is used as is.

    Raises ValueError if `id` or `event` contains CR, LF or NUL (they would break the framing or
    be ignored by the reader), if `retry` is negative, or if `str` data cannot be UTF-8 encoded.
    """
    if isinstance(data, str):
        data = data.encode()
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if b"\n" in data:
        # CR and LF bytes never occur inside a multi-byte UTF-8 sequence: splitting bytes is safe.
        data = data.replace(b"\n", b"\ndata: ")
    if id is None and event is None and retry is None:
        return b"data: " + data + b"\n\n"
    return b"".join((_head(id, event, retry), b"data: ", data, b"\n\n"))


def encode_comment(text: str = "") -> bytes:
    """Frame a comment, one `: ` line per line of `text`; readers ignore it (a heartbeat)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return b": " + text.replace("\n", "\n: ").encode() + b"\n\n"


def _head(id: str | None, event: str | None, retry: int | None) -> bytes:
    head = b""
    if id is not None:
        head = b"id: " + _single_line("id", id) + b"\n"
    if event is not None:
        head += b"event: " + _single_line("event", event) + b"\n"
    if retry is not None:
        if isinstance(retry, bool) or retry < 0:
            raise ValueError(f"retry must be a non-negative int of milliseconds, got {retry!r}")
        head += b"retry: %d\n" % retry
    return head


def _single_line(name: str, value: str) -> bytes:
    if "\n" in value or "\r" in value or "\0" in value:
        raise ValueError(f"SSE {name} must not contain CR, LF or NUL: {value!r}")
    return value.encode()
