"""The `estuary` command's refusals: clear messages and exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own CLI with fixed arguments
        [sys.executable, "-m", "estuary", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[server]\nprot = 1\n", "server.prot: unknown key"),
        (
            '[providers.d]\nformat = "demo"\n[models.m]\ntargets = ["d/x"]\n[state]\nurl = "mongodb://x"\n',
            "state.url: use memory:// or redis://",
        ),
        (
            '[server]\nworkers = 2\n[providers.d]\nformat = "demo"\n'
            '[models.m]\ntargets = ["d/x"]\n',
            "several workers need shared state",
        ),
    ],
)
def test_serve_refuses_what_it_cannot_run(tmp_path: Path, toml: str, message: str) -> None:
    """A bad or not-yet-supported config stops start-up with one line naming the problem."""
    config = tmp_path / "estuary.toml"
    config.write_text(toml)
    done = run("serve", "--config", str(config), "--port", "0")
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_demo_setup_refuses_a_public_host() -> None:
    """Without a config file (anonymous demo), listening beyond loopback is refused."""
    done = run("serve", "--host", "0.0.0.0", "--port", "0")
    assert done.returncode == 2
    assert "server.host" in done.stderr
