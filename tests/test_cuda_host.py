"""The CUDA kernels' host side, on any machine (no GPU needed).

- ``_C`` says whether the kernels were compiled in, consistently with build_info;
- the host 2:4 packing into mma.sp fragment order (csrc/cuda/pack_2to4_mma.h)
  decodes back to the dense weight, for every candidate metadata layout, by a
  decoder written here from the header's description alone;
- arguments are refused before any CUDA call: host arrays, bad dtypes, bad
  layouts, weights that are not 2:4.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgevla import _C, cuda_kernels, native
from edgevla.errors import EdgevlaError


def test_compiled_flag_matches_build_info():
    assert _C.cuda_kernels_compiled() == native.build_info()["cuda"]
    assert cuda_kernels.compiled() == native.build_info()["cuda"]


def test_unavailable_reason_is_one_line_and_calls_raise():
    reason = cuda_kernels.unavailable_reason()
    assert "\n" not in reason
    assert cuda_kernels.available() == (reason == "")
    if reason:
        with pytest.raises(EdgevlaError, match="cannot run"):
            cuda_kernels.gemm_s8s8(np.zeros((1, 4), np.int8), np.zeros((4, 4), np.int8))


# ------------------------------------------------------------ 2:4 packing ---

def _meta_slot(dtype: str, layout: int, g: int, t: int, q: int) -> tuple[int, int]:
    """(row in tile, logical group in tile) of nibble q of lane (g, t): pack_2to4_mma.h, MetaLayout."""
    if dtype == "float16":
        t %= 2
        return (g + 8 * (q // 4), 4 * t + q % 4) if layout == 0 else (g + 8 * t, q)
    if layout == 0:
        return g + 8 * (q // 4), 4 * t + q % 4
    if layout == 1:
        reg = q // 2
        return g + 8 * (reg % 2), (reg // 2) * 8 + 2 * t + q % 2
    if layout == 2:
        return g + 8 * (t % 2), 8 * (t // 2) + q
    return g + 8 * (t // 2), 8 * (t % 2) + q


def _decode(values: np.ndarray, meta: np.ndarray, n: int, k: int, dtype: str, layout: int) -> np.ndarray:
    """The dense (N, K) weight that packed values + metadata describe."""
    f16 = dtype == "float16"
    tile_k = 32 if f16 else 64
    n_tiles, k_tiles = -(-n // 16), -(-k // tile_k)
    per_word = 2 if f16 else 4
    raw = values.view(np.uint16 if f16 else np.uint8).reshape(n_tiles, k_tiles, 32, 4, per_word)
    meta = meta.reshape(n_tiles, k_tiles, 32)
    dense = np.zeros((n_tiles * 16, k_tiles * tile_k), np.uint16 if f16 else np.uint8)
    for nt in range(n_tiles):
        for kt in range(k_tiles):
            nibble = {}
            for lane in range(32):
                for q in range(8):
                    slot = _meta_slot(dtype, layout, lane // 4, lane % 4, q)
                    value = (int(meta[nt, kt, lane]) >> (4 * q)) & 15
                    assert nibble.setdefault(slot, value) == value, "two lanes disagree on one group's metadata"
                    assert (value & 3) < (value >> 2), f"nibble {value:04b}: positions must increase"
            for lane in range(32):
                g, t = divmod(lane, 4)
                for r in range(4):
                    row = g + 8 * (r % 2)
                    for e in range(per_word):
                        cc = (r // 2) * 8 + 2 * t + e if f16 else (r // 2) * 16 + 4 * t + e
                        group, which = divmod(cc, 2)
                        nib = nibble[(row, group)]
                        position = (nib >> 2) if which else (nib & 3)
                        physical = group if f16 else 4 * (group % 4) + group // 4
                        col = kt * tile_k + 4 * physical + position
                        dense[nt * 16 + row, col] = raw[nt, kt, lane, r, e]
    return dense[:n, :k]


@pytest.mark.parametrize("n,k", [(16, 64), (5, 7), (33, 130), (24, 200)])
@pytest.mark.parametrize("layout", range(4))
def test_int8_packing_decodes_to_the_weight(n, k, layout):
    rng = np.random.default_rng(n * 1000 + k)
    w = cuda_kernels.random_2to4(rng, n, k, np.int8)
    w[0, :4] = [0, 0, 0, -128]  # one non-zero: completed with a zero position
    w[-1, -min(k, 4):] = 0      # all-zero group
    values, meta = _C.pack_2to4_s8_mma(w, layout)
    assert values.dtype == np.uint32 and meta.dtype == np.uint32
    assert values.size == -(-n // 16) * -(-k // 64) * 128 and meta.size == values.size // 4
    np.testing.assert_array_equal(_decode(values, meta, n, k, "int8", layout).view(np.int8), w)


@pytest.mark.parametrize("n,k", [(16, 32), (9, 45), (40, 96)])
@pytest.mark.parametrize("layout", range(2))
def test_float16_packing_decodes_to_the_weight(n, k, layout):
    rng = np.random.default_rng(n * 100 + k)
    w = cuda_kernels.random_2to4(rng, n, k, np.float16)
    w[0, 1] = np.float16(-0.0)  # -0 counts as zero
    values, meta = _C.pack_2to4_f16_mma(w.view(np.uint16), layout)
    decoded = _decode(values, meta, n, k, "float16", layout)
    np.testing.assert_array_equal(decoded.view(np.float16) != 0, w != 0)
    np.testing.assert_array_equal(decoded.view(np.float16)[w != 0], w[w != 0])


def test_packing_refuses_a_weight_that_is_not_2to4():
    w = np.ones((3, 12), np.int8)
    w[:, ::2] = 0
    w[2, 4:8] = [1, 1, 1, 0]
    with pytest.raises(ValueError, match=r"row 2 has 3 non-zeros in k = 4\.\.7"):
        _C.pack_2to4_s8_mma(w, 0)


def test_packing_refuses_bad_arguments():
    with pytest.raises(TypeError, match="int8"):
        _C.pack_2to4_s8_mma(np.zeros((4, 8), np.float32), 0)
    with pytest.raises(ValueError, match="meta_layout"):
        _C.pack_2to4_s8_mma(np.zeros((4, 8), np.int8), 7)
    with pytest.raises(ValueError, match="2-D"):
        _C.pack_2to4_s8_mma(np.zeros(8, np.int8), 0)


# ---------------------------------------------------- argument validation ---

@pytest.mark.parametrize("call", [
    lambda a, w, o: _C.cuda_gemm_s8s8(a, w, o),
    lambda a, w, o: _C.cuda_gemm_2to4_s8(a, w, w, o, n=4, k=8),
    lambda a, w, o: _C.cuda_gemm_2to4_s8_wgmma(a, w, w, o, n=4, k=32),
    lambda a, w, o: _C.cuda_pack_2to4_s8_wgmma(w, a, a),
])
def test_host_arrays_are_refused_before_any_launch(call):
    a, w, out = np.zeros((2, 8), np.int8), np.zeros((4, 8), np.int8), np.zeros((2, 4), np.int32)
    expected = TypeError if _C.cuda_kernels_compiled() else RuntimeError
    with pytest.raises(expected, match="CUDA array" if _C.cuda_kernels_compiled() else "without CUDA"):
        call(a, w, out)


# ------------------------------------------- the shared epilogue in PTX ---
# The CUDA kernels' epilogues are csrc/epilogue_math.h itself (__host__
# __device__ under nvcc). They are bit-identical to the CPU reference only if
# nvcc fuses exactly the header's fmaf calls and divides with IEEE rounding.
# That is a property of the compiler flags, so it is checked here, without a
# GPU: each function compiled with the build's CUDA flags must hold as many
# fma.rn.f32 as the header writes fmaf calls (callees included), and nothing
# approximate.

EPILOGUE_FUNCTIONS = ["edgevla_tanh_f32", "edgevla_gelu_tanh_f32", "edgevla_gelu_erf_f32", "edgevla_relu_f32"]
HEADER = Path(__file__).resolve().parents[1] / "csrc" / "epilogue_math.h"


def _nvcc() -> str | None:
    return shutil.which("nvcc") or next((p for p in ["/usr/local/cuda/bin/nvcc"] if Path(p).is_file()), None)


def _function_bodies(header: str) -> dict[str, str]:
    """name -> body text of each float function of the header (one-line ones included)."""
    bodies = {}
    for match in re.finditer(r"static inline EDGEVLA_HOST_DEVICE float (\w+)\(", header):
        line_end = header.index("\n", match.end())
        one_line = header[:line_end].rstrip().endswith("}")
        bodies[match.group(1)] = header[match.end():line_end if one_line else header.index("\n}\n", match.end())]
    return bodies


def _fmaf_calls(name: str, bodies: dict[str, str]) -> int:
    body = bodies[name]
    calls = {callee: len(re.findall(rf"\b{callee}\(", body)) for callee in bodies if callee != name}
    callees = sum(_fmaf_calls(callee, bodies) * count for callee, count in calls.items() if count)
    return len(re.findall(r"\bfmaf\(", body)) + callees


def _ptx_of(flags: list[str], tmp_path: Path) -> dict[str, str]:
    source = tmp_path / "probe.cu"
    source.write_text('#include "epilogue_math.h"\n' + "".join(
        f'extern "C" __global__ void probe_{name}(const float* x, float* y) {{ y[threadIdx.x] = {name}(x[threadIdx.x]); }}\n'
        for name in EPILOGUE_FUNCTIONS) +
        'extern "C" __global__ void probe_dequant(const int* a, const float* s, float* y) {\n'
        '    y[threadIdx.x] = edgevla_dequant_s8_f32(a[threadIdx.x], s[0], s[1 + threadIdx.x]) + s[2 + threadIdx.x];\n}\n')
    ptx = tmp_path / "probe.ptx"
    subprocess.run([_nvcc(), "-ptx", "-arch=sm_87", *flags, f"-I{HEADER.parent}", str(source), "-o", str(ptx)],
                   check=True, capture_output=True, text=True)
    text = ptx.read_text()
    return {m.group(1): text[m.end():text.index("\n}", m.end())]
            for m in re.finditer(r"\.entry probe_(\w+)\(", text)}


def _cuda_flags() -> list[str]:
    """The device-code flags of the build (build_info), or CMakeLists.txt's when CUDA was not compiled in."""
    flags = native.build_info()["cuda_flags"].split() if native.build_info()["cuda"] else \
        ["-O3", "-std=c++17", "--fmad=false"]
    return [f for f in flags if not f.startswith("-Xcompiler")]


@pytest.mark.skipif(_nvcc() is None, reason="nvcc is not installed")
def test_cuda_epilogue_fuses_exactly_the_headers_fmaf_calls(tmp_path):
    flags = _cuda_flags()
    assert "--fmad=false" in flags
    bodies = _function_bodies(HEADER.read_text())
    ptx = _ptx_of(flags, tmp_path)
    for name in EPILOGUE_FUNCTIONS:
        body = ptx[name]
        assert body.count("fma.rn.f32") == _fmaf_calls(name, bodies), name
        assert ".approx" not in body and ".ftz" not in body and ".full" not in body, name
    assert ptx["edgevla_tanh_f32"].count("div.rn.f32") == 1
    assert "fma" not in ptx["dequant"]  # (float)acc * (a * w) + bias: two multiplies and an add


@pytest.mark.skipif(_nvcc() is None, reason="nvcc is not installed")
def test_the_ptx_check_sees_contraction_when_fmad_is_on(tmp_path):
    # The check above can fail: with nvcc's default --fmad=true the GELU's
    # x + c * x^3 and the dequantization's multiply-add become fmas.
    flags = [f for f in _cuda_flags() if f != "--fmad=false"]
    bodies = _function_bodies(HEADER.read_text())
    ptx = _ptx_of(flags, tmp_path)
    assert ptx["edgevla_gelu_tanh_f32"].count("fma.rn.f32") > _fmaf_calls("edgevla_gelu_tanh_f32", bodies)
    assert "fma.rn.f32" in ptx["dequant"]


# --------------------------------------- the tensor-core int4 kernel's algebra ---
# The int4 kernels decode codes with lop3 and float16 arithmetic
# (csrc/cuda/w4_decode.cuh); gemm_w4_mma_kernels.cuh feeds the MMA a permuted k order. Both are modelled here on
# the host, instruction by instruction from the kernel's own constants (read
# from the header), and checked against the plain definition: every code
# decodes exactly, and one unit's two MMAs compute sum_k q[ch, k] x[row, k].

W4_DECODE_HEADER = Path(__file__).resolve().parents[1] / "csrc" / "cuda" / "w4_decode.cuh"


def _w4_constants() -> dict[str, float]:
    text = W4_DECODE_HEADER.read_text()
    found = re.findall(r"constexpr (?:int|uint32_t|float) (kW4\w+) = (0x[0-9a-fA-F]+|[0-9.+-]+)[uf]?;", text)
    return {name: float(int(value, 16)) if value.startswith("0x") else float(value) for name, value in found}


def _lop3(lut: int, a: np.ndarray, b: int, c: int) -> np.ndarray:
    """lop3.b32 bit by bit: the truth table's bit 4 a + 2 b + c (PTX defines it on a = 0xF0, b = 0xCC, c = 0xAA)."""
    out = np.zeros_like(a)
    for bit in range(32):
        ab, bb, cb = (a >> bit) & 1, (b >> bit) & 1, (c >> bit) & 1
        index = (ab << 2) | (bb << 1) | cb
        out |= ((lut >> index) & 1) << bit
    return out


def _halves(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return ((u & 0xFFFF).astype(np.uint16).view(np.float16).astype(np.float64),
            (u >> 16).astype(np.uint16).view(np.float16).astype(np.float64))


def _decode_pairs(words: np.ndarray, k: dict[str, float]) -> list[tuple[np.ndarray, np.ndarray]]:
    """decode_w4_pairs: four (low, high) float pairs per word, float16 rounding after each operation."""
    lut = int(k["kW4DecodeLut"])
    f16 = lambda v: v.astype(np.float16).astype(np.float64)  # noqa: E731 — one rounding, as hsub2 / hfma2
    pairs = []
    for src, mask, magic, high in [(words, "kW4MaskLow", "kW4MagicLow", False),
                                   (words, "kW4MaskHigh", "kW4MagicHigh", True),
                                   (words >> 8, "kW4MaskLow", "kW4MagicLow", False),
                                   (words >> 8, "kW4MaskHigh", "kW4MagicHigh", True)]:
        lo, hi = _halves(_lop3(lut, src, int(k[mask]), int(k[magic])))
        if high:
            pairs.append((f16(lo * k["kW4ScaleHigh"] + k["kW4BiasHigh"]), f16(hi * k["kW4ScaleHigh"] + k["kW4BiasHigh"])))
        else:
            pairs.append((f16(lo - k["kW4BiasLow"]), f16(hi - k["kW4BiasLow"])))
    return pairs


def _codes(words: np.ndarray) -> np.ndarray:
    """(..., 8) two's-complement nibbles of each word, nibble j = bits 4 j .. 4 j + 3."""
    nibbles = (words[..., None] >> (4 * np.arange(8, dtype=np.uint64))) & 15
    return np.where(nibbles >= 8, nibbles.astype(np.int64) - 16, nibbles.astype(np.int64))


def test_w4_mma_decode_is_exact_for_every_code():
    k = _w4_constants()
    rng = np.random.default_rng(0)
    words = np.concatenate([rng.integers(0, 2**32, 4096, dtype=np.uint64),
                            np.array([sum(v << (4 * j) for j in range(8)) for v in range(16)], np.uint64)])
    q = _codes(words)
    for j, (lo, hi) in enumerate(_decode_pairs(words, k)):
        np.testing.assert_array_equal(lo, q[:, j])
        np.testing.assert_array_equal(hi, q[:, j + 4])


def _byte_perm(x: int, y: int, selector: int) -> int:
    data = x | (y << 32)
    return sum(((data >> (8 * ((selector >> (4 * i)) & 7))) & 0xFF) << (8 * i) for i in range(4))


def test_w4_mma_fragments_compute_the_unit_dot_products():
    """One unit (16 channels x 32 k, 8 batch rows) through the kernel's fragment mapping and the m16n8k16 layout."""
    kc = _w4_constants()
    rng = np.random.default_rng(1)
    words = rng.integers(0, 2**32, (4, 16), dtype=np.uint64)          # [cell][channel]
    x = rng.standard_normal((8, 32)).astype(np.float16)                  # [batch row][k]
    x_bits = x.view(np.uint16).astype(np.uint64)
    pairs = {(cell, ch): [(float(lo[0]), float(hi[0])) for lo, hi in _decode_pairs(words[cell, ch:ch + 1], kc)]
             for cell in range(4) for ch in range(16)}
    d = np.zeros((16, 8))
    for s in range(2):
        a = np.zeros((16, 16))
        b = np.zeros((16, 8))
        for lane in range(32):
            g, t = lane // 4, lane % 4
            row0 = pairs[(t, 2 * g)]      # channel 2 g: A row g; lane t takes cell t
            row1 = pairs[(t, 2 * g + 1)]  # channel 2 g + 1: A row g + 8
            # a0 = (row g, k 2t, 2t+1), a1 = (row g+8, ...), a2 = (row g, k 2t+8, 2t+9), a3 = (row g+8, ...)
            a[g, 2 * t:2 * t + 2] = row0[s]
            a[g + 8, 2 * t:2 * t + 2] = row1[s]
            a[g, 2 * t + 8:2 * t + 10] = row0[s + 2]
            a[g + 8, 2 * t + 8:2 * t + 10] = row1[s + 2]
            cell_x = x_bits[g, 8 * t:8 * t + 8]
            xv = [int(cell_x[2 * i] | (cell_x[2 * i + 1] << 16)) for i in range(4)]
            sel = 0x5410 if s == 0 else 0x7632
            b0, b1 = _byte_perm(xv[0], xv[2], sel), _byte_perm(xv[1], xv[3], sel)
            for reg, k0 in ((b0, 2 * t), (b1, 2 * t + 8)):  # b0 = (k 2t, 2t+1; col g), b1 = (k 2t+8, 2t+9; col g)
                lo, hi = _halves(np.array([reg], np.uint64))
                b[k0, g], b[k0 + 1, g] = lo[0], hi[0]
        d += a @ b
    q = _codes(words)                                                   # [cell][channel][nibble]
    expected = np.einsum("cnj,mcj->nm", q.astype(np.float64), x.astype(np.float64).reshape(8, 4, 8))
    channel_of_row = [2 * r for r in range(8)] + [2 * r + 1 for r in range(8)]  # the kernel's output mapping
    np.testing.assert_allclose(d, expected[channel_of_row], rtol=1e-12, atol=1e-9)


# ------------------------------------------------ int4 streaming partition ---
# gemm_w4_stream_kernels.cuh splits a block's K among kWarps warps in units of
# kW4StreamUnitCells cells; lane (slot = l / 4, quad = l % 4) takes unit
# kW4StreamUnitsPerWarp (step kWarps + warp) + slot for channels 4 quad .. +3,
# and one scale per unit. The kernel's loop is replayed here with the header's
# constants, for every warp count the launcher can pick: each (cell, channel)
# is read exactly once, and the sums equal the CPU reference.

W4_STREAM_HEADER = Path(__file__).resolve().parents[1] / "csrc" / "cuda" / "gemm_w4_stream_kernels.cuh"


def _stream_constants() -> tuple[int, int]:
    text = W4_STREAM_HEADER.read_text()
    cells = re.search(r"constexpr int kW4StreamUnitCells = (\d+);", text)
    per_warp = re.search(r"constexpr int kW4StreamUnitsPerWarp = (\d+);", text)
    return int(cells.group(1)), int(per_warp.group(1))


def _stream_model(x: np.ndarray, packed: np.ndarray, warps: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, reads): the kernel's sums in float64, and how often each (block, cell, channel) was read."""
    info = native.packed_info(packed)
    n, k, group = info["n"], info["k"], info["group_size"]
    cells_per_unit, units_per_warp = _stream_constants()
    nb, kc, kg = -(-n // 16), -(-k // 8), -(-k // group)
    scales_offset = -(-(64 + 64 * nb * kc) // 64) * 64
    words = np.frombuffer(packed, np.uint32, nb * kc * 16, 64).reshape(nb, kc, 16).astype(np.uint64)
    scales = np.frombuffer(packed, np.float32, nb * kg * 16, scales_offset).reshape(nb, kg, 16).astype(np.float64)
    q = _codes(words).astype(np.float64)                                    # [block][cell][channel][nibble]
    xp = np.zeros((x.shape[0], kc * 8 + 8 * cells_per_unit))
    xp[:, :k] = x
    units, shift = -(-kc // cells_per_unit), group.bit_length() - 1
    y = np.zeros((x.shape[0], nb * 16))
    reads = np.zeros((nb, kc, 16), np.int64)
    for block in range(nb):
        for warp in range(warps):
            for lane in range(32):
                quad, slot = lane % 4, lane // 4
                channels = slice(4 * quad, 4 * quad + 4)
                for unit in range(warp * units_per_warp + slot, units, warps * units_per_warp):
                    dot = np.zeros((x.shape[0], 4))
                    for cell in range(unit * cells_per_unit, (unit + 1) * cells_per_unit):
                        if cell < kc:  # past K the loads are predicated off (zeros)
                            reads[block, cell, channels] += 1
                            dot += xp[:, 8 * cell:8 * cell + 8] @ q[block, cell, channels].T
                    y[:, 16 * block + 4 * quad:16 * block + 4 * quad + 4] += \
                        scales[block, (unit * 32) >> shift, channels] * dot
    return y[:, :n], reads


@pytest.mark.parametrize("m,k,n,group", [(1, 257, 33, 32), (2, 2050, 24, 64), (1, 4100, 40, 32), (3, 96, 17, 128),
                                         (1, 8, 16, 32)])
@pytest.mark.parametrize("warps", [4, 8, 16])
def test_w4_streaming_partition_reads_every_cell_once_and_sums_right(m, k, n, group, warps):
    rng = np.random.default_rng(k + n + warps)
    codes = rng.integers(0, 256, (n, (k + 1) // 2), dtype=np.uint8)
    scales = rng.uniform(1e-3, 1e-2, (n, -(-k // group))).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    y, reads = _stream_model(x, native.pack_w4(codes, scales, group, k=k), warps)
    assert (reads == 1).all()
    ref = native.gemm_w4_f32_ref(x, codes, scales, group).astype(np.float64)
    assert np.linalg.norm(y - ref) <= 1e-6 * np.linalg.norm(ref)


# ------------------------------------------- int4 tensor cores, float32 x ---
# gemm_w4_mma_kernels.cuh split_x_f32x8: per unit (32 k) and batch row, x is
# scaled by 2^(127 - e) (e: the exponent of the largest |x|, clamped as the
# header clamps it) and written as hi + lo, two float16 values. Modelled here
# with NumPy's float16 rounding (round to nearest even, as __floats2half2_rn).

W4_MMA_HEADER = Path(__file__).resolve().parents[1] / "csrc" / "cuda" / "gemm_w4_mma_kernels.cuh"


def _split_model(unit: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    low, high = map(int, re.search(r"min\(max\(static_cast<int>\(__float_as_uint\(largest\) >> 23\), (\d+)\), (\d+)\)",
                                   W4_MMA_HEADER.read_text()).groups())
    largest = np.float32(np.abs(unit).max())
    e = min(max(int(largest.view(np.uint32)) >> 23, low), high)
    scale = np.array([(254 - e) << 23], np.uint32).view(np.float32)[0]
    inverse = np.array([e << 23], np.uint32).view(np.float32)[0]
    a = unit.astype(np.float32) * scale
    hi = a.astype(np.float16)
    lo = (a - hi.astype(np.float32)).astype(np.float16)
    return hi, lo, float(inverse)


@pytest.mark.parametrize("magnitude", [1e-42, 1e-30, 3e-5, 1.0, 7e4, 1e30, 3e38])
def test_w4_float32_x_split_keeps_22_bits_of_the_units_largest_value(magnitude):
    rng = np.random.default_rng(int(np.log10(magnitude) + 50))
    for _ in range(50):
        unit = (rng.uniform(-1, 1, 32) * rng.choice([1.0, 1e-3, 1e-9], 32) * magnitude).astype(np.float32)
        unit[rng.integers(32)] = magnitude  # the largest: past 2^127 for 3e38, subnormal for 1e-42
        hi, lo, inverse = _split_model(unit)
        assert np.isfinite(hi).all() and np.isfinite(lo).all()  # no float16 overflow, whatever the magnitude
        got = (hi.astype(np.float64) + lo.astype(np.float64)) * inverse
        largest = np.abs(unit.astype(np.float64)).max()
        assert np.abs(got - unit).max() <= 2.0 ** -22 * largest
