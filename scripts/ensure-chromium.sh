#!/usr/bin/env bash
# The browser tests drive Debian's Chromium (/usr/bin/chromium) with Playwright; Playwright's own
# browser download is not used. Install it when missing and we may (root, apt); otherwise say so —
# the browser tests then skip with that reason, except in CI, where they fail.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
    echo "note: Chromium is missing (apt-get install chromium); the browser tests will skip" >&2
fi
