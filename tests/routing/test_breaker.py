"""Circuit breakers, weighted first attempts, and the fallback rule with both."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncGenerator

import pytest

from estuary.core.errors import UpstreamError, UpstreamRateLimited, UpstreamUnavailable
from estuary.core.events import StreamEnd, StreamEvent, StreamStart, TextDelta
from estuary.core.requests import ChatRequest, UpstreamRequest
from estuary.providers.base import Timeouts
from estuary.routing.breaker import Breakers, BreakerSettings
from estuary.routing.fallback import Attempt, stream_with_fallback
from estuary.routing.routes import Route, Target

REQUEST = ChatRequest(model="chat", messages=({"role": "user", "content": "hi"},))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Scripted:
    """A provider that fails while `failing` is set, else streams one word."""

    def __init__(self, name: str, failing: UpstreamError | None = None) -> None:
        self.name = name
        self.failing = failing
        self.calls = 0

    async def stream(
        self, request: UpstreamRequest, model: str, timeouts: Timeouts
    ) -> AsyncGenerator[StreamEvent, None]:
        self.calls += 1
        if self.failing is not None:
            raise self.failing
        yield StreamStart(provider=self.name, model=model)
        yield TextDelta(text=self.name)
        yield StreamEnd(reason="stop")

    async def aclose(self) -> None:
        """Nothing pooled."""


async def run(route: Route, breakers: Breakers) -> tuple[str, list[Attempt]]:
    failures: list[Attempt] = []
    text = ""
    async for event in stream_with_fallback(route, REQUEST, failures, breakers=breakers):
        if isinstance(event, TextDelta):
            text += event.text
    return text, failures


def test_a_breaker_opens_after_n_failures_and_lets_one_probe_through_after_the_cooldown() -> None:
    clock = Clock()
    breaker = Breakers(BreakerSettings(failures=3, cooldown_s=10), clock)["a/m"]
    for _ in range(2):
        assert breaker.allow()
        breaker.failed()
    assert breaker.state() == "closed"
    breaker.failed()
    assert (breaker.state(), breaker.allow(), breaker.retry_in()) == ("open", False, 10)
    clock.now = 10
    assert breaker.state() == "half_open"
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one at a time
    breaker.failed()  # the probe failed: open again at once
    assert breaker.state() == "open"
    clock.now = 20
    assert breaker.allow()
    breaker.succeeded()
    assert (breaker.state(), breaker.allow()) == ("closed", True)


def test_retry_after_keeps_a_breaker_open_longer() -> None:
    clock = Clock()
    breaker = Breakers(BreakerSettings(failures=1, cooldown_s=5), clock)["a/m"]
    breaker.failed(retry_after_s=60)
    clock.now = 59
    assert not breaker.allow()
    clock.now = 60
    assert breaker.allow()


def test_a_probe_that_proved_nothing_frees_the_slot() -> None:
    clock = Clock()
    breaker = Breakers(BreakerSettings(failures=1, cooldown_s=1), clock)["a/m"]
    breaker.failed()
    clock.now = 1
    assert breaker.allow()
    breaker.released()
    assert breaker.allow()


async def test_fallback_skips_an_open_target_and_comes_back_to_it() -> None:
    clock = Clock()
    breakers = Breakers(BreakerSettings(failures=2, cooldown_s=30), clock)
    primary = Scripted("primary", failing=UpstreamError("primary", "500"))
    backup = Scripted("backup")
    route = Route(alias="chat", targets=(Target(primary, "m"), Target(backup, "m")))
    for _ in range(2):
        text, failures = await run(route, breakers)
        assert text == "backup"
        assert [f.target for f in failures] == ["primary/m"]
    assert primary.calls == 2
    text, failures = await run(route, breakers)  # open: not called at all
    assert (text, failures, primary.calls) == ("backup", [], 2)
    primary.failing = None  # it came back
    clock.now = 30
    text, _ = await run(route, breakers)
    assert (text, primary.calls) == ("primary", 3)
    assert breakers["primary/m"].state() == "closed"


async def test_when_every_breaker_is_open_the_answer_is_503_with_retry_after() -> None:
    clock = Clock()
    breakers = Breakers(BreakerSettings(failures=1, cooldown_s=30), clock)
    only = Scripted("only", failing=UpstreamRateLimited("only", "429", retry_after_s=45))
    route = Route(alias="chat", targets=(Target(only, "m"),))
    with pytest.raises(UpstreamRateLimited):
        await run(route, breakers)
    clock.now = 5
    with pytest.raises(UpstreamUnavailable) as caught:
        await run(route, breakers)
    assert caught.value.status_code == 503
    assert caught.value.retry_after_s == 40
    assert only.calls == 1


def test_weights_spread_the_first_attempt_and_keep_the_rest_as_fallbacks() -> None:
    a, b, c = Scripted("a"), Scripted("b"), Scripted("c")
    route = Route(
        alias="chat",
        targets=(Target(a, "m"), Target(b, "m"), Target(c, "m")),
        weights=(3, 1, 0),
    )
    rng = random.Random(7)
    firsts = Counter(route.order(rng)[0].provider.name for _ in range(4000))
    assert firsts["c"] == 0  # weight 0: only ever a fallback
    assert 2.5 < firsts["a"] / firsts["b"] < 3.5
    assert {tuple(t.provider.name for t in route.order(rng)) for _ in range(50)} == {
        ("a", "b", "c"),
        ("b", "a", "c"),
    }


def test_an_opening_is_announced_and_another_instance_applies_it() -> None:
    """Breakers A and B stand for two instances: A's opening, passed on, pauses B's target."""
    clock = Clock()
    heard: list[tuple[str, float]] = []
    settings = BreakerSettings(failures=2, cooldown_s=10)
    a = Breakers(settings, clock, on_open=lambda target, pause: heard.append((target, pause)))
    b = Breakers(settings, clock)
    a["p/m"].failed()
    assert heard == []
    a["p/m"].failed(retry_after_s=30)
    assert heard == [("p/m", 30)]
    for target, pause in heard:
        b.opened_elsewhere(target, pause)
    assert b["p/m"].state() == "open"
    assert not b["p/m"].allow()
    b.opened_elsewhere("p/m", 5)  # a shorter pause does not shorten a longer one
    clock.now = 29.0
    assert b["p/m"].state() == "open"
    clock.now = 30.0
    assert b["p/m"].allow()  # after the pause, B probes on its own
    assert b["p/m"].state() == "open"  # … one probe at a time
