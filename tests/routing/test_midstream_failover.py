"""Mid-stream failover: a died answer continued on a later target that can take a prefix."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import pytest

from estuary.core.errors import UpstreamError, UpstreamRejected
from estuary.core.events import (
    Failover,
    ReasoningDelta,
    StreamEnd,
    StreamEvent,
    StreamStart,
    TextDelta,
    ToolCall,
    Usage,
)
from estuary.core.requests import ChatRequest, CompletionRequest, UpstreamRequest
from estuary.core.usage import estimate_tokens
from estuary.providers.base import Timeouts, with_assistant_prefix
from estuary.providers.openai import OpenAIProvider
from estuary.providers.upstream_http import UpstreamPool
from estuary.routing.breaker import Breakers, BreakerSettings
from estuary.routing.fallback import Attempt, stream_with_fallback
from estuary.routing.routes import Route, Target

USER = {"role": "user", "content": "hi"}
REQUEST = ChatRequest(model="chat", messages=(USER,))
DROPPED = UpstreamError("primary", "connection reset mid-stream")


class Scripted:
    """A provider that streams `events` after its start, then raises `error` if set.

    With a `flag` it continues prefixes (as Kimi's `partial` or DeepSeek's `prefix`).
    """

    def __init__(
        self,
        name: str,
        events: Sequence[StreamEvent] = (),
        *,
        error: UpstreamError | None = None,
        fail_first: UpstreamError | None = None,
        flag: str | None = None,
    ) -> None:
        self.name = name
        self.events = tuple(events)
        self.error = error
        self.fail_first = fail_first
        self.flag = flag
        self.requests: list[UpstreamRequest] = []

    @property
    def continues_prefix(self) -> bool:
        return self.flag is not None

    def continuation(self, request: ChatRequest, partial: str) -> ChatRequest:
        return with_assistant_prefix(request, partial, self.flag)

    async def stream(
        self, request: UpstreamRequest, model: str, timeouts: Timeouts
    ) -> AsyncGenerator[StreamEvent, None]:
        self.requests.append(request)
        if self.fail_first is not None:
            raise self.fail_first
        yield StreamStart(provider=self.name, model=model)
        for event in self.events:
            yield event
        if self.error is not None:
            raise self.error

    async def aclose(self) -> None:
        """Nothing pooled."""


def words(*texts: str) -> list[StreamEvent]:
    return [TextDelta(text=t) for t in texts]


def finished(*texts: str) -> list[StreamEvent]:
    return [*words(*texts), Usage(prompt_tokens=5, completion_tokens=len(texts)), end()]


def end() -> StreamEnd:
    return StreamEnd(reason="stop")


def route(*providers: Scripted, on: bool = True) -> Route:
    targets = tuple(Target(p, f"{p.name}-model") for p in providers)
    return Route(alias="chat", targets=targets, midstream_failover=on)


async def run(
    chosen: Route,
    request: UpstreamRequest = REQUEST,
    breakers: Breakers | None = None,
) -> tuple[list[StreamEvent], list[Attempt]]:
    failures: list[Attempt] = []
    got: list[StreamEvent] = []
    async for event in stream_with_fallback(chosen, request, failures, breakers=breakers):
        got.append(event)
    return got, failures


async def drain(events: AsyncIterator[StreamEvent], into: list[StreamEvent]) -> None:
    async for event in events:
        into.append(event)


def text_of(events: Sequence[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def test_a_died_answer_continues_on_a_prefix_target_with_one_seam() -> None:
    """Text, one `Failover`, the rest from the next target: no second start, nothing twice."""
    primary = Scripted("primary", words("Once ", "upon "), error=DROPPED)
    kimi = Scripted("kimi", finished("a ", "time."), flag="partial")
    events, failures = await run(route(primary, kimi))
    assert events == [
        StreamStart(provider="primary", model="primary-model"),
        TextDelta(text="Once "),
        TextDelta(text="upon "),
        Failover(provider="kimi", model="kimi-model", reason="upstream_error"),
        TextDelta(text="a "),
        TextDelta(text="time."),
        Usage(prompt_tokens=5, completion_tokens=2),
        end(),
    ]
    assert failures == [Attempt("primary/primary-model", DROPPED)]


async def test_the_next_request_carries_the_text_so_far_as_a_flagged_assistant_prefix() -> None:
    """The continuing target gets the whole partial answer as its last, flagged message."""
    primary = Scripted("primary", words("Once ", "upon "), error=DROPPED)
    deepseek = Scripted("deepseek", finished("a time."), flag="prefix")
    await run(route(primary, deepseek))
    (sent,) = deepseek.requests
    assert isinstance(sent, ChatRequest)
    assert sent.messages == (USER, {"role": "assistant", "content": "Once upon ", "prefix": True})
    assert primary.requests == [REQUEST]  # the original request is left as it was


async def test_the_continuation_may_only_use_what_is_left_of_max_tokens() -> None:
    """The text so far counts against the client's `max_tokens` (estimated), never below 1."""
    primary = Scripted("primary", words("Once upon a time there "), error=DROPPED)  # ~6 tokens
    kimi = Scripted("kimi", finished("was a fox."), flag="partial")
    await run(route(primary, kimi), request=ChatRequest(model="c", messages=(USER,), max_tokens=20))
    await run(route(primary, kimi), request=ChatRequest(model="c", messages=(USER,), max_tokens=2))
    limits = [r.max_tokens for r in kimi.requests if isinstance(r, ChatRequest)]
    assert limits == [20 - estimate_tokens("Once upon a time there "), 1]
    assert [r.max_tokens for r in primary.requests if isinstance(r, ChatRequest)] == [20, 2]


async def test_without_the_flag_a_mid_stream_death_is_the_error_it_always_was() -> None:
    """Off by default: the error propagates, no other target is asked."""
    primary = Scripted("primary", words("Once "), error=DROPPED)
    kimi = Scripted("kimi", finished("a time."), flag="partial")
    with pytest.raises(UpstreamError) as caught:
        await run(route(primary, kimi, on=False))
    assert caught.value is DROPPED
    assert kimi.requests == []


@pytest.mark.parametrize(
    "before",
    [
        [],  # died right after the start
        [ReasoningDelta(text="thinking…")],  # only reasoning reached the client
        [TextDelta(text="")],  # an empty delta is no text
    ],
)
async def test_no_switch_before_answer_text_reached_the_client(
    before: list[StreamEvent],
) -> None:
    """Only content text counts: nothing to continue from means the usual in-band error."""
    primary = Scripted("primary", before, error=DROPPED)
    kimi = Scripted("kimi", finished("a time."), flag="partial")
    with pytest.raises(UpstreamError):
        await run(route(primary, kimi))
    assert kimi.requests == []


async def test_no_switch_after_a_tool_call() -> None:
    """A tool call is never resumed: once one reached the client, a death is an error."""
    call = ToolCall(index=0, id="call_1", name="get_weather", arguments='{"city":"杭州"}')
    primary = Scripted("primary", [*words("Let me check. "), call], error=DROPPED)
    kimi = Scripted("kimi", finished("a time."), flag="partial")
    with pytest.raises(UpstreamError):
        await run(route(primary, kimi))
    assert kimi.requests == []


async def test_no_switch_for_a_failure_that_does_not_fall_back() -> None:
    """An upstream 400 blames the request itself; another target would not fix it."""
    rejected = UpstreamRejected("primary", "400")
    primary = Scripted("primary", words("Once "), error=rejected)
    kimi = Scripted("kimi", finished("a time."), flag="partial")
    with pytest.raises(UpstreamRejected):
        await run(route(primary, kimi))
    assert kimi.requests == []


async def test_only_a_target_that_continues_prefixes_takes_over() -> None:
    """A later target without the capability is passed over for one that has it."""
    primary = Scripted("primary", words("Once "), error=DROPPED)
    plain = Scripted("plain", finished("Hello!"))
    kimi = Scripted("kimi", finished("upon a time."), flag="partial")
    events, _ = await run(route(primary, plain, kimi))
    assert plain.requests == []
    assert text_of(events) == "Once upon a time."


async def test_with_no_capable_target_the_original_failure_propagates() -> None:
    """Nobody can continue: the client gets the failure that killed its stream."""
    primary = Scripted("primary", words("Once "), error=DROPPED)
    plain = Scripted("plain", finished("Hello!"))
    with pytest.raises(UpstreamError) as caught:
        await run(route(primary, plain))
    assert caught.value is DROPPED
    assert plain.requests == []


async def test_only_later_targets_are_asked() -> None:
    """A capable target earlier in the order (that failed before its first event) is not retried."""
    down = Scripted("down", fail_first=UpstreamError("down", "503"), flag="partial")
    primary = Scripted("primary", words("Once "), error=DROPPED)
    with pytest.raises(UpstreamError) as caught:
        await run(route(down, primary))
    assert caught.value is DROPPED
    assert len(down.requests) == 1


async def test_the_continuation_drops_its_start_and_its_reasoning() -> None:
    """The stream has started; the continuing model's thinking is not part of the answer."""
    primary = Scripted("primary", words("Once "), error=DROPPED)
    kimi = Scripted(
        "kimi", [ReasoningDelta(text="go on"), *finished("upon a time.")], flag="partial"
    )
    events, _ = await run(route(primary, kimi))
    kinds = [e.kind for e in events]
    assert kinds == ["start", "text", "failover", "text", "usage", "end"]


async def test_a_target_that_fails_to_continue_is_skipped_for_the_next() -> None:
    """A continuation refused before its first event (even a 400) moves on to the next one."""
    primary = Scripted("primary", words("Once "), error=DROPPED)
    picky = Scripted("picky", fail_first=UpstreamRejected("picky", "400"), flag="prefix")
    kimi = Scripted("kimi", finished("upon a time."), flag="partial")
    events, failures = await run(route(primary, picky, kimi))
    assert text_of(events) == "Once upon a time."
    assert [f.target for f in failures] == ["picky/picky-model", "primary/primary-model"]
    assert sum(type(e) is Failover for e in events) == 1


async def test_when_every_continuation_fails_the_original_failure_propagates() -> None:
    """No seam is shown when nobody took over; the client gets what killed its stream."""
    primary = Scripted("primary", words("Once "), error=DROPPED)
    kimi = Scripted("kimi", fail_first=UpstreamError("kimi", "503"), flag="partial")
    got: list[StreamEvent] = []
    failures: list[Attempt] = []
    with pytest.raises(UpstreamError) as caught:
        await drain(stream_with_fallback(route(primary, kimi), REQUEST, failures), got)
    assert caught.value is DROPPED
    assert [e.kind for e in got] == ["start", "text"]
    assert [f.target for f in failures] == ["kimi/kimi-model"]


async def test_a_continuation_that_dies_too_is_continued_with_the_whole_text() -> None:
    """Two seams; the third target is given everything the client has seen."""
    primary = Scripted("primary", words("Once "), error=DROPPED)
    kimi_error = UpstreamError("kimi", "reset")
    kimi = Scripted("kimi", words("upon "), error=kimi_error, flag="partial")
    deepseek = Scripted("deepseek", finished("a time."), flag="prefix")
    events, failures = await run(route(primary, kimi, deepseek))
    assert text_of(events) == "Once upon a time."
    assert [e.kind for e in events].count("failover") == 2
    assert failures == [
        Attempt("primary/primary-model", DROPPED),
        Attempt("kimi/kimi-model", kimi_error),
    ]
    (sent,) = deepseek.requests
    assert isinstance(sent, ChatRequest)
    assert sent.messages[-1] == {"role": "assistant", "content": "Once upon ", "prefix": True}


async def test_breakers_see_the_death_and_the_continuation() -> None:
    """The dead target's breaker counts a failure; an open breaker is not asked to continue."""
    breakers = Breakers(BreakerSettings(failures=1, cooldown_s=30))
    primary = Scripted("primary", words("Once "), error=DROPPED)
    kimi = Scripted("kimi", finished("upon a time."), flag="partial")
    events, _ = await run(route(primary, kimi), breakers=breakers)
    assert text_of(events) == "Once upon a time."
    assert breakers["primary/primary-model"].state() == "open"
    assert breakers["kimi/kimi-model"].state() == "closed"
    breakers["kimi/kimi-model"].failed()  # now kimi is paused too
    again = Scripted("primary2", words("Once "), error=DROPPED)
    with pytest.raises(UpstreamError):
        await run(route(again, kimi), breakers=breakers)
    assert len(kimi.requests) == 1


async def test_legacy_completions_are_not_continued() -> None:
    """A prompt request has no assistant message to put a prefix in."""
    primary = Scripted("primary", words("Once "), error=DROPPED)
    kimi = Scripted("kimi", finished("upon a time."), flag="partial")
    with pytest.raises(UpstreamError):
        await run(route(primary, kimi), request=CompletionRequest(model="chat", prompt="Tell"))
    assert kimi.requests == []


def openai(preset: str | None, base_url: str) -> OpenAIProvider:
    return OpenAIProvider("p", base_url=base_url, api_key="k", pool=UpstreamPool(), flavor=preset)


@pytest.mark.parametrize(
    ("preset", "base_url", "flag"),
    [
        ("moonshot", "https://api.moonshot.cn/v1", "partial"),
        ("deepseek", "https://api.deepseek.com/beta", "prefix"),
        ("deepseek", "https://api.deepseek.com/v1", None),  # prefix completion is beta-only
        ("openai", "https://api.openai.com/v1", None),
        (None, "http://127.0.0.1:8000/v1", None),
    ],
)
def test_openai_format_providers_continue_prefixes_only_where_the_upstream_documents_it(
    preset: str | None, base_url: str, flag: str | None
) -> None:
    """Kimi's partial mode and DeepSeek's beta prefix completion; no one else."""
    provider = openai(preset, base_url)
    assert provider.continues_prefix is (flag is not None)
    if flag is not None:
        last = provider.continuation(REQUEST, "Once ").messages[-1]
        assert last == {"role": "assistant", "content": "Once ", flag: True}


def test_a_clients_own_prefix_is_extended_not_followed_by_a_second_one() -> None:
    """A request that already ended with a flagged assistant prefix gets one longer prefix."""
    own = {"role": "assistant", "content": "Dear customer, ", "partial": True}
    request = ChatRequest(model="chat", messages=(USER, own))
    extended = with_assistant_prefix(request, "hello", "partial")
    assert extended.messages == (
        USER,
        {"role": "assistant", "content": "Dear customer, hello", "partial": True},
    )
