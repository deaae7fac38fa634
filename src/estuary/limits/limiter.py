"""Rate limits and spend budgets that know a request is a stream.

At admission a request reserves what it may cost: one request, its estimated tokens (the prompt,
estimated, plus `max_tokens` or a default) and one concurrent-stream slot per limited subject (the
key, the end user, or an anonymous caller's address), all or nothing, through the state store's
token buckets; and its estimated cost against each spend budget. While it streams,
`Reservation.progress()` debits tokens beyond the reservation, so parallel streams see each other's
spending. `settle()` replaces the reservation with the real usage and frees the slot. So parallel
streams cannot overspend: whatever is admitted has been paid for in advance, and only an answer
longer than its reservation can cross a limit — which `budget_overrun` then decides.

Must not import the HTTP layer, routing, auth or the ledger.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

from estuary.core.errors import BudgetExceeded, RateLimited
from estuary.core.policy import UNRESTRICTED, KeyPolicy, Principal
from estuary.core.prices import Price, Prices
from estuary.core.requests import UpstreamRequest, prompt_text
from estuary.core.usage import estimate_tokens
from estuary.state.base import Bucket, StateStore

__all__ = ["LimitSettings", "Limiter", "Reservation"]

_SPENT_CACHE: Final = 100_000
SpentLookup = Callable[[str, str | None], Awaitable[int]]
_WHAT: Final = MappingProxyType(
    {"rpm": "requests per minute", "tpm": "tokens per minute", "conc": "open streams"}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitSettings:
    """`[limits]`: defaults for end users and anonymous callers, and the overrun policy."""

    default_completion_tokens: int = 1024  # reserved when a request sets no max_tokens
    anonymous_rpm: int | None = 60  # per client address
    anonymous_concurrency: int | None = 10
    user: KeyPolicy = UNRESTRICTED  # limits for each end user unless their JWT sets its own
    budget_overrun: Literal["finish", "stop"] = "finish"


@dataclass(frozen=True, slots=True)
class _Subject:
    """Something limited: a key, an end user of a key, or an anonymous address."""

    id: str  # "key:<key_id>", "user:<key_id>:<sub>" or "ip:<address>"
    label: str  # for error messages: "this key", "this user", "this address"
    limits: KeyPolicy
    key_id: str
    end_user: str | None


class Limiter:
    """Admits requests against the limits of every subject they are billed to."""

    def __init__(
        self,
        state: StateStore,
        *,
        spent: SpentLookup,
        prices: Prices,
        settings: LimitSettings | None = None,
    ) -> None:
        self.state = state
        self._spent_lookup = spent
        self._prices = prices
        self.settings = settings or LimitSettings()
        # subject id -> settled spend, read from the ledger once, then kept current here
        self._spent: OrderedDict[str, int] = OrderedDict()

    def reprice(self, prices: Prices) -> None:
        """Reserve at `prices` from now on (a config reload); reservations keep their price."""
        self._prices = prices

    async def admit(
        self, principal: Principal, targets: Sequence[str], request: UpstreamRequest
    ) -> Reservation:
        """Reserve for `request`, or raise `RateLimited` / `BudgetExceeded`."""
        subjects = self._subjects(principal)
        prompt = estimate_tokens(prompt_text(request))
        completion = request.max_tokens or self.settings.default_completion_tokens
        takes = _takes(subjects, prompt + completion)
        if takes:
            short = await self.state.take(takes)
            if short is not None:
                raise _rate_limited(subjects, short.name, short.wait_s)
        price = self._prices.dearest(targets)
        reservation = Reservation(
            self, subjects, takes, price=price, prompt=prompt, completion=completion
        )
        try:
            await reservation.reserve_budget()
        except BaseException:
            await reservation.release()
            raise
        return reservation

    async def budget_used(self, principal: Principal) -> float:
        """The largest share (0–1+) of any of the caller's budgets already spent."""
        shares = [
            await self.spent(subject) / budget
            for subject in self._subjects(principal)
            if (budget := subject.limits.budget_micro)
        ]
        return max(shares, default=0.0)

    async def spent(self, subject: _Subject) -> int:
        """Settled spend of a subject: from the ledger once, then kept up to date here."""
        cached = self._spent.get(subject.id)
        if cached is None:
            cached = await self._spent_lookup(subject.key_id, subject.end_user)
            self._spent[subject.id] = cached
            if len(self._spent) > _SPENT_CACHE:
                self._spent.popitem(last=False)  # the least recently read: read again if needed
        self._spent.move_to_end(subject.id)
        return cached

    def add_spent(self, subject: _Subject, cost: int) -> None:
        if subject.id in self._spent:
            self._spent[subject.id] += cost

    def _subjects(self, principal: Principal) -> list[_Subject]:
        subjects = []
        if principal.client_ip is not None:
            settings = self.settings
            anonymous = KeyPolicy(
                rpm=settings.anonymous_rpm, concurrency=settings.anonymous_concurrency
            )
            ip = principal.client_ip
            subjects.append(_Subject(f"ip:{ip}", "this address", anonymous, "anonymous", None))
        key = principal.key_id
        subjects.append(_Subject(f"key:{key}", "this key", principal.policy, key, None))
        if principal.end_user is not None:
            limits = principal.user or self.settings.user
            user = principal.end_user
            subjects.append(_Subject(f"user:{key}:{user}", "this user", limits, key, user))
        return subjects


class Reservation:
    """What one admitted request holds against its limits, until it is settled."""

    def __init__(
        self,
        limiter: Limiter,
        subjects: list[_Subject],
        takes: list[tuple[Bucket, float]],
        *,
        price: Price | None,
        prompt: int,
        completion: int,
    ) -> None:
        self._limiter = limiter
        self._state = limiter.state
        self._subjects = subjects
        self._takes = takes
        self._price = price
        self._prompt = prompt
        self._tokens = prompt + completion  # tokens taken from tokens/min buckets so far
        self._cost = price.cost_micro(prompt, completion) if price is not None else 0
        self._budgeted = [s for s in subjects if s.limits.budget_micro is not None]
        self._in_flight = 0  # cost added to the subjects' in-flight counters
        self._released = False
        # Whether `progress` has anything to do: a tokens/min limit or a budget.
        self.watches = bool(self._budgeted) or any(s.limits.tpm for s in subjects)

    async def reserve_budget(self) -> None:
        """Hold the estimated cost against every budget; refuse if one cannot cover it."""
        held_for: list[_Subject] = []
        try:
            for subject in self._budgeted:
                budget = subject.limits.budget_micro or 0
                spent = await self._limiter.spent(subject)
                held = await self._state.add(f"inflight:{subject.id}", self._cost)
                held_for.append(subject)
                if spent >= budget:
                    raise BudgetExceeded(
                        f"the spend budget of {subject.label} is used up"
                        f" ({_money(spent)} of {_money(budget)} spent)"
                    )
                if spent + held > budget:
                    raise BudgetExceeded(
                        f"the spend budget of {subject.label} cannot cover this request now:"
                        f" {_money(budget - spent)} left, {_money(held - self._cost)} held by"
                        f" open streams, this one may cost {_money(self._cost)}; lower max_tokens"
                    )
        except BaseException:
            for subject in held_for:
                await self._state.add(f"inflight:{subject.id}", -self._cost)
            self._budgeted = []
            raise
        self._in_flight = self._cost

    async def progress(self, completion_tokens: int) -> bool:
        """Debit what the answer has used beyond its reservation; False to stop it (budget)."""
        state = self._state
        extra = self._prompt + completion_tokens - self._tokens
        if extra > 0:
            self._tokens += extra
            for bucket, _ in self._takes:
                if bucket.name.startswith("tpm:"):
                    await state.give(bucket, -extra)
        if not self._budgeted or self._price is None:
            return True
        cost = self._price.cost_micro(self._prompt, completion_tokens)
        if cost <= self._in_flight:
            return True
        delta, self._in_flight = cost - self._in_flight, cost
        over = False
        for subject in self._budgeted:
            held = await state.add(f"inflight:{subject.id}", delta)
            spent = await self._limiter.spent(subject)
            over = over or spent + held > (subject.limits.budget_micro or 0)
        return not (over and self._limiter.settings.budget_overrun == "stop")

    async def settle(
        self, prompt_tokens: int | None, completion_tokens: int | None, cost_micro: int | None
    ) -> None:
        """Replace the reservation with what was used; free the concurrency slot. Once only."""
        if self._released:
            return
        used = (self._prompt if prompt_tokens is None else prompt_tokens) + (completion_tokens or 0)
        state = self._state
        for bucket, _ in self._takes:
            if bucket.name.startswith("tpm:"):
                await state.give(bucket, self._tokens - used)  # a refund, or a further debit
        await self.release(keep_tokens=True)
        for subject in self._budgeted:
            self._limiter.add_spent(subject, cost_micro or 0)

    async def release(self, *, keep_tokens: bool = False) -> None:
        """Give back everything held (a request that never ran), or just the slot and budget."""
        if self._released:
            return
        self._released = True
        state = self._state
        for bucket, amount in self._takes:
            if bucket.name.startswith("conc:") or not keep_tokens:
                await state.give(bucket, amount)
        for subject in self._budgeted:
            await state.add(f"inflight:{subject.id}", -self._in_flight)


def _takes(subjects: list[_Subject], tokens: int) -> list[tuple[Bucket, float]]:
    takes: list[tuple[Bucket, float]] = []
    for subject in subjects:
        limits = subject.limits
        if limits.rpm:
            takes.append((Bucket(f"rpm:{subject.id}", limits.rpm, limits.rpm / 60), 1))
        if limits.tpm:
            if tokens > limits.tpm:
                raise RateLimited(
                    f"this request may use {tokens} tokens (prompt + max_tokens), more than the"
                    f" {limits.tpm} tokens per minute allowed to {subject.label}; lower max_tokens",
                    retry_after_s=60,
                )
            takes.append((Bucket(f"tpm:{subject.id}", limits.tpm, limits.tpm / 60), tokens))
        if limits.concurrency:
            takes.append((Bucket(f"conc:{subject.id}", limits.concurrency, 0), 1))
    return takes


def _rate_limited(subjects: list[_Subject], bucket: str, wait_s: float) -> RateLimited:
    kind, _, subject_id = bucket.partition(":")
    label = next((s.label for s in subjects if s.id == subject_id), "this caller")
    retry = 1 if math.isinf(wait_s) else max(1, math.ceil(wait_s))
    return RateLimited(f"too many {_WHAT[kind]} for {label}", retry_after_s=retry)


def _money(micro: float) -> str:
    return f"{micro / 1_000_000:.6f}"
