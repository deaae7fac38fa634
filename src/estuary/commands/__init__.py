"""The administration commands of `estuary`: `keys create|list|revoke`, `usage` and `doctor`.

They work on the database that `[ledger] url` names, through the `estuary.ledger` store; `cli.py`
registers them on its Typer app. Must not import the HTTP layer or the server at import time
(`doctor --probe` loads the server's provider assembly when it runs).
"""

from estuary.commands.doctor import doctor
from estuary.commands.keys import keys_app
from estuary.commands.usage import usage

__all__ = ["doctor", "keys_app", "usage"]
