"""Stream tickets: short-lived, single-use credentials for `EventSource`, which cannot send headers.

A ticket is bound to the principal that asked for it — key, end user, policy and limits — so a
browser stream is limited and billed as that key and end user. A stored key is checked again when
its ticket is redeemed, so revoking the key also voids its tickets. Must not import the HTTP layer
or routing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson

from estuary.auth.keys import Authenticator
from estuary.core.errors import AuthenticationFailed
from estuary.core.ids import new_ticket
from estuary.core.policy import KeyPolicy, Principal
from estuary.state.base import StateStore

__all__ = ["TicketIssuer"]


class TicketIssuer:
    """Issues and redeems tickets through the shared state store."""

    def __init__(
        self,
        state: StateStore,
        authenticator: Authenticator,
        *,
        ttl_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._state = state
        self._authenticator = authenticator
        self._ttl_s = ttl_s
        self._clock = clock

    async def issue(self, principal: Principal) -> tuple[str, float]:
        """A new ticket and its expiry as a Unix timestamp."""
        ticket = new_ticket()
        payload = orjson.dumps(
            {
                "key_id": principal.key_id,
                "end_user": principal.end_user,
                "digest": principal.digest,
                "client_ip": principal.client_ip,
                "policy": principal.policy.to_json(),
                "user": None if principal.user is None else principal.user.to_json(),
            }
        )
        await self._state.put_ticket(ticket, payload, self._ttl_s)
        return ticket, self._clock() + self._ttl_s

    async def redeem(self, ticket: str) -> Principal:
        """The principal a ticket was issued to; each ticket works once."""
        payload = await self._state.take_ticket(ticket)
        if payload is None:
            raise AuthenticationFailed("invalid, expired or already used stream ticket")
        data = orjson.loads(payload)
        if data["digest"] is not None:  # a stored key: revoked or expired since? refuse
            return await self._authenticator.principal_for_digest(data["digest"])
        user = data["user"]
        return Principal(
            key_id=data["key_id"],
            end_user=data["end_user"],
            client_ip=data["client_ip"],
            policy=KeyPolicy.from_json(data["policy"]),
            user=None if user is None else KeyPolicy.from_json(user),
        )
