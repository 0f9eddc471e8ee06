#!/usr/bin/env bash
# The prepared GPU check, as one command on the GPU machine (see benchmarks/gpu/gpu_check.py and docs/gpu-check.md).
# Installs the carried wheels (.whl/, from benchmarks/gpu/gpu_wheels.py) into a temp target dir (skipped when the
# same wheels are installed there already: a second call on a warm machine), then runs the first call's steps, or
# those --only names, under one deadline; results and the log go to $OUT (else ./gpu-check-out). Arguments go to
# gpu_check.py (--only a,b  --deadline-s N  --hardware ROW  --dry-run). The install's seconds go to the report,
# beside the estimate the call plan assumes (gpu_check.py INSTALL_S).
set -uo pipefail
cd "$(dirname "$0")/../.."  # the repository root: .whl/, gpu-check-out/ and `pipeline` are there
OUT="${OUT:-$PWD/gpu-check-out}"
PYTHON="${PYTHON:-python3}"
WHEELS="${GPU_WHEELS:-.whl}"
SITE="${GPU_SITE:-/tmp/shrinkgate-site}"
mkdir -p "$OUT"
INSTALLED=()
if [[ " $* " != *" --dry-run "* ]]; then
  if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "error: no wheels in $WHEELS: run 'python benchmarks/gpu/gpu_wheels.py' here first and carry $WHEELS" >&2
    exit 2
  fi
  started=$SECONDS
  stamp="$(cd "$WHEELS" && ls -1 -- *.whl)"  # pinned versions: the same file names are the same wheels
  if [[ "$(cat "$SITE/.wheels" 2>/dev/null)" != "$stamp" ]]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
      || { echo "error: installing the wheels in $WHEELS failed (see above)" >&2; exit 2; }
    printf '%s' "$stamp" > "$SITE/.wheels"
    echo "== wheels installed in $SITE in $((SECONDS - started)) s"
  else
    echo "== wheels already installed in $SITE"
  fi
  INSTALLED=(--install-s "$((SECONDS - started))")
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PYTHON" benchmarks/gpu/gpu_check.py --out "$OUT" ${INSTALLED[@]+"${INSTALLED[@]}"} "$@" 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
