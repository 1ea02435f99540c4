"""edgevla's compiled kernels and machine queries, documented.

The compiled module ``edgevla._C`` (built from ``csrc/`` with pybind11) does
not link PyTorch: it reads any object with the buffer protocol (NumPy arrays,
memoryviews; a CPU torch tensor through ``tensor.numpy()``) without copying,
so one binary serves every torch build, including Jetson's. This module is
its public face: the same functions, documented, plus :func:`available`.

Array arguments are validated before any memory is touched; a bad one raises
``TypeError`` (not an array, wrong dtype) or ``ValueError`` (wrong rank, shape,
layout, alignment, read-only or overlapping ``out``). The kernels run without
the GIL.

The ``*_ref`` GEMMs are the scalar references: obvious rather than fast, the
ground truth that every SIMD and CUDA kernel is tested against.

The fast path: weights are packed once with :func:`pack_weight_s8`, then
:func:`gemm_s8s8_f32` runs on the best instruction set this CPU has
(``avx512_amx``, ``avx512_vnni``, ``avx_vnni``, ``avx2``, ``neon_dot``, else ``generic``), chosen at
run time and forced with :func:`set_isa` (:func:`isa_scope`), over a fixed pool of
:func:`get_num_threads` threads (by default :func:`default_num_threads`: one per physical core the
process may run on; they poll for work for :func:`get_thread_spin_us` before they sleep; a
GEMM splits from ``2 * DEFAULT_MIN_MACS_PER_THREAD`` multiply-adds). Every ISA
gives results bit-identical to :func:`gemm_s8s8_f32_ref`.

Convolutional encoders also get their non-GEMM work here: :func:`gather_windows`
(im2col from a channels-last input, no padded copy), :func:`to_channels_last`,
:func:`max_pool_channels_last` and :func:`group_norm_f32` (with ReLU or Mish, and
FiLM's per-channel scale and shift).

The native runtime calls the compiled functions it runs once per step through
:func:`raw`: the same validation, arguments by position (no wrapper frame, no
keyword parsing).

Compressed weights follow the same pattern: a ``pack_*`` function, called
once when a model is loaded, returns an opaque uint8 array (a 64-byte header
with magic ``b"EVLA"``, format, version and checksum, then the format's
sections; ``csrc/packed_formats.h`` documents every byte), and the matching
``gemm_*`` takes it:

=========================  ==================================  ===========================
weight                     pack                                GEMM (activations)
=========================  ==================================  ===========================
int8 dense                 :func:`pack_weight_s8`              :func:`gemm_s8s8_f32` (int8)
int8 unstructured sparse   :func:`pack_sparse_s8`              :func:`gemm_sparse_s8s8_f32` (int8)
int8 2:4                   :func:`pack_2to4_s8`                :func:`gemm_2to4_s8s8_f32` (int8)
float32 unstructured       :func:`pack_sparse_f32`             :func:`gemm_sparse_f32` (float32)
float32 2:4                :func:`pack_2to4_f32`               :func:`gemm_2to4_f32` (float32)
int4 group-wise            :func:`pack_w4`                     :func:`gemm_w4_f32` (float32),
                                                               :func:`gemm_w4a8_f32` (int8 per group)
=========================  ==================================  ===========================

:func:`linear` runs any of them on float32 activations (quantizing them per
token for the int8 formats), and :func:`packed_info` reads a packed header.
The int8 GEMMs are bit-identical to :func:`gemm_s8s8_f32_ref` on the dense
weight; the float GEMMs agree with :func:`gemm_f32_ref` /
:func:`gemm_w4_f32_ref` (sums in double) within float32 summation error;
:func:`gemm_w4a8_f32` is bit-identical to :func:`gemm_w4a8_f32_ref`.
Every packed argument is validated (header, checksum, shape, length) before a
kernel reads it, and no content of a packed buffer can make a kernel read or
write outside the arrays it was given.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .errors import EdgevlaError

try:
    from . import _C
except ImportError as _error:  # a source checkout that was never built, or a broken install
    _C = None
    _IMPORT_ERROR = f"{type(_error).__name__}: {_error}"
else:
    _IMPORT_ERROR = ""

#: Largest K for which an int32 accumulator of int8 products cannot overflow:
#: the largest product is (-128) * (-128) = 16384, and 131071 * 16384 < 2**31.
GEMM_S8S8_MAX_K = (2**31 - 1) // (128 * 128)

#: Largest K of the float32 and int4 packed formats (2**24): far beyond any
#: linear layer, and small enough that no size in a layout can overflow.
PACKED_F32_MAX_K = 2**24

#: Default least work per GEMM thread, in multiply-adds (see :func:`set_min_macs_per_thread`).
DEFAULT_MIN_MACS_PER_THREAD = 2**17


def available() -> bool:
    """Whether the compiled module imported (it is absent only in a broken install)."""
    return _C is not None


def _compiled() -> Any:
    if _C is None:
        raise EdgevlaError(
            f"edgevla's compiled module edgevla._C is not available ({_IMPORT_ERROR}); "
            "reinstall edgevla with `pip install .` from its source tree"
        )
    return _C


#: The compiled functions the runtime calls once per step, positionally (:func:`raw`).
RAW_FUNCTIONS = frozenset({
    "gemm_s8s8_f32", "gemm_2to4_s8s8_f32", "gemm_sparse_s8s8_f32", "gemm_sparse_f32", "gemm_2to4_f32",
    "gemm_w4_f32", "gemm_w4a8_f32", "group_norm_f32", "layer_norm_s8", "layer_norm_f32", "quantize_s8",
    "softmax_f32", "attention_f32", "gated_f32", "rotary_f32",
})


def raw(name: str) -> Any:
    """The compiled function ``name`` (one of :data:`RAW_FUNCTIONS`) itself, for the runtime's per-step calls:
    the arguments positionally, in the order of ``edgevla/_C.pyi``, which are this module's wrappers' own
    parameters in order. It validates everything the wrapper's does; what it skips is the wrapper's frame and
    the parsing of keyword arguments, 0.8 us of a 2.5 us small GEMM call."""
    if name not in RAW_FUNCTIONS:
        raise EdgevlaError(f"no raw per-step function {name!r}; there are {sorted(RAW_FUNCTIONS)}")
    return getattr(_compiled(), name)


def cpu_arch() -> str:
    """The CPU architecture the module was built for: ``"x86_64"`` or ``"aarch64"``."""
    return _compiled().cpu_arch()


def cpu_features() -> dict[str, bool]:
    """Which CPU features kernels may use on this machine, by their /proc/cpuinfo names.

    Every key is always present; features of the other architecture are False.
    x86-64 (cpuid, with xgetbv to confirm the OS saves the AVX / AVX-512
    registers, since a CPU flag alone does not make an instruction safe):
    ``avx2``, ``fma``, ``avx512f``, ``avx512bw``, ``avx512vl``, ``avx512_vnni``,
    ``avx_vnni``, ``amx_tile``, ``amx_int8`` (the AMX ones also need XCR0's tile
    state and Linux's per-process permission, asked for once). aarch64 (getauxval): ``asimd`` (NEON), ``asimddp`` (SDOT, on
    every Jetson Orin core), ``i8mm`` (SMMLA), ``sve``.
    """
    return _compiled().cpu_features()


def build_info() -> dict[str, Any]:
    """How the compiled module was built, for bug reports and benchmark records.

    Keys: ``version``, ``build_type``, ``system_processor``, ``compiler``,
    ``cxx_flags``, ``sanitizers`` (list), ``pybind11``, ``cuda`` (bool: CUDA
    compiled in), ``cuda_compiler``, ``cuda_flags``, ``cuda_archs`` (list, e.g.
    ``["87", "90"]``), ``cuda_runtime`` (``"static"``); the CUDA strings are
    None without CUDA.
    """
    return _compiled().build_info()


def cuda_devices() -> list[dict[str, Any]]:
    """The CUDA devices this process can use, one dict each.

    Keys: ``index``, ``name``, ``compute_capability`` (``(8, 7)`` on Jetson
    Orin), ``total_memory_bytes``, ``multiprocessor_count``. Returns ``[]``
    when CUDA was not compiled in, or when the CUDA runtime finds no device or
    no driver (the runtime is linked statically, so the module imports on such
    machines). A driver older than the CUDA runtime of the build (see
    ``build_info()["cuda_compiler"]``) also gives ``[]``: the runtime reports
    it with the same error as a missing driver. Any other CUDA failure, such as
    a broken driver, raises ``RuntimeError`` naming the CUDA error.
    """
    return _compiled().cuda_devices()


def gemm_s8s8_s32_ref(a: Any, w: Any, *, out: Any = None) -> np.ndarray:
    """Reference int8 GEMM: ``a @ w.T`` with exact int32 accumulation.

    Args:
        a: int8 (M, K) activations.
        w: int8 (N, K) weights, the ``nn.Linear.weight`` layout (no transpose).
            K may be at most :data:`GEMM_S8S8_MAX_K`, where int32 is exact.
        out: optional int32 (M, N) array to write into; it must be writable
            and share no memory with the inputs.

    Inputs and ``out`` need contiguous rows, not contiguous matrices: a slice
    such as ``big[:, :K]`` is used in place. Returns ``out``, or a new
    C-contiguous int32 (M, N) array.
    """
    return _compiled().gemm_s8s8_s32_ref(a, w, out=out)


def gemm_s8s8_f32_ref(
    a: Any, w: Any, w_scale: Any, a_scale: Any, bias: Any = None, *, act: str = "none", out: Any = None,
    residual: Any = None,
) -> np.ndarray:
    """Reference int8 GEMM with the float32 dequantization epilogue.

    Computes ``out[m, n] = act(float32(acc[m, n]) * (a_scale[m or 0] * w_scale[n]) + bias[n])``
    in float32, op by op in that order, where ``acc = a @ w.T`` in int32: symmetric int8 quantization
    with a scale per output channel for the weights and a per-tensor (static)
    or per-token (dynamic) scale for the activations.

    Args:
        a: int8 (M, K) activations.
        w: int8 (N, K) weights.
        w_scale: float32 (N,), one scale per output channel.
        a_scale: float32; one value (a 0-D array or shape (1,)) for a
            per-tensor scale, or shape (M,) for one scale per token (row of a).
        bias: float32 (N,), or None.
        act: ``"none"``, ``"relu"``, ``"gelu_tanh"`` (GELU in its tanh form,
            PyTorch's ``approximate="tanh"``, with tanh evaluated by a rational
            approximation within a few ulp; csrc/epilogue_math.h) or
            ``"gelu_erf"`` (exact GELU, ONNX ``Gelu``: within 2.2e-7 of
            ``x * Phi(x)`` relative to ``max(1, |x|)``; CPU kernels only).
        out: optional float32 (M, N) array to write into, as in
            :func:`gemm_s8s8_s32_ref`.
        residual: optional float32 (M, N) (rows contiguous, any row stride),
            added last: ``out = act(...) + residual`` (a skip connection
            fused into the epilogue). It must not share memory with ``out``.

    Returns ``out``, or a new C-contiguous float32 (M, N) array.
    """
    return _compiled().gemm_s8s8_f32_ref(a, w, w_scale, a_scale, bias, act=act, out=out, residual=residual)


def pack_weight_s8(w: Any, w_scale: Any) -> np.ndarray:
    """Packs an int8 weight for :func:`gemm_s8s8_f32`, once, at load time.

    Args:
        w: int8 (N, K), the ``nn.Linear.weight`` layout; K <= :data:`GEMM_S8S8_MAX_K`.
        w_scale: float32 (N,), one scale per output channel.

    Returns a new uint8 array in the ``S8_N16K4`` format of
    ``csrc/packed_formats.h``: a 64-byte header (magic ``b"EVLA"``, format,
    version, block sizes, N, K, section offsets, total length), the weights in
    cells of 16 output channels x 4 k, the scales and the ``128 * rowsum(w)``
    compensation of the VNNI kernel. The same buffer runs on every ISA.
    """
    return _compiled().pack_weight_s8(w, w_scale)


def gemm_s8s8_f32(
    a: Any, packed: Any, a_scale: Any, bias: Any = None, *, act: str = "none", out: Any = None,
    residual: Any = None, relu_after: bool = False, codes: Any = None, codes_scale: float | None = None,
    windows: Any = None,
) -> np.ndarray:
    """W8A8 GEMM on the active ISA, bit-identical to :func:`gemm_s8s8_f32_ref`.

    Args:
        a: int8 (M, K) activations (rows contiguous, any row stride).
        packed: a weight from :func:`pack_weight_s8`; its header is checked
            (magic, format, version, shape, length) and K must match ``a``.
        a_scale, bias, act, out, residual: as in :func:`gemm_s8s8_f32_ref`; ``out`` must
            share no memory with any input (the packed buffer included).
        relu_after, codes, codes_scale: the *output stage*, run on each tile of
            the output while it is in cache, bit-identical to running it on the
            whole output afterwards: with ``relu_after``, ``out = max(out, 0)``
            (a ReLU after the residual: a ResNet block's end); with ``codes``
            (int8 (M, N), sharing no memory with anything else) and
            ``codes_scale`` (> 0), ``codes = quantize_s8(out, codes_scale)``
            (a static ``QuantizeLinear`` of the output).
        windows: a :class:`WindowSpec`; then ``a`` is a convolution's int8
            C-contiguous channels-last input ``(N, spatial..., C)`` and the
            GEMM's rows are its windows (:func:`gather_windows`' rows, the same
            results), gathered a slab at a time by the thread that multiplies
            them: the im2col matrix is never written whole.

    Returns ``out``, or a new float32 (M, N) array.
    """
    return _compiled().gemm_s8s8_f32(a, packed, a_scale, bias, act=act, out=out, residual=residual,
                                     relu_after=relu_after, codes=codes, codes_scale=codes_scale, windows=windows)


def quantize_per_token(x: Any) -> tuple[np.ndarray, np.ndarray]:
    """Dynamic symmetric int8 quantization, one scale per row (token).

    ``scale = max|x[m]| / 127`` and ``q = clip(round_half_even(x * (127 / max|x[m]|)), -127, 127)``,
    so ``x ~= q * scale[:, None]``; rows with ``max|x| < 2**-100`` (all-zero
    rows included) give zeros. Returns ``(q int8 (M, K), scale float32 (M,))``.
    Raises ValueError when ``x`` holds a NaN or an infinity.
    """
    return _compiled().quantize_per_token(x)


def layer_norm_s8(x: Any, gamma: Any, beta: Any, *, epsilon: float, scale: float, out: Any = None,
                  rms: bool = False) -> np.ndarray:
    """LayerNorm over each row, then static int8 quantization: ``LayerNormalization -> QuantizeLinear``.

    Args:
        x: float32 (M, K), K >= 1, rows contiguous (any row stride).
        gamma: float32 (K,); beta: float32 (K,) or None.
        epsilon: added to the variance (finite, >= 0).
        scale: the per-tensor quantization scale (finite, > 0 in float32).
        out: optional int8 (M, K) to write into, disjoint from the inputs.
        rms: RMSNorm instead (``RMSNormalization``): no mean subtracted, ``var`` the mean square.

    ``q = clamp(round_half_even(((x - mean) * inv) * gamma + beta) / scale), -128, 127)`` with
    ``inv = 1 / sqrt(var + epsilon)``, statistics summed in 16 float32 lanes
    (csrc/layer_norm_s8.h spells the order out): the codes are identical to
    :func:`layer_norm_s8_ref`. Raises ValueError when a row's statistics are
    not finite (a NaN or an infinity in it). Returns ``out``, or a new int8 (M, K) array.
    """
    return _compiled().layer_norm_s8(x, gamma, beta, epsilon=epsilon, scale=scale, out=out, rms=rms)


def layer_norm_s8_ref(x: Any, gamma: Any, beta: Any, *, epsilon: float, scale: float, out: Any = None,
                      rms: bool = False) -> np.ndarray:
    """The scalar reference of :func:`layer_norm_s8` (same arguments, identical codes)."""
    return _compiled().layer_norm_s8_ref(x, gamma, beta, epsilon=epsilon, scale=scale, out=out, rms=rms)


def attention_f32(q: Any, k: Any, v: Any, scale: float | None = None, *, divide: bool = False,
                  out: Any = None, bias: Any = None, zero_nan_rows: bool = False) -> np.ndarray:
    """Scaled dot-product attention per batch and head: ``softmax(scale(q_h @ k_h^T) + bias) @ v_h``.

    Args:
        q: float32 (B, T, H, D); k, v: float32 (B, S, Hkv, D), S >= 1, Hkv dividing H (grouped-query
            attention: query heads ``g * H / Hkv`` onwards read key/value head g). Any
            non-negative strides with the last axis contiguous (head views of a
            wider array are read in place).
        scale: multiplies the scores (or divides them, with ``divide=True``:
            the graph's ``Div``); None for neither. Finite, nonzero to divide.
        out: optional float32 (B, T, H, D), any such strides, disjoint from the inputs.
        bias: optional float32 (B or 1, H or 1, T or 1, S), S contiguous, added to the scaled scores (a
            mask: -inf hides a key; a causal mask, ALiBi).
        zero_nan_rows: a query whose probabilities come out NaN (every key hidden) gets zeros, as the
            exporter's ``Where(IsNaN(p), 0, p)`` after a boolean mask.

    The active ISA's kernel (csrc/attention_f32_rows.h), heads split over the
    thread pool: scores and ``P @ V`` in vector lanes with fused multiply-adds,
    exp by a polynomial (within 2 ulp). Within 1e-5 (relative to the output's
    scale) of :func:`attention_f32_ref`, not bit-identical. Returns ``out``, or
    a new C-contiguous float32 (B, T, H, D) array.
    """
    return _compiled().attention_f32(q, k, v, scale, divide=divide, out=out, bias=bias, zero_nan_rows=zero_nan_rows)


def attention_f32_ref(q: Any, k: Any, v: Any, scale: float | None = None, *, divide: bool = False,
                      out: Any = None, bias: Any = None, zero_nan_rows: bool = False) -> np.ndarray:
    """The scalar reference of :func:`attention_f32` (same arguments): sums in order, ``std::exp``, one thread."""
    return _compiled().attention_f32_ref(q, k, v, scale, divide=divide, out=out, bias=bias,
                                         zero_nan_rows=zero_nan_rows)


def gated_f32(gate: Any, value: Any, *, activation: str, out: Any = None) -> np.ndarray:
    """A gated MLP's product ``act(gate) * value`` (``value`` None: ``act(gate)`` alone), in one pass.

    ``gate``, ``value``: float32 (M, N), rows contiguous (any row stride: the two column halves of a fused
    gate-up output are read in place); ``activation``: ``"silu"`` (SwiGLU), ``"gelu_tanh"`` or ``"gelu_erf"``
    (GEGLU); ``out``: an optional float32 (M, N), disjoint from the inputs. The active ISA's copy of
    csrc/gated_rows.h, rows split over the thread pool when large; identical floats to :func:`gated_f32_ref`
    on every ISA, within 2e-7 of ``gate * sigmoid(gate)`` relative to max(1, |gate|). Returns ``out``, or a
    new float32 (M, N) array.
    """
    return _compiled().gated_f32(gate, value, activation, out)


def gated_f32_ref(gate: Any, value: Any, *, activation: str, out: Any = None) -> np.ndarray:
    """The baseline copy of :func:`gated_f32` (same arguments, one thread, identical floats)."""
    return _compiled().gated_f32_ref(gate, value, activation=activation, out=out)


def rotary_f32(x: Any, cos: Any, sin: Any, *, out: Any = None) -> np.ndarray:
    """Rotary position embeddings, ``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = concat(-x[:, h:],
    x[:, :h])``, ``h = D / 2``.

    ``x``: float32 (M, D), D even, rows contiguous (any row stride); ``cos``, ``sin``: float32 (P, D) with P
    dividing M, row r of x reading their row r mod P (tables over (tokens, D) repeated over batch and heads);
    ``out``: an optional float32 (M, D), disjoint from the inputs. The active ISA's copy of
    csrc/rotary_rows.h; exactly the floats of the exported graph's Muls and Add, and of :func:`rotary_f32_ref`.
    Returns ``out``, or a new float32 (M, D) array.
    """
    return _compiled().rotary_f32(x, cos, sin, out)


def rotary_f32_ref(x: Any, cos: Any, sin: Any, *, out: Any = None) -> np.ndarray:
    """The baseline copy of :func:`rotary_f32` (same arguments, one thread, identical floats)."""
    return _compiled().rotary_f32_ref(x, cos, sin, out=out)


def softmax_f32(x: Any, *, out: Any = None) -> np.ndarray:
    """Softmax over each row of float32 x (M, K), K >= 1 (rows contiguous, any row stride).

    The attention kernel's row softmax (csrc/attention_f32_rows.h): max and
    sum in vector lanes, exp by a polynomial within 2 ulp; within 1e-6 of
    :func:`softmax_f32_ref` (``std::exp``, sums in order). ``out``: an
    optional float32 (M, K), disjoint from ``x``. Returns ``out``, or a new float32 (M, K) array.
    """
    return _compiled().softmax_f32(x, out=out)


def softmax_f32_ref(x: Any, *, out: Any = None) -> np.ndarray:
    """The scalar reference of :func:`softmax_f32`."""
    return _compiled().softmax_f32_ref(x, out=out)


def layer_norm_f32(x: Any, gamma: Any, beta: Any, *, epsilon: float, out: Any = None, rms: bool = False) -> np.ndarray:
    """LayerNorm over each row, float32 out: ``LayerNormalization`` on the last axis (``rms``: RMSNorm,
    ``RMSNormalization``, the mean taken as 0).

    ``y = ((x - mean) * inv) * gamma + beta`` with the statistics of
    :func:`layer_norm_s8` (16 float32 lanes, csrc/layer_norm_s8.h), identical
    on every ISA to :func:`layer_norm_f32_ref`. x: float32 (M, K), K >= 1,
    rows contiguous; gamma (K,), beta (K,) or None; ``out`` an optional
    float32 (M, K), disjoint from the inputs. Raises ValueError when a row's
    statistics are not finite. Returns ``out``, or a new float32 (M, K) array.
    """
    return _compiled().layer_norm_f32(x, gamma, beta, epsilon=epsilon, out=out, rms=rms)


def layer_norm_f32_ref(x: Any, gamma: Any, beta: Any, *, epsilon: float, out: Any = None,
                       rms: bool = False) -> np.ndarray:
    """The scalar reference of :func:`layer_norm_f32` (same arguments, identical floats)."""
    return _compiled().layer_norm_f32_ref(x, gamma, beta, epsilon=epsilon, out=out, rms=rms)


def gather_windows(x: Any, rows: Any, *, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
                   pads_begin: Sequence[int], out: Sequence[int]) -> None:
    """A convolution's input windows as the rows of its GEMM (im2col), into ``rows``.

    ``x``: C-contiguous int8, uint8 or float32 ``(N, *spatial, C)`` (channels last, 1-3 spatial
    dimensions); ``rows``: C-contiguous, same dtype, ``(N * prod(out), prod(kernel) * C)``, disjoint
    from ``x``. Row ``(n, o...)`` is the window at output position ``o``, in ``(kernel..., C)``
    order: ``x[n, o * strides + k * dilations - pads_begin, :]`` for each kernel offset ``k``, zero
    where that lies outside ``x`` (the padding; also the runtime's int8 zero point). Values per
    spatial dimension: kernel, strides, dilations, out >= 1, pads_begin >= 0. No padded copy of ``x``
    is made (csrc/windows.h). Raises TypeError / ValueError naming the bad argument.
    """
    _compiled().gather_windows(x, rows, list(kernel), list(strides), list(dilations), list(pads_begin), list(out))


def window_spec(*, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
                pads_begin: Sequence[int], out: Sequence[int]) -> Any:
    """A convolution's windows without their input (arguments as :func:`gather_windows`), validated once,
    for the int8 GEMMs' ``windows=``: ``gemm_s8s8_f32(x, packed, ..., windows=spec)`` multiplies the
    windows of ``x`` without writing them out whole."""
    return _compiled().WindowSpec(kernel=list(kernel), strides=list(strides), dilations=list(dilations),
                                  pads_begin=list(pads_begin), out=list(out))


def max_pool_channels_last(x: Any, y: Any, *, kernel: Sequence[int], strides: Sequence[int],
                           dilations: Sequence[int], pads_begin: Sequence[int], out: Sequence[int]) -> None:
    """ONNX ``MaxPool`` of a channels-last ``x`` ``(N, *spatial, C)`` into ``y`` ``(N, *out, C)``.

    Over the windows of :func:`gather_windows` (same arguments), positions outside ``x`` left out
    of each maximum (ONNX pads with the lowest value); NaN propagates as in ``numpy.maximum``.
    int8, uint8 or float32, C-contiguous, disjoint.
    """
    _compiled().max_pool_channels_last(x, y, list(kernel), list(strides), list(dilations), list(pads_begin),
                                       list(out))


def group_norm_f32(x: Any, groups: int, scale: Any, shift: Any, *, epsilon: float, channels_last: bool,
                   activation: str = "none", out: Any = None, film_scale: Any = None, film_shift: Any = None,
                   residual: Any = None, relu_after: bool = False, codes: Any = None,
                   codes_scale: float | None = None) -> np.ndarray:
    """GroupNorm of float32 ``x``, ``(N, C, *spatial)`` or with ``channels_last`` ``(N, *spatial, C)``.

    Per sample and group of ``C / groups`` channels: the mean, then the variance of the centered
    values (two passes, double sums in a fixed order, split over the threads), then ``act((x - mean)
    * scale[c] / sqrt(var + epsilon) + shift[c])`` per channel in float32, ``act`` one of ``"none"``,
    ``"relu"``, ``"mish"`` (csrc/group_norm_f32.h). ``scale``/``shift``: float32 ``(C,)``. ``out``:
    C-contiguous float32 of x's shape, ``x`` itself allowed (a new array when None). Then the output
    stage: FiLM, ``* film_scale`` and ``+ film_shift`` (float32 ``(N, C)``, or ``(1, C)`` for every
    sample; either may be None), then as the int8 GEMMs': ``+ residual`` (float32, x's shape, apart
    from ``out``), ``max(., 0)`` with ``relu_after``, and the int8 ``codes`` (x's shape) at
    ``codes_scale``. Returns ``out``.
    """
    x = np.asarray(x)
    if out is None:
        out = np.empty(x.shape, np.float32)
    _compiled().group_norm_f32(x, groups, scale, shift, epsilon=epsilon, channels_last=channels_last,
                               activation=activation, out=out, film_scale=film_scale, film_shift=film_shift,
                               residual=residual, relu_after=relu_after,
                               codes=codes, codes_scale=codes_scale)
    return out


def to_channels_last(x: Any, y: Any = None) -> np.ndarray:
    """``x`` (N, C, *spatial) written channels last, ``(N, *spatial, C)``, into ``y`` (or a new array).

    Both C-contiguous, int8, uint8 or float32, disjoint. Returns ``y``.
    """
    x = np.asarray(x)
    if y is None:
        y = np.empty((x.shape[0], *x.shape[2:], x.shape[1]) if x.ndim >= 3 else (0,), x.dtype)
    _compiled().to_channels_last(x, y)
    return y


def quantize_s8(x: Any, *, scale: float, out: Any = None) -> np.ndarray:
    """Static int8 quantization with one per-tensor scale, as ``QuantizeLinear`` with a zero point of 0.

    ``q = clamp(round_half_even(x / scale), -128, 127)`` for float32 ``x`` (M, K)
    (rows contiguous, any row stride); NaN gives -128. ``scale`` must be finite
    and > 0 in float32; ``out`` an optional int8 (M, K), disjoint from ``x``.
    Identical to :func:`quantize_s8_ref` on every ISA. Returns ``out``, or a new int8 (M, K) array.
    """
    return _compiled().quantize_s8(x, scale=scale, out=out)


def quantize_s8_ref(x: Any, *, scale: float, out: Any = None) -> np.ndarray:
    """The scalar reference of :func:`quantize_s8` (same arguments, identical codes)."""
    return _compiled().quantize_s8_ref(x, scale=scale, out=out)


def set_isa(name: str) -> None:
    """Forces the kernels of one instruction set, for tests and benchmarks.

    ``name`` is one of :func:`compiled_isas` (``"generic"``, ``"avx2"``,
    ``"avx_vnni"``, ``"avx512_vnni"``, ``"avx512_amx"`` on x86-64,
    ``"neon_dot"`` on aarch64),
    or ``"auto"`` for the best this CPU runs (the default). Raises ValueError
    for a name not compiled in or one this CPU cannot run.
    """
    _compiled().set_isa(name)


def get_isa() -> str:
    """The instruction set whose kernels run now."""
    return _compiled().get_isa()


@contextlib.contextmanager
def isa_scope(name: str | None) -> Iterator[None]:
    """The block runs ``name``'s kernels, then the ISA before it is back; ``None`` changes nothing.

    For measuring what a CPU whose best instruction set is ``name`` would run
    (an AVX2-only or AVX-VNNI robot PC, on a host that has more): the native
    backend picks its kernels when a model loads, so load inside the block.
    An ISA this build lacks or this CPU cannot run raises :class:`EdgevlaError`.
    """
    if name is None:
        yield
        return
    before = get_isa()
    try:
        set_isa(name)
    except ValueError as error:
        raise EdgevlaError(str(error)) from None
    try:
        yield
    finally:
        set_isa(before)


def compiled_isas() -> list[str]:
    """The instruction sets compiled into this build, best first, ``"generic"`` last."""
    return _compiled().compiled_isas()


def available_isas() -> list[str]:
    """The compiled instruction sets this CPU can run, best first."""
    return _compiled().available_isas()


def int8_peak_loop(isa: str, iterations: int) -> int:
    """Runs ``isa``'s int8 compute-roof loop: ``iterations`` rounds of 1024 multiply-adds
    of its dot-product instruction on registers alone. Returns the sum of the
    accumulators, ``-256 * iterations`` (every 4-byte dot product of its fixed
    operands is -1), which shows the loop computed what it timed.

    Raises ValueError for an ISA this CPU cannot run or one without a loop
    (so far ``"avx512_vnni"`` and ``"avx_vnni"`` have one).
    """
    return _compiled().int8_peak_loop(isa, iterations)


def int8_peak_gops(isa: str, seconds: float = 0.05) -> float:
    """``isa``'s int8 compute roof on one core, in GOP/s (2 per multiply-add).

    The best of three runs of :func:`int8_peak_loop`, each lasting about
    ``seconds``: what an int8 GEMM on that instruction can at best reach, the
    figure ``edgevla bench kernels`` holds int8 GEMM rows against.
    """
    return _compiled().int8_peak_gops(isa, seconds)


def f32_peak_loop(isa: str, iterations: int) -> float:
    """Runs ``isa``'s float32 compute-roof loop: ``iterations`` rounds of 256 FMAs on
    registers alone, each ``acc * 1 + 1``. Returns the sum of the accumulators,
    ``256 * iterations`` (exact below 2**24 iterations). Raises ValueError as
    :func:`int8_peak_loop` does.
    """
    return _compiled().f32_peak_loop(isa, iterations)


def f32_peak_gflops(isa: str, seconds: float = 0.05) -> float:
    """``isa``'s float32 compute roof on one core, in GFLOP/s (2 per FMA): the most a
    float32 GEMM on its FMA (PyTorch's included) can reach, what ``edgevla bench
    kernels`` holds the fp32 rows against.
    """
    return _compiled().f32_peak_gflops(isa, seconds)


def set_num_threads(threads: int) -> None:
    """Sets the kernels' thread count (1 to 1024); the default is :func:`default_num_threads`.

    The pool is persistent: threads are started here, not per call. Waits for
    a running kernel to finish. It is fork-safe: a child process forked after
    the pool started (``multiprocessing``, DataLoader workers) starts its own
    workers, as many, at its first kernel call.
    """
    _compiled().set_num_threads(threads)


def get_num_threads() -> int:
    """The kernels' thread count."""
    return _compiled().get_num_threads()


def default_num_threads() -> int:
    """The kernels' default thread count: one per physical core this process may run on.

    Counted among the CPUs of the process's affinity (``taskset``, a cgroup
    cpuset, a ROS 2 executor's pinning), each core once however many hardware
    threads it has, and on a hybrid Intel part (Alder Lake and later) only its
    performance cores when any is allowed: a GEMM split evenly waits on its
    slowest part. A CPU quota without a cpuset (``docker --cpus``) is not seen;
    set the threads explicitly there (csrc/cpu_topology.h).
    """
    return _compiled().default_num_threads()


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity), ascending."""
    return _compiled().allowed_cpus()


def count_compute_cores(cpus: Sequence[int], sysfs: str = "/sys") -> int:
    """The physical cores among ``cpus`` per the sysfs tree at ``sysfs`` (what :func:`default_num_threads`
    counts for :func:`allowed_cpus` and ``/sys``): SMT siblings once, only the performance cores of a hybrid
    part when any is among them."""
    return _compiled().count_compute_cores(list(cpus), sysfs)


#: Default time the kernels' threads poll for work before they sleep (see :func:`set_thread_spin_us`).
DEFAULT_THREAD_SPIN_US = 200


def set_thread_spin_us(microseconds: int) -> None:
    """Sets how long the kernels' threads poll for the next piece of work before they sleep (0 to 1e6 us).

    A worker that finishes its part of a kernel polls for the next one, and the
    calling thread polls for the workers' parts, for this long; after that they
    sleep on a condition variable, and waking them goes through the kernel's
    scheduler (~42 us per split GEMM on the 2-vCPU build machine, against well
    under 1 us polling). The price: after each kernel the pool's threads keep
    their cores busy for up to this long. The default is
    ``DEFAULT_THREAD_SPIN_US`` = 200; 0 never polls (for a robot computer that
    shares its cores with other processes). ValueError outside 0 .. 1e6.
    """
    _compiled().set_thread_spin_us(microseconds)


def get_thread_spin_us() -> int:
    """How long the kernels' threads poll before they sleep, in microseconds."""
    return _compiled().get_thread_spin_us()


def set_min_macs_per_thread(macs: int) -> None:
    """Sets the least work each thread of a packed GEMM gets, in multiply-adds (>= 1).

    A GEMM of W multiply-adds runs on at most ``W // macs`` threads (at least
    one, at most :func:`get_num_threads`). The default,
    ``DEFAULT_MIN_MACS_PER_THREAD`` = 2**17 (~0.6 us on one AVX-512 VNNI core),
    splits what a split was measured to speed up on 2 cores (from 262K
    multiply-adds, 1.2-2x) and keeps smaller GEMMs, where handing work over
    costs what it saves, on the calling thread; tests set 1 to split the
    smallest shapes. ValueError below 1.
    """
    _compiled().set_min_macs_per_thread(macs)


def get_min_macs_per_thread() -> int:
    """The least work each thread of a packed GEMM gets (see :func:`set_min_macs_per_thread`)."""
    return _compiled().get_min_macs_per_thread()


# ------------------------------------------------------- compressed weights --


def pack_sparse_f32(w: Any) -> np.ndarray:
    """Packs the non-zeros of a float32 weight for :func:`gemm_sparse_f32` (unstructured sparsity).

    Args:
        w: float32 (N, K), the ``nn.Linear.weight`` layout, with pruned
            weights set to zero (apply the pruning mask first). ``-0.0`` is a
            zero; NaN is not. K <= :data:`PACKED_F32_MAX_K`.

    Returns a new uint8 array in the ``SPARSE_F32_N16W32`` format (sliced
    ELLPACK: 16 output channels x windows of 32 inputs, one uint8 position
    and one value per stored weight). Memory is about ``5 * nonzeros * 1.3``
    bytes at 50 % sparsity, ``* 2`` at 90 % (padding to the longest of 16
    channels per window); see :func:`packed_info`.
    """
    return _compiled().pack_sparse_f32(w)


def pack_sparse_s8(w: Any, w_scale: Any) -> np.ndarray:
    """Packs the non-zeros of an int8 weight and its per-channel scales for :func:`gemm_sparse_s8s8_f32`.

    Args:
        w: int8 (N, K) with pruned weights zero; K <= :data:`GEMM_S8S8_MAX_K`.
        w_scale: float32 (N,), one scale per output channel.

    Returns a new uint8 array in the ``SPARSE_S8_N16W32`` format (2 bytes per
    stored weight plus padding).
    """
    return _compiled().pack_sparse_s8(w, w_scale)


def pack_2to4_f32(w: Any) -> np.ndarray:
    """Packs a 2:4 sparse float32 weight for :func:`gemm_2to4_f32`.

    Args:
        w: float32 (N, K) in which every group of 4 consecutive weights of a
            row (columns ``4g .. 4g+3``) holds at most 2 non-zeros; K need not
            be a multiple of 4.

    Returns a new uint8 array in the ``2TO4_F32_N16K16`` format: the kept
    values plus one 2-bit position per value (2.125 bytes per weight). Raises
    ValueError naming the first row and group with more than 2 non-zeros.
    """
    return _compiled().pack_2to4_f32(w)


def pack_2to4_s8(w: Any, w_scale: Any) -> np.ndarray:
    """Packs a 2:4 sparse int8 weight and its per-channel scales for :func:`gemm_2to4_s8s8_f32`.

    Args:
        w: int8 (N, K), at most 2 non-zeros in every group of 4 consecutive
            weights of a row; K <= :data:`GEMM_S8S8_MAX_K`.
        w_scale: float32 (N,).

    Returns a new uint8 array in the ``2TO4_S8_N16K16`` format (0.625 bytes
    per weight). Raises ValueError when ``w`` is not 2:4 sparse.
    """
    return _compiled().pack_2to4_s8(w, w_scale)


def pack_w4(qdata: Any, scale: Any, group_size: int, *, k: int | None = None) -> np.ndarray:
    """Packs a group-wise int4 weight for :func:`gemm_w4_f32`.

    The input is exactly what :class:`edgevla.quant.primitives.Int4GroupedWeight`
    holds (``w.qdata.numpy()``, ``w.scale.numpy()``, ``w.group_size``):

    Args:
        qdata: uint8 (N, ceil(K / 2)), two codes per byte: element ``2i`` of a
            row in the low nibble (bits 0-3) of byte ``i``, element ``2i + 1``
            in the high nibble, each a 4-bit two's complement code in [-8, 7]
            (ONNX's int4 order). Symmetric: the zero point is 0, so the weight
            is ``code * scale``. For odd K the last high nibble is ignored.
        scale: float32 (N, ceil(K / group_size)), the scale of each group of
            ``group_size`` consecutive inputs of a row (the last group may be
            partial).
        group_size: 32, 64 or 128.
        k: K, when it is odd; default ``2 * qdata.shape[1]``.

    Returns a new uint8 array in the ``W4_N16K8`` format (0.5 bytes per
    weight plus 4 bytes per group and channel).
    """
    return _compiled().pack_w4(qdata, scale, group_size, k=k)


def gemm_sparse_f32(x: Any, packed: Any, bias: Any = None, *, act: str = "none", out: Any = None) -> np.ndarray:
    """``act(x @ w.T + bias)`` for a weight from :func:`pack_sparse_f32`, on the active ISA.

    Args:
        x: float32 (M, K) activations (rows contiguous, any row stride).
        packed: from :func:`pack_sparse_f32`; validated, K must match ``x``.
        bias: float32 (N,) or None.
        act: ``"none"``, ``"relu"``, ``"gelu_tanh"`` or ``"gelu_erf"``.
        out: optional float32 (M, N) to write into, disjoint from the inputs.

    Sums run in float32 in the kernel's order: the result is within float32
    summation error of :func:`gemm_f32_ref` on the dense weight. Returns
    ``out``, or a new float32 (M, N) array.
    """
    return _compiled().gemm_sparse_f32(x, packed, bias, act=act, out=out)


def gemm_sparse_s8s8_f32(
    a: Any, packed: Any, a_scale: Any, bias: Any = None, *, act: str = "none", out: Any = None,
    residual: Any = None, relu_after: bool = False, codes: Any = None, codes_scale: float | None = None,
    windows: Any = None,
) -> np.ndarray:
    """W8A8 GEMM on a weight from :func:`pack_sparse_s8`, bit-identical to :func:`gemm_s8s8_f32_ref`.

    Arguments as :func:`gemm_s8s8_f32`: ``a`` int8 (M, K), ``a_scale`` one
    value or (M,), ``bias``, ``act``, ``out``, ``residual``, the output stage and
    ``windows``. The int32 accumulation over the non-zeros is exact, so the
    output equals the dense reference bit for bit.
    """
    return _compiled().gemm_sparse_s8s8_f32(a, packed, a_scale, bias, act=act, out=out, residual=residual,
                                            relu_after=relu_after, codes=codes, codes_scale=codes_scale,
                                            windows=windows)


def gemm_2to4_f32(x: Any, packed: Any, bias: Any = None, *, act: str = "none", out: Any = None) -> np.ndarray:
    """``act(x @ w.T + bias)`` for a weight from :func:`pack_2to4_f32`; arguments as :func:`gemm_sparse_f32`."""
    return _compiled().gemm_2to4_f32(x, packed, bias, act=act, out=out)


def gemm_2to4_s8s8_f32(
    a: Any, packed: Any, a_scale: Any, bias: Any = None, *, act: str = "none", out: Any = None,
    residual: Any = None, relu_after: bool = False, codes: Any = None, codes_scale: float | None = None,
    windows: Any = None,
) -> np.ndarray:
    """W8A8 GEMM on a weight from :func:`pack_2to4_s8`, bit-identical to :func:`gemm_s8s8_f32_ref`.

    Arguments as :func:`gemm_s8s8_f32`, the output stage and ``windows`` included.
    """
    return _compiled().gemm_2to4_s8s8_f32(a, packed, a_scale, bias, act=act, out=out, residual=residual,
                                          relu_after=relu_after, codes=codes, codes_scale=codes_scale, windows=windows)


def gemm_w4_f32(x: Any, packed: Any, bias: Any = None, *, act: str = "none", out: Any = None) -> np.ndarray:
    """``act(x @ dequantize(w).T + bias)`` for an int4 weight from :func:`pack_w4`, float32 activations.

    Per group, the dot product of the codes with ``x`` is summed in float32
    and scaled once; the result is within float32 summation error of
    :func:`gemm_w4_f32_ref`. Other arguments as :func:`gemm_sparse_f32`.
    """
    return _compiled().gemm_w4_f32(x, packed, bias, act=act, out=out)


def gemm_w4a8_f32(x: Any, packed: Any, bias: Any = None, *, act: str = "none", out: Any = None) -> np.ndarray:
    """:func:`gemm_w4_f32` with the activations quantized to int8 per weight group (W4A8).

    Each row of ``x`` is quantized per group of the weight's ``group_size``
    (symmetric, ``max |x| / 127``, as :func:`quantize_per_token` does per
    row); the int4 x int8 dot products are exact integers, scaled per group
    and summed in float32. Bit-identical to :func:`gemm_w4a8_f32_ref` on
    every ISA, and several times faster than :func:`gemm_w4_f32` at the
    cost of the activations' quantization error (about 45 dB SQNR on
    Gaussian data). A row holding a NaN or an infinity gives NaN before the
    activation. Arguments as :func:`gemm_w4_f32`.
    """
    return _compiled().gemm_w4a8_f32(x, packed, bias, act=act, out=out)


def gemm_f32_ref(x: Any, w: Any, bias: Any = None, *, act: str = "none", out: Any = None) -> np.ndarray:
    """Reference float32 GEMM ``act(x @ w.T + bias)``: each dot product summed in double, rounded once.

    The ground truth of the float32 sparse and 2:4 kernels (zeros of ``w``
    being the sparsity). ``x`` float32 (M, K), ``w`` float32 (N, K).
    """
    return _compiled().gemm_f32_ref(x, w, bias, act=act, out=out)


def gemm_w4_f32_ref(
    x: Any, qdata: Any, scale: Any, group_size: int, bias: Any = None, *, act: str = "none", out: Any = None
) -> np.ndarray:
    """Reference int4 GEMM on the codes of :func:`pack_w4` (same ``qdata``, ``scale``, ``group_size``).

    ``out = act(sum_k code[n, k] * scale[n, k // group_size] * x[m, k] + bias)``
    with the sum in double. K is ``x.shape[1]``.
    """
    return _compiled().gemm_w4_f32_ref(x, qdata, scale, group_size, bias, act=act, out=out)


def gemm_w4a8_f32_ref(
    x: Any, qdata: Any, scale: Any, group_size: int, bias: Any = None, *, act: str = "none", out: Any = None
) -> np.ndarray:
    """Reference W4A8 GEMM, the ground truth of :func:`gemm_w4a8_f32`; arguments as :func:`gemm_w4_f32_ref`.

    Per row of ``x`` and group ``g`` of ``group_size`` columns (the last one
    partial when K is not a multiple): ``xq, xs[g] = quantize_per_token(x[:, group])``
    (``xs[g]`` NaN for a group that is not finite), ``dot[g] = sum code * xq``
    in int32, then ``acc = acc + float32(dot[g]) * (xs[g] * scale[n, g])`` in
    float32 in group order, every operation rounded on its own, and
    ``act(acc + bias)``. ``csrc/gemm_ref.h`` states it in C.
    """
    return _compiled().gemm_w4a8_f32_ref(x, qdata, scale, group_size, bias, act=act, out=out)


def packed_info(packed: Any) -> dict[str, Any]:
    """What a packed weight is, after validating it like a GEMM would.

    Keys: ``format`` (``"s8_n16k4"``, ``"sparse_f32_n16w32"``,
    ``"sparse_s8_n16w32"``, ``"2to4_f32_n16k16"``, ``"2to4_s8_n16k16"``,
    ``"w4_n16k8"``), ``version``, ``n``, ``k``, ``nbytes``, ``block_n``,
    ``block_k``, ``weight_dtype`` (``"float32"``, ``"int8"``, ``"int4"``),
    ``activation_dtype`` (``"int8"`` for the W8A8 formats, else
    ``"float32"``); sparse formats add ``slots`` and ``nonzeros``, int4 adds
    ``group_size``. Raises ValueError for anything that is not a valid packed
    weight.
    """
    return _compiled().packed_info(packed)


_F32_GEMMS = {
    "sparse_f32_n16w32": "gemm_sparse_f32",
    "2to4_f32_n16k16": "gemm_2to4_f32",
    "w4_n16k8": "gemm_w4_f32",
}
_S8_GEMMS = {
    "s8_n16k4": "gemm_s8s8_f32",
    "sparse_s8_n16w32": "gemm_sparse_s8s8_f32",
    "2to4_s8_n16k16": "gemm_2to4_s8s8_f32",
}


def linear(x: Any, packed: Any, bias: Any = None, *, act: str = "none", out: Any = None) -> np.ndarray:
    """``act(x @ w.T + bias)`` for float32 activations and a packed weight of any format.

    The one call a runtime needs per linear layer: the float-activation
    formats run directly; for the int8 formats ``x`` is first quantized per
    token with :func:`quantize_per_token` (dynamic W8A8). ``x`` float32 (M, K);
    other arguments as :func:`gemm_sparse_f32`.
    """
    compiled = _compiled()
    fmt = compiled.packed_info(packed)["format"]
    if fmt in _F32_GEMMS:
        return getattr(compiled, _F32_GEMMS[fmt])(x, packed, bias, act=act, out=out)
    q, scale = compiled.quantize_per_token(x)
    return getattr(compiled, _S8_GEMMS[fmt])(q, packed, scale, bias, act=act, out=out)
