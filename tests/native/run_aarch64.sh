#!/usr/bin/env bash
# Cross-compiles the CPU kernels (not the Python module) for aarch64 and runs
# csrc/tests/kernel_driver.cpp under qemu-aarch64 -cpu max, which emulates the
# dot-product extension: the NEON path a Jetson runs, tested on an x86-64 host.
#
# Needs Debian's g++-aarch64-linux-gnu and qemu-user. Usage (from anywhere):
#   tests/native/run_aarch64.sh [build-dir]      (default: a fresh temp dir)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
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
# anywhere, +dotprod for the dot-product kernel only.
common=(-std=c++17 -O2 -Wall -Wextra -Werror -ffp-contract=off -I"$src")

objects=()
compile() {  # compile SOURCE [EXTRA FLAGS...]
  local source="$1"; shift
  local object="$build/$(basename "${source%.cpp}").o"
  "$cxx" "${common[@]}" "$@" -c "$src/$source" -o "$object"
  objects+=("$object")
}
compile cpu_features.cpp
compile arch/aarch64/cpu_features_aarch64.cpp
compile gemm_ref.cpp
compile pack_s8.cpp
compile dispatch.cpp
compile thread_pool.cpp
compile cpu_ops.cpp
compile arch/generic/gemm_packed_generic.cpp
compile arch/aarch64/kernel_tables_aarch64.cpp
compile arch/aarch64/gemm_neon_dot.cpp -march=armv8.2-a+dotprod
compile tests/kernel_driver.cpp

# Static, so qemu needs no aarch64 sysroot to find libc at run time.
"$cxx" -static -pthread "${objects[@]}" -o "$build/kernel_driver"
"$qemu" -cpu max "$build/kernel_driver" neon_dot
