#!/usr/bin/env bash
# Builds the CPU kernels and csrc/tests/kernel_driver.cpp for this machine
# with AddressSanitizer and UndefinedBehaviorSanitizer (no recovery: the first
# finding aborts) and runs the driver, which tests every kernel (dense W8A8,
# sparse, 2:4, int4, quantization) on every ISA this CPU runs, at 1 and 3
# threads, into guarded outputs. Then the thread pool alone under
# ThreadSanitizer (csrc/tests/thread_pool_stress.cpp): its polling and
# sleeping hand-offs, from two callers, across resizes. About a minute on 2 cores.
#
# Usage (from anywhere): tests/native/run_sanitizers.sh [build-dir]   (default: a fresh temp dir)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=kernel_sources.sh
source "$here/kernel_sources.sh"
cxx="${CXX:-g++}"
command -v "$cxx" >/dev/null || { echo "missing $cxx" >&2; exit 2; }

if [[ $# -ge 1 ]]; then
  build="$1"
  mkdir -p "$build"
else
  build="$(mktemp -d)"
  trap 'rm -rf "$build"' EXIT
fi
src="$repo/csrc"
sanitize=(-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
common=(-std=c++17 -O1 -g -Wall -Wextra -Werror -ffp-contract=off "${sanitize[@]}" -I"$src")

case "$(uname -m)" in
  x86_64|amd64) arch=x86_64 ;;
  aarch64|arm64) arch=aarch64 ;;
  *) echo "run_sanitizers.sh: no kernel sources for $(uname -m)" >&2; exit 2 ;;
esac

jobs=()
objects=()
compile() {  # compile SOURCE [EXTRA FLAGS...], in the background
  local source="$1"; shift
  local object="$build/${source//\//_}"
  object="${object%.cpp}.o"
  local listed
  for listed in "${NO_TRAPPING_MATH_SOURCES[@]}"; do
    if [[ $listed == "$source" ]]; then set -- "$@" -fno-trapping-math; fi
  done
  for listed in "${ATTENTION_SOURCES[@]}"; do
    if [[ $listed == "$source" ]]; then set -- "$@" "${ATTENTION_FLAGS[@]}"; fi
  done
  "$cxx" "${common[@]}" "$@" -c "$src/$source" -o "$object" &
  jobs+=($!)
  objects+=("$object")
}
if [[ $arch == x86_64 ]]; then
  for source in "${KERNEL_SOURCES[@]}" "${KERNEL_SOURCES_x86_64[@]}"; do compile "$source"; done
  for source in "${AVX2_SOURCES[@]}"; do compile "$source" "${AVX2_FLAGS[@]}"; done
  for source in "${AVX_VNNI_SOURCES[@]}"; do compile "$source" "${AVX_VNNI_FLAGS[@]}"; done
  for source in "${AVX512_SOURCES[@]}"; do compile "$source" "${AVX512_FLAGS[@]}"; done
  for source in "${AMX_SOURCES[@]}"; do compile "$source" "${AMX_FLAGS[@]}"; done
else
  for source in "${KERNEL_SOURCES[@]}" "${KERNEL_SOURCES_aarch64[@]}"; do compile "$source"; done
  for source in "${NEON_DOT_SOURCES[@]}"; do compile "$source" "${NEON_DOT_FLAGS[@]}"; done
fi
compile tests/kernel_driver.cpp
for job in "${jobs[@]}"; do wait "$job"; done

"$cxx" "${sanitize[@]}" -pthread "${objects[@]}" -o "$build/kernel_driver"
ASAN_OPTIONS="detect_leaks=1:abort_on_error=1" UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
  "$build/kernel_driver"

# The thread pool's hand-off under ThreadSanitizer: a data race or a lost
# wake-up (a hang, which the stress test's watchdog fails) aborts.
tsan=(-fsanitize=thread -fno-omit-frame-pointer)
"$cxx" -std=c++17 -O1 -g -Wall -Wextra -Werror "${tsan[@]}" -I"$src" -pthread \
  "$src/thread_pool.cpp" "$src/cpu_topology.cpp" "$src/tests/thread_pool_stress.cpp" -o "$build/thread_pool_stress"
TSAN_OPTIONS="halt_on_error=1" "$build/thread_pool_stress"
