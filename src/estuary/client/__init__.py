"""Python clients for Estuary's app API: `AsyncEstuary` (asyncio, aiohttp) and `Estuary` (blocking).

Both iterate the typed app-API events, cancel on the server when a stream is left early, and resume
a dropped connection from the last event id with backoff — without delivering an event twice. A
stream that ends without `done` or `error` raises `StreamInterrupted`, never ends quietly.

Imports only `estuary.sse` from the rest of Estuary (checked by import-linter).
"""

from estuary.client._async import AsyncChat, AsyncChatStream, AsyncEstuary
from estuary.client._events import (
    Attempt,
    Content,
    Done,
    ErrorEvent,
    EstuaryError,
    Event,
    Reasoning,
    Start,
    StreamInterrupted,
    ToolCallEvent,
    Unknown,
    Usage,
)
from estuary.client._request import chat_body
from estuary.client._sync import Chat, ChatStream, Estuary

__all__ = [
    "AsyncChat",
    "AsyncChatStream",
    "AsyncEstuary",
    "Attempt",
    "Chat",
    "ChatStream",
    "Content",
    "Done",
    "ErrorEvent",
    "Estuary",
    "EstuaryError",
    "Event",
    "Reasoning",
    "Start",
    "StreamInterrupted",
    "ToolCallEvent",
    "Unknown",
    "Usage",
    "chat_body",
]
