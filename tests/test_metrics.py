"""`GET /metrics`: Prometheus metrics after real traffic through a real gateway."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from estuary.gateway.metrics import GatewayMetrics
from estuary.testing import FakeUpstream, Scenario
from tests.support import ADMIN, AUTH, RunningGateway, read_app_stream

EXTRA = """
[routing]
breaker_failures = 1
breaker_cooldown_s = 60

[prices."fake/fake-model"]
input_per_mtok = 1000.0
output_per_mtok = 2000.0

[prices."spare/backup-model"]
input_per_mtok = 1000.0
output_per_mtok = 2000.0
"""
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}]}


async def scrape(http: aiohttp.ClientSession, gateway: RunningGateway) -> Samples:
    """Every sample of `/metrics`, by name and labels."""
    async with http.get(f"{gateway.url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample `name` with exactly `labels`; 0 if there is none."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_a_scrape_after_traffic_shows_every_metric(
    make_gateway: Callable[..., RunningGateway],
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    """A completed stream, a fallback and a rate-limited request all show up in the metrics."""
    gateway = make_gateway(extra=EXTRA)
    # A stream held open while the metrics are scraped.
    upstream.enqueue(Scenario(tokens=40, gap_s=0.05))
    async with http.post(
        f"{gateway.url}/api/chat/stream", json=chat("chat"), headers=AUTH
    ) as response:
        seen = b""
        async for chunk in response.content.iter_any():
            seen += chunk
            if b'"content"' in seen:
                break
        during = await scrape(http, gateway)
        rest = await read_app_stream(response)
    assert rest.events[-1]["type"] == "done"
    assert value(during, "estuary_open_streams") == 1

    # A fallback: the primary fails before its first token, the spare answers.
    upstream.script("primary-model", Scenario(fail_status=503))
    async with http.post(
        f"{gateway.url}/api/chat/stream", json=chat("fallback-chat"), headers=AUTH
    ) as response:
        assert (await read_app_stream(response)).events[-1]["type"] == "done"

    # A key allowed one request a minute, used twice.
    async with http.post(
        f"{gateway.url}/admin/keys", json={"name": "m", "rpm": 1}, headers=ADMIN
    ) as r:
        assert r.status == 201
        key = (await r.json())["key"]
    statuses = []
    for _ in range(2):
        async with http.post(
            f"{gateway.url}/api/chat/stream",
            json=chat("chat"),
            headers={"Authorization": f"Bearer {key}"},
        ) as response:
            await response.read()
            statuses.append(response.status)
    assert statuses == [200, 429]

    after = await scrape(http, gateway)
    chat_target = {"alias": "chat", "target": "fake/fake-model"}
    spare_target = {"alias": "fallback-chat", "target": "spare/backup-model"}
    assert value(after, "estuary_open_streams") == 0
    assert value(after, "estuary_requests_total", **chat_target, status="completed") == 2
    assert value(after, "estuary_requests_total", **spare_target, status="completed") == 1
    assert value(after, "estuary_time_to_first_token_seconds_count", alias="chat") == 2
    assert value(after, "estuary_request_duration_seconds_count", alias="fallback-chat") == 1
    assert value(after, "estuary_request_duration_seconds_sum", alias="chat") > 0
    for target in (chat_target, spare_target):
        assert value(after, "estuary_prompt_tokens_total", **target) > 0
        assert value(after, "estuary_completion_tokens_total", **target) > 0
        assert value(after, "estuary_cost_micro_total", **target) > 0
    assert (
        value(after, "estuary_upstream_errors_total", provider="fake", code="upstream_error") == 1
    )
    assert value(after, "estuary_refusals_total", reason="rate_limited") == 1
    assert value(after, "estuary_breaker_state", target="fake/primary-model") == 2  # open
    assert value(after, "estuary_breaker_state", target="spare/backup-model") == 0
    assert value(after, "estuary_breaker_state", target="dead/nothing") == 0  # never used


async def test_a_failed_request_is_counted_without_a_target(
    gateway: RunningGateway, upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """A request no target answered counts as an error of target `none`, with its failure."""
    upstream.script("fake-model", Scenario(fail_status=500))
    async with http.post(
        f"{gateway.url}/api/chat/stream", json=chat("chat"), headers=AUTH
    ) as response:
        assert response.status == 502
    samples = await scrape(http, gateway)
    assert (
        value(samples, "estuary_requests_total", alias="chat", target="none", status="error") == 1
    )
    assert (
        value(samples, "estuary_upstream_errors_total", provider="fake", code="upstream_error") == 1
    )
    assert value(samples, "estuary_open_streams") == 0


async def test_a_budget_refusal_is_counted_by_reason(
    make_gateway: Callable[..., RunningGateway], http: aiohttp.ClientSession
) -> None:
    """A request its key's budget cannot cover counts as `budget_exceeded`, not as a request."""
    gateway = make_gateway(extra=EXTRA)
    async with http.post(
        f"{gateway.url}/admin/keys", json={"name": "poor", "budget": 0.000001}, headers=ADMIN
    ) as response:
        assert response.status == 201
        key = (await response.json())["key"]
    async with http.post(
        f"{gateway.url}/api/chat/stream",
        json=chat("chat"),
        headers={"Authorization": f"Bearer {key}"},
    ) as response:
        assert response.status == 402
    samples = await scrape(http, gateway)
    assert value(samples, "estuary_refusals_total", reason="budget_exceeded") == 1
    assert not any(name == "estuary_requests_total" for name, _ in samples)


def test_each_gateway_has_its_own_registry() -> None:
    """Two metric sets in one process count apart (no module-level registry)."""
    first, second = GatewayMetrics(), GatewayMetrics()
    first.refused("rate_limited")
    assert b'estuary_refusals_total{reason="rate_limited"} 1.0' in first.render()
    assert b"estuary_refusals_total{" not in second.render()
