#!/usr/bin/env bash
# Cross-compiles the CPU kernels (not the Python module) for aarch64 and runs
# csrc/tests/kernel_driver.cpp under qemu-aarch64 -cpu max, which emulates the
# dot-product extension: the NEON paths a Jetson runs (dense, sparse, 2:4 and
# int4 GEMMs), tested on an x86-64 host. About a minute on 2 cores.
#
# Needs Debian's g++-aarch64-linux-gnu and qemu-user. Usage (from anywhere):
#   tests/native/run_aarch64.sh [build-dir]      (default: a fresh temp dir)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=kernel_sources.sh
source "$here/kernel_sources.sh"
cxx="${CXX_AARCH64:-aarch64-linux-gnu-g++}"
qemu="${QEMU_AARCH64:-qemu-aarch64}"
for tool in "$cxx" "$qemu"; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install g++-aarch64-linux-gnu qemu-user)" >&2; exit 2; }
done

if [[ $# -ge 1 ]]; then
  build="$1"
  mkdir -p "$build"
else
  build="$(mktemp -d)"
  trap 'rm -rf "$build"' EXIT
fi
src="$repo/csrc"
# The same flags as CMakeLists.txt gives these files: no fp contraction
# anywhere, +dotprod for the dot-product kernels only.
common=(-std=c++17 -O2 -Wall -Wextra -Werror -ffp-contract=off -I"$src")

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
for source in "${KERNEL_SOURCES[@]}" "${KERNEL_SOURCES_aarch64[@]}"; do compile "$source"; done
for source in "${NEON_DOT_SOURCES[@]}"; do compile "$source" "${NEON_DOT_FLAGS[@]}"; done
compile tests/kernel_driver.cpp
for job in "${jobs[@]}"; do wait "$job"; done

# Static, so qemu needs no aarch64 sysroot to find libc at run time.
"$cxx" -static -pthread "${objects[@]}" -o "$build/kernel_driver"
"$qemu" -cpu max "$build/kernel_driver" neon_dot
