"""Bad input: every kind gets a 4xx in OpenAI's error shape before anything streams."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from estuary.testing import FakeUpstream, Scenario
from tests.support import AUTH, OTHER_KEY, RunningGateway

OK_MESSAGES = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    status: int
    code: str
    json: Any = None
    data: bytes | None = None
    headers: dict[str, str] = field(default_factory=lambda: dict(AUTH))
    params: dict[str, str] | None = None


CASES = {
    "malformed JSON": Case("POST", "/v1/chat/completions", 400, "invalid_request", data=b"{oops"),
    "body not an object": Case("POST", "/v1/chat/completions", 400, "invalid_request", json=[1]),
    "empty body": Case("POST", "/v1/chat/completions", 400, "invalid_request", data=b""),
    "empty messages": Case(
        "POST", "/v1/chat/completions", 400, "invalid_request", json={"messages": []}
    ),
    "messages not a list": Case(
        "POST", "/v1/chat/completions", 400, "invalid_request", json={"messages": "hi"}
    ),
    "unknown role": Case(
        "POST",
        "/v1/chat/completions",
        400,
        "invalid_request",
        json={"messages": [{"role": "wizard", "content": "hi"}]},
    ),
    "content a number": Case(
        "POST",
        "/v1/chat/completions",
        400,
        "invalid_request",
        json={"messages": [{"role": "user", "content": 42}]},
    ),
    "max_tokens zero": Case(
        "POST",
        "/v1/chat/completions",
        400,
        "invalid_request",
        json={"messages": OK_MESSAGES, "max_tokens": 0},
    ),
    "temperature 3": Case(
        "POST",
        "/v1/chat/completions",
        400,
        "invalid_request",
        json={"messages": OK_MESSAGES, "temperature": 3},
    ),
    "stream not a boolean": Case(
        "POST",
        "/v1/chat/completions",
        400,
        "invalid_request",
        json={"messages": OK_MESSAGES, "stream": "yes"},
    ),
    "n above 1": Case(
        "POST",
        "/v1/chat/completions",
        400,
        "invalid_request",
        json={"messages": OK_MESSAGES, "n": 2},
    ),
    "tool without a name": Case(
        "POST",
        "/v1/chat/completions",
        400,
        "invalid_request",
        json={"messages": OK_MESSAGES, "tools": [{"type": "function", "function": {}}]},
    ),
    "legacy prompt not a string": Case(
        "POST", "/v1/completions", 400, "invalid_request", json={"prompt": {"a": 1}}
    ),
    "app message empty": Case(
        "POST", "/api/chat/stream", 400, "invalid_request", json={"message": "  "}
    ),
    "GET without message": Case("GET", "/api/chat/stream", 400, "invalid_request", params={}),
    "GET unknown parameter": Case(
        "GET", "/api/chat/stream", 400, "invalid_request", params={"message": "hi", "x": "1"}
    ),
    "bad format": Case(
        "POST",
        "/api/chat/stream",
        400,
        "invalid_request",
        json={"message": "hi"},
        params={"format": "xml"},
    ),
    "missing key": Case(
        "POST",
        "/v1/chat/completions",
        401,
        "invalid_api_key",
        json={"messages": OK_MESSAGES},
        headers={},
    ),
    "wrong key": Case(
        "POST",
        "/v1/chat/completions",
        401,
        "invalid_api_key",
        json={"messages": OK_MESSAGES},
        headers={"Authorization": "Bearer sk-est-not-a-key"},
    ),
    "not a bearer": Case(
        "POST",
        "/v1/chat/completions",
        401,
        "invalid_api_key",
        json={"messages": OK_MESSAGES},
        headers={"Authorization": "Basic dXNlcjpwYXNz"},
    ),
    "key in the URL": Case(
        "GET", "/api/chat/stream", 401, "invalid_api_key", params={"message": "hi", "key": "x"}
    ),
    "unknown ticket": Case(
        "GET", "/api/chat/stream", 401, "invalid_api_key", params={"message": "hi", "ticket": "t"}
    ),
    "unknown model": Case(
        "POST",
        "/v1/chat/completions",
        404,
        "model_not_found",
        json={"model": "gpt-9", "messages": OK_MESSAGES},
    ),
    "unknown path": Case("GET", "/v1/nothing", 404, "not_found"),
    "cancel of an unknown stream": Case("POST", "/api/chat/req_nope/cancel", 404, "not_found"),
    "GET on a POST endpoint": Case("GET", "/v1/chat/completions", 405, "method_not_allowed"),
    "body over the limit": Case(
        "POST",
        "/v1/chat/completions",
        413,
        "request_too_large",
        json={"messages": [{"role": "user", "content": "x" * 70_000}]},
    ),
    "text/plain body": Case(
        "POST",
        "/v1/chat/completions",
        415,
        "unsupported_media_type",
        data=b"hello",
        headers={**AUTH, "Content-Type": "text/plain"},
    ),
}


@pytest.fixture
def small_gateway(make_gateway: Any) -> RunningGateway:
    """A gateway with a 64 KiB body limit."""
    gateway: RunningGateway = make_gateway(server="max_body_bytes = 65536")
    return gateway


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_bad_input_gets_a_4xx_in_openai_error_shape(
    small_gateway: RunningGateway,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    case: Case,
) -> None:
    """The status and code are the documented ones; the body is OpenAI's error object."""
    headers = dict(case.headers)
    if case.data is not None and "Content-Type" not in headers:
        headers["Content-Type"] = "application/json"
    async with http.request(
        case.method,
        small_gateway.url + case.path,
        json=case.json,
        data=case.data,
        headers=headers,
        params=case.params,
    ) as response:
        body = await response.json()
        assert response.status == case.status, body
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "code"}
    assert body["error"]["code"] == case.code
    assert body["error"]["message"]
    assert upstream.requests == []  # nothing reached the upstream
    assert small_gateway.memory_rows == {}


async def test_another_keys_stream_cannot_be_canceled(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """Only the key that started a stream may cancel it; to others it does not exist."""
    upstream.enqueue(Scenario(tokens=50, gap_s=0.05))
    async with http.post(
        f"{gateway.url}/api/chat/stream", json={"message": "hi"}, headers=AUTH
    ) as response:
        request_id = response.headers["X-Request-Id"]
        await response.content.readline()
        other = {"Authorization": f"Bearer {OTHER_KEY}"}
        async with http.post(
            f"{gateway.url}/api/chat/{request_id}/cancel", headers=other
        ) as answer:
            assert answer.status == 404
            assert (await answer.json())["error"]["code"] == "not_found"
        response.close()
