#!/usr/bin/env bash
# The prepared GPU check, as one command on the GPU machine (see benchmarks/gpu_check.py and the README,
# "Measuring on a GPU"). Installs the carried wheels (.whl/, from benchmarks/gpu_wheels.py) into a temp
# target dir, then runs every step under one deadline; results and the log go to $OUT (else ./gpu-check-out).
# Arguments go to gpu_check.py (--only a,b  --deadline-s N  --dry-run).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-check-out}"
PYTHON="${PYTHON:-python3}"
WHEELS="${GPU_WHEELS:-.whl}"
SITE="${GPU_SITE:-/tmp/shrinkgate-site}"
mkdir -p "$OUT"
if [[ " $* " != *" --dry-run "* ]]; then
  if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "error: no wheels in $WHEELS: run 'python benchmarks/gpu_wheels.py' here first and carry $WHEELS" >&2
    exit 2
  fi
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
    || { echo "error: installing the wheels in $WHEELS failed (see above)" >&2; exit 2; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PYTHON" benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
