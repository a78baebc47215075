#!/usr/bin/env bash
# Installs everything hyperhive and its test suite need on a fresh Debian
# machine: system packages (when root and apt exists), the Python package with
# all extras, and the pinned claude CLI from npm.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    missing=()
    for pkg in git chromium nix-bin bubblewrap; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    # PostgreSQL server binaries: the system ones if present, else pgserver's.
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        missing+=(postgresql)
    fi
    if [ "${#missing[@]}" -gt 0 ]; then
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
fi

python3 -m pip install --quiet --disable-pip-version-check -e '.[dev]'

if command -v npm >/dev/null 2>&1; then
    (cd tools/claude && npm install --silent --no-audit --no-fund >/dev/null 2>&1 \
        || npm install --no-audit --no-fund)
fi
echo "install: done"
