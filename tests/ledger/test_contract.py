"""The `Store` contract, run against every store: memory, SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from estuary.auth.keys import generate_key
from estuary.core.policy import KeyPolicy, KeyRecord
from estuary.ledger import (
    LedgerRecord,
    SettledRow,
    Store,
    UsageDimension,
    UsageFilter,
    UsageTotal,
)
from tests.ledger.helpers import INSTANCE, T0, Database, opened, settled

DAY1 = datetime(2024, 3, 1, tzinfo=UTC)
DAY2 = datetime(2024, 3, 2, tzinfo=UTC)
PLUS8 = timezone(timedelta(hours=8))
Totals = tuple[int, int, int, int, int]  # requests, errors, prompt, completion, cost
Expected = list[tuple[tuple[str | None, ...], Totals]]  # (group values, totals) in order


async def restart(database: Database, store: Store, instance: str) -> tuple[Store, int]:
    """What a new process does: a new store on the same database, started as `instance`.

    The memory store cannot outlive its object, so it is started again instead.
    """
    if database.backend == "memory":
        return store, await store.start(instance)
    await store.aclose()
    again = database.store()
    return again, await again.start(instance)


def assert_utc(value: datetime | None) -> None:
    assert value is not None
    assert value.utcoffset() == timedelta(0)


async def test_an_opened_row_reads_back_open(store: Store) -> None:
    """A row just opened is there, with status open and nothing settled."""
    row = opened("req_1", end_user="alice")
    await store.open(row)
    assert await store.get("req_1") == LedgerRecord(opened=row, status="open", settled=None)
    assert await store.get("req_unknown") is None


async def test_every_settled_field_round_trips_exactly(store: Store) -> None:
    """Datetimes come back UTC-aware, unknown tokens stay None, 0 stays 0, failures a tuple."""
    started = datetime(2024, 3, 1, 23, 59, 59, 999999, tzinfo=PLUS8)  # not UTC on the way in
    row = opened("req_1", started_at=started, end_user="用户-1")
    done = SettledRow(
        request_id="req_1",
        ended_at=started + timedelta(microseconds=1_234_567),
        status="error",
        finish_reason=None,
        provider="kimi",
        upstream_model="moonshot-v1-8k",
        prompt_tokens=None,
        completion_tokens=0,
        token_source="partial",
        cost_micro=9_007_199_254_740_993,  # beyond 2**53 and 2**32: BIGINT, exact
        error_code="upstream_timeout",
        ttft_ms=None,
        duration_ms=1234.5678901234,
        attempts=3,
        failures=("kimi/moonshot-v1-8k: upstream_error", "local/llama3: upstream_timeout"),
    )
    await store.open(row)
    await store.settle(done)
    record = await store.get("req_1")
    assert record == LedgerRecord(opened=row, status="error", settled=done)
    assert record.settled is not None
    assert_utc(record.opened.started_at)
    assert_utc(record.settled.ended_at)
    assert record.settled.prompt_tokens is None
    assert record.settled.completion_tokens == 0
    assert record.settled.failures == done.failures
    assert record.settled.target == "kimi/moonshot-v1-8k"


async def test_a_settle_without_any_answer_keeps_everything_unknown(store: Store) -> None:
    """No upstream answered: provider, tokens, cost and time to first token stay None."""
    await store.open(opened("req_1"))
    done = settled("req_1", status="error", target=None, prompt_tokens=None, completion_tokens=None)
    done = replace(done, cost_micro=None, ttft_ms=None, attempts=0)
    await store.settle(done)
    assert await store.get("req_1") == LedgerRecord(
        opened=opened("req_1"), status="error", settled=done
    )


async def test_a_second_settle_keeps_the_first(store: Store) -> None:
    """Settling a closed row again changes nothing."""
    await store.open(opened("req_1"))
    first = settled("req_1", status="canceled", prompt_tokens=1, completion_tokens=2)
    await store.settle(first)
    await store.settle(settled("req_1", status="completed", prompt_tokens=100))
    record = await store.get("req_1")
    assert record is not None
    assert (record.status, record.settled) == ("canceled", first)


async def test_a_row_queued_with_open_soon_is_written_before_its_settle(store: Store) -> None:
    """`open_soon` queues at once: a settle sent before its commit still finds the row."""
    pending = store.open_soon(opened("req_soon"))
    close = asyncio.ensure_future(store.settle(settled("req_soon", completion_tokens=7)))
    await pending
    await close
    record = await store.get("req_soon")
    assert record is not None
    assert record.settled is not None
    assert (record.status, record.settled.completion_tokens) == ("completed", 7)
    with pytest.raises(ValueError, match="already in the ledger"):
        await store.open_soon(opened("req_soon"))


async def test_settling_an_unknown_row_is_ignored_and_writing_goes_on(store: Store) -> None:
    """A settle for a row that was never opened neither fails nor stops later writes."""
    await store.settle(settled("req_never_opened"))
    assert await store.get("req_never_opened") is None
    await store.open(opened("req_2"))
    await store.settle(settled("req_2"))
    record = await store.get("req_2")
    assert record is not None
    assert record.status == "completed"


async def test_opening_a_request_id_twice_is_refused(store: Store) -> None:
    """A second open of the same id raises ValueError and leaves the first row as it was."""
    await store.open(opened("req_1", alias="first"))
    with pytest.raises(ValueError, match="already in the ledger"):
        await store.open(opened("req_1", alias="second"))
    record = await store.get("req_1")
    assert record is not None
    assert record.opened.alias == "first"


async def test_naive_datetimes_are_refused(store: Store) -> None:
    """The ledger speaks UTC instants: a datetime without a timezone is a ValueError."""
    with pytest.raises(ValueError, match="timezone"):
        await store.open(opened("req_1", started_at=datetime(2024, 3, 1, 10, 0)))
    with pytest.raises(ValueError, match="timezone"):
        await store.usage(UsageFilter(since=datetime(2024, 3, 1)))


async def test_start_interrupts_only_this_instances_open_rows(database: Database) -> None:
    """A new start of instance A marks A's open rows interrupted, says how many, and stops there."""
    store = database.store()
    await store.start("a")
    for n in range(3):
        await store.open(opened(f"a_open_{n}", instance="a"))
    await store.open(opened("a_done", instance="a"))
    await store.settle(settled("a_done"))
    await store.open(opened("b_open", instance="b"))
    store, count = await restart(database, store, "a")
    try:
        assert count == 3
        statuses = {rid: await store.get(rid) for rid in ("a_open_0", "a_done", "b_open")}
        assert {rid: r.status for rid, r in statuses.items() if r} == {
            "a_open_0": "interrupted",
            "a_done": "completed",
            "b_open": "open",
        }
        assert (await store.usage(UsageFilter(), by=["status"]))[1].group == {
            "status": "interrupted"
        }
        store, count = await restart(database, store, "a")
        assert count == 0
        await store.settle(settled("a_open_1"))  # an interrupted row stays interrupted
        record = await store.get("a_open_1")
        assert record is not None
        assert (record.status, record.settled) == ("interrupted", None)
    finally:
        await store.aclose()


async def _write_usage_rows(store: Store) -> None:
    """Five rows over two UTC days, two keys, two aliases, two targets and four statuses."""
    rows = [
        (opened("r1", started_at=DAY2 - timedelta(microseconds=1), end_user="u1"),
         settled("r1", target="p1/m1", prompt_tokens=10, completion_tokens=20, cost_micro=100)),
        (opened("r2", started_at=DAY1, end_user="u2"),
         settled("r2", status="error", target="p2/m2", prompt_tokens=5, completion_tokens=0,
                 cost_micro=7)),
        (opened("r3", started_at=DAY2, alias="code"),
         settled("r3", status="canceled", target="p2/m2", prompt_tokens=3, completion_tokens=4,
                 cost_micro=30)),
        (opened("r4", started_at=datetime(2024, 3, 3, 7, 30, tzinfo=PLUS8), key_id="key_b",
                end_user="u1"),  # 2024-03-02 23:30 UTC
         settled("r4", target="p1/m1", prompt_tokens=1, completion_tokens=2, cost_micro=1000)),
        (opened("r5", started_at=DAY2 + timedelta(hours=1), key_id="key_b", alias="code"), None),
    ]  # fmt: skip
    for row, done in rows:
        await store.open(row)
        if done is not None:
            await store.settle(done)


def _as_dict(totals: list[UsageTotal]) -> Expected:
    return [
        (
            tuple(t.group.values()),
            (t.requests, t.errors, t.prompt_tokens, t.completion_tokens, t.cost_micro),
        )
        for t in totals
    ]


USAGE_CASES: list[tuple[list[UsageDimension], Expected]] = [
    ([], [((), (5, 1, 19, 26, 1137))]),
    (["day"], [(("2024-03-01",), (2, 1, 15, 20, 107)), (("2024-03-02",), (3, 0, 4, 6, 1030))]),
    (["alias"], [(("chat",), (3, 1, 16, 22, 1107)), (("code",), (2, 0, 3, 4, 30))]),
    (
        ["target"],
        [((None,), (1, 0, 0, 0, 0)), (("p1/m1",), (2, 0, 11, 22, 1100)),
         (("p2/m2",), (2, 1, 8, 4, 37))],
    ),
    (["key"], [(("key_a",), (3, 1, 18, 24, 137)), (("key_b",), (2, 0, 1, 2, 1000))]),
    (
        ["user"],
        [((None,), (2, 0, 3, 4, 30)), (("u1",), (2, 0, 11, 22, 1100)), (("u2",), (1, 1, 5, 0, 7))],
    ),
    (
        ["status"],
        [
            (("canceled",), (1, 0, 3, 4, 30)),
            (("completed",), (2, 0, 11, 22, 1100)),
            (("error",), (1, 1, 5, 0, 7)),
            (("open",), (1, 0, 0, 0, 0)),
        ],
    ),
    (
        ["key", "day"],
        [
            (("key_a", "2024-03-01"), (2, 1, 15, 20, 107)),
            (("key_a", "2024-03-02"), (1, 0, 3, 4, 30)),
            (("key_b", "2024-03-02"), (2, 0, 1, 2, 1000)),
        ],
    ),
    (
        ["user", "alias", "target"],
        [
            ((None, "code", None), (1, 0, 0, 0, 0)),
            ((None, "code", "p2/m2"), (1, 0, 3, 4, 30)),
            (("u1", "chat", "p1/m1"), (2, 0, 11, 22, 1100)),
            (("u2", "chat", "p2/m2"), (1, 1, 5, 0, 7)),
        ],
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("by", "expected"), USAGE_CASES, ids=["+".join(by) or "total" for by, _ in USAGE_CASES]
)
async def test_usage_groups_by_each_dimension(
    store: Store, by: list[UsageDimension], expected: Expected
) -> None:
    """Totals per group, sorted by the group values (None first), for each dimension and mixes."""
    await _write_usage_rows(store)
    totals = await store.usage(UsageFilter(), by=by)
    assert _as_dict(totals) == expected
    assert all(list(t.group) == by for t in totals)


FILTER_CASES: list[tuple[UsageFilter, list[UsageDimension], Expected]] = [
    (UsageFilter(since=DAY2), [], [((), (3, 0, 4, 6, 1030))]),  # `since` is inclusive
    (UsageFilter(until=DAY2), [], [((), (2, 1, 15, 20, 107))]),  # `until` is exclusive
    (UsageFilter(since=DAY1, until=DAY2 + timedelta(hours=1)), ["status"],
     [(("canceled",), (1, 0, 3, 4, 30)), (("completed",), (1, 0, 10, 20, 100)),
      (("error",), (1, 1, 5, 0, 7))]),  # r5 starts exactly at `until`: not counted
    (UsageFilter(key_id="key_b"), [], [((), (2, 0, 1, 2, 1000))]),
    (UsageFilter(end_user="u1"), ["key"],
     [(("key_a",), (1, 0, 10, 20, 100)), (("key_b",), (1, 0, 1, 2, 1000))]),
    (UsageFilter(key_id="key_a", end_user="u1", since=T0), ["day"],
     [(("2024-03-01",), (1, 0, 10, 20, 100))]),
    (UsageFilter(key_id="nobody"), [], [((), (0, 0, 0, 0, 0))]),  # one total, even over no rows
    (UsageFilter(key_id="nobody"), ["day"], []),
]  # fmt: skip


@pytest.mark.parametrize(("where", "by", "expected"), FILTER_CASES, ids=range(len(FILTER_CASES)))
async def test_usage_applies_every_filter(
    store: Store,
    where: UsageFilter,
    by: list[UsageDimension],
    expected: Expected,
) -> None:
    """since (inclusive), until (exclusive), key and user restrict the rows counted."""
    await _write_usage_rows(store)
    assert _as_dict(await store.usage(where, by=by)) == expected


async def test_usage_counts_interrupted_rows_as_errors(database: Database) -> None:
    """`errors` counts rows that ended in error and rows a crash interrupted."""
    store = database.store()
    await store.start("crashed")
    await store.open(opened("r1", instance="crashed"))
    await store.open(opened("r2", instance="crashed"))
    await store.settle(settled("r2", status="error"))
    store, _ = await restart(database, store, "crashed")
    try:
        (total,) = await store.usage(UsageFilter())
        assert (total.requests, total.errors) == (2, 2)
    finally:
        await store.aclose()


async def test_usage_refuses_an_unknown_dimension(store: Store) -> None:
    """Asking to group by a dimension no store knows is a ValueError."""
    with pytest.raises(ValueError, match="unknown usage dimension"):
        await store.usage(UsageFilter(), by=["colour"])  # type: ignore[list-item]  # on purpose


async def test_spent_sums_the_cost_of_a_key_or_one_of_its_users(store: Store) -> None:
    """spent() is the cost of every row of a key (optionally of one end user); 0 when none."""
    await _write_usage_rows(store)
    assert await store.spent(key_id="key_a") == 137
    assert await store.spent(key_id="key_a", end_user="u1") == 100
    assert await store.spent(key_id="key_a", end_user="u2") == 7
    assert await store.spent(key_id="key_b") == 1000
    assert await store.spent(key_id="nobody") == 0


async def test_a_thousand_concurrent_requests_all_land_exactly(store: Store) -> None:
    """1,000 concurrent open+settle pairs give 1,000 completed rows and exact sums."""
    count = 1000

    async def one(n: int) -> None:
        await store.open(opened(f"bulk_{n}", key_id="bulk", end_user=f"u{n % 7}"))
        await store.settle(
            settled(f"bulk_{n}", prompt_tokens=n, completion_tokens=2 * n, cost_micro=n * 1_000_003)
        )

    async with asyncio.TaskGroup() as group:
        for n in range(count):
            group.create_task(one(n))
    (total,) = await store.usage(UsageFilter(key_id="bulk"), by=["status"])
    expected = sum(range(count))
    assert total.group == {"status": "completed"}
    assert (total.requests, total.errors) == (count, 0)
    assert (total.prompt_tokens, total.completion_tokens) == (expected, 2 * expected)
    assert total.cost_micro == expected * 1_000_003
    assert await store.spent(key_id="bulk") == expected * 1_000_003


def _key(name: str, created_at: datetime, **policy: object) -> tuple[str, KeyRecord]:
    return generate_key(name, KeyPolicy(**policy), now=created_at)  # type: ignore[arg-type]


async def test_keys_can_be_added_found_listed_and_revoked(store: Store) -> None:
    """The key store round-trips records, lists oldest first and revokes once."""
    policy = {
        "models": ("chat", "code"),
        "rpm": 60,
        "budget_micro": 5_000_000,
        "allow_system": False,
    }
    _, newer = _key("newer", T0 + timedelta(hours=1))
    _, older = _key("older", T0, **policy)
    older = replace(older, expires_at=T0 + timedelta(days=30, microseconds=5))
    await store.add_key(newer)
    await store.add_key(older)
    assert await store.find_key(older.digest) == older
    assert (await store.find_key(older.digest) or newer).policy.models == ("chat", "code")
    assert await store.find_key("0" * 64) is None
    assert await store.list_keys() == [older, newer]

    revoked_at = datetime(2024, 4, 1, 8, 0, tzinfo=PLUS8)
    assert await store.revoke_key(older.key_id, revoked_at) is True
    assert await store.revoke_key(older.key_id, revoked_at + timedelta(days=1)) is False
    assert await store.revoke_key("key_unknown", revoked_at) is False
    found = await store.find_key(older.digest)
    assert found == replace(older, revoked_at=revoked_at)
    assert found is not None
    assert_utc(found.revoked_at)
    assert not found.usable_at(revoked_at)


async def test_a_taken_key_id_or_digest_is_refused(store: Store) -> None:
    """add_key raises ValueError when the id or the digest is already stored."""
    _, record = _key("one", T0)
    await store.add_key(record)
    with pytest.raises(ValueError, match="already"):
        await store.add_key(replace(record, digest="f" * 64))
    with pytest.raises(ValueError, match="already"):
        await store.add_key(replace(record, key_id="key_other"))
    assert await store.list_keys() == [record]


async def test_a_store_reopened_on_the_same_database_sees_the_same_data(database: Database) -> None:
    """Rows and keys written by one store are there for the next one on the same database."""
    if database.backend == "memory":
        pytest.skip("the memory store keeps nothing beyond its own object")
    first = database.store()
    await first.start(INSTANCE)
    await first.open(opened("req_1"))
    await first.settle(settled("req_1"))
    await first.open(opened("req_2"))
    _, key = _key("kept", T0)
    await first.add_key(key)
    before = [await first.get("req_1"), await first.get("req_2")]
    await first.aclose()
    second = database.store()
    try:
        assert await second.start("another-instance") == 0
        assert [await second.get("req_1"), await second.get("req_2")] == before
        assert await second.list_keys() == [key]
    finally:
        await second.aclose()
