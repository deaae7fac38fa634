"""The Chinese OpenAI-compatible presets' documented stream quirks, fed as golden transcripts.

Each `tests/fixtures/<preset>/*.sse` names its source in a `: source:` comment line. Every one is
fed to `OpenAIStreamParser(flavor=<preset>)` whole and in fragments of 1 and 7 bytes, and must
give the same events and end the same way: a `StreamEnd`, or one `UpstreamError` subclass whose
class says whether routing may fall back. No network.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from estuary.core.errors import (
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)
from estuary.core.events import ReasoningDelta, StreamEnd, StreamEvent, TextDelta, Usage
from estuary.core.redaction import Redactor
from estuary.providers.http_errors import error_for_status, error_in_stream
from estuary.providers.openai_wire import OpenAIStreamParser

FIXTURES = Path(__file__).parent.parent / "fixtures"
PRESETS = ("moonshot", "deepseek", "zhipu", "dashscope", "qianfan", "spark")
SIZES = [1, 7, 1 << 20]
SECRET = "sk-upstream-quirk-secret-0123456789"


def T(text: str) -> TextDelta:  # one letter: the tables below stay readable
    return TextDelta(text=text)


def R(text: str) -> ReasoningDelta:
    return ReasoningDelta(text=text)


def U(prompt: int, completion: int) -> Usage:
    return Usage(prompt_tokens=prompt, completion_tokens=completion)


STOP = StreamEnd(reason="stop")
FILTERED = StreamEnd(reason="content_filter")


@dataclass(frozen=True)
class Case:
    """What one transcript must give: these events, then (maybe) exactly this error class."""

    preset: str
    name: str
    events: tuple[StreamEvent, ...]
    error: type[UpstreamError] | None = None

    @property
    def id(self) -> str:
        return f"{self.preset}/{self.name}"


CASES = (
    # Moonshot (Kimi): usage inside the choice; errors carry only a `type`.
    Case(
        "moonshot", "chat_normal.sse", (T("你好"), T("，李雷！"), T("1+1等于2。"), U(19, 13), STOP)
    ),
    Case(
        "moonshot",
        "chat_thinking.sse",
        (R("用户在问"), R("一加一。"), T("等于"), T(" 2。"), U(21, 30), STOP),
    ),
    Case("moonshot", "chat_overloaded.sse", (), UpstreamError),
    Case("moonshot", "chat_quota_exhausted.sse", (), UpstreamAuthFailed),
    Case("moonshot", "chat_rate_limited.sse", (), UpstreamRateLimited),
    Case("moonshot", "chat_content_filter.sse", (), UpstreamRejected),
    Case("moonshot", "chat_error_after_content.sse", (T("部分"), T("回答")), UpstreamError),
    Case("moonshot", "chat_truncated.sse", (T("你好"),), UpstreamProtocolError),
    # DeepSeek: keep-alive comments, reasoning_content, insufficient_system_resource.
    Case(
        "deepseek",
        "chat_normal.sse",
        (T("Hello"), T("! How can I help"), T(" you today?"), U(10, 6), STOP),
    ),
    Case(
        "deepseek",
        "chat_reasoner.sse",
        (R("9.11 和 9.8"), R("比较小数部分。"), T("9.8 更大。"), U(15, 42), STOP),
    ),
    Case(
        "deepseek",
        "chat_insufficient_resource.sse",
        (T("The first part"), T(" of the answer")),
        UpstreamError,
    ),
    Case("deepseek", "chat_insufficient_resource_first.sse", (), UpstreamError),
    Case(
        "deepseek",
        "chat_content_filter.sse",
        (T("关于这个话题"), U(12, 3), FILTERED),
    ),
    Case("deepseek", "chat_truncated.sse", (T("Hello"),), UpstreamProtocolError),
    # Zhipu (GLM): string codes, contentFilter roles, finish reasons of its own.
    Case("zhipu", "chat_normal.sse", (T("土"), T("豆"), T("是一种块茎。"), U(60, 100), STOP)),
    Case(
        "zhipu",
        "chat_thinking.sse",
        (R("用户想知道"), R("天空的颜色。"), T("因为瑞利散射。"), U(8, 25), STOP),
    ),
    Case("zhipu", "chat_sensitive.sse", (T("关于"), T("这个"), U(20, 4), FILTERED)),
    Case("zhipu", "chat_moderation_input.sse", (), UpstreamRejected),
    Case("zhipu", "chat_moderation_output.sse", (T("这个"), T("问题"), FILTERED)),
    Case("zhipu", "chat_network_error.sse", (T("第一"), T("部分")), UpstreamError),
    Case("zhipu", "chat_rate_limited.sse", (), UpstreamRateLimited),
    Case("zhipu", "chat_arrears.sse", (), UpstreamAuthFailed),
    Case("zhipu", "chat_truncated.sse", (T("土"),), UpstreamProtocolError),
    # DashScope (Qwen, compatible mode): usage: null everywhere, data_inspection_failed.
    Case(
        "dashscope",
        "chat_normal.sse",
        (T("我是"), T("来自阿里云的"), T("大规模语言模型。"), U(22, 17), STOP),
    ),
    Case(
        "dashscope",
        "chat_thinking.sse",
        (R("用户问我是谁，"), R("我应该介绍自己。"), T("我是通义千问。"), U(12, 30), STOP),
    ),
    Case("dashscope", "chat_inspection_input.sse", (), UpstreamRejected),
    Case("dashscope", "chat_inspection_output.sse", (T("这个"), T("方案"), FILTERED)),
    Case("dashscope", "chat_throttled.sse", (), UpstreamRateLimited),
    Case("dashscope", "chat_arrearage.sse", (), UpstreamAuthFailed),
    Case(
        "dashscope",
        "chat_internal_error_after_content.sse",
        (T("第一段"), T("回答")),
        UpstreamError,
    ),
    Case("dashscope", "chat_truncated.sse", (T("你好"),), UpstreamProtocolError),
    # Qianfan (Baidu v2): flag per choice, usage may be absent, snake_case codes.
    Case(
        "qianfan",
        "chat_normal.sse",
        (T("您好"), T("，我是文心一言，"), T("有什么可以帮您？"), U(3, 14), STOP),
    ),
    Case("qianfan", "chat_no_usage.sse", (T("春眠不觉晓，"), T("处处闻啼鸟。"), STOP)),
    Case("qianfan", "chat_content_filter.sse", (T("关于"), U(9, 1), FILTERED)),
    Case("qianfan", "chat_rate_limited.sse", (), UpstreamRateLimited),
    Case("qianfan", "chat_system_unsafe.sse", (), UpstreamRejected),
    Case(
        "qianfan",
        "chat_internal_error_after_content.sse",
        (T("第一"), T("部分")),
        UpstreamError,
    ),
    Case("qianfan", "chat_truncated.sse", (T("您好"),), UpstreamProtocolError),
    # Spark (iFlytek): code/sid envelope, no finish_reason, errors are flat non-zero codes.
    Case("spark", "chat_normal.sse", (T("你好"), T("！有什么"), T("可以帮你？"), U(1, 9), STOP)),
    Case(
        "spark",
        "chat_x1_reasoning.sse",
        (R("先想一想"), R("题意。"), T("答案是 42。"), U(6, 20), STOP),
    ),
    Case("spark", "chat_input_audit.sse", (), UpstreamRejected),
    Case("spark", "chat_output_audit.sse", (T("这个"), T("话题"), FILTERED)),
    Case("spark", "chat_flow_limited.sse", (), UpstreamRateLimited),
    Case("spark", "chat_daily_limit.sse", (), UpstreamAuthFailed),
    Case(
        "spark",
        "chat_engine_error_after_content.sse",
        (T("第一"), T("部分")),
        UpstreamError,
    ),
    Case("spark", "chat_truncated.sse", (T("你好"), T("！")), UpstreamProtocolError),
)


def fragments(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def replay(
    preset: str, body: bytes, size: int, *, flavor: str | None = None
) -> tuple[list[StreamEvent], UpstreamError | None]:
    """Feed `body` in pieces of `size`; the events, and the failure that ended it, if any."""
    parser = OpenAIStreamParser(
        preset, kind="chat", redact=Redactor([SECRET]), flavor=flavor or preset
    )
    events: list[StreamEvent] = []
    try:
        for part in fragments(body, size):
            events.extend(parser.feed(part))
        parser.check()
        events.extend(parser.finish())
    except UpstreamError as exc:
        return events, exc
    return events, None


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_transcript_gives_its_events_and_its_ending_however_split(case: Case, size: int) -> None:
    """The same events and the same ending (end reason or error class) for 1, 7 and whole."""
    body = (FIXTURES / case.preset / case.name).read_bytes()
    events, error = replay(case.preset, body, size)
    assert events == list(case.events)
    if case.error is None:
        assert error is None
    else:
        assert type(error) is case.error
        assert error.provider == case.preset
        assert SECRET not in str(error)


def test_every_fixture_has_a_case_and_names_its_source() -> None:
    """No transcript is left untested, and each one says where its quirk is documented."""
    on_disk = {f"{p}/{f.name}" for p in PRESETS for f in (FIXTURES / p).glob("*.sse")}
    assert on_disk == {case.id for case in CASES}
    for name in sorted(on_disk):
        first = (FIXTURES / name).read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith(": source: "), name


@pytest.mark.parametrize(
    ("name", "fallback"),
    [
        ("moonshot/chat_overloaded.sse", True),
        ("moonshot/chat_quota_exhausted.sse", True),
        ("moonshot/chat_content_filter.sse", False),
        ("zhipu/chat_moderation_input.sse", False),
        ("zhipu/chat_rate_limited.sse", True),
        ("dashscope/chat_inspection_input.sse", False),
        ("qianfan/chat_system_unsafe.sse", False),
        ("spark/chat_input_audit.sse", False),
        ("spark/chat_daily_limit.sse", True),
        ("deepseek/chat_insufficient_resource_first.sse", True),
    ],
)
def test_errors_before_content_fall_back_unless_the_input_was_refused(
    name: str, fallback: bool
) -> None:
    """Overload, rate and quota failures may try the next target; refused input may not."""
    preset = name.split("/")[0]
    _, error = replay(preset, (FIXTURES / name).read_bytes(), 1 << 20)
    assert error is not None
    assert error.fallback is fallback
    assert error.retryable is (fallback and not isinstance(error, UpstreamAuthFailed))


def test_quota_errors_say_so_and_are_not_retryable() -> None:
    """A balance or daily quota is not a rate limit: retrying the same upstream cannot help."""
    for name in ("moonshot/chat_quota_exhausted.sse", "zhipu/chat_arrears.sse"):
        _, error = replay(name.split("/")[0], (FIXTURES / name).read_bytes(), 1 << 20)
        assert isinstance(error, UpstreamAuthFailed)
        assert "quota" in error.detail
        assert error.retryable is False


def test_codes_are_read_only_with_their_own_flavour() -> None:
    """Zhipu's 1302 is a rate limit for the zhipu preset; elsewhere it is just an error."""
    body = (FIXTURES / "zhipu" / "chat_rate_limited.sse").read_bytes()
    _, own = replay("zhipu", body, 1 << 20)
    _, plain = replay("zhipu", body, 1 << 20, flavor="vllm")
    assert type(own) is UpstreamRateLimited
    assert type(plain) is UpstreamError


def test_a_top_level_code_means_nothing_outside_spark() -> None:
    """Only Spark sends its errors as a flat non-zero `code`; other servers may use the key."""
    chunk = {"code": 7, "choices": [{"index": 0, "delta": {"content": "hi"}}]}
    parser = OpenAIStreamParser("p", kind="chat", redact=Redactor(), flavor="moonshot")
    assert parser.feed(b"data: " + orjson.dumps(chunk) + b"\n\n") == [T("hi")]


def test_spark_flat_error_is_redacted() -> None:
    """An upstream that echoes our key in its error message cannot leak it."""
    chunk = {"code": 11200, "message": f"no licence for Bearer {SECRET}", "sid": "cha0"}
    _, error = replay("spark", b"data: " + orjson.dumps(chunk) + b"\n\n", 1 << 20)
    assert type(error) is UpstreamAuthFailed
    assert SECRET not in str(error)
    assert "11200" in str(error)


def test_moderation_after_content_ends_with_content_filter() -> None:
    """A moderation error object once text went out is an output filter, as OpenAI reports it."""
    chunk = {"error": {"type": "content_filter", "message": "high risk"}}
    verdict = error_in_stream("kimi", chunk, Redactor(), flavor="moonshot", answered=True)
    assert verdict == "content_filter"
    before = error_in_stream("kimi", chunk, Redactor(), flavor="moonshot", answered=False)
    assert type(before) is UpstreamRejected


@pytest.mark.parametrize(
    ("flavor", "status", "body", "expected"),
    [
        (
            "moonshot",
            429,
            {"error": {"type": "exceeded_current_quota_error", "message": "suspended"}},
            UpstreamAuthFailed,
        ),
        (
            "moonshot",
            429,
            {"error": {"type": "rate_limit_reached_error", "message": "max RPM"}},
            UpstreamRateLimited,
        ),
        (
            "moonshot",
            429,
            {"error": {"type": "engine_overloaded_error", "message": "overloaded"}},
            UpstreamRateLimited,
        ),
        ("moonshot", 400, {"error": {"type": "content_filter"}}, UpstreamRejected),
        ("deepseek", 402, {"error": {"message": "Insufficient Balance"}}, UpstreamAuthFailed),
        ("deepseek", 503, {"error": {"message": "Server overloaded"}}, UpstreamError),
        ("zhipu", 429, {"error": {"code": "1113", "message": "欠费"}}, UpstreamAuthFailed),
        ("zhipu", 429, {"error": {"code": "1302", "message": "并发"}}, UpstreamRateLimited),
        ("zhipu", 400, {"error": {"code": "1301", "message": "敏感"}}, UpstreamRejected),
        ("dashscope", 400, {"error": {"code": "Arrearage"}}, UpstreamAuthFailed),
        ("dashscope", 400, {"error": {"code": "data_inspection_failed"}}, UpstreamRejected),
        ("dashscope", 429, {"error": {"code": "limit_requests"}}, UpstreamRateLimited),
        ("qianfan", 403, {"error": {"code": "system_unsafe"}}, UpstreamRejected),
        ("qianfan", 401, {"error": {"code": "invalid_model"}}, UpstreamAuthFailed),
        ("qianfan", 500, {"error": {"code": "internal_error"}}, UpstreamError),
        ("spark", 500, {"code": 10012, "message": "engine"}, UpstreamError),
        (None, 429, {"error": {"code": "insufficient_quota"}}, UpstreamAuthFailed),
        (None, 429, {"error": {"code": "rate_limit_exceeded"}}, UpstreamRateLimited),
        (None, 400, {"error": {"message": "bad"}}, UpstreamRejected),
        (None, 504, {"error": {"message": "slow"}}, UpstreamTimeout),
    ],
)
def test_http_errors_read_the_providers_own_codes(
    flavor: str | None, status: int, body: object, expected: type[UpstreamError]
) -> None:
    """Non-2xx answers go through the same code table as in-stream errors."""
    error = error_for_status("p", status, orjson.dumps(body), "2", Redactor(), flavor=flavor)
    assert type(error) is expected
    if expected is UpstreamRateLimited:
        assert error.retry_after_s == 2.0
