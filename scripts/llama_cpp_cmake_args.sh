#!/usr/bin/env bash
# CMAKE_ARGS for building llama-cpp-python from its sdist on this host, from the CPU flags in /proc/cpuinfo.
# Sourced by scripts/install.sh; run by path it prints the three results (tests feed it fake cpuinfo files).
#   llama_cpp_cmake_args [CPUINFO_FILE]   (default /proc/cpuinfo) sets
#     LLAMA_CMAKE_ARGS      the -D options
#     LLAMA_CPU_FEATURES    space-separated ggml feature names turned on ("AVX2 AVX512 ..."), empty on non-x86
#     LLAMA_SYSINFO_EXPECT  the x86 features llama_print_system_info() must report for such a build, sorted
# Why not GGML_NATIVE: -march=native also turns on AMX where cpuinfo lists it, and that build segfaults on every
# quantized GGUF; and with GGML_NATIVE=OFF ggml turns SSE4.2/AVX/AVX2/BMI2/FMA/F16C ON by default, so each of
# those is set explicitly from the flags (a host without one must not get it).

llama_cpp_cmake_args() {
  local cpuinfo="${1:-/proc/cpuinfo}" flags="" line=""
  if [ -r "$cpuinfo" ]; then
    line="$(grep -m1 '^flags' "$cpuinfo" || true)"  # x86 only; ARM lists "Features"
    flags=" ${line#*:} "
  fi
  # No LLAMA_BUILD_TESTS/EXAMPLES/TOOLS=OFF: as a subdirectory of the sdist llama.cpp already builds none of them.
  local args=(-DGGML_NATIVE=OFF)
  LLAMA_CPU_FEATURES=""
  LLAMA_SYSINFO_EXPECT=""
  if [ -n "$line" ]; then
    # ggml option : cpuinfo flag : name in llama_print_system_info() (empty: not reported)
    local spec opt flag shown
    for spec in SSE42:sse4_2: AVX:avx:AVX AVX2:avx2:AVX2 BMI2:bmi2:BMI2 FMA:fma:FMA F16C:f16c:F16C \
                AVX_VNNI:avx_vnni:AVX_VNNI AVX512:avx512f:AVX512 AVX512_VNNI:avx512_vnni:AVX512_VNNI \
                AVX512_VBMI:avx512vbmi:AVX512_VBMI AVX512_BF16:avx512_bf16:AVX512_BF16; do
      IFS=: read -r opt flag shown <<<"$spec"
      if [[ "$flags" == *" $flag "* ]]; then
        args+=("-DGGML_$opt=ON")
        LLAMA_CPU_FEATURES+="${LLAMA_CPU_FEATURES:+ }$opt"
        if [ -n "$shown" ]; then LLAMA_SYSINFO_EXPECT+="${LLAMA_SYSINFO_EXPECT:+ }$shown"; fi
      else
        args+=("-DGGML_$opt=OFF")
      fi
    done
    args+=(-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
    LLAMA_SYSINFO_EXPECT="$(tr ' ' '\n' <<<"$LLAMA_SYSINFO_EXPECT" | sort | tr '\n' ' ' | sed 's/^ *//; s/ *$//')"
  fi
  LLAMA_CMAKE_ARGS="${args[*]}"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  llama_cpp_cmake_args "${1:-/proc/cpuinfo}"
  printf 'LLAMA_CMAKE_ARGS=%s\nLLAMA_CPU_FEATURES=%s\nLLAMA_SYSINFO_EXPECT=%s\n' \
    "$LLAMA_CMAKE_ARGS" "$LLAMA_CPU_FEATURES" "$LLAMA_SYSINFO_EXPECT"
fi
