"""Type stubs of edgevla._C, the compiled module built from csrc/ (pybind11).

Private: import from :mod:`edgevla.native`, which re-exports these with fuller
documentation. Array arguments accept any object with the buffer protocol
(NumPy arrays, memoryviews, ``torch_tensor.numpy()``), read zero-copy. Bad
arguments raise ``TypeError`` (not a buffer, wrong dtype) or ``ValueError``
(wrong rank, shape, layout, alignment, read-only or overlapping ``out``)
before any memory is touched. The functions the runtime calls once per step
(``edgevla.native.RAW_FUNCTIONS``) take every argument by position too, in
the order below: keyword parsing was a third of a small kernel call.
"""

import sys
from typing import Any, Final, TypedDict

import numpy as np
from numpy.typing import NDArray

if sys.version_info >= (3, 12):
    from collections.abc import Buffer
else:
    from typing_extensions import Buffer

GEMM_S8S8_MAX_K: Final[int]
"""Largest K whose int32 accumulator cannot overflow: 131071 (131071 * 128 * 128 < 2**31)."""

PACKED_F32_MAX_K: Final[int]
"""Largest K of the float32 and int4 packed formats: 2**24."""

class _BuildInfo(TypedDict):
    version: str
    build_type: str
    system_processor: str
    compiler: str
    cxx_flags: str
    sanitizers: list[str]
    pybind11: str
    cuda: bool
    cuda_compiler: str | None
    cuda_flags: str | None
    cuda_archs: list[str]
    cuda_runtime: str | None

class _PackedInfo(TypedDict, total=False):
    format: str
    version: int
    n: int
    k: int
    nbytes: int
    block_n: int
    block_k: int
    weight_dtype: str
    activation_dtype: str
    slots: int
    nonzeros: int
    group_size: int

class _CudaDevice(TypedDict):
    index: int
    name: str
    compute_capability: tuple[int, int]
    total_memory_bytes: int
    multiprocessor_count: int

def cpu_arch() -> str:
    """The architecture the module was built for: ``"x86_64"`` or ``"aarch64"``."""

def cpu_features() -> dict[str, bool]:
    """Usable CPU features by their /proc/cpuinfo names.

    Keys, always all present: avx2, fma, avx512f, avx512bw, avx512vl,
    avx512_vnni, avx_vnni (x86-64: cpuid, and xgetbv for OS-saved register
    state), asimd, asimddp, i8mm, sve (aarch64: getauxval). Features of the
    other architecture are False.
    """

def build_info() -> _BuildInfo:
    """Compiler, flags, sanitizers, and whether (and for which archs) CUDA was compiled in."""

def cuda_devices() -> list[_CudaDevice]:
    """The CUDA devices visible to this process.

    ``[]`` when CUDA was not compiled in, or the CUDA runtime reports no device
    or no (new enough) driver. Other CUDA failures raise ``RuntimeError``.
    """

def gemm_s8s8_s32_ref(
    a: Buffer, w: Buffer, *, out: Buffer | None = None
) -> NDArray[np.int32]:
    """Reference int8 GEMM: ``a @ w.T`` accumulated exactly in int32.

    a: int8 (M, K); w: int8 (N, K), the nn.Linear weight layout; K <=
    GEMM_S8S8_MAX_K. Inputs need contiguous rows (any row stride). out: a
    writable int32 (M, N) array with contiguous rows, disjoint from the inputs;
    returned when given, else a new array is returned.
    """

def gemm_s8s8_f32_ref(
    a: Buffer,
    w: Buffer,
    w_scale: Buffer,
    a_scale: Buffer,
    bias: Buffer | None = None,
    *,
    act: str = "none",
    out: Buffer | None = None,
    residual: Buffer | None = None,
) -> NDArray[np.float32]:
    """Reference int8 GEMM with float32 dequantization and activation.

    ``out[m, n] = float32(acc[m, n]) * (a_scale[m or 0] * w_scale[n]) + bias[n]``,
    evaluated in float32, where ``acc = a @ w.T`` in int32. w_scale: float32
    (N,). a_scale: float32, 1 value (0-D or (1,)) for per-tensor or (M,) for
    per-token scales. bias: float32 (N,) or None. act: "none", "relu",
    "gelu_tanh" or "gelu_erf" (CPU only), applied last. out as in gemm_s8s8_s32_ref, float32.
    """

def pack_weight_s8(w: Buffer, w_scale: Buffer) -> NDArray[np.uint8]:
    """Packs int8 (N, K) weights and float32 (N,) scales into the S8_N16K4 format (csrc/packed_formats.h)."""

def gemm_s8s8_f32(
    a: Buffer,
    packed: Buffer,
    a_scale: Buffer,
    bias: Buffer | None = None,
    act: str = "none",
    out: Buffer | None = None,
    residual: Buffer | None = None,
    relu_after: bool = False,
    codes: Buffer | None = None,
    codes_scale: float | None = None,
    windows: WindowSpec | None = None,
) -> NDArray[np.float32]:
    """W8A8 GEMM on the active ISA, bit-identical to gemm_s8s8_f32_ref; the packed header is validated.
    Then, tile by tile: relu_after: out = max(out, 0); codes (int8 (M, N)) with codes_scale: codes =
    quantize_s8(out, codes_scale)."""

def quantize_per_token(x: Buffer) -> tuple[NDArray[np.int8], NDArray[np.float32]]:
    """float32 (M, K) -> (q int8 (M, K), scale float32 (M,)), symmetric per row; ValueError on NaN/inf."""

def layer_norm_s8(
    x: Buffer, gamma: Buffer, beta: Buffer | None, epsilon: float, scale: float, out: Buffer | None = None,
    rms: bool = False
) -> NDArray[np.int8]:
    """LayerNorm (rms: RMSNorm) of float32 x (M, K) rows, then int8 codes clamp(rint(y / scale), -128, 127);
    ValueError on NaN/inf rows."""

def layer_norm_s8_ref(
    x: Buffer, gamma: Buffer, beta: Buffer | None, *, epsilon: float, scale: float, out: Buffer | None = None,
    rms: bool = False
) -> NDArray[np.int8]:
    """The scalar reference of layer_norm_s8: identical codes."""

def attention_f32(
    q: Buffer, k: Buffer, v: Buffer, scale: float | None = None, divide: bool = False, out: Buffer | None = None,
    bias: Buffer | None = None, zero_nan_rows: bool = False
) -> NDArray[np.float32]:
    """softmax(scale(q_h @ k_h^T) + bias) @ v_h on float32 (B, T, H, D) q and (B, S, Hkv, D) k, v (Hkv dividing
    H); bias (B|1, H|1, T|1, S) or None; the active ISA's kernel."""

def attention_f32_ref(
    q: Buffer, k: Buffer, v: Buffer, scale: float | None = None, *, divide: bool = False, out: Buffer | None = None,
    bias: Buffer | None = None, zero_nan_rows: bool = False
) -> NDArray[np.float32]:
    """The scalar reference of attention_f32."""

def gated_f32(gate: Buffer, value: Buffer | None, activation: str, out: Buffer | None = None) -> NDArray[np.float32]:
    """act(gate) * value on float32 (M, N) rows; activation 'silu', 'gelu_tanh' or 'gelu_erf'; the active ISA's copy."""

def gated_f32_ref(
    gate: Buffer, value: Buffer | None, *, activation: str, out: Buffer | None = None
) -> NDArray[np.float32]:
    """The baseline copy of gated_f32: identical floats."""

def rotary_f32(x: Buffer, cos: Buffer, sin: Buffer, out: Buffer | None = None) -> NDArray[np.float32]:
    """x * cos + rotate_half(x) * sin on float32 (M, D) rows, (P, D) tables with P dividing M; the active ISA's copy."""

def rotary_f32_ref(x: Buffer, cos: Buffer, sin: Buffer, *, out: Buffer | None = None) -> NDArray[np.float32]:
    """The baseline copy of rotary_f32: identical floats."""

def softmax_f32(x: Buffer, out: Buffer | None = None) -> NDArray[np.float32]:
    """Softmax over each row of float32 x (M, K); the attention kernel's."""

def softmax_f32_ref(x: Buffer, *, out: Buffer | None = None) -> NDArray[np.float32]:
    """The scalar reference of softmax_f32."""

def layer_norm_f32(
    x: Buffer, gamma: Buffer, beta: Buffer | None, epsilon: float, out: Buffer | None = None, rms: bool = False
) -> NDArray[np.float32]:
    """LayerNorm (rms: RMSNorm) of float32 x (M, K) rows, float32 out; ValueError on NaN/inf rows."""

def layer_norm_f32_ref(
    x: Buffer, gamma: Buffer, beta: Buffer | None, *, epsilon: float, out: Buffer | None = None, rms: bool = False
) -> NDArray[np.float32]:
    """The scalar reference of layer_norm_f32: identical floats."""

def quantize_s8(x: Buffer, scale: float, out: Buffer | None = None) -> NDArray[np.int8]:
    """float32 (M, K) -> int8 clamp(rint(x / scale), -128, 127), as QuantizeLinear with zero point 0."""

def quantize_s8_ref(x: Buffer, *, scale: float, out: Buffer | None = None) -> NDArray[np.int8]:
    """The scalar reference of quantize_s8: identical codes."""

def set_isa(name: str) -> None:
    """Forces one ISA's kernels ("generic", "avx2", "avx_vnni", "avx512_vnni", "avx512_amx", "neon_dot") or "auto";
    ValueError if unavailable."""

def get_isa() -> str:
    """The ISA whose kernels run now."""

def compiled_isas() -> list[str]:
    """ISAs compiled into this build, best first."""

def available_isas() -> list[str]:
    """ISAs this CPU can run, best first."""

def set_num_threads(threads: int) -> None:
    """Sets the kernel thread count, 1 to 1024."""

def get_num_threads() -> int:
    """The kernel thread count (default: default_num_threads())."""

def default_num_threads() -> int:
    """One per physical core this process may run on, performance cores only on a hybrid part."""

def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity), ascending."""

def count_compute_cores(cpus: list[int], sysfs: str = "/sys") -> int:
    """The physical cores among cpus per the sysfs tree at sysfs (csrc/cpu_topology.h)."""

def gather_windows(x: Buffer, rows: Buffer, kernel: list[int], strides: list[int], dilations: list[int],
                   pads_begin: list[int], out: list[int]) -> None:
    """A convolution's input windows (channels-last x) as the rows of its GEMM, zero outside x."""

class WindowSpec:
    """A convolution's windows without their input, for the int8 GEMMs' windows=."""

    def __init__(self, *, kernel: list[int], strides: list[int], dilations: list[int], pads_begin: list[int],
                 out: list[int]) -> None: ...
    @property
    def kernel(self) -> list[int]: ...
    @property
    def out(self) -> list[int]: ...

def max_pool_channels_last(x: Buffer, y: Buffer, kernel: list[int], strides: list[int], dilations: list[int],
                           pads_begin: list[int], out: list[int]) -> None:
    """MaxPool of a channels-last x into y (N, out..., C), positions outside x left out."""

def group_norm_f32(x: Buffer, groups: int, scale: Buffer, shift: Buffer, epsilon: float, channels_last: bool,
                   activation: str, out: Buffer, film_scale: Buffer | None = None,
                   film_shift: Buffer | None = None, residual: Buffer | None = None, relu_after: bool = False,
                   codes: Buffer | None = None, codes_scale: float | None = None) -> None:
    """GroupNorm of float32 x in either layout, then none/relu/mish, into out (x itself allowed); then
    * film_scale + film_shift ((N, C) or (1, C)), + residual, max(., 0) with relu_after, int8 codes at
    codes_scale."""

def to_channels_last(x: Buffer, y: Buffer) -> None:
    """x (N, C, spatial...) into y (N, spatial..., C)."""

DEFAULT_THREAD_SPIN_US: int

def set_thread_spin_us(microseconds: int) -> None:
    """How long the kernel threads poll for work before they sleep (0 to 1e6 us); ValueError outside."""

def get_thread_spin_us() -> int:
    """How long the kernel threads poll for work before they sleep, in microseconds."""

DEFAULT_MIN_MACS_PER_THREAD: int

def set_min_macs_per_thread(macs: int) -> None:
    """The least work (multiply-adds) each thread of a packed GEMM gets; ValueError below 1."""

def get_min_macs_per_thread() -> int:
    """The least work (multiply-adds) each thread of a packed GEMM gets."""

def pack_sparse_f32(w: Buffer) -> NDArray[np.uint8]:
    """Packs the non-zeros of a float32 (N, K) weight into SPARSE_F32_N16W32 (csrc/packed_formats.h)."""

def pack_sparse_s8(w: Buffer, w_scale: Buffer) -> NDArray[np.uint8]:
    """Packs the non-zeros of an int8 (N, K) weight and float32 (N,) scales into SPARSE_S8_N16W32."""

def pack_2to4_f32(w: Buffer) -> NDArray[np.uint8]:
    """Packs a 2:4 sparse float32 (N, K) weight into 2TO4_F32_N16K16; ValueError if it is not 2:4."""

def pack_2to4_s8(w: Buffer, w_scale: Buffer) -> NDArray[np.uint8]:
    """Packs a 2:4 sparse int8 (N, K) weight and float32 (N,) scales into 2TO4_S8_N16K16."""

def pack_w4(qdata: Buffer, scale: Buffer, group_size: int, *, k: int | None = None) -> NDArray[np.uint8]:
    """Packs int4 codes (uint8 (N, ceil(K/2)), primitives layout) and scales (N, ceil(K/group)) into W4_N16K8."""

def gemm_sparse_f32(
    x: Buffer, packed: Buffer, bias: Buffer | None = None, act: str = "none", out: Buffer | None = None
) -> NDArray[np.float32]:
    """act(x @ w.T + bias) for float32 x (M, K) and a pack_sparse_f32 weight."""

def gemm_sparse_s8s8_f32(
    a: Buffer,
    packed: Buffer,
    a_scale: Buffer,
    bias: Buffer | None = None,
    act: str = "none",
    out: Buffer | None = None,
    residual: Buffer | None = None,
    relu_after: bool = False,
    codes: Buffer | None = None,
    codes_scale: float | None = None,
    windows: WindowSpec | None = None,
) -> NDArray[np.float32]:
    """W8A8 GEMM on a pack_sparse_s8 weight, bit-identical to gemm_s8s8_f32_ref on the dense weight; then the output
    stage as gemm_s8s8_f32's."""

def gemm_2to4_f32(
    x: Buffer, packed: Buffer, bias: Buffer | None = None, act: str = "none", out: Buffer | None = None
) -> NDArray[np.float32]:
    """act(x @ w.T + bias) for float32 x (M, K) and a pack_2to4_f32 weight."""

def gemm_2to4_s8s8_f32(
    a: Buffer,
    packed: Buffer,
    a_scale: Buffer,
    bias: Buffer | None = None,
    act: str = "none",
    out: Buffer | None = None,
    residual: Buffer | None = None,
    relu_after: bool = False,
    codes: Buffer | None = None,
    codes_scale: float | None = None,
    windows: WindowSpec | None = None,
) -> NDArray[np.float32]:
    """W8A8 GEMM on a pack_2to4_s8 weight, bit-identical to gemm_s8s8_f32_ref on the dense weight; then the output
    stage as gemm_s8s8_f32's."""

def gemm_w4_f32(
    x: Buffer, packed: Buffer, bias: Buffer | None = None, act: str = "none", out: Buffer | None = None
) -> NDArray[np.float32]:
    """act(x @ dequantize(w).T + bias) for float32 x (M, K) and a pack_w4 weight."""

def gemm_w4a8_f32(
    x: Buffer, packed: Buffer, bias: Buffer | None = None, act: str = "none", out: Buffer | None = None
) -> NDArray[np.float32]:
    """gemm_w4_f32 with x quantized to int8 per weight group (W4A8), bit-identical to gemm_w4a8_f32_ref."""

def gemm_f32_ref(
    x: Buffer, w: Buffer, bias: Buffer | None = None, *, act: str = "none", out: Buffer | None = None
) -> NDArray[np.float32]:
    """Reference float32 GEMM act(x @ w.T + bias), each dot product summed in double."""

def gemm_w4_f32_ref(
    x: Buffer,
    qdata: Buffer,
    scale: Buffer,
    group_size: int,
    bias: Buffer | None = None,
    *,
    act: str = "none",
    out: Buffer | None = None,
) -> NDArray[np.float32]:
    """Reference int4 weight-only GEMM on primitives-layout codes, summed in double."""

def gemm_w4a8_f32_ref(
    x: Buffer,
    qdata: Buffer,
    scale: Buffer,
    group_size: int,
    bias: Buffer | None = None,
    *,
    act: str = "none",
    out: Buffer | None = None,
) -> NDArray[np.float32]:
    """Reference W4A8 GEMM: x quantized per group, exact integer dots, scaled and summed in float32."""

def packed_info(packed: Buffer) -> _PackedInfo:
    """The validated header of any packed weight; ValueError when it is not one."""

# ---- CUDA kernels (csrc/bindings/cuda_bindings.cpp); edgevla.cuda_kernels is the public API.
# Device operands: any object with __cuda_array_interface__ or __dlpack__ on the current device.
# stream: a cudaStream_t as an int, an object with .cuda_stream, or None (the legacy default stream).

CUDA_META_LAYOUTS_S8: int
CUDA_META_LAYOUTS_F16: int
CUDA_GEMM_W4_MAX_M: int

def cuda_kernels_compiled() -> bool:
    """Whether this build has the CUDA kernels."""

def cuda_wgmma_compiled() -> bool:
    """Whether this build has the wgmma variants of gemm_s8s8 and gemm_2to4_s8 (CUTLASS, sm_90a)."""

def cuda_tcgen05_ccs() -> list[int]:
    """The compute capabilities (100, 110) this build has gemm_s8s8's tcgen05 variant for; [] if none."""

def cuda_2to4_s8_wgmma_sizes(n: int, k: int) -> tuple[int, int]:
    """(value bytes, metadata bytes) of an (N, K) 2:4 int8 weight in CUTLASS's sm90 compressed layout."""

def cuda_pack_2to4_s8_wgmma(w: Any, values: Any, meta: Any, *, stream: Any = None) -> None:
    """Compresses a dense 2:4 int8 (N, K) device weight with CUTLASS's sm90 compressor (pattern checked first)."""

def cuda_gemm_2to4_s8_wgmma(
    x: Any, values: Any, meta: Any, out: Any, *, n: int, k: int, w_scale: Any = None, a_scale: Any = None,
    bias: Any = None, act: str = "none", stream: Any = None,
) -> None:
    """out (M, N) = x (M, K) int8 . W^T on Hopper's sparse wgmma, W from cuda_pack_2to4_s8_wgmma: int32 raw, or
    float32 with the W8A8 epilogue."""

def cuda_gemm_s8s8(
    a: Any,
    w: Any,
    out: Any,
    *,
    w_scale: Any = None,
    a_scale: Any = None,
    bias: Any = None,
    act: str = "none",
    variant: str = "auto",
    stream: Any = None,
) -> None:
    """out (M, N) = a (M, K) int8 . w (N, K)^T int8: int32 out raw, float32 out with the W8A8 epilogue."""

def cuda_gemm_w4(
    x: Any, packed: Any, out: Any, *, n: int, k: int, group: int, bias: Any = None, act: str = "none",
    variant: str = "auto", stream: Any = None,
) -> None:
    """out (M, N) float32 = x (M, K) float32/float16 . W^T for a W4_N16K8 buffer on the GPU (M <= 64).

    variant: "auto" (= "cuda_cores"), "cuda_cores", "streaming" or "tensor_cores"."""

def cuda_gemm_2to4_s8(
    x: Any, values: Any, meta: Any, out: Any, *, n: int, k: int, w_scale: Any = None, a_scale: Any = None,
    bias: Any = None, act: str = "none", variant: str = "auto", stream: Any = None,
) -> None:
    """2:4 sparse int8 GEMM (mma.sp m16n8k64): int32 out, or float32 with the W8A8 epilogue."""

def cuda_gemm_2to4_f16(
    x: Any, values: Any, meta: Any, out: Any, *, n: int, k: int, bias: Any = None, act: str = "none",
    variant: str = "auto", stream: Any = None,
) -> None:
    """2:4 sparse float16 GEMM (mma.sp m16n8k32), float32 accumulation and out."""

def pack_2to4_s8_mma(w: NDArray[np.int8], meta_layout: int) -> tuple[NDArray[np.uint32], NDArray[np.uint32]]:
    """(values, meta): a 2:4 int8 (N, K) weight in mma.sp fragment order (csrc/cuda/pack_2to4_mma.h)."""

def pack_2to4_f16_mma(w: NDArray[np.uint16], meta_layout: int) -> tuple[NDArray[np.uint32], NDArray[np.uint32]]:
    """(values, meta): a 2:4 float16 (N, K) weight, given as its uint16 bits, in mma.sp fragment order."""
