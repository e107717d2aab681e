#!/usr/bin/env bash
# Install Debian's chromium for the app's end-to-end browser test (tests/test_app_browser.py).
# Idempotent and quiet: does nothing when /usr/bin/chromium already exists. Playwright drives this
# binary directly (executable_path), so no Playwright browser download is needed.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
/usr/bin/chromium --version
