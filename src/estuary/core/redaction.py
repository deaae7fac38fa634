"""Scrubbing secrets out of text before it reaches a response, an event, a log line or an error.

Exact configured secrets are replaced first; then anything shaped like a credential (a bearer token,
an `sk-…` key, a `key=` query parameter) so that an upstream error body echoing a header back cannot
leak it either. Stdlib only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["REDACTED", "Redactor"]

REDACTED = "***"
_MIN_SECRET_LEN = 6
_SHAPES = re.compile(
    r"(?P<bearer>(?i:bearer)\s+)[^\s\"',;]+"
    r"|(?P<key>\bsk-[A-Za-z0-9_\-]{6,})"
    r"|(?P<param>(?i:[?&](?:api_?key|key|access_token|token)=))[^&\s\"']+"
    r"|(?P<header>(?i:x-api-key|api-key|x-goog-api-key)\"?\s*[:=]\s*\"?)[^\s\"',;]+"
)

_CUES = ("bearer", "sk-", "key", "token")


def _shape(match: re.Match[str]) -> str:
    prefix = match.group("bearer") or match.group("param") or match.group("header") or ""
    return prefix + REDACTED


class Redactor:
    """Replaces known secrets, and credential-shaped strings, with `***`."""

    __slots__ = ("_exact", "secrets")

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets: frozenset[str] = frozenset()
        self._exact: re.Pattern[str] | None = None
        self.learn(secrets)

    def __call__(self, text: str) -> str:
        # Substring tests first: most text (every log field) holds no secret, and `in` is far
        # cheaper than a regex scan. `_CUES` are in every match of `_SHAPES`, lower-cased.
        if self._exact is not None and any(secret in text for secret in self.secrets):
            text = self._exact.sub(REDACTED, text)
        lowered = text.lower()
        if any(cue in lowered for cue in _CUES):
            text = _SHAPES.sub(_shape, text)
        return text

    def learn(self, secrets: Iterable[str]) -> None:
        """Also replace `secrets` from now on (a config reload); the ones known stay."""
        self.secrets = self.secrets | {s for s in secrets if len(s) >= _MIN_SECRET_LEN}
        ordered = sorted(self.secrets, key=len, reverse=True)
        self._exact = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def extended(self, secrets: Iterable[str]) -> Redactor:
        """A redactor that also knows `secrets`."""
        return Redactor([*self.secrets, *secrets])
