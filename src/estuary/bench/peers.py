"""Launch recipes for the peer gateways the benchmark compares Estuary against.

`bench/peers/setup.sh` installs them into `bench/.peers/`: LiteLLM proxy in its own venv and
Portkey's gateway with npm (see `bench/peers/README.md` for versions and why each setting is
there). This module only says how to start each one and how to talk to it; the harness starts,
waits for and stops the processes.

Both peers are pointed at the fake upstream's OpenAI-compatible base URL (ending in `/v1`) and
relay `POST /v1/chat/completions` with `stream: true` unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "BENCH_MODELS",
    "LITELLM_MASTER_KEY",
    "PeerLaunch",
    "litellm_launch",
    "missing_peers",
    "peers_dir",
    "portkey_launch",
]

HOST: Final = "127.0.0.1"

BENCH_MODELS: Final = ("fake-model", "long-model")
"""Model names the benchmark sends; LiteLLM needs a route for each (Portkey passes any through)."""

LITELLM_MASTER_KEY: Final = "sk-bench-litellm"
"""LiteLLM checks this key on every request, as a deployed proxy does (so does Estuary)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerLaunch:
    """How to start one gateway and send it a streamed chat completion."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    """Extra environment, merged by the caller over its own."""
    cwd: Path
    base_url: str
    chat_path: str
    headers: Mapping[str, str]
    """Headers every benchmark request must carry (auth, routing)."""
    model: str
    ready_url: str
    """Answers 2xx once the peer serves requests."""


def peers_dir(repo_root: Path) -> Path:
    """Where `bench/peers/setup.sh` installs the peers."""
    return repo_root / "bench" / ".peers"


def _litellm_bin(repo_root: Path) -> Path:
    return peers_dir(repo_root) / "litellm-venv" / "bin" / "litellm"


def _portkey_dir(repo_root: Path) -> Path:
    return peers_dir(repo_root) / "portkey"


def _portkey_server(repo_root: Path) -> Path:
    return (
        _portkey_dir(repo_root)
        / "node_modules"
        / "@portkey-ai"
        / "gateway"
        / "build"
        / "start-server.js"
    )


def missing_peers(repo_root: Path) -> list[str]:
    """The peers `bench/peers/setup.sh` has not (completely) installed: no stamp or entry point."""
    root = peers_dir(repo_root)
    missing: list[str] = []
    if not (_litellm_bin(repo_root).is_file() and (root / "litellm.stamp").is_file()):
        missing.append("litellm")
    if not (_portkey_server(repo_root).is_file() and (root / "portkey.stamp").is_file()):
        missing.append("portkey")
    return missing


def _yaml_str(value: str) -> str:
    # A double-quoted YAML scalar; JSON string escaping is valid YAML.
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def litellm_config(upstream_url: str, upstream_key: str, models: Sequence[str]) -> str:
    """LiteLLM's proxy config: one route per model, and nothing else that costs work per request."""
    routes = "".join(
        f"  - model_name: {_yaml_str(model)}\n"
        f"    litellm_params:\n"
        f"      model: {_yaml_str('openai/' + model)}\n"
        f"      api_base: {_yaml_str(upstream_url)}\n"
        f"      api_key: {_yaml_str(upstream_key)}\n"
        for model in models
    )
    return (
        "model_list:\n"
        f"{routes}"
        "litellm_settings:\n"
        "  drop_params: true\n"
        "  set_verbose: false\n"
        "  json_logs: false\n"
        "  request_timeout: 600\n"
        "router_settings:\n"
        "  num_retries: 0\n"
        "general_settings:\n"
        f"  master_key: {_yaml_str(LITELLM_MASTER_KEY)}\n"
        "  disable_spend_logs: true\n"
        "  disable_error_logs: true\n"
        "  disable_model_info_refresh: true\n"
        "  background_health_checks: false\n"
        "  store_model_in_db: false\n"
    )


def litellm_launch(
    repo_root: Path,
    upstream_url: str,
    port: int,
    workdir: Path,
    upstream_key: str,
    *,
    models: Sequence[str] = BENCH_MODELS,
) -> PeerLaunch:
    """LiteLLM proxy, one uvicorn worker, no database; writes `litellm-config.yaml` into `workdir`.

    Startup takes several seconds (it imports a great deal); wait on `ready_url`.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "litellm-config.yaml"
    config.write_text(litellm_config(upstream_url, upstream_key, models), encoding="utf-8")
    base_url = f"http://{HOST}:{port}"
    return PeerLaunch(
        name="litellm",
        argv=(
            str(_litellm_bin(repo_root)),
            "--config",
            str(config.resolve()),
            "--host",
            HOST,
            "--port",
            str(port),
            "--num_workers",
            "1",
        ),
        env={
            # Errors only: uvicorn's access log and LiteLLM's info logs are per-request work.
            "LITELLM_LOG": "ERROR",
            # The bundled model price map; otherwise it fetches one from the internet at startup
            # (retrying with back-off on this offline machine) and then again periodically.
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True",
            "DISABLE_ADMIN_UI": "True",
            "DISABLE_SCHEMA_UPDATE": "True",
            "PYTHONUNBUFFERED": "1",
        },
        cwd=workdir,
        base_url=base_url,
        chat_path="/v1/chat/completions",
        headers={"Authorization": f"Bearer {LITELLM_MASTER_KEY}"},
        model=models[0],
        ready_url=f"{base_url}/health/readiness",
    )


def portkey_launch(repo_root: Path, upstream_url: str, port: int, upstream_key: str) -> PeerLaunch:
    """Portkey's gateway on node, headless, routed per request by its `x-portkey-*` headers.

    It takes the port only as `--port=N` (a separate `--port N` is ignored and it listens on
    8787), and listens on all interfaces; there is no host flag.
    """
    base_url = f"http://{HOST}:{port}"
    return PeerLaunch(
        name="portkey",
        argv=("node", str(_portkey_server(repo_root)), f"--port={port}", "--headless"),
        env={"NODE_ENV": "production"},
        cwd=_portkey_dir(repo_root),
        base_url=base_url,
        chat_path="/v1/chat/completions",
        headers={
            "x-portkey-provider": "openai",
            "x-portkey-custom-host": upstream_url,
            "Authorization": f"Bearer {upstream_key}",
        },
        model=BENCH_MODELS[0],
        ready_url=f"{base_url}/",
    )
