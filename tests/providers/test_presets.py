"""The provider presets table: names, formats and base URLs."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from estuary.providers.presets import PRESETS, Preset, preset

OPENAI_COMPATIBLE = (
    "openai",
    "moonshot",
    "dashscope",
    "deepseek",
    "zhipu",
    "qianfan",
    "spark",
    "ollama",
    "vllm",
    "llamacpp",
    "openrouter",
)
LOCAL = ("ollama", "vllm", "llamacpp")


def test_preset_returns_the_named_entry() -> None:
    """A known name gives its preset."""
    assert preset("moonshot") == Preset("moonshot", "openai", "https://api.moonshot.cn/v1", True)


def test_an_unknown_preset_lists_the_known_ones() -> None:
    """The error is a ValueError (not KeyError) that names every known preset."""
    with pytest.raises(ValueError, match="'moonshoot'") as caught:
        preset("moonshoot")
    assert all(name in str(caught.value) for name in PRESETS)


def test_the_documented_presets_exist_with_their_formats() -> None:
    """Every provider the design lists is a preset with the format its adapter speaks."""
    assert {name: PRESETS[name].format for name in OPENAI_COMPATIBLE} == dict.fromkeys(
        OPENAI_COMPATIBLE, "openai"
    )
    assert (PRESETS["anthropic"].format, PRESETS["gemini"].format) == ("anthropic", "gemini")
    assert PRESETS["demo"] == Preset("demo", "demo", "", needs_key=False)


@pytest.mark.parametrize("name", [n for n in PRESETS if n != "demo"])
def test_every_base_url_is_a_well_formed_http_url(name: str) -> None:
    """Scheme http(s), a host, no query, fragment or trailing slash."""
    url = PRESETS[name].base_url
    parts = urlsplit(url)
    assert parts.scheme in {"http", "https"}
    assert parts.hostname
    assert not parts.query
    assert not parts.fragment
    assert not url.endswith("/")
    assert (parts.scheme == "http") == (name in LOCAL)  # only local servers go without TLS


def test_only_local_servers_and_the_demo_need_no_key() -> None:
    """Hosted APIs need a key; ollama, vllm, llama.cpp and the demo do not."""
    keyless = {name for name, p in PRESETS.items() if not p.needs_key}
    assert keyless == {*LOCAL, "demo"}


def test_each_preset_is_filed_under_its_own_name() -> None:
    """The table's keys and the presets' names agree."""
    assert all(name == p.name for name, p in PRESETS.items())


def test_the_table_is_read_only() -> None:
    """Nobody can swap a preset at run time."""
    with pytest.raises(TypeError):
        PRESETS["openai"] = PRESETS["demo"]  # type: ignore[index]  # proving it cannot be done
