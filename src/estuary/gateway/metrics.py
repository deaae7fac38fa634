"""Prometheus metrics of one gateway, in a registry of its own (no module-level registry).

Everything is counted at admission and at settlement, never per token: a settled row already
holds the token counts, the cost, the time to first token and the failed attempts. Breaker states
are read at scrape time by a custom collector, so nothing has to keep them in step.

    estuary_open_streams                        gauge    admitted, not yet settled
    estuary_requests_total{alias,target,status} counter  settled rows (target "none": no upstream)
    estuary_time_to_first_token_seconds{alias}  histogram
    estuary_request_duration_seconds{alias}     histogram
    estuary_prompt_tokens_total{alias,target}   counter
    estuary_completion_tokens_total{alias,target} counter
    estuary_cost_micro_total{alias,target}      counter  micro-units of the price table
    estuary_upstream_errors_total{provider,code} counter failed attempts
    estuary_refusals_total{reason}              counter  rate_limited | budget_exceeded
    estuary_breaker_state{target}               gauge    0 closed, 1 half-open, 2 open

Must not import the HTTP layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from types import MappingProxyType
from typing import Any, Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from estuary.core.errors import UpstreamError
from estuary.routing.fallback import Attempt
from estuary.routing.routes import Router

__all__ = ["BREAKER_VALUES", "CONTENT_TYPE", "GatewayMetrics"]

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
BREAKER_VALUES: Final = MappingProxyType({"closed": 0.0, "half_open": 1.0, "open": 2.0})
# LLM latencies: a first token in 50 ms from a local model, answers up to a minute and beyond.
_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0)
_NO_TARGET: Final = "none"


class _BreakerCollector(Collector):
    """`estuary_breaker_state`, read from the router's breakers when scraped."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "estuary_breaker_state",
            "Circuit breaker of each target: 0 closed, 1 half-open, 2 open.",
            labels=["target"],
        )
        router = self.router
        states = router.breakers.states()
        targets = {t.label for a in router.aliases for t in router.resolve(a).targets}
        for target in sorted(targets | states.keys()):
            family.add_metric([target], BREAKER_VALUES[states.get(target, "closed")])
        yield family


class GatewayMetrics:
    """The metrics of one gateway; `render()` is the `/metrics` body."""

    def __init__(self, router: Router | None = None) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self._open = Gauge(
            "estuary_open_streams", "Streams admitted and not yet settled.", registry=registry
        )
        self._requests = Counter(
            "estuary_requests",
            "Settled requests by alias, target (provider/model) and status.",
            ["alias", "target", "status"],
            registry=registry,
        )
        self._ttft = Histogram(
            "estuary_time_to_first_token_seconds",
            "Time from admission to the first answer token.",
            ["alias"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self._duration = Histogram(
            "estuary_request_duration_seconds",
            "Time from admission to settlement.",
            ["alias"],
            buckets=_BUCKETS,
            registry=registry,
        )
        by_target = ["alias", "target"]
        self._prompt = Counter(
            "estuary_prompt_tokens", "Prompt tokens.", by_target, registry=registry
        )
        self._completion = Counter(
            "estuary_completion_tokens", "Completion tokens.", by_target, registry=registry
        )
        self._cost = Counter(
            "estuary_cost_micro",
            "Cost in micro-units of the price table.",
            by_target,
            registry=registry,
        )
        self._upstream_errors = Counter(
            "estuary_upstream_errors",
            "Failed upstream attempts by provider and error code.",
            ["provider", "code"],
            registry=registry,
        )
        self._refusals = Counter(
            "estuary_refusals",
            "Requests refused by a rate limit or a spend budget.",
            ["reason"],
            registry=registry,
        )
        self._breakers: _BreakerCollector | None = None
        if router is not None:
            self.follow(router)

    def follow(self, router: Router) -> None:
        """Read breaker states through `router` (from now on, after a config reload)."""
        if self._breakers is None:
            self._breakers = _BreakerCollector(router)
            self.registry.register(self._breakers)
        else:
            self._breakers.router = router

    def snapshot(self) -> dict[str, Any]:
        """What the dashboard shows live: open streams, and per alias since this process started
        its requests, errors and time to first token (p50/p95, estimated from the histogram)."""
        aliases: dict[str, dict[str, float | None]] = {}
        for metric in self._requests.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    row = aliases.setdefault(sample.labels["alias"], {"requests": 0, "errors": 0})
                    row["requests"] = (row["requests"] or 0) + sample.value
                    if sample.labels["status"] == "error":
                        row["errors"] = (row["errors"] or 0) + sample.value
        buckets: dict[str, list[tuple[float, float]]] = {}
        for metric in self._ttft.collect():
            for sample in metric.samples:
                if sample.name.endswith("_bucket"):
                    bound = float(sample.labels["le"])
                    buckets.setdefault(sample.labels["alias"], []).append((bound, sample.value))
        for alias, counts in buckets.items():
            row = aliases.setdefault(alias, {"requests": 0, "errors": 0})
            row["ttft_p50_ms"] = _quantile(counts, 0.5)
            row["ttft_p95_ms"] = _quantile(counts, 0.95)
        open_streams = next(iter(self._open.collect())).samples[0].value
        return {"open_streams": int(open_streams), "aliases": aliases}

    def watch(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A gauge whose value is `read()` at each scrape (a store's backlog, say)."""
        Gauge(name, documentation, registry=self.registry).set_function(read)

    def render(self) -> bytes:
        """The text exposition format of every metric (content type: `CONTENT_TYPE`)."""
        return generate_latest(self.registry)

    def opened(self) -> None:
        """A stream was admitted."""
        self._open.inc()

    def refused(self, reason: str) -> None:
        """A limit or budget refused a request (`reason` is the error code)."""
        self._refusals.labels(reason).inc()

    def settled(
        self,
        *,
        alias: str,
        target: str | None,
        status: str,
        ttft_s: float | None,
        duration_s: float,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        cost_micro: int | None,
        failures: Sequence[Attempt],
        error: UpstreamError | None,
    ) -> None:
        """A stream was settled: count it with what its row holds. `error` is a failure of the
        target that answered (after its first event), not already among `failures`."""
        self._open.dec()
        label = target or _NO_TARGET
        self._requests.labels(alias, label, status).inc()
        if ttft_s is not None:
            self._ttft.labels(alias).observe(ttft_s)
        self._duration.labels(alias).observe(duration_s)
        if prompt_tokens:
            self._prompt.labels(alias, label).inc(prompt_tokens)
        if completion_tokens:
            self._completion.labels(alias, label).inc(completion_tokens)
        if cost_micro:
            self._cost.labels(alias, label).inc(cost_micro)
        for attempt in failures:
            provider = attempt.target.partition("/")[0]
            self._upstream_errors.labels(provider, attempt.error.code).inc()
        if error is not None:
            self._upstream_errors.labels(error.provider, error.code).inc()


def _quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The `q` quantile in milliseconds from cumulative histogram buckets (seconds),
    interpolated inside its bucket; None without observations."""
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0.0
    if total == 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower * 1000
            share = (rank - below) / (count - below) if count > below else 1.0
            return (lower + (bound - lower) * share) * 1000
        lower, below = bound, count
    return lower * 1000
