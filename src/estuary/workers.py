"""Running the gateway: one process, or `--workers N` processes sharing one listening socket.

With workers, the parent binds the socket once and starts N worker processes (the `spawn` start
method: each imports Estuary afresh and receives a duplicate of the socket; the kernel spreads
connections over their accept calls). Each worker builds its own runtime with its own instance
name, `<instance>/w<K>`, stable across restarts, so the rows a crashed worker left open are
marked `interrupted` when its replacement starts. Everything workers must agree on — limits,
cancel, resume logs, revoked keys — lives in the shared state, which is why more than one worker
needs `[state] url = "redis://…"` (the config refuses otherwise).

The parent only supervises: a worker that dies is started again (at most once per second per
worker), and SIGTERM or SIGINT is passed on to every worker, which then shuts down gracefully;
the parent waits for them and exits. SIGHUP is passed on too: each worker reloads the config file
itself (`Runtime.reload`), so each logs its own `config.reloaded` or `config.reload_failed`.

Graceful shutdown (each process): uvicorn stops accepting at once, and `Drain` gives running
streams `[server] shutdown_drain_s` to finish before it ends them with a retryable in-band error;
uvicorn's own hard limit is 10 s later, time for those last events and the ledger's flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import signal
import socket
import sys
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any, Final

import structlog
import uvicorn

from estuary.config import Config, load_config, secret_values
from estuary.core.redaction import Redactor
from estuary.logs import configure_logging
from estuary.reload import ConfigSource
from estuary.server import Runtime, build_app, build_runtime, tune_gc

__all__ = ["run_single", "run_workers"]

_SHUTDOWN_MARGIN_S: Final = 10  # after the drain deadline: for terminal events and the ledger
_RESTART_PAUSE_S: Final = 1.0
_BACKLOG: Final = 2048
_log: Final = structlog.get_logger("estuary.workers")


def _uvicorn_config(app: Any, settings: Config) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        server_header=False,  # nothing to gain from naming the server to every client
        timeout_graceful_shutdown=math.ceil(settings.server.shutdown_drain_s) + _SHUTDOWN_MARGIN_S,
        backlog=_BACKLOG,
    )


class _Server(uvicorn.Server):
    """uvicorn's server, which also starts the drain of running streams on SIGTERM/SIGINT and
    reloads the config file on SIGHUP."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self._runtime = runtime
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self._runtime.request_reload)
        try:
            await super().serve(sockets)
        finally:
            loop.remove_signal_handler(signal.SIGHUP)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._loop is not None:  # a signal handler: hand over to the loop
            self._loop.call_soon_threadsafe(self._runtime.services.drain.begin)
        super().handle_exit(sig, frame)


def _serve(
    settings: Config, source: ConfigSource | None, sockets: list[socket.socket] | None = None
) -> None:
    # Until the loop handles SIGHUP, one (say, a reload passed on by the parent) must not kill
    # the process; the file it would have reloaded is read during this start-up anyway.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    runtime = build_runtime(settings, source=source)
    configure_logging(settings.server.log_level, runtime.redactor)
    app = build_app(runtime)
    tune_gc()
    _Server(_uvicorn_config(app, settings), runtime).run(sockets=sockets)


def run_single(settings: Config, *, source: ConfigSource | None = None) -> None:
    """Serve in this process until SIGTERM/SIGINT; reload `source` (if any) on SIGHUP."""
    _serve(settings, source)


def _worker_main(
    path: Path | None, overrides: dict[str, Any], instance: str, sock: socket.socket
) -> None:
    """One worker: its own runtime on the shared socket (runs in a spawned process)."""
    overrides = {**overrides, "server.instance": instance}
    source = None if path is None else ConfigSource(path=path, overrides=overrides)
    _serve(load_config(path, overrides=overrides), source, [sock])


class _Supervisor:
    """Starts, restarts and stops the worker processes."""

    def __init__(
        self, path: Path | None, overrides: dict[str, Any], settings: Config, count: int
    ) -> None:
        server = settings.server
        self._path = path
        self._overrides = overrides
        self._base = server.instance or f"{socket.gethostname()}:{server.port}"
        self._count = count
        self._context = multiprocessing.get_context("spawn")
        self._socket = socket.create_server((server.host, server.port), backlog=_BACKLOG)
        self._workers: dict[int, BaseProcess] = {}
        self._started_at: dict[int, float] = {}
        self._stopping = False
        self._shutdown_s = math.ceil(server.shutdown_drain_s) + _SHUTDOWN_MARGIN_S

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hangup)
        try:
            for index in range(self._count):
                self._start(index)
            while not self._stopping:
                time.sleep(0.2)
                self._restart_dead()
            return self._stop_all()
        finally:
            self._socket.close()

    def _start(self, index: int) -> None:
        instance = f"{self._base}/w{index}"
        process = self._context.Process(
            target=_worker_main,
            args=(self._path, self._overrides, instance, self._socket),
            name=f"estuary-worker-{index}",
        )
        process.start()
        self._workers[index] = process
        self._started_at[index] = time.monotonic()
        _log.info("worker.started", worker=index, pid=process.pid, instance=instance)

    def _restart_dead(self) -> None:
        for index, process in list(self._workers.items()):
            if process.is_alive() or self._stopping:
                continue
            if time.monotonic() - self._started_at[index] < _RESTART_PAUSE_S:
                continue  # one that dies at once is not restarted in a tight loop
            _log.warning("worker.died", worker=index, pid=process.pid, exitcode=process.exitcode)
            self._start(index)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping = True

    def _on_hangup(self, signum: int, _frame: FrameType | None) -> None:
        """Pass SIGHUP (reload the config) on to every worker; a worker started later reads
        the file as it is then anyway."""
        for process in self._workers.values():
            if process.pid is not None and process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):  # it died just now
                    os.kill(process.pid, signal.SIGHUP)

    def _stop_all(self) -> int:
        """Pass SIGTERM on, wait for the graceful shutdown, kill what is left."""
        for process in self._workers.values():
            if process.is_alive() and process.pid is not None:
                process.terminate()
        deadline = time.monotonic() + self._shutdown_s + 5
        for process in self._workers.values():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        _log.info("workers.stopped", workers=len(self._workers))
        return 0


def run_workers(path: Path | None, overrides: dict[str, Any], settings: Config) -> None:
    """Serve with `settings.server.workers` processes until SIGTERM/SIGINT."""
    configure_logging(settings.server.log_level, Redactor(secret_values(settings)))
    supervisor = _Supervisor(path, overrides, settings, settings.server.workers)
    sys.exit(supervisor.run())
