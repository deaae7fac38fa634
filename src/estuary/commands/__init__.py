"""The administration commands of `estuary`: `keys create|list|revoke` and `usage`.

They work on the database that `[ledger] url` names, through the `estuary.ledger` store; `cli.py`
registers them on its Typer app. Must not import the HTTP layer or the server.
"""

from estuary.commands.keys import keys_app
from estuary.commands.usage import usage

__all__ = ["keys_app", "usage"]
