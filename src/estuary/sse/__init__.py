"""Server-Sent Events framing, sans-IO: `SSEDecoder` reads byte chunks, `encode_*` writes them.

Stdlib only; must not import I/O (no sockets, files or asyncio) nor other `estuary` packages.
"""

from estuary.sse.decoder import SSEDecoder, SSEMessage
from estuary.sse.encoder import encode_comment, encode_message

__all__ = ["SSEDecoder", "SSEMessage", "encode_comment", "encode_message"]
