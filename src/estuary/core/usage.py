"""Token counts with their provenance, and the estimator used when an upstream reports none.

The estimator is deliberately simple and documented (docs/architecture.md): one token per CJK
character (Han, kana, Hangul), one token per four other characters, rounded up. It is sound for
mixed Chinese/English text within ~25 % of the tokenizers of the common models, and it is only used
when the upstream did not report usage. Stdlib only.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["TokenCount", "TokenSource", "estimate_tokens"]

TokenSource = Literal["reported", "estimated", "partial"]

_CJK: Final = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_CHARS_PER_TOKEN: Final = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenCount:
    """Prompt and completion tokens of one request, and where the numbers came from."""

    prompt_tokens: int
    completion_tokens: int
    source: TokenSource

    @property
    def estimated(self) -> bool:
        return self.source != "reported"


def estimate_tokens(text: str) -> int:
    """Estimate the tokens in `text` (see the module docstring for the method)."""
    if not text:
        return 0
    cjk = len(_CJK.findall(text))
    return cjk + math.ceil((len(text) - cjk) / _CHARS_PER_TOKEN)
