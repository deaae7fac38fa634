"""Non-streamed answers: the upstream is still streamed (so usage is counted and a client that
leaves still cancels it), collected here, and sent as one OpenAI JSON object — or, with a
`shape`, as another API's object built from the collected `Answer`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Final

import orjson
from starlette.types import Receive, Scope, Send

from estuary.core.errors import EstuaryError, kept
from estuary.core.events import ReasoningDelta, StreamEnd, TextDelta, ToolCall
from estuary.core.requests import ChatRequest
from estuary.core.usage import TokenCount
from estuary.gateway.session import Outcome, StreamSession
from estuary.http.encoders import openai_finish_reason
from estuary.http.stopper import Stopper
from estuary.http.streaming import error_messages

__all__ = ["Answer", "AnswerShape", "CollectedResponse"]

_log: Final = logging.getLogger("estuary.stream")


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """A whole collected answer, for building another API's response object."""

    request_id: str
    alias: str
    text: str
    reasoning: str
    calls: tuple[ToolCall, ...]
    finish_reason: str
    tokens: TokenCount


AnswerShape = Callable[[Answer], dict[str, Any]]


class CollectedResponse:
    """An ASGI response with the whole answer as `chat.completion` or `text_completion`."""

    def __init__(self, session: StreamSession, *, shape: AnswerShape | None = None) -> None:
        """`shape` builds the body from the `Answer`; without one it is OpenAI's."""
        self._session = session
        self._shape = shape
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._calls: list[ToolCall] = []
        self._finish_reason = "stop"
        self._failure: EstuaryError | None = None
        self._client_left = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        outcome = Outcome(status="canceled", finish_reason="client_disconnected")
        try:
            async with asyncio.TaskGroup() as tasks:
                stopper = Stopper()
                watcher = tasks.create_task(self._watch_disconnect(receive, stopper))
                try:
                    await stopper.run(self._collect())
                finally:
                    watcher.cancel()
            if self._client_left:
                return
            if self._failure is not None:
                outcome = Outcome(status="error", finish_reason="error", error=self._failure)
                for message in error_messages(self._failure, self._session.request_id):
                    await send(message)
                return
            outcome = Outcome(status="completed", finish_reason=self._finish_reason)
            tokens = self._session.token_count(complete=True)
            shaped = self._shape(self._answer(tokens)) if self._shape else self._body(tokens)
            body = orjson.dumps(shaped)
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", b"%d" % len(body)),
                        (b"x-request-id", self._session.request_id.encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body, "more_body": False})
        finally:
            await asyncio.shield(self._session.settle(outcome))

    async def _collect(self) -> None:
        try:
            async with aclosing(self._session.events()) as events:
                async for event in events:
                    match event:
                        case TextDelta(text=text):
                            self._text.append(text)
                        case ReasoningDelta(text=text):
                            self._reasoning.append(text)
                        case ToolCall():
                            self._calls.append(event)
                        case StreamEnd(reason=reason):
                            self._finish_reason = reason
                        case _:
                            pass
        except EstuaryError as exc:
            self._failure = kept(exc)
        except Exception:
            _log.exception("request %s failed", self._session.request_id)
            self._failure = EstuaryError("internal error while collecting the answer")

    async def _watch_disconnect(self, receive: Receive, stopper: Stopper) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._client_left = stopper.stop()

    def _answer(self, tokens: TokenCount) -> Answer:
        return Answer(
            request_id=self._session.request_id,
            alias=self._session.route.alias,
            text="".join(self._text),
            reasoning="".join(self._reasoning),
            calls=tuple(self._calls),
            finish_reason=self._finish_reason,
            tokens=tokens,
        )

    def _body(self, tokens: TokenCount) -> dict[str, Any]:
        session = self._session
        usage = {
            "prompt_tokens": tokens.prompt_tokens,
            "completion_tokens": tokens.completion_tokens,
            "total_tokens": tokens.prompt_tokens + tokens.completion_tokens,
        }
        head = {"created": int(time.time()), "model": session.route.alias, "usage": usage}
        text = "".join(self._text)
        finish_reason = openai_finish_reason(self._finish_reason)
        if not isinstance(session.request, ChatRequest):
            choice = {"index": 0, "text": text, "finish_reason": finish_reason}
            choice["logprobs"] = None
            return {
                "id": "cmpl-" + session.request_id,
                "object": "text_completion",
                **head,
                "choices": [choice],
            }
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if self._reasoning:
            message["reasoning_content"] = "".join(self._reasoning)
        if self._calls:
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in self._calls
            ]
        choice = {"index": 0, "message": message, "finish_reason": finish_reason}
        return {
            "id": "chatcmpl-" + session.request_id,
            "object": "chat.completion",
            **head,
            "choices": [choice],
        }
