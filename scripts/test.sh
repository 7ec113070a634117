#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian/Ubuntu machine, then run it.
# System packages: PostgreSQL server binaries (throwaway servers in the tests) and Chromium (report check).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
# torch==2.13.0: the CPU build where a local wheel is provided; any torch >= 2.4 works.
.venv/bin/pip install -q torch==2.13.0 -e '.[test]'
.venv/bin/ruff check .
.venv/bin/mypy  # sweep, analysis and storage: the files and settings are in pyproject.toml's [tool.mypy]
.venv/bin/python -m pytest "$@"
