"""The `StateStore` contract, for the memory store and the Redis store alike.

Tests named `..._across_instances` need two instances of one deployment, so they run on Redis
only (two `RedisState` objects on one prefix).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from estuary.state.base import Bucket, EventLog, StateStore
from estuary.state.redis import RedisState
from tests.state.helpers import KINDS, REDIS_URL, Kind, Stores, eventually, stores_of

pytestmark = pytest.mark.timeout(20)


@pytest.fixture(params=KINDS)
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[Stores]:
    """A factory of stores of each kind."""
    kind: Kind = request.param
    async with stores_of(kind) as made:
        yield made


@pytest.fixture
async def state(stores: Stores) -> StateStore:
    """One started store of each kind."""
    return await stores.new()


@pytest.fixture
async def redis_stores() -> AsyncIterator[Stores]:
    """A factory of Redis stores of one deployment."""
    async with stores_of("redis") as made:
        yield made


def frame(seq: int) -> bytes:
    return f'id: r:{seq}\ndata: {{"n": {seq}}}\n\n'.encode()


async def read_all(state: StateStore, request_id: str, owner: str, after: int) -> list[bytes]:
    frames = await state.read_log(request_id, owner, after)
    assert frames is not None
    return [f async for f in frames]


# -- buckets ------------------------------------------------------------------------------------


async def test_take_succeeds_within_capacity_then_says_how_long_to_wait(
    state: StateStore,
) -> None:
    """A bucket gives up to its capacity, then names itself and the wait for what is missing."""
    rpm = Bucket("rpm:a", capacity=3, per_s=0.05)
    assert await state.take([(rpm, 2)]) is None
    short = await state.take([(rpm, 3)])
    assert short is not None
    assert short.name == "rpm:a"
    assert 0 < short.wait_s <= 2 / 0.05  # 2 missing at 0.05/s, minus what refilled meanwhile
    assert short.wait_s > 2 / 0.05 - 5


async def test_take_is_all_or_nothing(state: StateStore) -> None:
    """When one bucket is short, none of the buckets is taken from."""
    a, b = Bucket("a", capacity=5, per_s=0), Bucket("b", capacity=1, per_s=0)
    short = await state.take([(a, 4), (b, 2)])
    assert short is not None
    assert short.name == "b"
    assert await state.take([(a, 5), (b, 1)]) is None


async def test_a_bucket_that_never_refills_says_wait_forever(state: StateStore) -> None:
    """`per_s == 0`: the wait is infinite."""
    slots = Bucket("conc:a", capacity=1, per_s=0)
    assert await state.take([(slots, 1)]) is None
    short = await state.take([(slots, 1)])
    assert short is not None
    assert short.wait_s == math.inf


async def test_give_puts_back_up_to_capacity(state: StateStore) -> None:
    """Given back amounts can be taken again, but never more than the capacity."""
    slots = Bucket("conc:b", capacity=5, per_s=0)
    assert await state.take([(slots, 5)]) is None
    await state.give(slots, 3)
    assert await state.take([(slots, 3)]) is None
    assert await state.take([(slots, 1)]) is not None
    await state.give(slots, 100)
    assert await state.take([(slots, 6)]) is not None
    assert await state.take([(slots, 5)]) is None


async def test_a_negative_give_goes_below_zero(state: StateStore) -> None:
    """A debit is taken even when the bucket does not hold it; later gives repay it first."""
    tpm = Bucket("tpm:a", capacity=5, per_s=0)
    await state.give(tpm, -7)  # level -2
    assert await state.take([(tpm, 0.5)]) is not None
    await state.give(tpm, 2.5)  # level 0.5
    assert await state.take([(tpm, 0.5)]) is None
    assert await state.take([(tpm, 0.5)]) is not None


async def test_a_bucket_refills_at_its_rate(state: StateStore) -> None:
    """An emptied bucket that refills 20/s is full again after a fifth of a second."""
    rps = Bucket("rps:a", capacity=2, per_s=20)
    assert await state.take([(rps, 2)]) is None
    short = await state.take([(rps, 2)])
    assert short is not None
    assert short.wait_s <= 0.1
    await asyncio.sleep(0.25)
    assert await state.take([(rps, 2)]) is None


@pytest.mark.redis
async def test_a_full_bucket_leaves_no_key_and_a_used_one_expires_when_full(
    redis_stores: Stores,
) -> None:
    """Redis: a used bucket's key expires when it would be full; giving back to full deletes it."""
    state = await redis_stores.new()
    client = Redis.from_url(REDIS_URL)
    key = f"{redis_stores.prefix}bucket:rpm:x"
    try:
        rpm = Bucket("rpm:x", capacity=10, per_s=1)
        assert await state.take([(rpm, 4)]) is None
        assert 3_000 < await client.pttl(key) <= 4_001
        await state.give(rpm, 4)
        assert await client.exists(key) == 0
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_buckets_are_shared_across_instances(redis_stores: Stores) -> None:
    """Redis: what one instance takes, another cannot."""
    a, b = await redis_stores.new(), await redis_stores.new()
    slots = Bucket("conc:shared", capacity=2, per_s=0)
    assert await a.take([(slots, 2)]) is None
    assert await b.take([(slots, 1)]) is not None
    await a.give(slots, 1)
    assert await b.take([(slots, 1)]) is None


# -- counters and tickets -----------------------------------------------------------------------


async def test_add_returns_the_new_value_from_zero(state: StateStore) -> None:
    """A counter starts at 0, adds up, and can come back to 0."""
    assert await state.add("inflight:a", 1.5) == 1.5
    assert await state.add("inflight:a", 2) == 3.5
    assert await state.add("inflight:a", -3.5) == 0
    assert await state.add("inflight:a", 1) == 1


async def test_a_ticket_is_redeemed_once(state: StateStore) -> None:
    """The first take gets the payload; the second and an unknown ticket get None."""
    await state.put_ticket("t1", b"payload", ttl_s=60)
    assert await state.take_ticket("t1") == b"payload"
    assert await state.take_ticket("t1") is None
    assert await state.take_ticket("unknown") is None


async def test_a_ticket_expires(state: StateStore) -> None:
    """A ticket taken after its TTL is gone."""
    await state.put_ticket("t2", b"payload", ttl_s=0.1)
    await asyncio.sleep(0.3)
    assert await state.take_ticket("t2") is None


@pytest.mark.redis
async def test_a_ticket_is_redeemed_once_across_instances(redis_stores: Stores) -> None:
    """Redis: a ticket put on one instance is taken once, on any instance."""
    a, b = await redis_stores.new(), await redis_stores.new()
    await a.put_ticket("t3", b"p", ttl_s=60)
    assert await b.take_ticket("t3") == b"p"
    assert await a.take_ticket("t3") is None


# -- streams and cancel -------------------------------------------------------------------------


async def test_cancel_answers_by_owner_and_state(state: StateStore) -> None:
    """Unknown or another owner's stream: not_found; running: canceled (the future completes)."""
    canceled = await state.register_stream("r1", "key-a")
    assert await state.cancel_stream("nope", "key-a") == "not_found"
    assert await state.cancel_stream("r1", "key-b") == "not_found"
    assert not canceled.done()
    assert await state.cancel_stream("r1", "key-a") == "canceled"
    await asyncio.wait_for(canceled, 5)


async def test_a_finished_stream_answers_finished(state: StateStore) -> None:
    """After `finish_stream`, cancel answers finished and the future stays pending."""
    canceled = await state.register_stream("r2", "key-a")
    await state.finish_stream("r2")
    assert await state.cancel_stream("r2", "key-a") == "finished"
    assert await state.cancel_stream("r2", "key-b") == "not_found"
    await asyncio.sleep(0.1)
    assert not canceled.done()


@pytest.mark.redis
async def test_cancel_reaches_the_stream_across_instances(redis_stores: Stores) -> None:
    """Redis: a cancel sent to another instance completes the owner instance's future."""
    a, b = await redis_stores.new(), await redis_stores.new()
    canceled = await a.register_stream("r3", "key-a")
    assert await b.cancel_stream("r3", "key-b") == "not_found"
    assert await b.cancel_stream("r3", "key-a") == "canceled"
    await asyncio.wait_for(canceled, 5)
    await a.finish_stream("r3")
    assert await b.cancel_stream("r3", "key-a") == "finished"


# -- resume logs --------------------------------------------------------------------------------


def write(log: EventLog, first: int, last: int) -> None:
    for seq in range(first, last + 1):
        log.append(seq, frame(seq))


async def test_a_closed_log_is_read_from_any_point(state: StateStore) -> None:
    """After 0 every frame, after N the rest, after the last nothing; the sentinel ends it."""
    log = state.open_log("r4", "key-a", ttl_s=60)
    write(log, 1, 3)
    log.close()
    assert await read_all(state, "r4", "key-a", 0) == [frame(1), frame(2), frame(3)]
    assert await read_all(state, "r4", "key-a", 2) == [frame(3)]
    assert await read_all(state, "r4", "key-a", 3) == []


async def test_a_reader_follows_a_live_log_until_it_closes(state: StateStore) -> None:
    """A reader gets what is there, then each new frame, in order, and stops at the close."""
    log = state.open_log("r5", "key-a", ttl_s=60)
    write(log, 1, 2)
    frames = await state.read_log("r5", "key-a", 1)
    assert frames is not None
    got = [await anext(frames)]
    for seq in range(3, 6):
        log.append(seq, frame(seq))
        got.append(await asyncio.wait_for(anext(frames), 5))
    log.close()
    got += [f async for f in frames]
    assert got == [frame(seq) for seq in range(2, 6)]


async def test_followed_while_a_reader_iterates(state: StateStore) -> None:
    """`followed()` is true while a reader iterates, false before and after."""
    log = state.open_log("r6", "key-a", ttl_s=60)
    write(log, 1, 1)
    assert not await log.followed()
    frames = await state.read_log("r6", "key-a", 0)
    assert frames is not None
    assert await anext(frames) == frame(1)
    assert await log.followed()
    log.close()
    assert [f async for f in frames] == []
    assert not await log.followed()


async def test_followed_ends_when_a_reader_stops_early(state: StateStore) -> None:
    """A reader that stops before the end (closing its iterator) no longer counts."""
    log = state.open_log("r7", "key-a", ttl_s=60)
    write(log, 1, 2)
    frames = await state.read_log("r7", "key-a", 0)
    assert frames is not None
    assert await anext(frames) == frame(1)
    assert await log.followed()
    await frames.aclose()  # type: ignore[attr-defined]  # an async generator
    assert not await log.followed()


async def test_no_log_for_an_unknown_id_or_another_owner(state: StateStore) -> None:
    """`read_log` answers None for a log that does not exist or is not the caller's."""
    log = state.open_log("r8", "key-a", ttl_s=60)
    write(log, 1, 1)
    assert await state.read_log("nope", "key-a", 0) is None
    assert await state.read_log("r8", "key-b", 0) is None


async def test_a_closed_log_expires_after_its_ttl(state: StateStore) -> None:
    """A closed log can be read until `ttl_s` after its close, not after."""
    log = state.open_log("r9", "key-a", ttl_s=0.2)
    write(log, 1, 1)
    log.close()
    assert await read_all(state, "r9", "key-a", 0) == [frame(1)]
    await asyncio.sleep(0.5)
    assert await state.read_log("r9", "key-a", 0) is None


@pytest.mark.redis
async def test_a_log_is_read_live_across_instances(redis_stores: Stores) -> None:
    """Redis: another instance reads the log, follows it live, and makes it `followed()`."""
    a, b = await redis_stores.new(), await redis_stores.new()
    log = a.open_log("r10", "key-a", ttl_s=60)
    write(log, 1, 2)
    frames = await eventually(lambda: b.read_log("r10", "key-a", 0))
    assert [await anext(frames), await anext(frames)] == [frame(1), frame(2)]
    assert await log.followed()
    log.append(3, frame(3))
    assert await asyncio.wait_for(anext(frames), 5) == frame(3)
    log.close()
    assert [f async for f in frames] == []
    assert not await log.followed()
    assert await b.read_log("r10", "key-b", 0) is None


async def test_the_request_kept_with_a_log_is_claimed_once_and_goes_with_its_close(
    state: StateStore,
) -> None:
    """A running log's request is handed out once; a closed log's is gone."""
    state.open_log("r11", "key-a", ttl_s=60, request=b'{"message":"hi"}')
    state.open_log("r12", "key-a", ttl_s=60, request=b'{"message":"yo"}').close()
    await read_all(state, "r12", "key-a", 0)  # (Redis: the writes have landed)
    assert await state.claim_request("r11") == b'{"message":"hi"}'
    assert await state.claim_request("r11") is None
    assert await state.claim_request("r12") is None
    assert await state.claim_request("r-unknown") is None


async def test_a_request_is_claimed_by_one_instance_only(redis_stores: Stores) -> None:
    """Redis: of two instances claiming a dead stream's request, exactly one gets it."""
    a, b, c = await redis_stores.new(), await redis_stores.new(), await redis_stores.new()
    log = a.open_log("r13", "key-a", ttl_s=60, request=b"body")
    log.append(1, frame(1))
    await eventually(lambda: b.read_log("r13", "key-a", 0))
    claims = await asyncio.gather(b.claim_request("r13"), c.claim_request("r13"))
    assert sorted(claims, key=lambda x: x is None) == [b"body", None]


# -- bus ----------------------------------------------------------------------------------------


async def test_publish_reaches_subscribers_of_the_channel(state: StateStore) -> None:
    """A message reaches every callback of its channel, including ones added later."""
    first: list[str] = []
    second: list[str] = []
    state.subscribe("breaker", first.append)
    await state.publish("breaker", "open:a")
    await eventually(lambda: _nonempty(first))
    state.subscribe("breaker", second.append)
    state.subscribe("other", second.append)
    await state.publish("breaker", "closed:a")
    await eventually(lambda: _nonempty(second))
    assert first == ["open:a", "closed:a"]
    assert second == ["closed:a"]


@pytest.mark.redis
async def test_publish_reaches_every_instance(redis_stores: Stores) -> None:
    """Redis: a message published on one instance reaches subscribers on both."""
    a, b = await redis_stores.new(), await redis_stores.new()
    heard_a: list[str] = []
    heard_b: list[str] = []
    a.subscribe("keys", heard_a.append)
    b.subscribe("keys", heard_b.append)
    await b.publish("keys", "revoked:k1")
    await eventually(lambda: _nonempty(heard_a))
    await eventually(lambda: _nonempty(heard_b))
    assert heard_a == heard_b == ["revoked:k1"]


async def test_ping_answers(state: StateStore) -> None:
    """A reachable store answers `ping`."""
    await state.ping()


@pytest.mark.redis
async def test_a_redis_store_is_a_state_store() -> None:
    """`RedisState` satisfies the protocol (checked by mypy here)."""
    store: StateStore = RedisState(REDIS_URL)
    await store.aclose()


async def _nonempty(items: list[str]) -> list[str] | None:
    return items or None
