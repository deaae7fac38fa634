"""Named provider presets: a wire format and a base URL, so a config can say `preset = "moonshot"`.

Pure data and one lookup function. The base URLs are the OpenAI-compatible endpoints from each
provider's public documentation (Anthropic and Gemini are their native APIs, for their adapters).
Stdlib only; must not import anything from estuary.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

__all__ = ["PRESETS", "Format", "Preset", "preset"]

Format = Literal["openai", "anthropic", "gemini", "demo"]


@dataclass(frozen=True, slots=True)
class Preset:
    """What a preset name stands for."""

    name: str
    format: Format
    base_url: str
    needs_key: bool  # local servers (ollama, vllm, llamacpp) and the demo need none


def _table(*presets: Preset) -> Mapping[str, Preset]:
    return MappingProxyType({p.name: p for p in presets})


PRESETS: Mapping[str, Preset] = _table(
    Preset("openai", "openai", "https://api.openai.com/v1", needs_key=True),
    Preset("moonshot", "openai", "https://api.moonshot.cn/v1", needs_key=True),
    Preset("dashscope", "openai", "https://dashscope.aliyuncs.com/compatible-mode/v1", True),
    Preset("deepseek", "openai", "https://api.deepseek.com/v1", needs_key=True),
    Preset("zhipu", "openai", "https://open.bigmodel.cn/api/paas/v4", needs_key=True),
    Preset("qianfan", "openai", "https://qianfan.baidubce.com/v2", needs_key=True),
    Preset("spark", "openai", "https://spark-api-open.xf-yun.com/v1", needs_key=True),
    Preset("ollama", "openai", "http://127.0.0.1:11434/v1", needs_key=False),
    Preset("vllm", "openai", "http://127.0.0.1:8000/v1", needs_key=False),
    Preset("llamacpp", "openai", "http://127.0.0.1:8080/v1", needs_key=False),
    Preset("openrouter", "openai", "https://openrouter.ai/api/v1", needs_key=True),
    Preset("anthropic", "anthropic", "https://api.anthropic.com", needs_key=True),
    Preset("gemini", "gemini", "https://generativelanguage.googleapis.com", needs_key=True),
    Preset("demo", "demo", "", needs_key=False),
)
"""Every known preset by name (read-only)."""


def preset(name: str) -> Preset:
    """The preset called `name`; raises `ValueError` naming the known presets if there is none."""
    found = PRESETS.get(name)
    if found is None:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return found
