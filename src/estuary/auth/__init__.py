"""Who is calling: gateway keys, anonymous loopback access, and single-use stream tickets."""

from estuary.auth.keys import Authenticator, Principal
from estuary.auth.tickets import TicketIssuer

__all__ = ["Authenticator", "Principal", "TicketIssuer"]
