"""The native backend on a GPU: a policy's linear layers on edgevla's CUDA kernels.

On the CPU, ``--backend native`` runs the bundle's exported ONNX graph on our
C++ kernels (:mod:`edgevla.runtime`). On a GPU it runs the bundle's own
PyTorch policy, rebuilt the way the torch backend rebuilds it (quantized
layers restored, structured pruning's shape changes replayed), with every
``nn.Linear`` replaced by a :class:`CudaLinear` that calls
:mod:`edgevla.cuda_kernels`; attention, norms and convolutions stay PyTorch
ops on the same stream. A policy is only ever moved and swapped, never
re-exported, so what runs is the bundle's model.

How each layer computes follows the CPU runtime's table
(:func:`edgevla.runtime.linear.compute_mode`), with one more float precision
(``fp16``, what GPUs run float work in):

=========================  ==================  =====================  ===================
layer                      precision           mode                   kernel
=========================  ==================  =====================  ===================
W4A16 (group-wise int4)    any                 ``int4``               ``cuda-s4-groupwise``
W8A8 (static input scale)  any                 ``int8-static``        ``cuda-s8-2:4`` if the codes are 2:4, else ``cuda-s8-dense``
float, K and N >= 16       ``int8`` (default)  ``int8-dynamic``       as above; per-token scales
W8A16                      ``int8``            ``int8-dynamic``       as above, on the stored codes
float (or W8A16), 2:4      ``fp16``            ``fp16``               ``cuda-f16-2:4``
anything else              ``fp16`` / ``fp32``  ``fp16`` / ``fp32``    ``torch-f16`` / ``torch-f32`` (cuBLAS)
=========================  ==================  =====================  ===================

FP8 layers run as ``torch-f32`` on their fake-quantized weight (no fp8
kernel of ours), as do float layers narrower than 16 at ``int8``.

Where a kernel has variants (tile shapes), ``auto`` picks one by rules
measured on an H200; a :class:`edgevla.cuda_tactics.TacticTable` instead
times the variants on this GPU at each layer's shape and runs the fastest
(``edgevla profile --kernel-tactics FILE``). Int8 variants must give
bit-identical outputs to be chosen, float16 ones agree within 1e-5. On
sm_90 the candidates include CUTLASS's wgmma kernels (a 2:4 layer then also
holds CUTLASS's compressed copy of its weight, made when first tried), on
Thor its tcgen05 kernel.

Every :class:`CudaLinear` also has :meth:`CudaLinear.reference`, the same
arithmetic on the CPU with the C++ scalar references (int8 paths are
bit-identical to it on the GPU; the int4 and fp16 kernels sum in their own
order). :func:`reference_mode` makes a swapped policy run those references,
so the planning and the operands are tested on machines without a GPU, and
on a GPU each layer is compared with its reference (``tests/test_cuda_policy.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import cuda_kernels, native
from .cuda_tactics import TacticTable, exact_agreement, relative_agreement, tactic_key
from .errors import EdgevlaError
from .quant.fakequant import Float8Linear, Int4WeightLinear, Int8ActivationInt8WeightLinear, Int8WeightLinear
from .quant.primitives import quantize
from .runtime.linear import MIN_INT8_WIDTH, LayerChoice, is_two_four, quantize_per_channel

PRECISIONS = ("int8", "fp16", "fp32")
DEFAULT_PRECISION = "int8"
#: Below this amax a row quantizes to zeros (csrc's EDGEVLA_QUANT_MIN_AMAX, 2**-100).
QUANT_MIN_AMAX = 2.0 ** -100


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`edgevla.native.quantize_per_token` in PyTorch ops, bit for bit, on any device.

    ``inv = 127 / max|x[m]|`` (0 for rows below :data:`QUANT_MIN_AMAX`), codes
    ``clamp(round_half_even(x * inv), -127, 127)``, scale ``max|x[m]| / 127``,
    each a single float32 operation as in ``edgevla_quantize_row_ref``. Unlike
    the C++ function it does not check for NaN (that would synchronize the
    GPU at every layer); a NaN row gives meaningless codes, not a crash.
    """
    amax = x.abs().amax(dim=1)
    inv = torch.where(amax >= QUANT_MIN_AMAX, 127.0 / amax, torch.zeros_like(amax))
    q = torch.clamp(torch.round(x * inv[:, None]), -127, 127).to(torch.int8)
    return q, amax / 127.0


def _capturing() -> bool:
    """Whether the current CUDA stream is capturing a graph (False on a build of PyTorch without CUDA)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class CudaLinear(nn.Module):
    """Base of the swapped layers: ``(..., K) -> (..., N)`` float, the kernel's work on 2-D rows.

    Subclasses set :attr:`choice` (the plan line) and implement ``_run`` (CUDA
    tensors) and ``_reference`` (NumPy, CPU).
    """

    choice: LayerChoice
    #: How outputs of two variants must agree for one to stand in for the other (:mod:`edgevla.cuda_tactics`).
    agreement = staticmethod(exact_agreement)
    #: Attributes holding host copies of the weight that only ``_reference`` reads (see :meth:`drop_host_copies`).
    host_copies: tuple[str, ...] = ()

    def __init__(self, choice: LayerChoice, bias: torch.Tensor | None):
        super().__init__()
        self.choice = choice
        self.in_features, self.out_features = choice.k, choice.n
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())
        self.use_reference = False
        self.tactics: TacticTable | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if self.use_reference:
            y = torch.from_numpy(self.reference(rows.detach().cpu().float().numpy())).to(x.device)
        else:
            rows = rows.float().contiguous()
            y = self._run(rows, self.variant_for(rows))
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def variants(self, m: int) -> tuple[str, ...]:
        """The kernel variants that compute this layer for ``m`` rows, ``"auto"`` first (its reference)."""
        return ("auto",)

    def variant_for(self, rows: torch.Tensor) -> str:
        """``"auto"``, or with a :class:`TacticTable` the variant it holds (or times now) for these rows' shape.

        Tuning synchronizes the GPU, so it cannot happen while a CUDA graph
        is being captured: a shape first met there runs ``auto``
        (:class:`GraphedForward` runs every shape eagerly before capturing).
        """
        if self.tactics is None:
            return "auto"
        candidates = self.variants(rows.shape[0])
        if len(candidates) == 1:
            return "auto"
        key = tactic_key(self.choice.kernel, rows.shape[0], self.out_features, self.in_features)
        if key not in self.tactics.tactics and _capturing():
            return "auto"
        return self.tactics.variant(key, candidates, lambda v: self._run(rows, v), self.agreement,
                                    kernel=self.choice.kernel)

    def packed_weights(self) -> tuple[Any, ...]:
        """The packed weights (``cuda_kernels``' weight objects) the kernels read, beside the module's buffers."""
        return ()

    def weight_bytes(self) -> int:
        """Bytes of what the layer computes from on its device: its buffers and packed weights (no host copies)."""
        return (sum(t.numel() * t.element_size() for t in self.buffers(recurse=False))
                + sum(w.nbytes for w in self.packed_weights()))

    def host_bytes(self) -> int:
        """Bytes of the host copies kept for :meth:`reference` (on a Jetson, the same DRAM the GPU's copy is in)."""
        held = (getattr(self, name) for name in self.host_copies)
        return sum(a.nbytes if isinstance(a, np.ndarray) else a.numel() * a.element_size()
                   for a in held if a is not None)

    def drop_host_copies(self) -> None:
        """Frees the host copies: the kernels run on, :meth:`reference` refuses (a deployed policy needs none)."""
        for name in self.host_copies:
            setattr(self, name, None)

    def reference(self, x: np.ndarray) -> np.ndarray:
        """The layer's arithmetic on the CPU: float32 (M, K) in, float32 (M, N) out."""
        if any(getattr(self, name) is None for name in self.host_copies):
            raise EdgevlaError(f"layer {self.choice.layer}: no CPU reference, its host copy of the weight was "
                               "dropped (swap_linears(..., keep_reference=False))")
        return self._reference(np.ascontiguousarray(x, dtype=np.float32))

    def _bias_np(self) -> np.ndarray | None:
        return None if self.bias is None else self.bias.detach().cpu().numpy()

    def _run(self, x: torch.Tensor, variant: str = "auto") -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _reference(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, {self.choice.kernel}"


class Int8Linear(CudaLinear):
    """W8A8 on the int8 tensor cores (dense ``mma.sync`` or 2:4 ``mma.sp``), fp32 epilogue.

    ``input_scale`` given: the graph's static per-tensor scale (``clamp(round(x / s), -128, 127)``,
    what QuantizeLinear does); otherwise per-token dynamic scales (:func:`quantize_per_token`).
    """

    def __init__(self, choice: LayerChoice, codes: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
                 input_scale: float | None, device: torch.device):
        super().__init__(choice, bias)
        codes = codes.detach().to(torch.int8).cpu().contiguous()
        self.register_buffer("w_scale", w_scale.detach().float().contiguous())
        self.register_buffer("input_scale", None if input_scale is None
                             else torch.tensor([input_scale], dtype=torch.float32))
        if choice.kernel == "cuda-s8-2:4":
            # The kernels read the packed half; the dense codes stay on the host (the reference, and CUTLASS's
            # copy below), or the GPU would hold 1.6x the dense layer's bytes instead of 0.6x.
            self.codes = codes
            self.host_copies = ("codes",)
            self.sparse = cuda_kernels.pack_2to4_s8(codes.numpy(), device=device)
        else:
            self.register_buffer("codes", codes)
            self.sparse = None
        # CUTLASS's sparse wgmma takes its own compressed weight: made (on the GPU) the first time a tactics
        # table asks for that variant, which happens in an eager call, never inside a CUDA-graph capture, and
        # dropped again when no shape of this layer chose it.
        self.sparse_wgmma: cuda_kernels.Sparse2to4WgmmaWeight | None = None
        self._shapes: set[str] = set()  # the tactic keys this layer met while that copy was alive

    def _quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.input_scale is None:
            return quantize_per_token(x)
        return quantize(x, self.input_scale), self.input_scale

    def variants(self, m: int) -> tuple[str, ...]:
        # CUTLASS's kernels where built for this GPU: wgmma (sm_90; dense and 2:4), tcgen05 (Thor, sm_100; dense).
        wgmma = ("wgmma",) if m > 16 and cuda_kernels.wgmma_available() and self.codes is not None else ()
        if self.sparse is not None:
            return (*cuda_kernels.SPARSE_VARIANTS, *wgmma) if m > 16 else ("auto",)
        # auto is small_m at M <= 16 (its one-wave shape and the tiled kernel are the other choices there),
        # tiled above.
        if m <= 16:
            return ("auto", *cuda_kernels.SMALL_M_VARIANTS[1:], "tiled")
        tcgen05 = ("tcgen05",) if cuda_kernels.tcgen05_available() else ()
        return ("auto", *cuda_kernels.TILED_VARIANTS[1:], *wgmma, *tcgen05)

    def packed_weights(self) -> tuple[Any, ...]:
        return tuple(w for w in (self.sparse, self.sparse_wgmma) if w is not None)

    def drop_host_copies(self) -> None:
        if not cuda_kernels.wgmma_available():  # where it is (sm_90 servers), CUTLASS's copy is made from them
            super().drop_host_copies()

    def variant_for(self, rows: torch.Tensor) -> str:
        variant = super().variant_for(rows)
        if self.sparse_wgmma is not None and self.tactics is not None:
            self._shapes.add(tactic_key(self.choice.kernel, rows.shape[0], self.out_features, self.in_features))
            chosen = (self.tactics.tactics.get(key) for key in self._shapes)
            if variant != "wgmma" and not any(t is not None and t.variant == "wgmma" for t in chosen):
                self.sparse_wgmma = None  # timed at this layer's shapes and lost each time: free CUTLASS's copy
        return variant

    def _run(self, x: torch.Tensor, variant: str = "auto") -> torch.Tensor:
        q, a_scale = self._quantize(x)
        if self.sparse is not None:
            weight = self.sparse
            if variant == "wgmma":
                if self.sparse_wgmma is None:
                    self.sparse_wgmma = cuda_kernels.pack_2to4_s8_wgmma(self.codes.to(x.device))
                weight = self.sparse_wgmma
            return cuda_kernels.gemm_2to4_s8(q, weight, w_scale=self.w_scale, a_scale=a_scale, bias=self.bias,
                                             variant=variant)
        return cuda_kernels.gemm_s8s8(q, self.codes, w_scale=self.w_scale, a_scale=a_scale, bias=self.bias,
                                      variant=variant)

    def _reference(self, x: np.ndarray) -> np.ndarray:
        if self.input_scale is None:
            q, a_scale = native.quantize_per_token(x)
        else:
            q, a_scale = quantize(torch.from_numpy(x), self.input_scale.cpu()).numpy(), self.input_scale.cpu().numpy()
        return native.gemm_s8s8_f32_ref(q, self.codes.cpu().numpy(), self.w_scale.cpu().numpy(), a_scale,
                                        self._bias_np())


class Int4Linear(CudaLinear):
    """Weight-only int4 GEMV/GEMM on the CPU's ``W4_N16K8`` buffer, in row chunks of the kernel's maximum M."""

    def __init__(self, choice: LayerChoice, layer: Int4WeightLinear, device: torch.device):
        super().__init__(choice, layer.bias)
        self.group_size = layer.group_size
        self.qdata = layer.weight_qdata.detach().cpu().numpy()
        self.scale = layer.weight_scale.detach().float().cpu().numpy()
        packed = native.pack_w4(self.qdata, self.scale, layer.group_size, k=choice.k)
        self.weight = cuda_kernels.W4Weight.from_packed(packed, device=device)

    #: The variants sum the same float32 products in other orders.
    agreement = staticmethod(relative_agreement(1e-5))
    host_copies = ("qdata", "scale")

    def variants(self, m: int) -> tuple[str, ...]:
        return ("auto", *cuda_kernels.W4_VARIANTS[1:])

    def packed_weights(self) -> tuple[Any, ...]:
        return (self.weight,)

    def _run(self, x: torch.Tensor, variant: str = "auto") -> torch.Tensor:
        out = torch.empty((x.shape[0], self.out_features), dtype=torch.float32, device=x.device)
        step = cuda_kernels.gemm_w4_max_m()
        for start in range(0, x.shape[0], step):
            cuda_kernels.gemm_w4(x[start:start + step], self.weight, self.bias, out=out[start:start + step],
                                 variant=variant)
        return out

    def _reference(self, x: np.ndarray) -> np.ndarray:
        return native.gemm_w4_f32_ref(x, self.qdata, self.scale, self.group_size, self._bias_np())


class Fp16SparseLinear(CudaLinear):
    """2:4 sparse float16 on the sparse tensor cores (``mma.sp``), fp32 accumulation and out."""

    def __init__(self, choice: LayerChoice, weight: torch.Tensor, bias: torch.Tensor | None, device: torch.device):
        super().__init__(choice, bias)
        self.weight16 = weight.detach().cpu().to(torch.float16).contiguous()
        self.sparse = cuda_kernels.pack_2to4_f16(self.weight16.numpy(), device=device)

    agreement = staticmethod(relative_agreement(1e-5))
    host_copies = ("weight16",)

    def variants(self, m: int) -> tuple[str, ...]:
        return cuda_kernels.SPARSE_VARIANTS if m > 16 else ("auto",)

    def packed_weights(self) -> tuple[Any, ...]:
        return (self.sparse,)

    def _run(self, x: torch.Tensor, variant: str = "auto") -> torch.Tensor:
        return cuda_kernels.gemm_2to4_f16(x.half(), self.sparse, self.bias, variant=variant)

    def _reference(self, x: np.ndarray) -> np.ndarray:
        x16 = x.astype(np.float16).astype(np.float64)
        y = x16 @ self.weight16.numpy().astype(np.float64).T
        if self.bias is not None:
            y += self._bias_np()
        return y.astype(np.float32)


class TorchLinear(CudaLinear):
    """The layers no kernel of ours takes: ``F.linear`` (cuBLAS) in float32 or float16."""

    def __init__(self, choice: LayerChoice, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__(choice, bias)
        self.compute_dtype = dtype
        self.register_buffer("weight", weight.detach().to(dtype).contiguous())

    def _run(self, x: torch.Tensor, variant: str = "auto") -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        return F.linear(x.to(self.compute_dtype), self.weight, bias).float()

    def _reference(self, x: np.ndarray) -> np.ndarray:
        xc = torch.from_numpy(x).to(self.compute_dtype).double()
        y = xc @ self.weight.cpu().double().T
        if self.bias is not None:
            y += self.bias.cpu().to(self.compute_dtype).double()
        return y.float().numpy()


# --------------------------------------------------------------------------- planning


def _choice(name: str, layer: nn.Linear, stored: str, weight: np.ndarray, mode: str, kernel: str,
            rule: str) -> LayerChoice:
    sparsity = float(np.mean(weight == 0)) if weight.size else 0.0
    pattern = "2:4" if is_two_four(weight) else ("unstructured" if sparsity >= 0.5 else "dense")
    return LayerChoice(name, layer.in_features, layer.out_features, stored, sparsity, pattern, mode, kernel,
                       "bias" if layer.bias is not None else "none", rule)


def _stored(layer: nn.Linear) -> str:
    if isinstance(layer, Int4WeightLinear):
        return "int4"
    if isinstance(layer, Int8WeightLinear):
        return "int8"
    return "fp8" if isinstance(layer, Float8Linear) else "fp32"


def plan_layer(name: str, layer: nn.Linear, precision: str, device: torch.device) -> CudaLinear:
    """The :class:`CudaLinear` that runs ``layer`` (see the table in the module docstring)."""
    stored = _stored(layer)
    if isinstance(layer, Int4WeightLinear):
        codes = layer.int4_weight.dequantize().detach().cpu().numpy()
        choice = _choice(name, layer, stored, codes, "int4", "cuda-s4-groupwise", "int4 weight-only GEMV/GEMM")
        return Int4Linear(choice, layer, device)
    if isinstance(layer, Int8WeightLinear):
        codes, w_scale = layer.weight_qdata, layer.weight_scale
    else:
        codes = w_scale = None
    static = isinstance(layer, Int8ActivationInt8WeightLinear)
    weight = (layer.quantized_weight() if isinstance(layer, Float8Linear) else layer.weight).detach().float().cpu()
    wide = min(layer.in_features, layer.out_features) >= MIN_INT8_WIDTH
    if static or (precision == "int8" and stored != "fp8" and (codes is not None or wide)):
        if codes is None:
            c, s = quantize_per_channel(weight.numpy())
            codes, w_scale = torch.from_numpy(c), torch.from_numpy(s)
        c_np = codes.detach().cpu().numpy()
        two_four = is_two_four(c_np)
        kernel, rule = (("cuda-s8-2:4", "2:4 codes: the sparse tensor cores") if two_four
                        else ("cuda-s8-dense", "dense W8A8 on the int8 tensor cores"))
        mode = "int8-static" if static else "int8-dynamic"
        input_scale = float(layer.input_scale) if static else None
        return Int8Linear(_choice(name, layer, stored, c_np, mode, kernel, rule), codes, w_scale, layer.bias,
                          input_scale, device)
    if isinstance(layer, Int8WeightLinear):
        weight = layer.quantized_weight().detach().float().cpu()
    w_np = weight.numpy()
    if precision == "fp16" and is_two_four(w_np):
        choice = _choice(name, layer, stored, w_np, "fp16", "cuda-f16-2:4", "2:4 weights: the sparse tensor cores")
        return Fp16SparseLinear(choice, weight, layer.bias, device)
    mode = "fp16" if precision == "fp16" else "fp32"
    why = "float work in cuBLAS" if stored != "fp8" else "no fp8 kernel: the fake-quantized weight in float32"
    choice = _choice(name, layer, stored, w_np, mode, f"torch-{'f16' if mode == 'fp16' else 'f32'}", why)
    return TorchLinear(choice, weight, layer.bias, torch.float16 if mode == "fp16" else torch.float32)


def swap_linears(policy: nn.Module, *, precision: str = DEFAULT_PRECISION,
                 device: str | torch.device = "cuda", keep_reference: bool = True,
                 float_inputs: Iterable[str] = ()) -> list[LayerChoice]:
    """Replace, in place, every ``nn.Linear`` of ``policy`` by its :class:`CudaLinear`; move it to ``device``.

    Returns the plan (one :class:`LayerChoice` per layer, in module order).
    The kernels' operands are packed on the host and copied to ``device``
    once, here. A float policy is run as given; a quantized one (its layers
    restored by :func:`edgevla.quant.restore_quantized`) on its own codes.
    ``keep_reference=False`` frees the host copies that only the layers' CPU
    references read (:meth:`CudaLinear.drop_host_copies`): on a Jetson the
    host and the GPU share one DRAM, where those copies would hold the
    int4 and 2:4 weights a second time. ``float_inputs``: the layers whose
    input the build kept float (mixed precision raised them; the bundle's
    ONNX metadata lists them): under ``int8`` they run fp32 instead of
    quantizing their input per token.
    """
    if precision not in PRECISIONS:
        raise EdgevlaError(f"GPU precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    float_inputs = frozenset(float_inputs)
    plan = []
    for name, layer in list(policy.named_modules()):
        parent_name, _, child = name.rpartition(".")
        parent = policy.get_submodule(parent_name) if parent_name else policy
        # nn.MultiheadAttention reads its out_proj's weight without calling it: that one stays PyTorch's.
        if not name or not isinstance(layer, nn.Linear) or isinstance(parent, nn.MultiheadAttention):
            continue
        own = "fp32" if name in float_inputs and precision == "int8" else precision
        swapped = plan_layer(name, layer, own, device)
        if not keep_reference:
            swapped.drop_host_copies()
        setattr(parent, child, swapped)
        plan.append(swapped.choice)
    policy.to(device)
    return plan


def weight_bytes(policy: nn.Module) -> int:
    """Bytes of ``policy``'s weights where it runs: every parameter and buffer, and its layers' packed weights."""
    tensors = {id(t): t for t in (*policy.parameters(), *policy.buffers())}
    return (sum(t.numel() * t.element_size() for t in tensors.values())
            + sum(w.nbytes for m in policy.modules() if isinstance(m, CudaLinear) for w in m.packed_weights()))


@contextlib.contextmanager
def reference_mode(policy: nn.Module) -> Iterator[nn.Module]:
    """Run every :class:`CudaLinear` of ``policy`` on its CPU reference while inside (tests, no GPU)."""
    layers = [m for m in policy.modules() if isinstance(m, CudaLinear)]
    for m in layers:
        m.use_reference = True
    try:
        yield policy
    finally:
        for m in layers:
            m.use_reference = False


def use_tactics(policy: nn.Module, tactics: TacticTable | None) -> None:
    """Let every :class:`CudaLinear` of ``policy`` run the variants ``tactics`` choose (None: ``auto`` again)."""
    for m in policy.modules():
        if isinstance(m, CudaLinear):
            m.tactics = tactics


def cuda_policy(policy: nn.Module, *, precision: str = DEFAULT_PRECISION, tactics: TacticTable | None = None,
                keep_reference: bool = True, float_inputs: Iterable[str] = ()) -> tuple[nn.Module, list[LayerChoice]]:
    """``policy`` swapped onto the CUDA kernels on the current GPU, and its plan; a one-line error where they cannot run.

    With ``tactics``, each layer runs the variant the table chooses for its
    shape, timing the candidates on this GPU the first time a shape runs.
    ``keep_reference`` and ``float_inputs``: as in :func:`swap_linears`.
    """
    reason = cuda_kernels.unavailable_reason()
    if reason:
        raise EdgevlaError(f"the native backend cannot run on a GPU here: {reason}")
    plan = swap_linears(policy, precision=precision, device="cuda", keep_reference=keep_reference,
                        float_inputs=float_inputs)
    use_tactics(policy, tactics)
    return policy.eval(), plan


# --------------------------------------------------------------------------- CUDA graphs


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]  # the captured forward reads these: each call copies its observations in
    output: torch.Tensor        # and writes this


class GraphedForward:
    """A policy's forward as CUDA graphs, one per input signature (shapes and dtypes).

    At batch 1 a forward is some hundred small kernels (several per layer: the
    per-token quantization, the GEMM, PyTorch's ops around it), and launching
    them one by one costs more than running them. The first call of a
    signature runs the forward twice on a side stream (PyTorch's warm-up
    rule for capture), then captures it; every call copies the observations
    into the captured inputs and replays the graph: the same kernels, on the
    same buffers, in one launch. Our kernels launch on PyTorch's current
    stream, which is the capture stream while capturing.

    A forward that cannot be captured (a host synchronization inside, an op
    that refuses capture) raises :class:`EdgevlaError` naming why; the
    runner then runs it eagerly (:class:`edgevla.backends.CudaNativeRunner`).
    """

    def __init__(self, policy: nn.Module):
        self.policy = policy
        self._graphs: dict[tuple, _Graph] = {}

    def __call__(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        key = tuple((tuple(t.shape), t.dtype) for t in inputs)
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._graphs[key] = self._capture(inputs)
        for static, t in zip(graph.inputs, inputs):
            static.copy_(t, non_blocking=True)
        graph.graph.replay()
        return graph.output

    def _capture(self, inputs: Sequence[torch.Tensor]) -> _Graph:
        static = [t.to("cuda", copy=True) for t in inputs]
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.inference_mode():
                for _ in range(2):
                    self.policy(*static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # relaxed: the bindings' pointer checks (cudaPointerGetAttributes) are not stream work
            with torch.inference_mode(), torch.cuda.graph(graph, capture_error_mode="relaxed"):
                output = self.policy(*static)
        except RuntimeError as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            raise EdgevlaError(f"the policy's forward cannot be captured as a CUDA graph: "
                               f"{lines[0] if lines else type(e).__name__}") from None
        return _Graph(graph, static, output)
