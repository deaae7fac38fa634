"""The limiter over the memory state store: reservations, settlement, budgets, concurrency."""

from __future__ import annotations

import asyncio

import pytest

from estuary.core.errors import BudgetExceeded, RateLimited
from estuary.core.policy import KeyPolicy, Principal
from estuary.core.prices import Price, Prices
from estuary.core.requests import ChatRequest
from estuary.limits.limiter import Limiter, LimitSettings
from estuary.state.memory import MemoryState

TARGET = "fake/model"


def request(max_tokens: int, text: str = "hello") -> ChatRequest:
    return ChatRequest(
        model="chat", messages=({"role": "user", "content": text},), max_tokens=max_tokens
    )


class FrozenClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(spent: int = 0, **settings: object) -> tuple[Limiter, FrozenClock]:
    clock = FrozenClock()

    async def lookup(key_id: str, end_user: str | None) -> int:
        return spent

    state = MemoryState(clock=clock)
    prices = Prices({TARGET: Price(1_000.0, 2_000.0)})  # 1,000 / 2,000 micro-units per token
    return Limiter(
        state,
        spent=lookup,
        prices=prices,
        settings=LimitSettings(**settings),  # type: ignore[arg-type]
    ), clock


async def test_tokens_per_minute_holds_across_parallel_admissions() -> None:
    lim, _ = limiter()
    key = Principal(key_id="k", policy=KeyPolicy(tpm=1000))
    # Each reserves 2 (prompt) + 300 tokens: three fit in 1,000, the fourth does not.
    results = await asyncio.gather(
        *(lim.admit(key, [TARGET], request(300)) for _ in range(4)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, RateLimited)]
    assert len(refused) == 1
    assert (refused[0].retry_after_s or 0) >= 1
    assert "tokens per minute" in refused[0].message


async def test_settling_refunds_unused_tokens_and_debits_overruns() -> None:
    lim, _ = limiter()
    key = Principal(key_id="k", policy=KeyPolicy(tpm=1000))
    first = await lim.admit(key, [TARGET], request(400))
    second = await lim.admit(key, [TARGET], request(400))
    with pytest.raises(RateLimited):
        await lim.admit(key, [TARGET], request(400))
    await first.settle(2, 10, None)  # used 12 of its 402: 390 back
    third = await lim.admit(key, [TARGET], request(400))
    # An answer far longer than reserved is debited as it streams: the next one must wait.
    await second.progress(completion_tokens=700)
    with pytest.raises(RateLimited):
        await lim.admit(key, [TARGET], request(10))
    await third.release()


async def test_requests_per_minute_refill_with_time() -> None:
    lim, clock = limiter()
    key = Principal(key_id="k", policy=KeyPolicy(rpm=2))
    await lim.admit(key, [TARGET], request(1))
    await lim.admit(key, [TARGET], request(1))
    with pytest.raises(RateLimited) as caught:
        await lim.admit(key, [TARGET], request(1))
    assert caught.value.retry_after_s == 30  # one request per 30 s comes back
    clock.now += 30
    await lim.admit(key, [TARGET], request(1))


async def test_concurrency_slot_is_freed_by_settle() -> None:
    lim, _ = limiter()
    key = Principal(key_id="k", policy=KeyPolicy(concurrency=1))
    held = await lim.admit(key, [TARGET], request(1))
    with pytest.raises(RateLimited, match="open streams"):
        await lim.admit(key, [TARGET], request(1))
    await held.settle(1, 1, 3000)
    await held.settle(1, 1, 3000)  # a second settle frees nothing more
    again = await lim.admit(key, [TARGET], request(1))
    with pytest.raises(RateLimited):
        await lim.admit(key, [TARGET], request(1))
    await again.release()


async def test_budget_reserves_cost_so_parallel_streams_cannot_overspend() -> None:
    lim, _ = limiter(spent=0)
    # Each request may cost 2 × 1,000 + 100 × 2,000 = 202,000 micro-units; the budget holds 4.
    key = Principal(key_id="k", policy=KeyPolicy(budget_micro=850_000))
    results = await asyncio.gather(
        *(lim.admit(key, [TARGET], request(100)) for _ in range(10)), return_exceptions=True
    )
    admitted = [r for r in results if not isinstance(r, BaseException)]
    assert len(admitted) == 4
    assert all(isinstance(r, BudgetExceeded) for r in results if isinstance(r, BaseException))
    for reservation in admitted:
        await reservation.settle(2, 100, 202_000)
    # 808,000 spent: 42,000 left, not enough for another 202,000, enough for 4,000.
    with pytest.raises(BudgetExceeded, match=r"0\.042000 left"):
        await lim.admit(key, [TARGET], request(100))
    small = await lim.admit(key, [TARGET], request(1))
    await small.settle(2, 1, 4_000)


async def test_budget_already_spent_in_the_ledger_refuses_at_once() -> None:
    lim, _ = limiter(spent=5_000_000)
    key = Principal(key_id="k", policy=KeyPolicy(budget_micro=5_000_000))
    with pytest.raises(BudgetExceeded, match=r"5\.000000 of 5\.000000"):
        await lim.admit(key, [TARGET], request(1))


async def test_budget_overrun_stop_tells_the_stream_to_end() -> None:
    lim, _ = limiter(budget_overrun="stop")
    key = Principal(key_id="k", policy=KeyPolicy(budget_micro=1_000_000))
    reservation = await lim.admit(key, [TARGET], request(10))
    assert reservation.watches
    assert await reservation.progress(completion_tokens=100)  # 202,000: within budget
    assert not await reservation.progress(completion_tokens=600)  # 1,202,000: over


async def test_budget_overrun_finish_lets_the_stream_go_on() -> None:
    lim, _ = limiter(budget_overrun="finish")
    key = Principal(key_id="k", policy=KeyPolicy(budget_micro=1_000_000))
    reservation = await lim.admit(key, [TARGET], request(10))
    assert await reservation.progress(completion_tokens=600)


async def test_end_users_are_limited_apart_and_anonymous_callers_per_address() -> None:
    lim, _ = limiter(anonymous_rpm=1, user=KeyPolicy(rpm=1))
    alice = Principal(key_id="jwt", end_user="alice", user=KeyPolicy(rpm=1))
    bob = Principal(key_id="jwt", end_user="bob", user=KeyPolicy(rpm=1))
    await lim.admit(alice, [TARGET], request(1))
    await lim.admit(bob, [TARGET], request(1))
    with pytest.raises(RateLimited, match="this user"):
        await lim.admit(alice, [TARGET], request(1))
    await lim.admit(Principal(key_id="anonymous", client_ip="10.0.0.1"), [TARGET], request(1))
    await lim.admit(Principal(key_id="anonymous", client_ip="10.0.0.2"), [TARGET], request(1))
    with pytest.raises(RateLimited, match="this address"):
        await lim.admit(Principal(key_id="anonymous", client_ip="10.0.0.1"), [TARGET], request(1))


async def test_a_refused_admission_holds_nothing() -> None:
    lim, _ = limiter()
    key = Principal(key_id="k", policy=KeyPolicy(concurrency=1, budget_micro=10))
    with pytest.raises(BudgetExceeded):
        await lim.admit(key, [TARGET], request(100))
    # The slot taken before the budget check was given back.
    free = Principal(key_id="k", policy=KeyPolicy(concurrency=1))
    held = await lim.admit(free, [TARGET], request(1))
    await held.release()


async def test_a_request_larger_than_the_whole_minute_is_refused_with_advice() -> None:
    lim, _ = limiter()
    key = Principal(key_id="k", policy=KeyPolicy(tpm=100))
    with pytest.raises(RateLimited, match="lower max_tokens"):
        await lim.admit(key, [TARGET], request(500))
