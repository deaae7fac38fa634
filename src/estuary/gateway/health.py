"""Readiness: can this gateway serve a request right now?

Three checks, each time-boxed: the ledger answers a cheap query (a usage total over no rows), the
state store answers a lookup, and every alias has at least one target whose circuit breaker is not
open. Must not import the HTTP layer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Final

import structlog

from estuary.ledger.base import LedgerStore, UsageFilter
from estuary.routing.routes import Router
from estuary.state.base import StateStore

__all__ = ["OK", "readiness"]

OK: Final = "ok"
_PROBE_TICKET: Final = "readyz-probe"  # never issued: tickets are random
_log: Final = structlog.get_logger("estuary.gateway")


async def readiness(
    ledger: LedgerStore, state: StateStore, router: Router, *, timeout_s: float = 2.0
) -> dict[str, str]:
    """Each check's verdict: `ok`, or why not (no secrets, no URLs)."""
    checks = {
        "ledger": await _answers(ledger.usage(UsageFilter(since=datetime.now(UTC))), timeout_s),
        "state": await _answers(state.take_ticket(_PROBE_TICKET), timeout_s),
    }
    states = router.breakers.states()
    for alias in router.aliases:
        labels = [target.label for target in router.resolve(alias).targets]
        if all(states.get(label) == "open" for label in labels):
            checks[f"models.{alias}"] = "the circuit breaker of every target is open"
        else:
            checks[f"models.{alias}"] = OK
    return checks


async def _answers(query: Awaitable[object], timeout_s: float) -> str:
    try:
        async with asyncio.timeout(timeout_s):
            await query
    except TimeoutError:
        return f"no answer within {timeout_s:g} s"
    except Exception as exc:
        _log.warning("readyz.failed", logger="estuary.gateway", error=type(exc).__name__)
        return f"failed: {type(exc).__name__}"
    return OK
