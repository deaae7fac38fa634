"""`estuary doctor`, run as the real command against a fake upstream and a SQLite ledger."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from estuary.testing import FakeUpstream
from tests.state.helpers import REDIS_URL, require_redis
from tests.support import ENVIRON, UPSTREAM_KEY, free_port

CONFIG = """
[ledger]
url = "sqlite:///{ledger}"

[providers.fake]
format = "openai"
base_url = "{base_url}"
api_key = "${{UPSTREAM_KEY}}"

[providers.demo]
format = "demo"

[models.chat]
targets = ["fake/fake-model"]

[models.demo]
targets = ["demo/estuary-demo"]
"""


@dataclass
class Done:
    returncode: int
    lines: list[str]

    def line(self, item: str) -> str:
        """The verdict line of `item` (`config`, `ledger`, `providers.NAME`, …)."""
        found = [line for line in self.lines if line.split()[1] == f"{item}:"]
        assert len(found) == 1, self.lines
        return found[0]


async def doctor(
    tmp_path: Path, base_url: str, *args: str, env: dict[str, str], extra: str = ""
) -> Done:
    """Write the config (plus `extra` tables) and run `estuary doctor --config … ARGS`."""
    config = tmp_path / "estuary.toml"
    config.write_text(CONFIG.format(ledger=tmp_path / "ledger.db", base_url=base_url) + extra)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "estuary",
        "doctor",
        "--config",
        str(config),
        *args,
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(child.communicate(), 30)
    text = output.decode()
    assert UPSTREAM_KEY not in text
    assert child.returncode is not None
    return Done(child.returncode, text.splitlines())


async def test_doctor_passes_against_a_running_upstream(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Config, ledger, both providers, their probes and the state store are all `ok`."""
    done = await doctor(tmp_path, upstream.base_url, "--probe", env={**os.environ, **ENVIRON})
    assert done.returncode == 0, done.lines
    for item in ("config", "ledger", "providers.fake", "providers.demo", "probe.fake", "state"):
        assert done.line(item).startswith("ok "), done.lines
    assert not any(line.startswith("fail") for line in done.lines)
    assert (tmp_path / "ledger.db").exists()  # opened and migrated
    probes = [r.body for r in upstream.requests if isinstance(r.body, dict)]
    assert [body.get("max_tokens") for body in probes] == [1]  # the one-token probe


async def test_doctor_fails_on_a_dead_port(tmp_path: Path) -> None:
    """A provider nobody listens for is a named failure and exit code 1."""
    dead = f"http://127.0.0.1:{free_port()}/v1"
    done = await doctor(tmp_path, dead, env={**os.environ, **ENVIRON})
    assert done.returncode == 1
    line = done.line("providers.fake")
    assert line.startswith("fail ")
    assert "cannot connect to 127.0.0.1:" in line
    assert done.line("ledger").startswith("ok ")  # the other checks still ran


async def test_doctor_names_a_missing_environment_variable(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A `${VAR}` the environment lacks fails the config check, naming the variable only."""
    env = {k: v for k, v in {**os.environ, **ENVIRON}.items() if k != "UPSTREAM_KEY"}
    done = await doctor(tmp_path, upstream.base_url, env=env)
    assert done.returncode == 1
    assert done.line("config") == "fail  config: environment variables not set: UPSTREAM_KEY"


@pytest.mark.redis
async def test_doctor_checks_redis_state_and_fails_on_a_dead_one(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """`[state] url = "redis://…"`: ok when Redis answers; a named failure, without the URL's
    password, when nothing listens."""
    await require_redis()
    env = {**os.environ, **ENVIRON}
    live = await doctor(
        tmp_path, upstream.base_url, env=env, extra=f'[state]\nurl = "{REDIS_URL}"\n'
    )
    assert live.line("state").startswith("ok "), live.lines
    dead = f"redis://:sekrit-password@127.0.0.1:{free_port()}/0"
    done = await doctor(tmp_path, upstream.base_url, env=env, extra=f'[state]\nurl = "{dead}"\n')
    assert done.returncode == 1
    assert done.line("state").startswith("fail "), done.lines
    assert not any("sekrit-password" in line for line in done.lines)
