#!/usr/bin/env bash
# The reverse-proxy tests (tests/multi, marker `nginx`) run Debian's nginx (/usr/sbin/nginx) as an
# unprivileged child process with the shipped deploy/nginx/estuary.conf. Install it when missing
# and we may (root, apt); otherwise say so — the nginx tests then skip with that reason, except in
# CI, where they fail. The package's own service is not needed: the tests start their own nginx.
set -euo pipefail
if [ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    # nginx-light is enough (no extra modules are used); older/newer releases only ship `nginx`.
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
    fi
else
    echo "note: nginx is missing (apt-get install nginx-light); the nginx tests will skip" >&2
fi
