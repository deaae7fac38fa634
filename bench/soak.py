"""Soak test: Redis-backed Estuary instances under steady streaming load, with drops and resumes.

Not part of `make test`. Starts `estuary fake-upstream`, N `estuary serve` instances sharing
`[state] url` (Redis) and a PostgreSQL ledger (a fresh database it creates, unless `--ledger`),
optionally nginx in front with the shipped `deploy/nginx/estuary.conf`, then keeps `--streams`
app-API streams running for `--duration` seconds. A `--drop` fraction of clients hang up
mid-stream and resume with `GET /api/chat/stream/{id}` + `Last-Event-ID` (a 404 there is counted,
not fatal). Every stream's event ids must run 1..n with no gap and no duplicate. Each instance's
RSS is sampled every 10 s. At the end it prints the counts, RSS first/last/max per instance and
the ledger's row count against the requests started.

    .venv/bin/python bench/soak.py --duration 60
    .venv/bin/python bench/soak.py --streams 500 --instances 3 --nginx
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from estuary.sse import SSEDecoder

REPO = Path(__file__).resolve().parents[1]
ESTUARY = [sys.executable, "-m", "estuary"]
APP_KEY = "sk-est-soak-" + secrets.token_hex(12)
UPSTREAM_KEY = "sk-upstream-soak-" + secrets.token_hex(12)
PG_ADMIN = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
RSS_EVERY_S = 10.0


@dataclass
class Counts:
    """What the clients saw."""

    started: int = 0
    completed: int = 0
    dropped: int = 0
    resumed: int = 0
    resume_404: int = 0
    errors: int = 0
    bad_ids: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


@dataclass
class Child:
    """A started child process and its log."""

    name: str
    process: asyncio.subprocess.Process
    url: str = ""
    rss_kb: list[int] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rss_kb(pid: int) -> int:
    """VmRSS of a process from /proc (0 once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) if match else 0


async def spawn(name: str, command: list[str], workdir: Path, env: dict[str, str]) -> Child:
    with (workdir / f"{name}.log").open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=log, stderr=log, env=env, cwd=workdir
        )
    return Child(name, process)


async def wait_http(url: str, child: Child, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if child.process.returncode is not None:
                raise SystemExit(f"{child.name} exited with {child.process.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url) as response:
                    if response.status < 500:
                        return
            await asyncio.sleep(0.1)
    raise SystemExit(f"{child.name} did not answer {url} within {within_s} s")


async def stop(children: list[Child]) -> None:
    for child in children:
        if child.process.returncode is None:
            child.process.send_signal(signal.SIGTERM)
    for child in children:
        try:
            await asyncio.wait_for(child.process.wait(), timeout=40)
        except TimeoutError:
            child.process.kill()
            await child.process.wait()


def gateway_toml(upstream: str, state: str, ledger: str) -> str:
    return f"""
[server]
heartbeat_s = 5

[auth]
keys = ["${{SOAK_APP_KEY}}"]

[ledger]
url = "{ledger}"

[state]
url = "{state}"

[limits]
anonymous_rpm = 100000

[providers.fake]
format = "openai"
base_url = "{upstream}"
api_key = "${{SOAK_UPSTREAM_KEY}}"

[models.chat]
targets = ["fake/fake-model"]
"""


def nginx_site(instances: list[str], port: int, workdir: Path) -> str:
    """The shipped nginx config with its `@INSTANCE@`/`@LISTEN@` lines rewritten."""
    shipped = (REPO / "deploy" / "nginx" / "estuary.conf").read_text()
    lines = shipped.splitlines(keepends=True)
    out: list[str] = []
    placed = False
    for line in lines:
        if line.rstrip().endswith("# @INSTANCE@"):
            if not placed:
                out += [
                    f"    server {address} max_fails=1 fail_timeout=10s;\n" for address in instances
                ]
                placed = True
        elif line.rstrip().endswith("# @LISTEN@"):
            out.append(f"    listen 127.0.0.1:{port};\n")
        else:
            out.append(line)
    return "".join(out).replace("/var/log/nginx/", f"{workdir}/")


def nginx_main(workdir: Path, site: Path) -> str:
    user = "user root root;\n" if os.geteuid() == 0 else ""
    temp = "".join(
        f"    {kind}_temp_path {workdir / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}worker_processes 2;\npid {workdir / 'nginx.pid'};\n"
        f"error_log {workdir / 'nginx-error.log'} warn;\n"
        "events { worker_connections 8192; }\n"
        f"http {{\n{temp}    access_log off;\n    include {site};\n}}\n"
    )


@contextlib.asynccontextmanager
async def fresh_database(url: str | None) -> AsyncIterator[tuple[str, str | None]]:
    """The ledger URL to use, and the database this script created (dropped afterwards)."""
    if url is not None:
        yield url, None
        return
    name = "estuary_soak_" + secrets.token_hex(4)
    admin = create_async_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield f"postgresql://postgres@127.0.0.1:5432/{name}", name
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


async def ledger_rows(url: str) -> int | None:
    """Rows in the ledger's `requests` table (None if it cannot be read)."""
    if not url.startswith("postgres"):
        return None
    async_url = re.sub(r"^postgres(ql)?://", "postgresql+asyncpg://", url)
    engine = create_async_engine(async_url)
    try:
        async with engine.connect() as connection:
            return int(
                (await connection.execute(text("SELECT count(*) FROM requests"))).scalar_one()
            )
    except Exception as exc:  # a report, not a test: say why and go on
        print(f"ledger: cannot count rows ({type(exc).__name__}: {exc})")
        return None
    finally:
        await engine.dispose()


class Driver:
    """Keeps `streams` clients streaming until `deadline`, each stream after the other."""

    def __init__(self, urls: list[str], drop: float, deadline: float) -> None:
        self.urls = urls
        self.drop = drop
        self.deadline = deadline
        self.counts = Counts()
        self.headers = {"Authorization": f"Bearer {APP_KEY}"}

    async def client(self, http: aiohttp.ClientSession, index: int) -> None:
        rng = random.Random(index)
        while time.monotonic() < self.deadline:
            base = self.urls[rng.randrange(len(self.urls))]
            try:
                await self.one_stream(http, base, rng)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.counts.error(type(exc).__name__)
                await asyncio.sleep(0.5)

    async def one_stream(self, http: aiohttp.ClientSession, base: str, rng: random.Random) -> None:
        body = {"messages": [{"role": "user", "content": "soak"}], "model": "chat"}
        drop_after = rng.randint(1, 20) if rng.random() < self.drop else None
        self.counts.started += 1
        seqs: list[int] = []
        request_id = ""
        async with http.post(f"{base}/api/chat/stream", json=body, headers=self.headers) as resp:
            if resp.status != 200:
                self.counts.error(f"http_{resp.status}")
                return
            request_id = resp.headers.get("X-Request-Id", "")
            ended = await self.read(resp, seqs, stop_after=drop_after)
        if ended:
            self.finish(seqs)
            return
        self.counts.dropped += 1  # we hung up: come back, maybe to another instance
        await asyncio.sleep(rng.uniform(0.05, 1.0))
        other = self.urls[rng.randrange(len(self.urls))]
        headers = {**self.headers, "Last-Event-ID": f"{request_id}:{seqs[-1] if seqs else 0}"}
        async with http.get(f"{other}/api/chat/stream/{request_id}", headers=headers) as resp:
            if resp.status == 404:
                self.counts.resume_404 += 1
                return
            if resp.status != 200:
                self.counts.error(f"resume_http_{resp.status}")
                return
            self.counts.resumed += 1
            if await self.read(resp, seqs, stop_after=None):
                self.finish(seqs)
            else:
                self.counts.error("resume_ended_without_terminal_event")

    async def read(
        self, resp: aiohttp.ClientResponse, seqs: list[int], *, stop_after: int | None
    ) -> bool:
        """Read events into `seqs`; True once a terminal event came, False if we hung up."""
        decoder = SSEDecoder()
        read = 0
        async for chunk in resp.content.iter_any():
            for message in decoder.feed(chunk):
                if message.id:
                    seqs.append(int(message.id.rpartition(":")[2]))
                kind = orjson.loads(message.data).get("type")
                if kind in ("done", "error"):
                    if kind == "error":
                        self.counts.error("error_event")
                    return True
                read += 1
                if stop_after is not None and read >= stop_after:
                    resp.close()  # drop the connection mid-stream
                    return False
        self.counts.error("closed_without_terminal_event")
        return True

    def finish(self, seqs: list[int]) -> None:
        if seqs != list(range(1, len(seqs) + 1)):
            self.counts.bad_ids += 1
        self.counts.completed += 1


async def sample_rss(children: list[Child], until: float) -> None:
    while True:
        for child in children:
            child.rss_kb.append(rss_kb(child.process.pid))
        if time.monotonic() >= until:
            return
        await asyncio.sleep(min(RSS_EVERY_S, max(0.0, until - time.monotonic())))


async def main(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="estuary-soak-"))
    environ = dict(os.environ)  # noqa: TID251 - the children's environment, plus our keys
    env = {**environ, "SOAK_APP_KEY": APP_KEY, "SOAK_UPSTREAM_KEY": UPSTREAM_KEY}
    children: list[Child] = []
    async with fresh_database(args.ledger) as (ledger_url, created):
        try:
            port = free_port()
            fake = await spawn(
                "fake-upstream",
                [
                    *ESTUARY,
                    "fake-upstream",
                    "--port",
                    str(port),
                    "--api-key",
                    UPSTREAM_KEY,
                    "--tokens",
                    str(args.tokens),
                    "--gap",
                    str(args.gap),
                    "--ttft",
                    "0.1",
                ],
                workdir,
                env,
            )
            children.append(fake)
            await wait_http(f"http://127.0.0.1:{port}/v1/models", fake)
            config = workdir / "estuary.toml"
            config.write_text(gateway_toml(f"http://127.0.0.1:{port}/v1", args.state, ledger_url))
            instances: list[Child] = []
            for index in range(args.instances):
                instance_port = free_port()
                child = await spawn(
                    f"estuary{index}",
                    [*ESTUARY, "serve", "--config", str(config), "--port", str(instance_port)],
                    workdir,
                    env,
                )
                child.url = f"http://127.0.0.1:{instance_port}"
                instances.append(child)
                children.append(child)
            for child in instances:
                await wait_http(f"{child.url}/healthz", child)
            urls = [child.url for child in instances]
            if args.nginx:
                urls = [await start_nginx(instances, workdir, children)]
            print(f"soak: {args.streams} streams for {args.duration:.0f} s via {', '.join(urls)}")
            print(
                f"soak: logs in {workdir}; ledger {'created ' + created if created else ledger_url}"
            )
            deadline = time.monotonic() + args.duration
            driver = Driver(urls, args.drop, deadline)
            connector = aiohttp.TCPConnector(limit=0)
            timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout) as http,
                asyncio.TaskGroup() as tasks,
            ):
                tasks.create_task(sample_rss(instances, deadline))
                for index in range(args.streams):
                    tasks.create_task(driver.client(http, index))
            await asyncio.sleep(1.0)  # let the last rows settle
            rows = await ledger_rows(ledger_url)
            report(driver.counts, instances, rows)
        finally:
            await stop(children)
    return 0 if driver.counts.bad_ids == 0 else 1


async def start_nginx(instances: list[Child], workdir: Path, children: list[Child]) -> str:
    binary = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
    if binary is None:
        raise SystemExit("--nginx: nginx is not installed (scripts/ensure-nginx.sh)")
    port = free_port()
    site = workdir / "site.conf"
    site.write_text(nginx_site([c.url.removeprefix("http://") for c in instances], port, workdir))
    main_conf = workdir / "nginx.conf"
    main_conf.write_text(nginx_main(workdir, site))
    command = [binary, "-p", str(workdir), "-e", str(workdir / "nginx-error.log")]
    command += ["-c", str(main_conf), "-g", "daemon off;"]
    child = await spawn("nginx", command, workdir, dict(os.environ))  # noqa: TID251 - child env
    children.insert(0, child)  # stopped first
    url = f"http://127.0.0.1:{port}"
    await wait_http(f"{url}/healthz", child)
    return url


def report(counts: Counts, instances: list[Child], rows: int | None) -> None:
    print()
    print(f"requests started   {counts.started}")
    print(f"completed          {counts.completed}")
    print(f"dropped by client  {counts.dropped}")
    print(f"resumed            {counts.resumed}")
    print(f"resume 404         {counts.resume_404}")
    print(f"errors             {counts.errors}  {counts.error_kinds or ''}")
    print(f"bad id sequences   {counts.bad_ids}")
    for child in instances:
        samples = [kb for kb in child.rss_kb if kb] or [0]
        print(
            f"{child.name:<18} RSS first {samples[0] / 1024:.1f} MB,"
            f" last {samples[-1] / 1024:.1f} MB, max {max(samples) / 1024:.1f} MB"
            f" ({len(samples)} samples)"
        )
        per_minute = samples[:: max(1, round(60 / RSS_EVERY_S))]
        print(f"{'':<18} each minute: {' '.join(f'{kb / 1024:.0f}' for kb in per_minute)} MB")
    if rows is None:
        print("ledger rows        (not counted)")
    else:
        print(f"ledger rows        {rows} for {counts.started} requests started")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--streams", type=int, default=200, help="concurrent clients (200)")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (600)")
    parser.add_argument("--instances", type=int, default=2, help="estuary serve processes (2)")
    parser.add_argument("--state", default="redis://127.0.0.1:6379/0", help="[state] url")
    parser.add_argument(
        "--ledger", default=None, help="[ledger] url (default: a fresh local PostgreSQL database)"
    )
    parser.add_argument("--nginx", action="store_true", help="put nginx in front")
    parser.add_argument("--drop", type=float, default=0.2, help="share of clients that drop (0.2)")
    parser.add_argument("--tokens", type=int, default=50, help="tokens per answer (50)")
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between tokens (0.02)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
