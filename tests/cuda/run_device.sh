#!/usr/bin/env bash
# The device check of issue #6, in one call on a lent GPU (x86-64, nvcc 13,
# PyTorch under python3): build for sm_90, the CUDA tests, the benchmark, and
# compute-sanitizer memcheck + racecheck. Every step has its own time limit, so
# one failing step leaves time for the others; all output is teed into $OUT:
#   device.log        everything below, in order
#   cuda_bench.json   edgevla bench kernels --device cuda --json (rewritten after every shape; each kernel
#                     variant first runs in a child process, and one that crashes or hangs is left out)
#   native_gpu_profile.json  tests/cuda/profile_native_gpu.py: native GPU path (graphs / eager) vs torch on the GPU
#   sanitizer.log     both compute-sanitizer runs in full
#   ncu_gemv.csv      Nsight Compute on the batch-1 GEMV variants (tests/cuda/ncu_gemv.py)
# Usage (from the repository root):  OUT=/some/dir [STEPS="..."] bash tests/cuda/run_device.sh
set -u
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/device.log") 2>&1
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=16
PY=${PYTHON:-python3}

# STEPS="native-gpu native-gpu-profile": only the named steps run (default: all). Every step at its
# limit adds up to more than one 600 s call: a second call on a still-warm machine can skip the build.
# Steps: build build-cmake tests tests-cutlass native-gpu native-gpu-profile bench sanitizer-memcheck sanitizer-racecheck ncu-gemv
wanted() { [ -z "${STEPS:-}" ] || [[ " $STEPS " == *" $1 "* ]]; }

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2 start rc
    shift 2
    if ! wanted "$name"; then echo "=== $name: skipped (STEPS)"; return 0; fi
    echo "=== $name (limit ${limit}s)"
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    echo "=== $name: exit $rc after $(( $(date +%s) - start ))s"
    return $rc
}

echo "=== $(date -u +%FT%TZ) $(uname -m)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,power.limit --format=csv
$PY -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
nvcc --version | tail -1
compute-sanitizer --version | head -2

# CUTLASS's headers for the wgmma kernel: the device cannot download, so the
# nvidia-cutlass wheel travels with the tree (carry "build/wheels"; fetch it with
# `pip download --no-deps nvidia-cutlass==4.2.0.0 -d build/wheels`). Without it
# the build has no wgmma variant and its tests skip.
if ! $PY -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('cutlass_library') is None)" 2>/dev/null; then
    ls build/wheels/nvidia_cutlass-*.whl >/dev/null 2>&1 && $PY -m pip install -q --no-deps --no-index build/wheels/nvidia_cutlass-*.whl
fi

# Build: pip (scikit-build-core), sm_90 only; if that fails, plain CMake with the .so copied in place.
if ! step build 240 $PY -m pip install -q --no-deps --no-build-isolation -e . \
        -C cmake.define.EDGEVLA_CUDA=ON -C cmake.define.EDGEVLA_CUDA_ARCHS=90; then
    step build-cmake 240 bash -c "cmake -S . -B build/device -G Ninja -DCMAKE_BUILD_TYPE=Release -DEDGEVLA_CUDA=ON \
        -DEDGEVLA_CUDA_ARCHS=90 -Dpybind11_DIR=\$($PY -m pybind11 --cmakedir) -DPython_EXECUTABLE=\$(command -v $PY) \
        && cmake --build build/device && cp build/device/_C*.so edgevla/"
    export PYTHONPATH=$PWD
fi
$PY -c "from edgevla import _C, native, cuda_kernels as ck; print(native.build_info()['cuda_archs'], ck.available(), ck.unavailable_reason(), 'wgmma', _C.cuda_wgmma_compiled(), ck.wgmma_available())"

# The instructions the kernels compiled to (tensor-core MMAs, ldmatrix, cp.async), from the built module.
so=$($PY -c "import edgevla._C as c; print(c.__file__)")
cuobjdump --dump-sass "$so" 2>/dev/null | grep -oE "\b(IMMA|HMMA|[A-Z]?GMMA|UTMALDG|LDSM|LDGSTS)[.A-Z0-9]*" | sort | uniq -c

# The CUTLASS kernels (wgmma, tcgen05) have never run: their tests go in a process of their own, so that a
# hang or a sticky fault there costs only its own step.
step tests 120 $PY -m pytest -q -p no:cacheprovider --noconftest --maxfail=40 -rf -k "not wgmma and not tcgen05" \
    tests/test_cuda_host.py tests/test_cuda_kernels.py
step tests-cutlass 60 env EDGEVLA_CUDA_SYNC=1 $PY -m pytest -q -p no:cacheprovider --noconftest --maxfail=40 -rf \
    -k "wgmma or tcgen05" tests/test_cuda_kernels.py

# The native backend's GPU path (edgevla/cuda_policy.py): per-layer exactness against the CPU references,
# tiny-vla against its CPU reference, `edgevla eval --device cuda`, and its latency.
step native-gpu 180 $PY -m pytest -q -p no:cacheprovider --maxfail=20 -rf tests/test_cuda_policy.py
step native-gpu-profile 90 $PY tests/cuda/profile_native_gpu.py tiny-vla --json "$OUT/native_gpu_profile.json"

step bench 300 $PY -c "import sys; from edgevla.cli import main; sys.exit(main(['bench', 'kernels', '--device', 'cuda', '--json', '$OUT/cuda_bench.json']))"

for tool in memcheck racecheck; do
    step "sanitizer-$tool" 90 compute-sanitizer --tool $tool --error-exitcode 1 \
        $PY tests/cuda/sanitize_kernels.py > "$OUT/sanitizer-$tool.log" 2>&1
    echo "--- $tool summary:"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|failure|FAIL|Error" "$OUT/sanitizer-$tool.log" | tail -8
done
# What bounds each batch-1 GEMV (DRAM vs issue, waves, occupancy, stalls); ncu needs Firecracker's runtime
# (KINDS.md) and must leave the clocks alone (METHOD.md).
step ncu-gemv 90 ncu --clock-control none -k regex:"gemm_w4|gemm_s8s8_small_m" --section SpeedOfLight \
    --section Occupancy --section LaunchStats --section WarpStateStats --csv --page details \
    --log-file "$OUT/ncu_gemv.csv" $PY tests/cuda/ncu_gemv.py
echo "=== done $(date -u +%FT%TZ)"
