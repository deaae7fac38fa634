#!/usr/bin/env bash
# Install the two peer gateways the benchmark compares Estuary against, into bench/.peers/:
#   - LiteLLM proxy, pinned in bench/peers/litellm-requirements.txt, in its own venv (PyPI);
#   - Portkey gateway, pinned in bench/peers/portkey-package.json, with npm.
# Idempotent: a stamp file per peer holds the hash of its pin file, and a peer whose stamp matches
# is skipped. Delete bench/.peers/ (or a stamp) to force a reinstall.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$here/../.." && pwd)"
peers="$repo_root/bench/.peers"
python="${PYTHON:-python3}"

mkdir -p "$peers"

hash_of() { sha256sum "$1" | cut -d' ' -f1; }

summary=()

# --- LiteLLM proxy ------------------------------------------------------------------------------
ll_req="$here/litellm-requirements.txt"
ll_venv="$peers/litellm-venv"
ll_stamp="$peers/litellm.stamp"
ll_hash="$(hash_of "$ll_req")"
if [[ -f "$ll_stamp" && "$(cat "$ll_stamp")" == "$ll_hash" && -x "$ll_venv/bin/litellm" ]]; then
    summary+=("litellm: up to date")
else
    echo "setup: installing LiteLLM proxy into $ll_venv" >&2
    rm -f "$ll_stamp"
    if [[ ! -x "$ll_venv/bin/python" ]]; then
        "$python" -m venv "$ll_venv"
    fi
    # pip's configured find-links/extra-index paths that do not exist print one warning per
    # package; keep only the lines that matter.
    "$ll_venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$ll_req" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
    echo "$ll_hash" >"$ll_stamp"
    summary+=("litellm: installed")
fi
ll_version="$("$ll_venv/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))')"

# --- Portkey gateway ----------------------------------------------------------------------------
pk_pkg="$here/portkey-package.json"
pk_dir="$peers/portkey"
pk_stamp="$peers/portkey.stamp"
pk_hash="$(hash_of "$pk_pkg")"
pk_server="$pk_dir/node_modules/@portkey-ai/gateway/build/start-server.js"
if [[ -f "$pk_stamp" && "$(cat "$pk_stamp")" == "$pk_hash" && -f "$pk_server" ]]; then
    summary+=("portkey: up to date")
else
    echo "setup: installing Portkey gateway into $pk_dir" >&2
    rm -f "$pk_stamp"
    mkdir -p "$pk_dir"
    cp "$pk_pkg" "$pk_dir/package.json"
    (cd "$pk_dir" && npm install --no-audit --no-fund --loglevel=error >&2)
    echo "$pk_hash" >"$pk_stamp"
    summary+=("portkey: installed")
fi
pk_version="$(node -p 'require(process.argv[1]).version' "$pk_dir/node_modules/@portkey-ai/gateway/package.json")"
hono_version="$(node -p 'require(process.argv[1]).version' "$pk_dir/node_modules/@hono/node-server/package.json")"

echo "peers in $peers: litellm $ll_version (${summary[0]#litellm: }); portkey gateway $pk_version with @hono/node-server $hono_version (${summary[1]#portkey: })"
