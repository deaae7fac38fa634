"""The configuration loader: schema, `${ENV}` expansion, secrets, overrides and error messages."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from estuary.config import (
    Config,
    ConfigError,
    Target,
    default_config,
    load_config,
    secret_values,
)

ENV = {
    "ESTUARY_ADMIN_KEY": "admin-key-0123456789",
    "ESTUARY_APP_KEY": "sk-est-app-0123456789",
    "MOONSHOT_API_KEY": "sk-moonshot-0123456789",
    "LOCAL_API_KEY": "local-key-0123456789",
    "TENANT_TOKEN": "tenant-token-0123456789",
}

FULL = """
[server]
host = "127.0.0.1"
port = 8080
cors_origins = ["http://localhost:5173"]
heartbeat_s = 15
header_hold_s = 10.0
max_body_bytes = 4194304
default_model = "chat"
ticket_ttl_s = 60.0
log_level = "info"
workers = 1

[auth]
admin_key = "${ESTUARY_ADMIN_KEY}"
keys = ["${ESTUARY_APP_KEY}"]
anonymous = false

[ledger]
url = "sqlite:///estuary.db"

[state]
url = "memory://"

[providers.kimi]
preset = "moonshot"
api_key = "${MOONSHOT_API_KEY}"

[providers.local]
format = "openai"
base_url = "http://127.0.0.1:9100/v1"
api_key = "${LOCAL_API_KEY}"
headers = { "X-Tenant" = "Bearer ${TENANT_TOKEN}" }
connect_timeout_s = 3.5

[models.chat]
targets = ["kimi/moonshot-v1-8k", "local/meta-llama/llama-3"]
first_token_timeout_s = 20
idle_timeout_s = 45.0
max_tokens = 2048

[prices."kimi/moonshot-v1-8k"]
input_per_mtok = 12.0
output_per_mtok = 12.0
"""

# The smallest valid file, for tests that add one thing to it.
MINIMAL = """
[providers.kimi]
preset = "moonshot"
api_key = "${MOONSHOT_API_KEY}"

[models.chat]
targets = ["kimi/moonshot-v1-8k"]
"""


def write(tmp_path: Path, text: str) -> Path:
    """Save `text` as estuary.toml in `tmp_path`."""
    path = tmp_path / "estuary.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, **overrides: Any) -> Config:
    """Load `text` with the test environment; keyword names use "__" for "."."""
    dotted = {key.replace("__", "."): value for key, value in overrides.items()}
    return load_config(write(tmp_path, text), environ=ENV, overrides=dotted)


def failure(tmp_path: Path, text: str, **overrides: Any) -> str:
    """The `ConfigError` message that loading `text` produces."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, **overrides)
    return str(caught.value)


def test_the_full_example_loads_with_every_value(tmp_path: Path) -> None:
    """Every key of the documented example ends up in the model, secrets resolved."""
    config = load(tmp_path, FULL)
    assert config.server.cors_origins == ("http://localhost:5173",)
    assert config.server.heartbeat_s == 15.0
    assert config.server.default_model == "chat"
    assert config.auth.admin_key == ENV["ESTUARY_ADMIN_KEY"]
    assert config.auth.keys == (ENV["ESTUARY_APP_KEY"],)
    local = config.providers["local"]
    assert local.api_key == ENV["LOCAL_API_KEY"]
    assert local.headers == {"X-Tenant": f"Bearer {ENV['TENANT_TOKEN']}"}
    assert local.connect_timeout_s == 3.5
    chat = config.models["chat"]
    assert (chat.first_token_timeout_s, chat.idle_timeout_s, chat.max_tokens) == (20.0, 45.0, 2048)
    assert config.prices["kimi/moonshot-v1-8k"].input_per_mtok == 12.0


def test_targets_split_at_the_first_slash(tmp_path: Path) -> None:
    """An upstream model name keeps its own slashes; the provider is what precedes the first."""
    targets = load(tmp_path, FULL).models["chat"].targets
    assert targets == (Target("kimi", "moonshot-v1-8k"), Target("local", "meta-llama/llama-3"))
    assert targets[1].label == "local/meta-llama/llama-3"


def test_a_preset_sets_format_and_base_url(tmp_path: Path) -> None:
    """`preset = "moonshot"` resolves to the OpenAI format at Moonshot's endpoint."""
    kimi = load(tmp_path, FULL).providers["kimi"]
    assert (kimi.format, kimi.base_url) == ("openai", "https://api.moonshot.cn/v1")
    assert kimi.api_key == ENV["MOONSHOT_API_KEY"]


def test_a_base_url_in_the_file_overrides_the_presets(tmp_path: Path) -> None:
    """A preset fills in only what the table leaves out."""
    text = MINIMAL.replace('preset = "moonshot"', 'preset = "moonshot"\nbase_url = "http://p:1/v1"')
    assert load(tmp_path, text).providers["kimi"].base_url == "http://p:1/v1"


def test_a_local_preset_needs_no_api_key(tmp_path: Path) -> None:
    """Ollama runs without a key, so none is required."""
    text = MINIMAL + '\n[providers.box]\npreset = "ollama"\n'
    box = load(tmp_path, text).providers["box"]
    assert (box.base_url, box.api_key) == ("http://127.0.0.1:11434/v1", None)


def test_a_hosted_preset_without_api_key_is_refused(tmp_path: Path) -> None:
    """A preset that needs a key says so, naming the key."""
    message = failure(tmp_path, MINIMAL.replace('api_key = "${MOONSHOT_API_KEY}"', ""))
    assert "providers.kimi.api_key" in message
    assert "moonshot" in message


def test_an_unknown_preset_lists_the_known_ones(tmp_path: Path) -> None:
    """A typo in a preset name is answered with the names that exist."""
    message = failure(tmp_path, MINIMAL.replace('"moonshot"', '"moonshoot"'))
    assert message.startswith(f"{tmp_path / 'estuary.toml'}: providers.kimi.preset: ")
    assert "moonshot" in message.split("moonshoot")[-1]


def test_quoted_aliases_may_hold_dashes_dots_and_colons(tmp_path: Path) -> None:
    """Aliases such as "fallback-chat" and "gpt-4.1:mini" are TOML quoted keys."""
    text = MINIMAL + '\n[models."fallback-chat"]\ntargets = ["kimi/a"]\n'
    text += '\n[models."gpt-4.1:mini"]\ntargets = ["kimi/b"]\n'
    config = load(tmp_path, text)
    assert list(config.models) == ["chat", "fallback-chat", "gpt-4.1:mini"]


def test_an_alias_with_a_space_is_refused_by_name(tmp_path: Path) -> None:
    """The quoted alias appears in the message as TOML spells it."""
    message = failure(tmp_path, MINIMAL + '\n[models."my chat"]\ntargets = ["kimi/a"]\n')
    assert 'models."my chat": invalid name' in message


@pytest.mark.parametrize(
    ("addition", "key"),
    [
        ("servr = { port = 1 }", "servr"),
        ("[server]\nprot = 9000", "server.prot"),
        ('[auth]\nkey = ["${ESTUARY_APP_KEY}"]', "auth.key"),
        ('[ledger]\npath = "x.db"', "ledger.path"),
        ('[state]\nuri = "memory://"', "state.uri"),
        (
            '[providers.kimi.headers]\nA = "b"\n[providers.kimi.extra]\nx = 1',
            "providers.kimi.extra",
        ),
        ('[models.more]\ntargets = ["kimi/x"]\ntarget = "kimi/y"', "models.more.target"),
        (
            '[prices."kimi/x"]\ninput_per_mtok = 1\noutput_per_mtok = 1\ncached = 0',
            'prices."kimi/x".cached',
        ),
    ],
)
def test_an_unknown_key_is_named_at_every_level(tmp_path: Path, addition: str, key: str) -> None:
    """A misspelt key is an error that names its full dotted path."""
    text = addition + "\n" + MINIMAL if addition.startswith("servr") else MINIMAL + addition
    assert f"estuary.toml: {key}: unknown key" in failure(tmp_path, text)


def test_a_missing_environment_variable_is_named_with_its_key(tmp_path: Path) -> None:
    """The message names the file, the key and the variable."""
    path = write(tmp_path, FULL)
    environ = {k: v for k, v in ENV.items() if k != "MOONSHOT_API_KEY"}
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=environ)
    expected = f"{path}: providers.kimi.api_key: environment variable MOONSHOT_API_KEY is not set"
    assert str(caught.value) == expected


def test_references_expand_in_any_string_value(tmp_path: Path) -> None:
    """`${NAME}` works outside secrets too, e.g. a DSN password, and counts as a secret there."""
    text = MINIMAL + '[ledger]\nurl = "postgresql://est:${TENANT_TOKEN}@db/estuary"\n'
    config = load(tmp_path, text)
    assert config.ledger.url == f"postgresql://est:{ENV['TENANT_TOKEN']}@db/estuary"
    assert ENV["TENANT_TOKEN"] in secret_values(config)


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('admin_key = "${ESTUARY_ADMIN_KEY}"', 'admin_key = "hunter2-admin"', "auth.admin_key"),
        (
            'keys = ["${ESTUARY_APP_KEY}"]',
            'keys = ["${ESTUARY_APP_KEY}", "hunter2-app"]',
            "auth.keys[1]",
        ),
        ('api_key = "${LOCAL_API_KEY}"', 'api_key = "hunter2-local"', "providers.local.api_key"),
        (
            'api_key = "${LOCAL_API_KEY}"',
            'api_key = "x-${LOCAL_API_KEY}"',
            "providers.local.api_key",
        ),
    ],
)
def test_a_literal_secret_is_refused(tmp_path: Path, old: str, new: str, key: str) -> None:
    """Secrets must be one `${ENV}` reference, and the refusal does not repeat the literal."""
    message = failure(tmp_path, FULL.replace(old, new))
    assert f"estuary.toml: {key}: secrets must be ${{ENV_VAR}} references" in message
    assert "hunter2" not in message


def test_an_empty_secret_variable_is_refused(tmp_path: Path) -> None:
    """An empty gateway key would be a key anyone can send."""
    with pytest.raises(ConfigError, match=r"auth\.keys\[0\]: environment variable X is empty"):
        load_config(
            write(tmp_path, MINIMAL + '[auth]\nkeys = ["${X}"]\n'), environ={**ENV, "X": ""}
        )


def test_invalid_toml_reports_the_line(tmp_path: Path) -> None:
    """tomllib's position becomes "line N" right after the file name."""
    message = failure(tmp_path, "[server]\nport = 8080\nhost = 127.0.0.1\n")
    assert message.startswith(f"{tmp_path / 'estuary.toml'}: line 3: invalid TOML: ")


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """An unreadable file names itself instead of raising OSError."""
    with pytest.raises(ConfigError, match=r"nowhere\.toml: cannot read the file"):
        load_config(tmp_path / "nowhere.toml", environ=ENV)


def test_anonymous_on_a_public_host_is_refused_from_the_file(tmp_path: Path) -> None:
    """`anonymous = true` with `host = "0.0.0.0"` would open the gateway to the network."""
    text = '[server]\nhost = "0.0.0.0"\n[auth]\nanonymous = true\n' + MINIMAL
    assert "auth.anonymous: refused on the non-loopback host '0.0.0.0'" in failure(tmp_path, text)


def test_anonymous_on_a_public_host_is_refused_from_an_override(tmp_path: Path) -> None:
    """A `--host` flag is applied before validation, so the same check catches it."""
    text = "[auth]\nanonymous = true\n" + MINIMAL
    assert load(tmp_path, text).auth.anonymous is True
    assert "auth.anonymous: refused" in failure(tmp_path, text, server__host="0.0.0.0")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost", "LOCALHOST"])
def test_anonymous_is_allowed_on_every_loopback_spelling(tmp_path: Path, host: str) -> None:
    """127.0.0.0/8, ::1 and localhost count as loopback."""
    text = "[auth]\nanonymous = true\n" + MINIMAL
    assert load(tmp_path, text, server__host=host).server.host == host


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    """Command-line values replace the file's, quoted parts included."""
    text = '[server]\nport = 8080\n[models."gpt-4.1"]\ntargets = ["kimi/x"]\n' + MINIMAL
    overrides = {"server__port": 9000, "server__host": "::1"}
    config = load(tmp_path, text, **overrides, **{'models__"gpt-4.1"__max_tokens': 64})
    assert (config.server.port, config.server.host) == (9000, "::1")
    assert config.models["gpt-4.1"].max_tokens == 64


def test_a_bad_override_names_its_key(tmp_path: Path) -> None:
    """An override is validated like the file: a wrong type names the key."""
    assert "server.port: " in failure(tmp_path, MINIMAL, server__port=70000)


def test_default_config_is_the_anonymous_demo_on_loopback() -> None:
    """No file: one demo provider, one "demo" alias, anonymous, loopback, SQLite, memory state."""
    config = default_config()
    assert config.server.host == "127.0.0.1"
    assert config.server.default_model == "demo"
    assert config.auth.anonymous is True
    assert config.auth.keys == ()
    assert list(config.providers) == ["demo"]
    assert config.providers["demo"].format == "demo"
    assert config.models["demo"].targets == (Target("demo", "estuary-demo"),)
    assert (config.ledger.url, config.state.url) == ("sqlite:///estuary.db", "memory://")
    assert secret_values(config) == frozenset()


def test_load_config_without_a_path_is_the_default_with_overrides() -> None:
    """`estuary serve --port 9000` with no file is the demo setup on port 9000."""
    config = load_config(None, environ=ENV, overrides={"server.port": 9000})
    assert config.server.port == 9000
    assert config.models.keys() == {"demo"}


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::"])
def test_default_config_refuses_a_public_host(host: str) -> None:
    """The demo setup is anonymous, so a public host asks for a config file with keys."""
    with pytest.raises(ConfigError) as caught:
        load_config(None, overrides={"server.host": host})
    message = str(caught.value)
    assert message.startswith("server.host: ")
    assert "config file" in message
    assert "keys" in message


def test_a_target_naming_an_unknown_provider_is_refused(tmp_path: Path) -> None:
    """Each target's provider must be a table under [providers]."""
    text = MINIMAL.replace('["kimi/moonshot-v1-8k"]', '["kimi/moonshot-v1-8k", "kiwi/x"]')
    assert "models.chat.targets[1]: no provider 'kiwi'" in failure(tmp_path, text)


def test_a_target_without_a_slash_is_refused(tmp_path: Path) -> None:
    """ "provider/model" is required; a bare model name is not guessed at."""
    text = MINIMAL.replace('"kimi/moonshot-v1-8k"', '"moonshot-v1-8k"')
    assert 'models.chat.targets[0]: expected "provider/model"' in failure(tmp_path, text)


def test_a_default_model_naming_an_unknown_alias_is_refused(tmp_path: Path) -> None:
    """`default_model` must be one of the [models] aliases."""
    text = '[server]\ndefault_model = "chit"\n' + MINIMAL
    assert "server.default_model: names no alias in [models]" in failure(tmp_path, text)


def test_a_price_for_an_unknown_provider_is_refused(tmp_path: Path) -> None:
    """A [prices] key is "provider/model" of a configured provider."""
    text = MINIMAL + '[prices."kiwi/x"]\ninput_per_mtok = 1.0\noutput_per_mtok = 2.0\n'
    assert "prices.\"kiwi/x\": no provider 'kiwi'" in failure(tmp_path, text)


def test_a_file_without_models_is_refused(tmp_path: Path) -> None:
    """A gateway with no alias could not route anything."""
    text = MINIMAL.replace('[models.chat]\ntargets = ["kimi/moonshot-v1-8k"]', "")
    assert "models: define at least one model alias" in failure(tmp_path, text)


def test_a_provider_needs_a_preset_or_a_format(tmp_path: Path) -> None:
    """Without either, nothing says how to talk to the upstream."""
    text = MINIMAL + '[providers.odd]\nbase_url = "http://x/v1"\n'
    assert "providers.odd: set preset, or format" in failure(tmp_path, text)


def test_a_type_error_names_the_key_and_never_a_secret(tmp_path: Path) -> None:
    """pydantic's input values are left out, even when a secret landed in the wrong field."""
    text = FULL.replace("port = 8080", 'port = "x"').replace(
        "ticket_ttl_s = 60.0", 'ticket_ttl_s = "${MOONSHOT_API_KEY}"'
    )
    message = failure(tmp_path, text)
    assert "estuary.toml: server.port: " in message
    assert "estuary.toml: server.ticket_ttl_s: " in message
    assert not any(value in message for value in ENV.values())


def test_secret_values_are_the_resolved_secrets(tmp_path: Path) -> None:
    """Keys, upstream keys and referenced header values are all reported for redaction."""
    secrets = secret_values(load(tmp_path, FULL))
    assert set(ENV.values()) <= secrets
    assert f"Bearer {ENV['TENANT_TOKEN']}" in secrets
    assert "http://127.0.0.1:9100/v1" not in secrets


def test_the_examples_in_the_reference_load(tmp_path: Path) -> None:
    """Every TOML block of docs/configuration.md is a valid config (given its variables)."""
    doc = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", doc, flags=re.DOTALL)
    assert len(blocks) >= 2
    for block in blocks:
        names = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", block)
        environ = {name: f"value-of-{name}" for name in names}
        config = load_config(write(tmp_path, block), environ=environ)
        assert config.models
