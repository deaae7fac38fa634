"""Several `estuary serve` processes behind a real nginx that runs the shipped config.

`make_cluster(...)` starts N instances (child processes sharing one TOML file, each in its own
working directory, so a relative SQLite ledger URL gives each its own file) and an unprivileged
nginx (`nginx -p <dir> -c <dir>/nginx.conf -g 'daemon off;'`) whose `http {}` block includes
`deploy/nginx/estuary.conf` with its placeholders rewritten: the `# @INSTANCE@` lines become one
`server` line per instance, the `# @LISTEN@` line the proxy's loopback port, and `/var/log/nginx/`
the test's directory. The provider is the test's `FakeUpstream` (`upstream` fixture).

Later tests pass a `[state] url = "redis://…"` or a PostgreSQL `[ledger] url` (`state_url=`,
`ledger_url=`), more instances, or a whole TOML text of their own (`toml=`). Without nginx
(`/usr/sbin/nginx`) the tests that need it skip, or fail when `CI` is set (scripts/ensure-nginx.sh
installs it).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from estuary.testing import FakeUpstream
from tests.support import ENVIRON, free_port, gateway_toml, wait_until_up

REPO = Path(__file__).resolve().parents[2]
SHIPPED_CONF = REPO / "deploy" / "nginx" / "estuary.conf"
_INSTANCE_LINE = re.compile(r"^[ \t]*server [^\n]*# @INSTANCE@[ \t]*\n", re.MULTILINE)
# A graceful stop waits for open work; a test that left some should not wait for it long.
_STOP_S = 3.0
_LISTEN_LINE = re.compile(r"^([ \t]*)listen [^\n]*# @LISTEN@[ \t]*$", re.MULTILINE)


def nginx_binary() -> str:
    """The nginx executable; skips the test without one (fails it when `CI` is set)."""
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        reason = "nginx is missing: apt-get install nginx-light (scripts/ensure-nginx.sh)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI needs it")
        pytest.skip(reason)
    return found


def render_site(shipped: str, instances: list[str], listen_port: int, log_dir: Path) -> str:
    """The shipped site config with its placeholders replaced (see the module docstring)."""
    lines = _INSTANCE_LINE.findall(shipped)
    if not lines:
        raise AssertionError(f"{SHIPPED_CONF}: no `# @INSTANCE@` line to replace")
    # Keep the shipped options (max_fails=…), swapping only the address.
    template = lines[0].split("#", 1)[0].rstrip()
    servers = "".join(
        re.sub(r"server \S+", f"server {address}", template, count=1) + "\n"
        for address in instances
    )
    first = _INSTANCE_LINE.search(shipped)
    assert first is not None
    site = shipped[: first.start()] + servers + _INSTANCE_LINE.sub("", shipped[first.start() :])
    site, listens = _LISTEN_LINE.subn(rf"\1listen 127.0.0.1:{listen_port};", site)
    if listens != 1:
        raise AssertionError(f"{SHIPPED_CONF}: expected one `# @LISTEN@` line, found {listens}")
    return site.replace("/var/log/nginx/", f"{log_dir}/")


def main_conf(workdir: Path, site: Path) -> str:
    """A minimal nginx.conf for an unprivileged nginx that keeps every file under `workdir`."""
    user = "user root root;\n" if os.geteuid() == 0 else ""  # else workers would be `nobody`
    temp = "\n".join(
        f"    {kind}_temp_path {workdir / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}worker_processes 1;
pid {workdir / "nginx.pid"};
error_log {workdir / "error.log"} info;
events {{
    worker_connections 1024;
}}
http {{
{temp}
    access_log {workdir / "access.log"};
    include {site};
}}
"""


@dataclass
class Instance:
    """One `estuary serve` child process."""

    url: str
    port: int
    workdir: Path
    process: asyncio.subprocess.Process


@dataclass
class Cluster:
    """N instances behind nginx: `url` is nginx's; `instances[i].url` reaches one directly."""

    url: str
    instances: list[Instance]
    config: Path
    workdir: Path
    nginx: asyncio.subprocess.Process
    killed: set[int] = field(default_factory=set)

    async def kill(self, index: int) -> None:
        """SIGKILL instance `index` (a crash: no drain, no cleanup) and reap it."""
        process = self.instances[index].process
        if process.returncode is None:
            process.kill()
        await process.wait()
        self.killed.add(index)

    def logs(self) -> str:
        """The instances' and nginx's logs, for an assertion message."""
        parts = []
        for index, instance in enumerate(self.instances):
            log = instance.workdir / "estuary.log"
            text = log.read_text(errors="replace") if log.exists() else ""
            parts.append(f"--- instance {index}\n{text[-4000:]}")
        error = self.workdir / "nginx" / "error.log"
        if error.exists():
            parts.append(f"--- nginx\n{error.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)


MakeCluster = Callable[..., Awaitable[Cluster]]


def cluster_toml(
    upstream_url: str,
    *,
    state_url: str | None = None,
    ledger_url: str | None = "sqlite:///ledger.db",
    header_hold_s: float = 0.3,
    server: str = "",
    extra: str = "",
) -> str:
    """The shared test config (`tests.support.gateway_toml`) plus `[ledger]` and `[state]`.

    The default ledger is relative, so each instance (own working directory) has its own file.
    """
    tables = extra
    if ledger_url is not None:
        tables += f'\n[ledger]\nurl = "{ledger_url}"\n'
    if state_url is not None:
        tables += f'\n[state]\nurl = "{state_url}"\n'
    return gateway_toml(upstream_url, header_hold_s=header_hold_s, server=server, extra=tables)


def _directory(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


async def _start_instance(config: Path, workdir: Path, env: dict[str, str]) -> Instance:
    _directory(workdir)
    port = free_port()
    command = [sys.executable, "-m", "estuary", "serve", "--config", str(config)]
    command += ["--port", str(port)]
    with (workdir / "estuary.log").open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=log, stderr=log, env=env, cwd=workdir
        )
    return Instance(f"http://127.0.0.1:{port}", port, workdir, process)


async def _stop(*processes: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL what is still running after `_STOP_S` (tests do not test drains)."""
    await asyncio.gather(*(_stop_one(process) for process in processes))


async def _stop_one(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout=_STOP_S)
        except TimeoutError:
            process.kill()
            await process.wait()


@asynccontextmanager
async def _nginx(
    workdir: Path, instances: list[Instance]
) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    binary = nginx_binary()
    _directory(workdir)
    port = free_port()
    site = workdir / "estuary.conf"
    addresses = [f"127.0.0.1:{instance.port}" for instance in instances]
    site.write_text(render_site(SHIPPED_CONF.read_text(), addresses, port, workdir))
    conf = workdir / "nginx.conf"
    conf.write_text(main_conf(workdir, site))
    command = [binary, "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf)]
    with (workdir / "stderr.log").open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            *command, "-g", "daemon off;", stdout=log, stderr=log
        )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            await wait_until_up(url, process)  # /healthz through nginx: an instance answers
        except AssertionError:
            errors = (workdir / "error.log").read_text(errors="replace")
            raise AssertionError(f"nginx did not come up:\n{errors[-4000:]}") from None
        yield url, process
    finally:
        await _stop(process)


@pytest.fixture
async def make_cluster(upstream: FakeUpstream, tmp_path: Path) -> AsyncIterator[MakeCluster]:
    """Start instances behind nginx; everything is stopped after the test.

    `await make_cluster(instances=2, toml=None, state_url=None, ledger_url="sqlite:///ledger.db",
    header_hold_s=0.3, server="", extra="")`. `toml` replaces the generated config entirely
    (`${APP_KEY}` & co. are set in the instances' environment, see `tests.support.ENVIRON`).
    """
    async with AsyncExitStack() as stack:
        count = 0

        async def start(
            *,
            instances: int = 2,
            toml: str | None = None,
            state_url: str | None = None,
            ledger_url: str | None = "sqlite:///ledger.db",
            header_hold_s: float = 0.3,
            server: str = "",
            extra: str = "",
        ) -> Cluster:
            nonlocal count
            nginx_binary()  # skip (or fail in CI) before starting anything
            count += 1
            workdir = _directory(tmp_path / f"cluster{count}")
            config = workdir / "estuary.toml"
            if toml is None:
                toml = cluster_toml(
                    upstream.base_url,
                    state_url=state_url,
                    ledger_url=ledger_url,
                    header_hold_s=header_hold_s,
                    server=server,
                    extra=extra,
                )
            config.write_text(toml)
            env = {**os.environ, **ENVIRON}
            started = [
                await _start_instance(config, workdir / f"instance{i}", env)
                for i in range(instances)
            ]
            stack.push_async_callback(_stop, *(instance.process for instance in started))
            await asyncio.gather(*(wait_until_up(i.url, i.process) for i in started))
            url, nginx = await stack.enter_async_context(_nginx(workdir / "nginx", started))
            return Cluster(url, started, config, workdir, nginx)

        yield start
