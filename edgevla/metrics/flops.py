"""Floating-point operations of one inference, layer by layer.

Counting is done by :class:`torch.utils.flop_counter.FlopCounterMode`, which
applies a formula to every matmul-like aten op (``mm``, ``addmm``, ``bmm``,
convolutions, scaled-dot-product attention) and attributes it to every module
active when it ran. Fused CPU kernels it has no formula for are added here:
scaled-dot-product attention on CPU, the ``nn.MultiheadAttention`` and
``nn.TransformerEncoderLayer`` inference fast paths (counted as their
projections, attention and feed-forward matmuls) and the int8 matmuls
``_int_mm`` / ``_weight_int8pack_mm``; without them a policy in eval mode
would report zero FLOPs for its attention. Conventions:

* FLOPs = 2 x multiply-accumulates. Bias adds, activations, normalisations,
  softmax and other element-wise work are *not* counted: they are a small
  share of a transformer's or CNN's work and have no standard formula.
* One inference at **batch 1**: inputs are cut to their first sample before
  counting, so the figure is per decision of the policy, whatever batch the
  caller's example had.
* Per layer = per *leaf* module (no children), plus FLOPs a non-leaf module
  does itself. A row is kept when the module computes or owns tensors, so the
  rows' FLOPs add up to the total and their ``weight_bytes`` to the model's
  (ReLU or Dropout get no row).
* Attention score and value matmuls (``q @ k.T``, ``a @ v``) run in an
  attention module's own ``forward``, not in a leaf; they stay attributed to
  that module instead of being lost. ``nn.MultiheadAttention``
  calls its ``out_proj`` weights functionally, so all its work lands on the
  ``MultiheadAttention`` row and ``out_proj`` shows its weights with 0 FLOPs;
  likewise a fast-path ``TransformerEncoderLayer`` carries all its FLOPs and
  its children (linear1, self_attn, ...) only their weights.

Each row also carries the module's own parameter count and ``weight_bytes``
(its parameters *and* buffers, as stored): what inference must read from
memory, which is the input of a roofline estimate. Buffers are included so a
quantized layer that keeps int8 weights in a buffer is still costed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..errors import EdgevlaError

ROOT_NAME = "(root)"


@dataclass(frozen=True)
class LayerFlops:
    """One row of a FLOP report: a module and the work it does itself."""

    name: str          # dotted module path; "(root)" for the top module
    type: str          # module class name
    flops: int         # FLOPs this module does itself at batch 1
    params: int        # parameter elements owned directly by the module
    weight_bytes: int  # bytes of its own parameters and buffers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LayerFlops":
        return cls(name=str(d["name"]), type=str(d["type"]), flops=int(d["flops"]),
                   params=int(d["params"]), weight_bytes=int(d["weight_bytes"]))


@dataclass(frozen=True)
class FlopReport:
    """Total FLOPs of one batch-1 inference and their split over layers."""

    total: int
    per_layer: list[LayerFlops] = field(default_factory=list)

    def top(self, n: int) -> list[LayerFlops]:
        """The ``n`` layers doing the most work, largest first."""
        return sorted(self.per_layer, key=lambda r: r.flops, reverse=True)[:n]

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "per_layer": [r.to_dict() for r in self.per_layer]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FlopReport":
        return cls(total=int(d["total"]), per_layer=[LayerFlops.from_dict(r) for r in d["per_layer"]])


def _batch_one(inputs: Any) -> tuple[torch.Tensor, ...]:
    """Inputs as a tuple of tensors, each cut to its first sample."""
    if isinstance(inputs, (torch.Tensor, np.ndarray)):
        inputs = (inputs,)
    if isinstance(inputs, Mapping):
        inputs = tuple(inputs.values())
    if not isinstance(inputs, Sequence) or not inputs:
        raise EdgevlaError("flop_report needs example inputs: a tensor, a sequence or a mapping of tensors")
    out = []
    for i, x in enumerate(inputs):
        t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
        if not isinstance(t, torch.Tensor):
            raise EdgevlaError(f"flop_report input {i} is a {type(x).__name__}, not a tensor or array")
        if t.ndim == 0 or t.shape[0] == 0:
            raise EdgevlaError(f"flop_report input {i} has shape {tuple(t.shape)}: it needs a leading batch dimension")
        out.append(t[:1])
    return tuple(out)


def _own_tensors(module: torch.nn.Module) -> tuple[int, int]:
    """(parameter elements, bytes) owned directly by ``module``.

    Bytes are what the deployed layer stores: a module with ``shipped_bytes()``
    (a fake-quant Linear, which also keeps its float weight) says so itself;
    otherwise every parameter and buffer counts.
    """
    params = list(module.parameters(recurse=False))
    n_params = sum(p.numel() for p in params)
    shipped = getattr(module, "shipped_bytes", None)
    if callable(shipped):
        return n_params, int(shipped())
    buffers = list(module.buffers(recurse=False))
    return n_params, sum(t.numel() * t.element_size() for t in params + buffers)


# --- formulas for fused CPU kernels torch's counter has no entry for -----------------------------
# Each receives the op's arguments with tensors replaced by their shapes.

def _attention_flops(batch_heads: int, q_len: int, k_len: int, d_qk: int, d_v: int) -> int:
    """q·kᵀ plus softmax(·)·v."""
    return 2 * batch_heads * q_len * k_len * (d_qk + d_v)


def _sdpa_cpu_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:
    *lead, q_len, d_qk = q
    return _attention_flops(math.prod(lead), q_len, k[-2], d_qk, v[-1])


def _mha_flops(q_shape, k_shape, embed_dim: int) -> int:
    """Input projections, attention over all heads, output projection (batch-first or unbatched)."""
    batch, q_len = (q_shape[0], q_shape[1]) if len(q_shape) == 3 else (1, q_shape[0])
    k_len = k_shape[1] if len(k_shape) == 3 else k_shape[0]
    e = embed_dim
    projections = 2 * batch * e * e * (q_len + 2 * k_len + q_len)  # q, k, v in; out
    return projections + _attention_flops(batch, q_len, k_len, e, e)


def _native_mha_flops(query, key, value, embed_dim, *args, out_shape=None, **kwargs) -> int:
    return _mha_flops(query, key, embed_dim)


def _encoder_layer_flops(src, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias, use_gelu,
                         norm_first, eps, norm_weight_1, norm_bias_1, norm_weight_2, norm_bias_2, ffn_weight_1,
                         *args, out_shape=None, **kwargs) -> int:
    tokens = math.prod(src[:-1])
    feedforward = 2 * 2 * tokens * embed_dim * ffn_weight_1[0]  # ffn_weight_1: (dim_feedforward, embed_dim)
    return _mha_flops(src, src, embed_dim) + feedforward


def _int_mm_flops(a, b, *args, out_shape=None, **kwargs) -> int:
    return 2 * a[0] * a[1] * b[1]


def _weight_int8pack_mm_flops(x, w, *args, out_shape=None, **kwargs) -> int:
    return 2 * math.prod(x[:-1]) * x[-1] * w[0]


def _extra_formulas() -> dict[Any, Any]:
    aten = torch.ops.aten
    wanted = {
        # F.scaled_dot_product_attention on CPU
        "_scaled_dot_product_flash_attention_for_cpu": _sdpa_cpu_flops,
        # nn.MultiheadAttention / nn.TransformerEncoderLayer fast paths in eval mode without grad
        "_native_multi_head_attention": _native_mha_flops,
        "_transformer_encoder_layer_fwd": _encoder_layer_flops,
        # int8 matmuls a compressed model may use
        "_int_mm": _int_mm_flops,
        "_weight_int8pack_mm": _weight_int8pack_mm_flops,
    }
    return {getattr(aten, name): f for name, f in wanted.items() if hasattr(aten, name)}


@contextlib.contextmanager
def _no_parameter_grads(module: torch.nn.Module) -> Iterator[None]:
    """Parameters that do not require grad while the counter runs. Its module tracker hooks the gradient of
    every tensor a submodule is called with that requires one, and a view of a parameter taken without grad
    (a DETR/ACT decoder's learned queries, expanded to the batch) still requires it yet has no grad_fn."""
    wanted = [p for p in module.parameters() if p.requires_grad]
    for p in wanted:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in wanted:
            p.requires_grad_(True)


def flop_report(module: torch.nn.Module, inputs: Any) -> FlopReport:
    """Count the FLOPs of ``module(*inputs)`` at batch 1, per layer.

    ``inputs`` is a tensor, a sequence of tensors/arrays passed positionally,
    or a mapping whose values are passed positionally in its order (use
    ``spec.example()`` ordered by ``spec.input_names``).
    """
    if not isinstance(module, torch.nn.Module):
        raise EdgevlaError(f"flop_report needs a torch.nn.Module, got {type(module).__name__}")
    args = _batch_one(inputs)
    counter = FlopCounterMode(display=False, custom_mapping=_extra_formulas())
    with torch.inference_mode(), _no_parameter_grads(module), counter:
        module(*args)
    counts = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}

    # FlopCounterMode names modules "<RootClass>.<dotted path>" and credits an op
    # to every module active when it ran, so a module's own work is its count
    # minus that of the outermost descendants that ran. A container that is
    # never called (nn.ModuleList) has no count: look through it.
    def counted_below(mod: torch.nn.Module, key: str) -> int:
        total = 0
        for name, child in mod.named_children():
            child_key = f"{key}.{name}"
            total += counts[child_key] if child_key in counts else counted_below(child, child_key)
        return total

    root = type(module).__name__
    rows: list[LayerFlops] = []
    for path, mod in module.named_modules():
        key = f"{root}.{path}" if path else root
        own = max(counts[key] - counted_below(mod, key), 0) if key in counts else 0
        n_params, n_bytes = _own_tensors(mod)
        if own > 0 or n_bytes > 0:  # skip rows that neither compute nor hold weights (ReLU, Dropout)
            rows.append(LayerFlops(name=path or ROOT_NAME, type=type(mod).__name__, flops=own,
                                   params=n_params, weight_bytes=n_bytes))
    return FlopReport(total=int(counter.get_total_flops()), per_layer=rows)
