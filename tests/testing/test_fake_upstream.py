"""The scripted fake upstream, driven over real loopback sockets with aiohttp's client."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

import estuary.testing
from estuary.testing import FakeToolCall, FakeUpstream, Scenario, fake_usage

CHAT = "/chat/completions"
LEGACY = "/completions"
MESSAGES = [{"role": "user", "content": "hi there"}]  # 8 characters -> 8 // 4 + 1 = 3
WAIT_S = 3.0  # generous bound for events; nothing here asserts a maximum duration


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        yield fake


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        yield client


def sse_data(raw: bytes) -> list[str]:
    """The `data` of every complete SSE message in a body (LF line breaks, as OpenAI sends)."""
    text = raw.decode("utf-8")
    blocks = text.split("\n\n")
    complete = blocks[:-1]  # whatever follows the last blank line is an unfinished message
    return [
        "\n".join(line.removeprefix("data:").removeprefix(" ") for line in block.split("\n"))
        for block in complete
        if block
    ]


def json_chunks(raw: bytes) -> list[dict[str, Any]]:
    """The JSON chunks of a stream, without the `[DONE]` sentinel."""
    return [orjson.loads(data) for data in sse_data(raw) if data != "[DONE]"]


def deltas(raw: bytes) -> list[dict[str, Any]]:
    """The `delta` of every chat chunk that has a choice."""
    return [c["choices"][0]["delta"] for c in json_chunks(raw) if c.get("choices")]


def content_of(raw: bytes) -> list[str]:
    """The content pieces of a chat stream, in order."""
    return [d["content"] for d in deltas(raw) if d.get("content")]


def chat_body(**extra: Any) -> dict[str, Any]:
    """A streaming chat request body."""
    return {"model": "gpt-test", "messages": MESSAGES, "stream": True, **extra}


async def post(
    session: aiohttp.ClientSession, upstream: FakeUpstream, body: Any, path: str = CHAT
) -> tuple[int, bytes]:
    """POST a JSON body and read the whole answer."""
    async with session.post(upstream.base_url + path, json=body) as response:
        return response.status, await response.read()


async def read_until_error(response: aiohttp.ClientResponse) -> tuple[bytes, Exception | None]:
    """Read a body chunk by chunk, keeping what arrived before a transport error."""
    received = bytearray()
    try:
        async for piece in response.content.iter_any():
            received += piece
    except aiohttp.ClientError as exc:
        return bytes(received), exc
    return bytes(received), None


async def test_default_stream_is_role_content_finish_then_done(
    upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    """A default stream sends the role chunk, 8 mixed-script content chunks, stop and [DONE]."""
    async with session.post(upstream.base_url + CHAT, json=chat_body()) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        raw = await response.read()
    chunks = json_chunks(raw)
    assert sse_data(raw)[-1] == "[DONE]"
    assert raw.endswith(b"data: [DONE]\n\n")
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "gpt-test" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["id"].startswith("chatcmpl-")
    assert content_of(raw) == list(Scenario().content_chunks())
    assert "".join(content_of(raw)) == Scenario().expected_text()
    assert any(len(ch.encode()) > len(ch) for ch in Scenario().expected_text())
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    (seen,) = await upstream.wait_for_requests(1)
    assert (seen.status, seen.chunks_sent, seen.model, seen.stream) == (200, 8, "gpt-test", True)


@pytest.mark.parametrize(
    ("usage", "include_usage", "expected"),
    [
        (None, None, False),
        (None, False, False),
        (None, True, True),
        (True, None, True),
        (False, True, False),
    ],
)
async def test_usage_chunk_follows_include_usage_unless_overridden(
    session: aiohttp.ClientSession, usage: bool | None, include_usage: bool | None, expected: bool
) -> None:
    """The usage chunk is sent iff include_usage is true, unless `usage` forces it on or off."""
    scenario = Scenario(tokens=5, usage=usage)
    body = chat_body()
    if include_usage is not None:
        body["stream_options"] = {"include_usage": include_usage}
    async with FakeUpstream(scenario) as upstream:
        _, raw = await post(session, upstream, body)
    usage_chunks = [c for c in json_chunks(raw) if "usage" in c]
    assert bool(usage_chunks) is expected
    if expected:
        (chunk,) = usage_chunks
        assert chunk["choices"] == []
        assert chunk["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
        assert fake_usage(body, scenario) == (3, 5)
        assert sse_data(raw)[-2:] == [orjson.dumps(chunk).decode(), "[DONE]"]


async def test_reasoning_chunks_come_before_content(session: aiohttp.ClientSession) -> None:
    """Reasoning deltas stream first, then content, and both count as completion tokens."""
    scenario = Scenario(reasoning=("Let me", " think", "。"), text=("Answer", "!"), usage=True)
    async with FakeUpstream(scenario) as upstream:
        _, raw = await post(session, upstream, chat_body())
    kinds = [next(iter(d)) for d in deltas(raw)[1:] if d]
    assert kinds == ["reasoning_content"] * 3 + ["content"] * 2
    assert "".join(d.get("reasoning_content", "") for d in deltas(raw)) == "Let me think。"
    assert json_chunks(raw)[-1]["usage"]["completion_tokens"] == 5


async def test_tool_call_fragments_reassemble_to_the_arguments(
    session: aiohttp.ClientSession,
) -> None:
    """Each tool call opens with id and name, then >= 3 argument fragments rebuild its JSON."""
    calls = (
        FakeToolCall(id="call_1", name="get_weather", arguments='{"city":"杭州","unit":"c"}'),
        FakeToolCall(id="call_2", name="noop", arguments="{}"),
    )
    scenario = Scenario(text=(), tool_calls=calls, usage=True)
    async with FakeUpstream(scenario) as upstream:
        _, raw = await post(session, upstream, chat_body())
    fragments = [d["tool_calls"][0] for d in deltas(raw) if "tool_calls" in d]
    for index, call in enumerate(calls):
        mine = [f for f in fragments if f["index"] == index]
        assert mine[0] == {
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        assert len(mine) >= 4  # the opening plus at least three argument fragments
        assert "".join(f["function"]["arguments"] for f in mine) == call.arguments
    chunks = json_chunks(raw)
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize(
    ("status", "retry_after", "code"),
    [(500, None, None), (429, "7", "rate_limit_exceeded"), (401, None, "invalid_api_key")],
)
async def test_fail_status_answers_before_any_stream_byte(
    session: aiohttp.ClientSession, status: int, retry_after: str | None, code: str | None
) -> None:
    """A scripted failure is a plain JSON error with its status and Retry-After, not a stream."""
    scenario = Scenario(fail_status=status, retry_after=retry_after)
    async with FakeUpstream(scenario) as upstream:
        async with session.post(upstream.base_url + CHAT, json=chat_body()) as response:
            assert response.status == status
            assert response.content_type == "application/json"
            assert response.headers.get("Retry-After") == retry_after
            error = (await response.json())["error"]
        (seen,) = upstream.requests
    assert error["code"] == code
    assert error["message"]
    assert (seen.status, seen.chunks_sent, seen.first_chunk_at) == (status, 0, None)


async def test_fail_body_placeholder_echoes_the_authorization_header(
    session: aiohttp.ClientSession,
) -> None:
    """`{authorization}` in fail_body becomes the Authorization header the fake received."""
    scenario = Scenario(
        fail_status=400, fail_body='{"error":{"message":"bad key {authorization}"}}'
    )
    async with FakeUpstream(scenario) as upstream:
        headers = {"Authorization": "Bearer sk-upstream-secret"}
        async with session.post(upstream.base_url + CHAT, json=chat_body(), headers=headers) as r:
            assert r.status == 400
            body = await r.json()
    assert body["error"]["message"] == "bad key Bearer sk-upstream-secret"


async def test_api_key_is_enforced_without_echoing_it(session: aiohttp.ClientSession) -> None:
    """A wrong key gets 401 that does not contain it and does not use up a queued scenario."""
    async with FakeUpstream(api_key="sk-right") as upstream:
        upstream.enqueue(Scenario(text=("queued",)))
        wrong = {"Authorization": "Bearer sk-wrong"}
        async with session.post(upstream.base_url + CHAT, json=chat_body(), headers=wrong) as r:
            assert r.status == 401
            denied = await r.read()
        right = {"Authorization": "Bearer sk-right"}
        async with session.post(upstream.base_url + CHAT, json=chat_body(), headers=right) as r:
            assert r.status == 200
            raw = await r.read()
        async with session.get(upstream.base_url + "/models") as r:
            assert r.status == 401
    assert b"sk-wrong" not in denied
    assert orjson.loads(denied)["error"]["code"] == "invalid_api_key"
    assert content_of(raw) == ["queued"]
    assert upstream.requests[0].headers["Authorization"] == "Bearer sk-wrong"
    assert upstream.requests[0].headers["authorization"] == "Bearer sk-wrong"


async def test_drop_after_closes_mid_body_without_done(session: aiohttp.ClientSession) -> None:
    """drop_after=N sends N content chunks, then the connection ends mid-body with no [DONE]."""
    async with FakeUpstream(Scenario(drop_after=3, tokens=6)) as upstream:
        async with session.post(upstream.base_url + CHAT, json=chat_body()) as response:
            assert response.status == 200
            received, error = await read_until_error(response)
        (seen,) = await upstream.wait_for_requests(1)
        await asyncio.wait_for(seen.finished.wait(), WAIT_S)
    assert isinstance(error, aiohttp.ClientPayloadError)
    assert b"[DONE]" not in received
    assert b'finish_reason":"stop' not in received
    assert content_of(received) == list(Scenario(tokens=3).content_chunks())
    assert seen.chunks_sent == 3
    assert seen.finished_at is not None
    assert not seen.client_gone.is_set()


async def test_stall_after_records_the_client_leaving(session: aiohttp.ClientSession) -> None:
    """A stalled stream stays open until the client closes it; then client_gone is set."""
    async with FakeUpstream(Scenario(stall_after=2)) as upstream:
        async with session.post(upstream.base_url + CHAT, json=chat_body()) as response:
            received = b""
            while len(content_of(received)) < 2:
                received += await asyncio.wait_for(response.content.readany(), WAIT_S)
            (seen,) = upstream.requests
            assert not seen.client_gone.is_set()
            response.close()
        await asyncio.wait_for(seen.client_gone.wait(), WAIT_S)
        await asyncio.wait_for(seen.finished.wait(), WAIT_S)
    assert seen.chunks_sent == 2
    assert seen.client_gone_at is not None
    assert seen.finished_at is not None
    assert seen.client_gone_at >= (seen.first_chunk_at or 0.0)


@pytest.mark.parametrize(
    "scenario", [Scenario(stall_after=1), Scenario(tokens=3, gap_s=30)], ids=["stall", "slow"]
)
async def test_stop_ends_running_streams_without_blaming_the_client(
    session: aiohttp.ClientSession, scenario: Scenario
) -> None:
    """stop() cuts a stalled or slow stream promptly and does not record the client leaving."""
    upstream = FakeUpstream(scenario)
    await upstream.start()
    async with session.post(upstream.base_url + CHAT, json=chat_body()) as response:
        await asyncio.wait_for(response.content.readany(), WAIT_S)
        await asyncio.wait_for(upstream.stop(), WAIT_S)
        _, error = await read_until_error(response)
    (seen,) = upstream.requests
    assert isinstance(error, aiohttp.ClientPayloadError)
    assert seen.finished.is_set()
    assert not seen.client_gone.is_set()


async def test_error_after_sends_in_band_error_and_ends(session: aiohttp.ClientSession) -> None:
    """error_after=N sends N chunks, an OpenAI error message, and a clean end with no [DONE]."""
    async with FakeUpstream(Scenario(error_after=2)) as upstream:
        status, raw = await post(session, upstream, chat_body())
    data = sse_data(raw)
    assert status == 200
    assert "[DONE]" not in data
    assert orjson.loads(data[-1]) == {
        "error": {
            "message": "The model is overloaded. Please retry later.",
            "type": "server_error",
            "code": "overloaded",
        }
    }
    assert content_of(raw) == list(Scenario(tokens=2).content_chunks())


async def collect_reads(
    session: aiohttp.ClientSession, upstream: FakeUpstream
) -> tuple[bytes, list[bytes]]:
    """Stream a chat request and keep every read as it arrived."""
    reads: list[bytes] = []
    async with session.post(upstream.base_url + CHAT, json=chat_body()) as response:
        async for piece in response.content.iter_any():
            reads.append(piece)
    return b"".join(reads), reads


def cuts_a_character(piece: bytes) -> bool:
    """Whether a read starts or ends inside a multi-byte UTF-8 character."""
    try:
        piece.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


async def test_split_utf8_cuts_characters_but_parses_the_same(
    session: aiohttp.ClientSession,
) -> None:
    """With split_utf8 some reads end inside a character; the parsed content is unchanged."""
    async with FakeUpstream(Scenario(split_utf8=True)) as upstream:
        raw, reads = await collect_reads(session, upstream)
    assert any(cuts_a_character(piece) for piece in reads)
    assert content_of(raw) == list(Scenario().content_chunks())
    assert sse_data(raw)[-1] == "[DONE]"


async def test_chunk_bytes_fragments_the_body_but_parses_the_same(
    session: aiohttp.ClientSession,
) -> None:
    """With chunk_bytes the body arrives in more reads than messages; the content is unchanged."""
    async with FakeUpstream(Scenario(tokens=3, chunk_bytes=40)) as upstream:
        raw, reads = await collect_reads(session, upstream)
    assert len(reads) > len(sse_data(raw))
    assert content_of(raw) == list(Scenario(tokens=3).content_chunks())
    assert sse_data(raw)[-1] == "[DONE]"


async def test_enqueued_scenarios_are_used_in_order_then_the_default(
    session: aiohttp.ClientSession,
) -> None:
    """enqueue() scripts the next requests in order; afterwards the default applies."""
    async with FakeUpstream(Scenario(text=("default",))) as upstream:
        upstream.enqueue(Scenario(text=("first",)), Scenario(fail_status=503))
        results = [await post(session, upstream, chat_body()) for _ in range(3)]
    assert content_of(results[0][1]) == ["first"]
    assert results[1][0] == 503
    assert content_of(results[2][1]) == ["default"]


async def test_scripted_model_takes_priority_over_the_queue(
    session: aiohttp.ClientSession,
) -> None:
    """A model scripted with script() always gets its scenario and leaves the queue alone."""
    async with FakeUpstream() as upstream:
        upstream.script("slow-model", Scenario(text=("scripted",)))
        upstream.enqueue(Scenario(text=("queued",)))
        _, first = await post(session, upstream, chat_body(model="slow-model"))
        _, second = await post(session, upstream, chat_body(model="slow-model"))
        _, third = await post(session, upstream, chat_body(model="other"))
    assert content_of(first) == content_of(second) == ["scripted"]
    assert content_of(third) == ["queued"]


async def test_legacy_completions_stream(session: aiohttp.ClientSession) -> None:
    """/v1/completions streams text_completion chunks, a finish chunk, usage and [DONE]."""
    scenario = Scenario(text=("Once", " upon", " 一次"))
    body = {"model": "davinci", "prompt": "Tell me a story", "stream": True}
    body["stream_options"] = {"include_usage": True}
    async with FakeUpstream(scenario) as upstream:
        status, raw = await post(session, upstream, body, LEGACY)
    chunks = json_chunks(raw)
    assert status == 200
    assert sse_data(raw)[-1] == "[DONE]"
    assert all(c["object"] == "text_completion" and c["id"].startswith("cmpl-") for c in chunks)
    texts = [c["choices"][0]["text"] for c in chunks if c["choices"]]
    assert texts == ["Once", " upon", " 一次", ""]
    assert chunks[0]["choices"][0] == {
        "index": 0,
        "text": "Once",
        "finish_reason": None,
        "logprobs": None,
    }
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    assert fake_usage(body, scenario) == (4, 3)


async def test_legacy_completions_whole(session: aiohttp.ClientSession) -> None:
    """A non-streaming /v1/completions request gets one text_completion object with usage."""
    async with FakeUpstream(Scenario(text=("a", "b"))) as upstream:
        status, raw = await post(session, upstream, {"model": "m", "prompt": ["1234", "5"]}, LEGACY)
    body = orjson.loads(raw)
    assert status == 200
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "ab"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}


async def test_chat_whole_response_carries_the_full_message(
    session: aiohttp.ClientSession,
) -> None:
    """A non-streaming chat request gets content, reasoning, tool calls, finish and usage."""
    call = FakeToolCall(id="call_9", name="lookup", arguments='{"q":"流"}')
    scenario = Scenario(text=("Hi", "!"), reasoning=("hm",), tool_calls=(call,))
    request = {
        "model": "gpt-test",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "12345"}]}],
    }
    async with FakeUpstream(scenario) as upstream:
        status, raw = await post(session, upstream, request)
    body = orjson.loads(raw)
    assert status == 200
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": "Hi!",
        "reasoning_content": "hm",
        "tool_calls": [
            {
                "id": "call_9",
                "type": "function",
                "function": {"name": "lookup", "arguments": '{"q":"流"}'},
            }
        ],
    }
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}


async def test_malformed_json_gets_400_and_uses_no_scenario(
    upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    """A body that is not a JSON object gets an OpenAI 400 error; the queue is untouched."""
    upstream.enqueue(Scenario(text=("kept",)))
    async with session.post(upstream.base_url + CHAT, data=b"{not json") as response:
        assert response.status == 400
        assert (await response.json())["error"]["type"] == "invalid_request_error"
    _, raw = await post(session, upstream, chat_body())
    assert content_of(raw) == ["kept"]
    assert upstream.requests[0].body is None
    assert upstream.requests[0].status == 400


async def test_models_lists_openai_shaped_ids(
    upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    """GET /v1/models answers OpenAI's list shape, including scripted models."""
    upstream.script("custom", Scenario())
    async with session.get(upstream.base_url + "/models") as response:
        body = await response.json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert estuary.testing.DEFAULT_MODEL in ids
    assert "custom" in ids
    assert all(m["object"] == "model" for m in body["data"])


async def test_wait_for_requests_returns_concurrent_requests(
    upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    """wait_for_requests() returns once that many requests arrived, and times out otherwise."""
    upstream.enqueue(Scenario(ttft_s=0.05), Scenario(ttft_s=0.05))
    async with asyncio.TaskGroup() as group:
        for _ in range(2):
            group.create_task(post(session, upstream, chat_body()))
        seen = await upstream.wait_for_requests(2)
    assert len(seen) == 2
    assert all(s.path == "/v1/chat/completions" for s in seen)
    with pytest.raises(TimeoutError, match="2 of 3"):
        await upstream.wait_for_requests(3, timeout=0.05)


async def test_ttft_delays_the_first_chunk(
    upstream: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    """ttft_s holds the first token back at least that long after the request arrived."""
    upstream.enqueue(Scenario(ttft_s=0.05, tokens=2, gap_s=0.01))
    await post(session, upstream, chat_body())
    (seen,) = upstream.requests
    assert seen.first_chunk_at is not None
    assert seen.finished_at is not None
    assert seen.first_chunk_at - seen.received_at >= 0.05
    assert seen.finished_at - seen.first_chunk_at >= 0.01


def test_usage_counts_characters_of_all_text() -> None:
    """prompt_tokens is characters // 4 + 1 over all messages; completion counts every chunk."""
    body = {
        "messages": [
            {"role": "system", "content": "12345678"},
            {"role": "user", "content": [{"type": "text", "text": "1234"}, {"type": "image_url"}]},
        ]
    }
    call = FakeToolCall(id="c", name="f", arguments="{}")
    scenario = Scenario(tokens=3, reasoning=("r",), tool_calls=(call,))
    assert scenario.usage_for(body) == (4, 5)
    assert fake_usage({"prompt": "abc"}, scenario) == (1, 3)


def test_scenario_rejects_two_faults() -> None:
    """Only one of drop_after, stall_after and error_after may be set."""
    with pytest.raises(ValueError, match="at most one"):
        Scenario(drop_after=1, error_after=2)


def test_public_surface_is_pinned() -> None:
    """estuary.testing exports exactly the agreed names."""
    assert sorted(estuary.testing.__all__) == [
        "DEFAULT_MODEL",
        "FakeToolCall",
        "FakeUpstream",
        "Scenario",
        "SeenRequest",
        "fake_usage",
        "run_fake_upstream",
    ]


async def test_run_fake_upstream_serves_until_sigterm(session: aiohttp.ClientSession) -> None:
    """The blocking CLI entry point prints its URL, serves, and exits cleanly on SIGTERM."""
    code = (
        "from estuary.testing import Scenario, run_fake_upstream;"
        "run_fake_upstream('127.0.0.1', 0, Scenario(text=('cli',)))"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 10)).decode()
        prefix = "fake upstream listening on "
        assert line.startswith(prefix + "http://127.0.0.1:")
        base_url = line.removeprefix(prefix).strip()
        async with session.post(base_url + CHAT, json=chat_body()) as response:
            assert content_of(await response.read()) == ["cli"]
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_control_endpoints_list_and_clear_records() -> None:
    """With `control=True`, another process can read the records over HTTP and clear them."""
    async with FakeUpstream(Scenario(tokens=2), control=True) as fake:
        base = f"http://127.0.0.1:{fake.port}"
        async with aiohttp.ClientSession() as http:
            body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
            async with http.post(f"{base}/v1/chat/completions", json={**body, "user": "u-1"}) as r:
                await r.read()
            async with http.get(f"{base}/_fake/requests") as r:
                (record,) = await r.json()
            assert (record["user"], record["chunks_sent"], record["status"]) == ("u-1", 2, 200)
            assert record["client_gone_at"] is None
            async with http.delete(f"{base}/_fake/requests") as r:
                assert r.status == 204
            async with http.get(f"{base}/_fake/requests") as r:
                assert await r.json() == []
