"""Optional OpenTelemetry trace export: one span per stream, built from its settled ledger row.

`Tracing.start(config, instance)` returns None when `[telemetry] otlp_endpoint` is unset, and
imports OpenTelemetry only when it is set (the `otel` extra), so Estuary runs without it. The span
(`estuary.stream`, kind SERVER) is created once, when the stream settles, with explicit start and
end times (admission and settlement, wall clock): nothing runs per token. It holds ids, the route,
token counts, cost and status — never prompt or answer text, and never a key (only its id). The
SDK batches spans and sends them from its own thread (OTLP over HTTP/protobuf); `shutdown()` sends
what is left. No global tracer provider is installed. Reference: `docs/operations.md`.

Imports `estuary.config` and `estuary.ledger.base`; the gateway only for type checking.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Final

import structlog

from estuary.config import ConfigError, TelemetryConfig
from estuary.ledger.base import SettledRow

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer
    from opentelemetry.util.types import AttributeValue

    from estuary.gateway.session import StreamSession

__all__ = ["INSTALL_HINT", "SPAN_NAME", "Tracing"]

_log: Final = structlog.get_logger("estuary.telemetry")
SPAN_NAME: Final = "estuary.stream"
INSTALL_HINT: Final = "pip install 'estuary-gateway[otel]'"
# An export (retries included) gives up after this, so a collector that is down cannot hold up
# the shutdown for long: the spans are then lost, the process stops on time.
_EXPORT_TIMEOUT_S: Final = 5.0


class Tracing:
    """Exports one span per settled stream to an OTLP/HTTP collector."""

    def __init__(self, provider: TracerProvider) -> None:
        self._provider = provider
        self._tracer: Tracer = provider.get_tracer("estuary")

    @classmethod
    def start(cls, config: TelemetryConfig, *, instance: str) -> Tracing | None:
        """Tracing as `config` asks for it (None: off); its export thread starts now.

        Raises `ConfigError` when tracing is on but the OpenTelemetry packages are missing.
        """
        if config.otlp_endpoint is None:
            return None
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        except ImportError:
            raise ConfigError(
                "telemetry.otlp_endpoint: tracing needs the OpenTelemetry packages, which are"
                f" not installed: {INSTALL_HINT} (from a checkout: pip install '.[otel]')"
            ) from None
        resource = Resource.create(
            {"service.name": config.service_name, "service.instance.id": instance}
        )
        provider = TracerProvider(
            resource=resource, sampler=ParentBased(TraceIdRatioBased(config.sample_ratio))
        )
        exporter = OTLPSpanExporter(
            endpoint=config.otlp_endpoint,
            headers=dict(config.headers),
            timeout=_EXPORT_TIMEOUT_S,
        )
        provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider)

    def record(self, row: SettledRow, session: StreamSession) -> None:
        """The stream's span (a `Gateway.on_settled` observer); never raises."""
        try:
            self._record(row, session)
        except Exception as exc:  # tracing must never fail a stream's settlement
            error = type(exc).__name__
            _log.warning("telemetry.span_failed", request_id=row.request_id, error=error)

    def _record(self, row: SettledRow, session: StreamSession) -> None:
        from opentelemetry.context import Context
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        start = _nanos(session.started_at)
        # The caller's trace, when its `traceparent` is valid (else an empty context); never
        # whatever happens to be current in this task.
        parent = Context()
        if session.traceparent is not None:
            carrier = {"traceparent": session.traceparent}
            parent = TraceContextTextMapPropagator().extract(carrier, context=Context())
        span = self._tracer.start_span(
            SPAN_NAME,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=_attributes(row, session),
            start_time=start,
        )
        for attempt in session.failures:
            span.add_event(
                "upstream.failed",
                {"estuary.target": attempt.target, "estuary.error_code": attempt.error.code},
                timestamp=start,  # when each attempt failed is not kept
            )
        if row.status == "error":
            span.set_status(Status(StatusCode.ERROR, row.error_code))
        span.end(end_time=max(start, _nanos(row.ended_at)))

    def shutdown(self) -> None:
        """Send the spans still buffered and stop the export thread (blocks: HTTP, a few s)."""
        self._provider.shutdown()


def _attributes(row: SettledRow, session: StreamSession) -> Mapping[str, AttributeValue]:
    """What the span says about the stream: ids, route, usage, outcome. No text, no key."""
    principal = session.principal
    values: dict[str, AttributeValue | None] = {
        "estuary.request_id": row.request_id,
        "estuary.alias": session.route.alias,
        "estuary.api": session.api,
        "estuary.key_id": principal.key_id,
        "estuary.end_user": principal.end_user,
        "gen_ai.operation.name": "chat",
        "gen_ai.system": row.provider,
        "gen_ai.request.model": session.route.alias,
        "gen_ai.response.model": row.upstream_model,
        "gen_ai.usage.input_tokens": row.prompt_tokens,
        "gen_ai.usage.output_tokens": row.completion_tokens,
        "estuary.token_source": row.token_source,
        "estuary.status": row.status,
        "estuary.finish_reason": row.finish_reason,
        "estuary.ttft_ms": row.ttft_ms,
        "estuary.duration_ms": row.duration_ms,
        "estuary.attempts": row.attempts,
        "estuary.cost_micro": row.cost_micro,
        "error.type": row.error_code,
    }
    if session.stream_id != row.request_id:  # a takeover: the stream it continues
        values["estuary.stream_id"] = session.stream_id
    return {name: value for name, value in values.items() if value is not None}


def _nanos(moment: datetime) -> int:
    """Nanoseconds since the epoch, as OpenTelemetry times spans."""
    return round(moment.timestamp() * 1_000_000_000)
