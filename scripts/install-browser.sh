#!/usr/bin/env bash
# Install Debian's Chromium for the dashboard's browser test (docs/design.md §10).
#
# Idempotent: does nothing when /usr/bin/chromium is already there. Needs root
# (apt-get), which these machines and CI have; users without root can install the
# `chromium` package themselves. Playwright drives this browser through
# executable_path, so no Playwright browser download is needed.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [[ -x "$CHROMIUM" ]]; then
    echo "install-browser: $CHROMIUM is present ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown')); nothing to do"
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    echo "install-browser: $CHROMIUM is missing and installing it needs root: run 'sudo apt-get install chromium'" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-browser: $CHROMIUM is missing; running apt-get update"
apt-get update
echo "install-browser: installing chromium (apt-get install -y --no-install-recommends chromium)"
apt-get install -y --no-install-recommends chromium
echo "install-browser: installed $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
