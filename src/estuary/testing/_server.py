"""`FakeUpstream`: a scripted OpenAI-compatible server on a real loopback socket (aiohttp.web).

Disconnects are real: the runner uses `handler_cancellation=True`, so a client that closes
its socket cancels the handler (recorded as `client_gone`), and a write that fails because
the client left is recorded the same way. Imports nothing from estuary.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from types import MappingProxyType
from typing import Any, Self

import orjson
from aiohttp import web

from ._record import SeenRequest, mark_client_gone, mark_finished, request_headers, summary
from ._scenario import Scenario
from ._stream import pause, send_stream
from ._wire import (
    OVERLOADED_BODY,
    StreamPlan,
    chat_completion_body,
    chat_stream_plan,
    error_body,
    fail_body,
    legacy_completion_body,
    legacy_stream_plan,
)
from ._wire_anthropic import (
    AUTH_FAILED_BODY,
    anthropic_error_body,
    anthropic_message_body,
    anthropic_stream_plan,
)
from ._wire_gemini import (
    KEY_INVALID_BODY,
    KEY_MISSING_BODY,
    gemini_error_body,
    gemini_stream_plan,
)

__all__ = ["DEFAULT_MODEL", "FakeUpstream"]

DEFAULT_MODEL = "fake-model"
_LISTED_MODELS = (DEFAULT_MODEL, "fake-model-mini")
_MAX_BODY_BYTES = 8 * 1024 * 1024  # above the gateway's own 4 MiB default
_SHUTDOWN_GRACE_S = 0.1  # stop() lets running streams go on this long, then cancels them
_BACKLOG = 2048  # the benchmark opens up to 1,000 connections at once
_JSON = "application/json"
_SSE_HEADERS = MappingProxyType({"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})

_Answer = Callable[[web.Request, SeenRequest], Awaitable[web.StreamResponse]]


def _parse(raw: bytes) -> tuple[Any, bool]:
    if not raw:
        return None, False
    try:
        return orjson.loads(raw), True
    except orjson.JSONDecodeError:
        return None, False


class FakeUpstream:
    """A scripted OpenAI-compatible upstream: `/v1/chat/completions`, `/v1/completions`,
    `/v1/models`.

    Each completion request takes a scenario: the one `script()`ed for its model, else the next
    `enqueue()`d one, else the default. Requests answered 401 (wrong key) or 400 (bad JSON)
    take none. Every request, answered or not, is appended to `requests` (unless
    `record_requests=False`, for long runs such as the benchmark).
    """

    def __init__(
        self,
        default: Scenario | None = None,
        *,
        api_key: str | None = None,
        record_requests: bool = True,
        control: bool = False,
    ) -> None:
        self._default = default if default is not None else Scenario()
        self._api_key = api_key
        # A long-running fake (the CLI, the benchmark) would otherwise keep every request.
        self._record_requests = record_requests or control
        # The benchmark, in another process, reads and clears the records over HTTP.
        self._control = control
        self._queue: deque[Scenario] = deque()
        self._scripts: dict[str, Scenario] = {}
        self._requests: list[SeenRequest] = []
        self._arrived = asyncio.Event()
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._host = "127.0.0.1"
        self._port: int | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on `host:port` (port 0 picks a free one; see `port` and `base_url`)."""
        if self._runner is not None:
            raise RuntimeError("FakeUpstream is already started")
        app = web.Application(client_max_size=_MAX_BODY_BYTES)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._legacy)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1beta/models/{model_action}", self._gemini)
        app.router.add_post("/v1/messages", self._anthropic)
        if self._control:
            app.router.add_get("/_fake/requests", self._list_requests)
            app.router.add_delete("/_fake/requests", self._clear_requests)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=_SHUTDOWN_GRACE_S
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, backlog=_BACKLOG).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._stopping = asyncio.Event()
        self._runner, self._host, self._port = runner, host, int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop listening; stalled streams are closed, others are cut after a short grace.

        Handlers cancelled by stop() are not recorded as `client_gone`.
        """
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        self._stopping.set()  # cancellations from here on are ours, not the client's
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The port it listens on."""
        if self._port is None:
            raise RuntimeError("FakeUpstream is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """`http://<host>:<port>/v1`, the `base_url` an OpenAI client would use."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}/v1"

    def enqueue(self, *scenarios: Scenario) -> None:
        """The next requests use these scenarios, in order; after them, the default."""
        self._queue.extend(scenarios)

    def script(self, model: str, scenario: Scenario) -> None:
        """Requests for `model` always use `scenario` (before the queue)."""
        self._scripts[model] = scenario

    @property
    def requests(self) -> list[SeenRequest]:
        """Every request seen so far, oldest first (a new list; the records are live)."""
        return list(self._requests)

    async def wait_for_requests(
        self,
        count: int,
        timeout: float = 5.0,  # noqa: ASYNC109 -- the agreed test API; keeps call sites short
    ) -> list[SeenRequest]:
        """Wait until `count` requests have arrived and return the first `count` of them."""
        try:
            async with asyncio.timeout(timeout):
                while len(self._requests) < count:
                    await self._arrived.wait()
        except TimeoutError:
            seen = len(self._requests)
            raise TimeoutError(f"fake upstream saw {seen} of {count} requests") from None
        return self._requests[:count]

    def _pick(self, model: str | None) -> Scenario:
        if model is not None and (scripted := self._scripts.get(model)) is not None:
            return scripted
        return self._queue.popleft() if self._queue else self._default

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._track(request, self._chat_answer)

    async def _legacy(self, request: web.Request) -> web.StreamResponse:
        return await self._track(request, self._legacy_answer)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        return await self._track(request, self._models_answer)

    async def _list_requests(self, request: web.Request) -> web.Response:
        """The records as JSON, for a benchmark in another process (`control=True` only)."""
        rows = [summary(seen) for seen in self._requests]
        return web.Response(body=orjson.dumps(rows), content_type=_JSON)

    async def _clear_requests(self, request: web.Request) -> web.Response:
        self._requests.clear()
        return web.Response(status=204)

    async def _gemini(self, request: web.Request) -> web.StreamResponse:
        """Gemini's `POST /v1beta/models/<model>:streamGenerateContent?alt=sse` (`_wire_gemini`).

        The key must come in `x-goog-api-key`, as Google takes it: none is 403, a wrong one 400
        `API_KEY_INVALID`. The model comes from the URL. For this route `seen.path` keeps the
        query string, so a test sees the whole URL the client used. A scripted `fail_body` may
        hold `{authorization}`, replaced by the `x-goog-api-key` the client sent.
        """

        async def answer(request: web.Request, seen: SeenRequest) -> web.StreamResponse:
            seen.path = request.path_qs
            model, _, action = request.match_info["model_action"].partition(":")
            seen.model, seen.stream = model, True
            given = request.headers.get("x-goog-api-key")
            if self._api_key is not None:
                if given is None:
                    return _json(seen, 403, KEY_MISSING_BODY)
                if not secrets.compare_digest(given.encode(), self._api_key.encode()):
                    return _json(seen, 400, KEY_INVALID_BODY)
            if action != "streamGenerateContent" or request.query.get("alt") != "sse":
                message = "This fake answers only :streamGenerateContent?alt=sse."
                return _json(seen, 404, gemini_error_body(404, message))
            if not isinstance(seen.body, dict):
                return _json(seen, 400, gemini_error_body(400, "Invalid JSON payload received."))
            scenario = self._pick(model)
            await pause(scenario.headers_delay_s)
            if (status := scenario.fail_status) is not None:
                if scenario.fail_body is None:
                    body = gemini_error_body(status, retry_s=scenario.retry_after)
                else:
                    body = scenario.fail_body.replace("{authorization}", given or "").encode()
                seen.status = status
                content_type = _JSON if _parse(body)[1] else "text/plain"
                return web.Response(status=status, body=body, content_type=content_type)
            plan = gemini_stream_plan(scenario, seen.body, model)
            return await self._stream(request, seen, scenario, plan)

        return await self._track(request, answer)

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        """Anthropic's `POST /v1/messages` (`_wire_anthropic`), streamed or whole.

        As Anthropic insists: the key in `x-api-key` (else 401 `authentication_error`), an
        `anthropic-version` header and an integer `max_tokens` (else 400). A scripted
        `fail_body` may hold `{authorization}`, replaced by the `x-api-key` the client sent.
        Not streamed, `error_after` answers 529 `overloaded_error`; `drop_after` and
        `stall_after` behave as on the OpenAI routes.
        """

        async def answer(request: web.Request, seen: SeenRequest) -> web.StreamResponse:
            given = request.headers.get("x-api-key", "")
            if self._api_key is not None and not secrets.compare_digest(
                given.encode(), self._api_key.encode()
            ):
                return _json(seen, 401, AUTH_FAILED_BODY)
            body = seen.body
            if (
                not isinstance(body, dict)
                or "anthropic-version" not in request.headers
                or not isinstance(body.get("max_tokens"), int)
            ):
                message = "max_tokens: Field required (and the anthropic-version header)."
                return _json(seen, 400, anthropic_error_body(400, message))
            scenario = self._pick(seen.model)
            await pause(scenario.headers_delay_s)
            if (status := scenario.fail_status) is not None:
                if scenario.fail_body is None:
                    data = anthropic_error_body(status)
                else:
                    data = scenario.fail_body.replace("{authorization}", given).encode()
                retry = scenario.retry_after
                seen.status = status
                return web.Response(
                    status=status,
                    body=data,
                    content_type=_JSON if _parse(data)[1] else "text/plain",
                    headers={"Retry-After": retry} if retry is not None else None,
                )
            model = seen.model or DEFAULT_MODEL
            if seen.stream:
                plan = anthropic_stream_plan(scenario, body, model)
                return await self._stream(request, seen, scenario, plan)
            tokens = len(scenario.content_chunks()) + len(scenario.reasoning)
            tokens += len(scenario.tool_calls)
            await pause(scenario.ttft_s + scenario.gap_s * max(tokens - 1, 0))
            if (fault := scenario.fault) is not None:
                if fault[0] == "error":
                    return _json(seen, 529, anthropic_error_body(529))
                if fault[0] == "stall":
                    await self._stopping.wait()
                if request.transport is not None:
                    request.transport.close()
                return web.Response(status=502)  # never reaches the client: the socket is closed
            return _json(seen, 200, anthropic_message_body(scenario, body, model))

        return await self._track(request, answer)

    async def _unknown(self, request: web.Request) -> web.StreamResponse:
        return await self._track(request, self._unknown_answer)

    async def _track(self, request: web.Request, answer: _Answer) -> web.StreamResponse:
        """Record the request, answer it, and note how it ended."""
        received = time.monotonic()
        body, _ = _parse(await request.read())
        seen = SeenRequest(
            method=request.method,
            path=request.path,
            headers=request_headers(request.headers.items()),
            body=body,
            model=m if isinstance(body, dict) and isinstance(m := body.get("model"), str) else None,
            stream=isinstance(body, dict) and body.get("stream") is True,
            received_at=received,
        )
        if self._record_requests:
            self._requests.append(seen)
            self._arrived.set()
            self._arrived = asyncio.Event()
        try:
            return await answer(request, seen)
        except asyncio.CancelledError:
            if not self._stopping.is_set():
                mark_client_gone(seen)
            raise
        finally:
            mark_finished(seen)

    def _denied(self, request: web.Request, seen: SeenRequest) -> web.Response | None:
        if self._api_key is None:
            return None
        given = request.headers.get("Authorization", "")
        if secrets.compare_digest(given.encode(), f"Bearer {self._api_key}".encode()):
            return None
        message = "Incorrect API key provided."  # never echo the key, as OpenAI does not
        return _json(seen, 401, error_body(message, "invalid_request_error", "invalid_api_key"))

    async def _chat_answer(self, request: web.Request, seen: SeenRequest) -> web.StreamResponse:
        return await self._completion(request, seen, legacy=False)

    async def _legacy_answer(self, request: web.Request, seen: SeenRequest) -> web.StreamResponse:
        return await self._completion(request, seen, legacy=True)

    async def _completion(
        self, request: web.Request, seen: SeenRequest, *, legacy: bool
    ) -> web.StreamResponse:
        if (denied := self._denied(request, seen)) is not None:
            return denied
        if not isinstance(seen.body, dict):
            message = "We could not parse the JSON body of your request."
            return _json(seen, 400, error_body(message, "invalid_request_error", None))
        scenario = self._pick(seen.model)
        if not legacy:
            scenario = scenario.continued(seen.body)
        await pause(scenario.headers_delay_s)
        if scenario.fail_status is not None:
            return _failure(request, seen, scenario)
        model = seen.model or DEFAULT_MODEL
        if seen.stream:
            plan = (legacy_stream_plan if legacy else chat_stream_plan)(scenario, seen.body, model)
            return await self._stream(request, seen, scenario, plan)
        return await self._whole(request, seen, scenario, legacy=legacy, model=model)

    async def _stream(
        self, request: web.Request, seen: SeenRequest, scenario: Scenario, plan: StreamPlan
    ) -> web.StreamResponse:
        """Send the headers now, then the plan on the scenario's clock."""
        response = web.StreamResponse(status=200, headers=_SSE_HEADERS)
        try:
            await response.prepare(request)
        except ConnectionResetError:
            mark_client_gone(seen)
            return response
        seen.status = 200
        await send_stream(request, response, plan, scenario, seen, self._stopping)
        return response

    async def _whole(
        self,
        request: web.Request,
        seen: SeenRequest,
        scenario: Scenario,
        *,
        legacy: bool,
        model: str,
    ) -> web.StreamResponse:
        """Answer a non-streaming request after the time the stream would have taken."""
        tokens = len(scenario.content_chunks())
        if not legacy:
            tokens += len(scenario.reasoning) + len(scenario.tool_calls)
        await pause(scenario.ttft_s + scenario.gap_s * max(tokens - 1, 0))
        fault = scenario.fault
        if fault is not None and fault[0] == "error":
            return _json(seen, 500, OVERLOADED_BODY)
        if fault is not None:
            if fault[0] == "stall":
                await self._stopping.wait()
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=502)  # never reaches the client: the socket is closed
        build = legacy_completion_body if legacy else chat_completion_body
        return _json(seen, 200, build(scenario, seen.body, model))

    async def _models_answer(self, request: web.Request, seen: SeenRequest) -> web.StreamResponse:
        if (denied := self._denied(request, seen)) is not None:
            return denied
        ids = dict.fromkeys((*_LISTED_MODELS, *self._scripts))
        data = [{"id": i, "object": "model", "created": 0, "owned_by": "estuary"} for i in ids]
        return _json(seen, 200, orjson.dumps({"object": "list", "data": data}))

    async def _unknown_answer(self, request: web.Request, seen: SeenRequest) -> web.StreamResponse:
        message = f"Unknown request URL: {request.method} {request.path}."
        return _json(seen, 404, error_body(message, "invalid_request_error", "unknown_url"))


def _json(seen: SeenRequest, status: int, body: bytes) -> web.Response:
    seen.status = status
    return web.Response(status=status, body=body, content_type=_JSON)


def _failure(request: web.Request, seen: SeenRequest, scenario: Scenario) -> web.Response:
    """The scripted `fail_status` answer, before any stream byte."""
    status = scenario.fail_status or 500
    headers = {"Retry-After": scenario.retry_after} if scenario.retry_after is not None else None
    if scenario.fail_body is None:
        body, content_type = fail_body(status), _JSON
    else:
        # The placeholder lets a test check that the gateway never relays an echoed key.
        text = scenario.fail_body.replace(
            "{authorization}", request.headers.get("Authorization", "")
        )
        body = text.encode()
        _, is_json = _parse(body)
        content_type = _JSON if is_json else "text/plain"
    seen.status = status
    return web.Response(status=status, body=body, content_type=content_type, headers=headers)
