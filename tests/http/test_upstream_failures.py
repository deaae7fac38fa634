"""Upstream failures: real HTTP errors before the first token, fallback, in-band errors after."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import pytest

from estuary.testing import FakeUpstream, Scenario
from tests.support import AUTH, RunningGateway, read_app_stream


def chat(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}]}


@pytest.mark.parametrize(
    ("scenario", "status", "code"),
    [
        (Scenario(fail_status=500), 502, "upstream_error"),
        (Scenario(fail_status=503), 502, "upstream_error"),
        (Scenario(fail_status=401), 502, "upstream_auth_failed"),
        (Scenario(fail_status=403), 502, "upstream_auth_failed"),
        (Scenario(fail_status=429, retry_after="3"), 429, "upstream_rate_limited"),
        (Scenario(fail_status=400), 400, "upstream_rejected"),
        (Scenario(tokens=3, error_after=0), 502, "upstream_error"),
    ],
)
async def test_failure_before_first_token_keeps_a_real_status(
    gateway: RunningGateway,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    scenario: Scenario,
    status: int,
    code: str,
) -> None:
    """Headers are held until the upstream answered, so its failure becomes an HTTP error."""
    upstream.enqueue(scenario)
    async with http.post(
        f"{gateway.url}/api/chat/stream", json=chat("chat"), headers=AUTH
    ) as response:
        body = await response.json()
        assert response.status == status
        assert body["error"]["code"] == code
        assert set(body["error"]) == {"message", "type", "code"}
        if status == 429:
            assert response.headers["Retry-After"] == "3"
        request_id = response.headers["X-Request-Id"]
    row = await gateway.row(request_id)
    assert row.status == "error"
    assert row.settled is not None
    assert row.settled.error_code == code


async def test_stall_before_first_token_is_a_504(
    make_gateway: Callable[..., RunningGateway],
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    """No first token within the first-token timeout on any target: 504 upstream_timeout."""
    gateway = make_gateway(header_hold_s=5.0)
    upstream.script("primary-model", Scenario(ttft_s=5))
    upstream.script("backup-model", Scenario(ttft_s=5))
    async with http.post(
        f"{gateway.url}/api/chat/stream", json=chat("fallback-chat"), headers=AUTH
    ) as response:
        assert response.status == 504
        assert (await response.json())["error"]["code"] == "upstream_timeout"


async def test_stall_past_the_header_hold_ends_with_an_in_band_timeout(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """Past the header hold the response is committed; the timeout is then the one `error` event."""
    upstream.script("primary-model", Scenario(ttft_s=5))
    upstream.script("backup-model", Scenario(ttft_s=5))
    async with http.post(
        f"{gateway.url}/api/chat/stream", json=chat("fallback-chat"), headers=AUTH
    ) as response:
        got = await read_app_stream(response)
    assert got.status == 200
    assert [e["type"] for e in got.events] == ["start", "error"]
    assert got.events[0]["provider"] is None  # no upstream ever answered
    assert got.events[1]["error"]["code"] == "upstream_timeout"


@pytest.mark.parametrize(
    "primary", [Scenario(fail_status=500), Scenario(fail_status=429), Scenario(ttft_s=3)]
)
async def test_fallback_before_first_token_gives_one_clean_stream(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession, primary: Scenario
) -> None:
    """The primary fails (5xx, 429, stall) → the secondary answers; the client sees one stream."""
    upstream.script("primary-model", primary)
    backup = Scenario(tokens=4)
    upstream.script("backup-model", backup)
    async with http.post(
        f"{gateway.url}/api/chat/stream", json=chat("fallback-chat"), headers=AUTH
    ) as response:
        got = await read_app_stream(response)
    assert got.status == 200
    assert got.events[0]["provider"] == "spare"
    assert [e["type"] for e in got.events] == ["start"] + ["content"] * 4 + ["done"]
    text = "".join(e["content"] for e in got.events if e["type"] == "content")
    assert text == backup.expected_text()
    row = await gateway.row(got.headers["X-Request-Id"])
    assert row.settled is not None
    assert (row.settled.provider, row.settled.attempts) == ("spare", 2)


async def test_connection_refused_falls_back(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """A target with nothing listening is skipped for the next one."""
    upstream.enqueue(Scenario(tokens=2))
    async with http.post(
        f"{gateway.url}/api/chat/stream", json=chat("dead-first"), headers=AUTH
    ) as response:
        got = await read_app_stream(response)
    assert got.events[0]["provider"] == "fake"
    assert got.events[-1]["type"] == "done"


async def test_failure_after_first_token_is_one_in_band_error_and_no_switch(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """Once text reached the client, a failure is an `error` event — no fallback, no `done`."""
    upstream.script("primary-model", Scenario(tokens=10, drop_after=5))
    upstream.script("backup-model", Scenario(tokens=4))
    async with http.post(
        f"{gateway.url}/api/chat/stream", json=chat("fallback-chat"), headers=AUTH
    ) as response:
        got = await read_app_stream(response)
    kinds = [e["type"] for e in got.events]
    assert kinds == ["start"] + ["content"] * 5 + ["error"]
    error = got.events[-1]["error"]
    assert error["retryable"] is True
    assert error["code"] in {"upstream_error", "upstream_protocol_error"}
    assert [r.model for r in upstream.requests] == ["primary-model"]
    row = await gateway.row(got.headers["X-Request-Id"])
    assert (row.status, row.settled and row.settled.token_source) == ("error", "partial")


async def test_upstream_silent_mid_stream_times_out_in_band(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """An upstream that stops sending after two tokens is cut after the idle timeout (2 s)."""
    upstream.enqueue(Scenario(tokens=6, stall_after=2))
    async with http.post(
        f"{gateway.url}/api/chat/stream", json=chat("chat"), headers=AUTH
    ) as response:
        got = await read_app_stream(response)
    assert [e["type"] for e in got.events] == ["start", "content", "content", "error"]
    assert got.events[-1]["error"]["code"] == "upstream_timeout"
    assert got.comments >= 1  # heartbeats went on while the upstream was silent
    (seen,) = upstream.requests
    await asyncio.wait_for(seen.client_gone.wait(), timeout=5)  # and the upstream was closed


async def test_the_breaker_stops_calling_a_dead_target_and_recovers_when_it_returns(
    make_gateway: Callable[..., RunningGateway],
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    """After 2 failures the primary is skipped; after the cooldown one probe finds it back."""
    gateway = make_gateway(extra="[routing]\nbreaker_failures = 2\nbreaker_cooldown_s = 0.5\n")
    upstream.script("primary-model", Scenario(fail_status=503))
    upstream.script("backup-model", Scenario(tokens=2))

    async def ask() -> tuple[str, str]:
        async with http.post(
            f"{gateway.url}/api/chat/stream", json=chat("fallback-chat"), headers=AUTH
        ) as response:
            got = await read_app_stream(response)
        assert got.events[-1]["type"] == "done"
        return got.events[0]["provider"], got.headers["X-Request-Id"]

    def primary_calls() -> int:
        return sum(r.body.get("model") == "primary-model" for r in upstream.requests)

    for _ in range(2):
        assert (await ask())[0] == "spare"
    assert primary_calls() == 2
    provider, request_id = await ask()
    assert provider == "spare"
    assert primary_calls() == 2  # open: the dead target was not called
    row = await gateway.row(request_id)
    assert row.settled is not None
    assert (row.settled.attempts, row.settled.failures) == (1, ())
    upstream.script("primary-model", Scenario(tokens=3))  # it came back
    await asyncio.sleep(0.6)
    assert (await ask())[0] == "fake"  # the probe
    assert (await ask())[0] == "fake"  # closed again
    assert primary_calls() == 4


async def test_each_failed_attempt_is_in_the_ledger_row(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script("primary-model", Scenario(fail_status=429, retry_after="1"))
    async with http.post(
        f"{gateway.url}/api/chat/stream", json=chat("fallback-chat"), headers=AUTH
    ) as response:
        got = await read_app_stream(response)
    row = await gateway.row(got.headers["X-Request-Id"])
    assert row.settled is not None
    assert row.settled.failures == ("fake/primary-model: upstream_rate_limited",)
    assert (row.settled.provider, row.settled.attempts) == ("spare", 2)
