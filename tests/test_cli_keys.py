"""`estuary keys` and `estuary usage`, run as the real command against a SQLite ledger."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from estuary.auth.keys import key_digest
from estuary.ledger import open_store
from estuary.ledger.base import OpenedRow, SettledRow

KEY_SHAPE = re.compile(r"sk-est-[A-Za-z0-9_-]{43}")

CONFIG = """
[ledger]
url = "{url}"

[providers.demo]
format = "demo"

[providers.spare]
format = "demo"

[models.chat]
targets = ["demo/estuary-demo"]

[models."fast-chat"]
targets = ["spare/small"]

[templates.support]
system = "You answer questions about {{{{product}}}} only."
variables = ["product"]
"""


class Workdir:
    """A working directory with a config whose ledger is a SQLite file inside it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"sqlite:///{root / 'ledger.db'}"
        self.config = root / "estuary.toml"
        self.config.write_text(CONFIG.format(url=self.url))

    def run(self, *args: str, config: bool = True) -> subprocess.CompletedProcess[str]:
        """`estuary ARGS --config estuary.toml` with the working directory as cwd."""
        extra = ["--config", str(self.config)] if config else []
        return subprocess.run(  # noqa: S603 - our own CLI with fixed arguments
            [sys.executable, "-m", "estuary", *args, *extra],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def create(self, *args: str) -> str:
        """Create a key and return it (it is the only thing on stdout)."""
        done = self.run("keys", "create", *args)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def key_list(self) -> list[dict[str, object]]:
        done = self.run("keys", "list", "--json")
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.fixture
def workdir(tmp_path: Path) -> Workdir:
    return Workdir(tmp_path)


def test_create_prints_the_key_once_and_alone_on_stdout(workdir: Workdir) -> None:
    """stdout holds only the new `sk-est-` key; the summary (not the key) goes to stderr."""
    done = workdir.run("keys", "create", "--name", "web app")
    assert done.returncode == 0, done.stderr
    assert KEY_SHAPE.fullmatch(done.stdout.rstrip("\n"))
    key = done.stdout.strip()
    assert key not in done.stderr
    assert "shown once" in done.stderr
    assert "web app" in done.stderr
    assert "Traceback" not in done.stderr


def test_created_key_is_stored_as_a_digest_with_its_policy(workdir: Workdir) -> None:
    """The store finds the key by digest, with the limits given on the command line."""
    key = workdir.create(
        "--name", "limited", "--models", "chat,fast-chat", "--rpm", "60", "--tpm", "5000",
        "--concurrency", "2", "--budget", "1.5", "--max-tokens", "256", "--no-system",
        "--template", "support", "--expires", "30d",
    )  # fmt: skip

    async def find() -> None:
        store = open_store(workdir.url)
        await store.start("test")
        try:
            record = await store.find_key(key_digest(key))
        finally:
            await store.aclose()
        assert record is not None
        assert record.name == "limited"
        policy = record.policy
        assert policy.models == ("chat", "fast-chat")
        assert (policy.rpm, policy.tpm, policy.concurrency) == (60, 5000, 2)
        assert policy.budget_micro == 1_500_000
        assert policy.max_tokens == 256
        assert policy.allow_system is False
        assert policy.templates == ("support",)
        assert record.expires_at is not None
        left = record.expires_at - datetime.now(UTC)
        assert timedelta(days=29, hours=23) < left <= timedelta(days=30)

    asyncio.run(find())


def test_list_shows_keys_without_the_key(workdir: Workdir) -> None:
    """The table and the JSON lines show id, name, prefix and status, never the key."""
    key = workdir.create("--name", "dashboard", "--rpm", "10")
    table = workdir.run("keys", "list")
    assert table.returncode == 0, table.stderr
    assert "dashboard" in table.stdout
    assert "active" in table.stdout
    assert "rpm 10" in table.stdout
    assert key not in table.stdout
    [entry] = workdir.key_list()
    assert entry["name"] == "dashboard"
    assert entry["status"] == "active"
    assert entry["policy"] == {"rpm": 10}
    assert key.startswith(str(entry["prefix"]))
    assert len(str(entry["prefix"])) < len(key)
    assert "digest" not in entry
    assert key not in json.dumps(entry)
    assert key_digest(key) not in json.dumps(entry)
    assert str(entry["id"]) in table.stdout


def test_revoke_marks_the_key_revoked_once(workdir: Workdir) -> None:
    """Revoke succeeds once; the list then says revoked; again, or an unknown id, is exit 1."""
    workdir.create("--name", "temporary")
    [entry] = workdir.key_list()
    key_id = str(entry["id"])
    done = workdir.run("keys", "revoke", key_id)
    assert done.returncode == 0, done.stderr
    assert key_id in done.stdout
    assert workdir.key_list()[0]["status"] == "revoked"
    assert "revoked" in workdir.run("keys", "list").stdout
    again = workdir.run("keys", "revoke", key_id)
    assert again.returncode == 1
    assert "already revoked" in again.stderr
    unknown = workdir.run("keys", "revoke", "key_0000000000000000")
    assert unknown.returncode == 1
    assert "no key with id" in unknown.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--models", "chat,gpt-9"), "unknown alias gpt-9; the config's aliases: chat, fast-chat"),
        (("--template", "sales"), "unknown template sales; the config's: support"),
        (("--rpm", "0"), "--rpm"),
        (("--budget", "nan"), "--budget"),
        (("--expires", "2001-01-01"), "is not in the future"),
        (("--expires", "soon"), "neither a span like 7d"),
    ],
)
def test_create_refuses_bad_options(workdir: Workdir, args: tuple[str, ...], message: str) -> None:
    """A bad option stops with exit code 2 and a message naming it; no key is created."""
    done = workdir.run("keys", "create", "--name", "x", *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert workdir.key_list() == []


def test_a_bad_config_is_exit_2(workdir: Workdir) -> None:
    """A config problem is reported like `serve` does: one line, exit code 2."""
    workdir.config.write_text("[ledger]\nurll = 1\n")
    done = workdir.run("keys", "list")
    assert done.returncode == 2
    assert "ledger.urll: unknown key" in done.stderr


def test_without_a_config_the_ledger_is_estuary_db_in_the_working_directory(
    workdir: Workdir,
) -> None:
    """No --config: the default config, whose ledger is sqlite:///estuary.db in the cwd."""
    done = workdir.run("keys", "create", "--name", "default", config=False)
    assert done.returncode == 0, done.stderr
    assert (workdir.root / "estuary.db").exists()
    assert "default" in workdir.run("keys", "list", config=False).stdout


async def _record_usage(url: str) -> None:
    """Three recent requests (two keys, two aliases) and one from long ago, through the store."""
    now = datetime.now(UTC)
    rows = [
        ("req_1", now - timedelta(hours=2), "key_a", "chat", "completed", 100, 50, 1_234),
        ("req_2", now - timedelta(hours=1), "key_a", "chat", "error", 10, None, None),
        ("req_3", now - timedelta(minutes=5), "key_b", "fast-chat", "completed", 7, 3, 21),
        ("req_old", now - timedelta(days=30), "key_a", "chat", "completed", 1000, 1000, 999_999),
    ]
    store = open_store(url)
    await store.start("test")
    try:
        for request_id, at, key_id, alias, status, prompt, completion, cost in rows:
            await store.open(
                OpenedRow(
                    request_id=request_id,
                    instance="test",
                    started_at=at,
                    key_id=key_id,
                    end_user=None,
                    alias=alias,
                    api="openai",
                )
            )
            await store.settle(
                SettledRow(
                    request_id=request_id,
                    ended_at=at + timedelta(seconds=2),
                    status=status,  # type: ignore[arg-type]  # a literal from the table above
                    finish_reason="stop" if status == "completed" else None,
                    provider="demo",
                    upstream_model="estuary-demo",
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    token_source="reported" if completion is not None else None,
                    cost_micro=cost,
                    error_code="upstream_error" if status == "error" else None,
                    ttft_ms=50.0,
                    duration_ms=2000.0,
                    attempts=1,
                )
            )
    finally:
        await store.aclose()


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_usage_csv_groups_by_model_over_the_last_week(workdir: Workdir) -> None:
    """`usage --csv` has a header row and one row per alias; older rows are left out."""
    asyncio.run(_record_usage(workdir.url))
    done = workdir.run("usage", "--csv")
    assert done.returncode == 0, done.stderr
    header = done.stdout.splitlines()[0]
    assert header == "model,requests,errors,prompt_tokens,completion_tokens,cost,cost_micro"
    rows = {row["model"]: row for row in _csv(done.stdout)}
    assert rows == {
        "chat": {
            "model": "chat",
            "requests": "2",
            "errors": "1",
            "prompt_tokens": "110",
            "completion_tokens": "50",
            "cost": "0.001234",
            "cost_micro": "1234",
        },
        "fast-chat": {
            "model": "fast-chat",
            "requests": "1",
            "errors": "0",
            "prompt_tokens": "7",
            "completion_tokens": "3",
            "cost": "0.000021",
            "cost_micro": "21",
        },
    }


def test_usage_filters_and_groups_by_several_dimensions(workdir: Workdir) -> None:
    """--since widens the period, --by is repeatable, --key narrows to one key."""
    asyncio.run(_record_usage(workdir.url))
    done = workdir.run("usage", "--csv", "--since", "60d", "--by", "key", "--by", "status")
    assert done.returncode == 0, done.stderr
    got = {(r["key"], r["status"]): int(r["requests"]) for r in _csv(done.stdout)}
    assert got == {("key_a", "completed"): 2, ("key_a", "error"): 1, ("key_b", "completed"): 1}
    only_b = _csv(workdir.run("usage", "--csv", "--key", "key_b").stdout)
    assert [(r["model"], r["requests"]) for r in only_b] == [("fast-chat", "1")]


def test_usage_table_renders_with_a_total(workdir: Workdir) -> None:
    """The table lists each alias and a total line, costs with six decimals."""
    asyncio.run(_record_usage(workdir.url))
    done = workdir.run("usage")
    assert done.returncode == 0, done.stderr
    assert "chat" in done.stdout
    assert "fast-chat" in done.stdout
    assert "total" in done.stdout
    assert "0.001255" in done.stdout  # 1234 + 21 micro-units
    assert "prompt tokens" in done.stdout


def test_usage_refuses_a_bad_period(workdir: Workdir) -> None:
    """An unreadable --since, or --until before --since, is exit code 2 with a message."""
    bad = workdir.run("usage", "--since", "last tuesday")
    assert bad.returncode == 2
    assert "--since" in bad.stderr
    backwards = workdir.run("usage", "--since", "1d", "--until", "2d")
    assert backwards.returncode == 2
    assert "must be later than" in backwards.stderr
    unknown = workdir.run("usage", "--by", "colour")
    assert unknown.returncode == 2


def test_an_unusable_ledger_is_one_line_and_exit_1(workdir: Workdir) -> None:
    """A ledger that cannot be opened is reported in one line, without a traceback."""
    url = f"sqlite:///{workdir.root / 'missing-dir' / 'ledger.db'}"
    workdir.config.write_text(CONFIG.format(url=url))
    done = workdir.run("keys", "create", "--name", "x")
    assert done.returncode == 1
    assert "the sqlite ledger failed: unable to open database file" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
