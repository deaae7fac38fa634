"""OpenTelemetry trace export: one span per stream, sent to a fake OTLP collector over real HTTP."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from estuary.config import Config, ConfigError, TelemetryConfig, load_config, secret_values
from estuary.ledger.base import LedgerRecord, SettledRow
from estuary.reload import restart_needed
from estuary.telemetry import SPAN_NAME, Tracing
from estuary.testing import FakeUpstream, Scenario
from tests.support import (
    APP_KEY,
    AUTH,
    ENVIRON,
    UPSTREAM_KEY,
    gateway_toml,
    read_app_stream,
    serve_in_thread,
)

PROMPT = "a purple-elephant question nobody else asks"
ANSWER = ("Zebra", "-quokka", "-answer")
COLLECTOR_TOKEN = "collector-token-0123456789abcdef"
TELEMETRY = """
[telemetry]
otlp_endpoint = "{endpoint}"
service_name = "estuary-test"
headers = {{ "x-collector-token" = "${{COLLECTOR_TOKEN}}" }}

[prices."fake/fake-model"]
input_per_mtok = 1000.0
output_per_mtok = 2000.0
"""


@dataclass
class Collector:
    """A fake OTLP/HTTP trace collector: every export request's body and headers."""

    url: str = ""
    bodies: list[bytes] = field(default_factory=list)
    tokens: list[str | None] = field(default_factory=list)

    def spans(self) -> list[tuple[dict[str, Any], Span]]:
        """Every span received, with the attributes of its resource."""
        found: list[tuple[dict[str, Any], Span]] = []
        for body in self.bodies:
            for resource_spans in ExportTraceServiceRequest.FromString(body).resource_spans:
                resource = attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    found.extend((resource, span) for span in scope_spans.spans)
        return found


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    """An aiohttp server on loopback that accepts `POST /v1/traces`."""
    seen = Collector()

    async def traces(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        seen.bodies.append(await request.read())
        seen.tokens.append(request.headers.get("x-collector-token"))
        # An empty ExportTraceServiceResponse: everything was accepted.
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    seen.url = f"http://127.0.0.1:{port}/v1/traces"
    try:
        yield seen
    finally:
        await runner.cleanup()


def attributes(pairs: Any) -> dict[str, Any]:
    """OTLP key-values as a plain dict."""
    return {pair.key: value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


def value(any_value: AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    return None if kind is None else getattr(any_value, kind)


def events(span: Span) -> list[dict[str, Any]]:
    """The attributes of each `upstream.failed` event (the only kind there is)."""
    assert {event.name for event in span.events} <= {"upstream.failed"}
    return [attributes(event.attributes) for event in span.events]


def settled_of(record: LedgerRecord) -> SettledRow:
    assert record.settled is not None
    return record.settled


def nanos(record: LedgerRecord, end: bool) -> int:
    moment = settled_of(record).ended_at if end else record.opened.started_at
    return round(moment.timestamp() * 1_000_000_000)


def telemetry_config(tmp_path: Path, upstream: FakeUpstream, endpoint: str) -> Config:
    path = tmp_path / "estuary.toml"
    extra = TELEMETRY.format(endpoint=endpoint)
    path.write_text(
        gateway_toml(upstream.base_url, server='instance = "trace-test"', extra=extra),
        encoding="utf-8",
    )
    return load_config(path, environ={**ENVIRON, "COLLECTOR_TOKEN": COLLECTOR_TOKEN})


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def stream(
    http: aiohttp.ClientSession, url: str, model: str, traceparent: str | None = None
) -> tuple[str, str]:
    """One app-API stream to its end: its request id and its last event's type."""
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}]}
    headers = dict(AUTH) if traceparent is None else {**AUTH, "traceparent": traceparent}
    async with http.post(f"{url}/api/chat/stream", json=body, headers=headers) as response:
        received = await read_app_stream(response)
    assert received.status == 200
    return received.headers["X-Request-Id"], received.events[-1]["type"]


async def test_each_stream_is_exported_as_one_span_built_from_its_ledger_row(
    upstream: FakeUpstream, collector: Collector, tmp_path: Path
) -> None:
    """A fallback stream and a failed stream give two spans that match their ledger rows."""
    config = telemetry_config(tmp_path, upstream, collector.url)
    running = serve_in_thread(config)
    gateway = running.__enter__()
    try:
        async with aiohttp.ClientSession() as http:
            upstream.enqueue(Scenario(text=ANSWER, usage=True))
            fallback_id, last = await stream(http, gateway.url, "dead-first")
            assert last == "done"
            upstream.enqueue(Scenario(text=ANSWER, error_after=1))
            failed_id, last = await stream(http, gateway.url, "chat", traceparent=TRACEPARENT)
            assert last == "error"
        rows = {rid: await gateway.row(rid) for rid in (fallback_id, failed_id)}
    finally:  # in a thread: the shutdown flushes the spans to the collector in this loop
        await asyncio.to_thread(running.__exit__, None, None, None)

    spans = collector.spans()
    assert len(spans) == 2
    assert set(collector.tokens) == {COLLECTOR_TOKEN}
    by_id = {attributes(span.attributes)["estuary.request_id"]: span for _, span in spans}
    assert by_id.keys() == {fallback_id, failed_id}
    for resource, span in spans:
        assert resource["service.name"] == "estuary-test"
        assert resource["service.instance.id"] == "trace-test"
        assert span.name == SPAN_NAME
        assert span.kind == Span.SpanKind.SPAN_KIND_SERVER
    # A caller's `traceparent` makes the stream's span its child; without one, a root span.
    assert by_id[fallback_id].parent_span_id == b""
    child = by_id[failed_id]
    assert child.trace_id.hex() == TRACEPARENT.split("-")[1]
    assert child.parent_span_id.hex() == TRACEPARENT.split("-")[2]
    for request_id, span in by_id.items():
        row = rows[request_id]
        settled = settled_of(row)
        assert span.start_time_unix_nano == nanos(row, end=False)
        assert span.end_time_unix_nano == nanos(row, end=True)
        attrs = attributes(span.attributes)
        assert attrs["estuary.api"] == "app"
        assert attrs["estuary.key_id"] == row.opened.key_id
        assert "estuary.end_user" not in attrs
        assert attrs["gen_ai.system"] == settled.provider == "fake"
        assert attrs["gen_ai.request.model"] == row.opened.alias
        assert attrs["gen_ai.response.model"] == settled.upstream_model == "fake-model"
        assert attrs["gen_ai.usage.input_tokens"] == settled.prompt_tokens
        assert attrs["gen_ai.usage.output_tokens"] == settled.completion_tokens
        assert attrs["estuary.token_source"] == settled.token_source
        assert attrs["estuary.status"] == settled.status
        assert attrs["estuary.attempts"] == settled.attempts
        assert attrs["estuary.cost_micro"] == settled.cost_micro
        assert attrs["estuary.ttft_ms"] == settled.ttft_ms

    fallback = by_id[fallback_id]
    attrs = attributes(fallback.attributes)
    assert attrs["estuary.alias"] == "dead-first"
    assert attrs["estuary.status"] == "completed"
    assert attrs["estuary.finish_reason"] == "stop"
    assert attrs["estuary.token_source"] == "reported"
    assert attrs["estuary.attempts"] == 2
    assert fallback.status.code == Status.StatusCode.STATUS_CODE_UNSET
    failures = settled_of(rows[fallback_id]).failures
    assert [f"{a['estuary.target']}: {a['estuary.error_code']}" for a in events(fallback)] == [
        *failures
    ]
    assert failures[0].startswith("dead/nothing: ")

    failed = by_id[failed_id]
    attrs = attributes(failed.attributes)
    error_code = settled_of(rows[failed_id]).error_code
    assert error_code is not None
    assert attrs["estuary.alias"] == "chat"
    assert attrs["estuary.status"] == "error"
    assert attrs["error.type"] == error_code
    assert failed.status.code == Status.StatusCode.STATUS_CODE_ERROR
    assert failed.status.message == error_code
    assert list(failed.events) == []

    exported = b"".join(collector.bodies)
    for secret in (PROMPT, *ANSWER, "".join(ANSWER), UPSTREAM_KEY, APP_KEY, COLLECTOR_TOKEN):
        assert secret.encode() not in exported


def test_tracing_without_the_packages_fails_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Enabling tracing without the `otel` extra is a start-up error that says what to install."""
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    assert Tracing.start(TelemetryConfig(), instance="x") is None  # off: nothing is imported
    enabled = TelemetryConfig(otlp_endpoint="http://127.0.0.1:4318/v1/traces")
    with pytest.raises(ConfigError, match=r"pip install 'estuary-gateway\[otel\]'"):
        Tracing.start(enabled, instance="x")


def test_telemetry_headers_are_secrets_and_the_table_needs_a_restart(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Collector headers from the environment are redacted; a changed table is restart-only."""
    config = telemetry_config(tmp_path, upstream, "http://127.0.0.1:4318/v1/traces")
    assert COLLECTOR_TOKEN in secret_values(config)
    other = config.model_copy(
        update={"telemetry": config.telemetry.model_copy(update={"sample_ratio": 0.5})}
    )
    assert restart_needed(config, other) == ["telemetry.sample_ratio"]
    assert restart_needed(config, config) == []


def test_an_otlp_endpoint_must_be_an_http_url(tmp_path: Path) -> None:
    """A malformed endpoint is a config error naming the key."""
    path = tmp_path / "estuary.toml"
    path.write_text(
        '[providers.demo]\nformat = "demo"\n[models.demo]\ntargets = ["demo/x"]\n'
        '[telemetry]\notlp_endpoint = "127.0.0.1:4318"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"telemetry\.otlp_endpoint: must be an http"):
        load_config(path, environ={})
