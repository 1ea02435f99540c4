"""PyTorch's fused attention modules, rewritten as plain Linear layers and matmuls.

A user's policy built on ``nn.MultiheadAttention`` or ``nn.TransformerEncoder``
(ACT-style and diffusion-transformer policies are) hides its projections
from every compression pass:

* ``nn.MultiheadAttention`` keeps q, k and v in one ``in_proj_weight`` that it
  passes to ``F.linear`` itself, and reads ``out_proj.weight`` without calling
  ``out_proj``: calibration never sees those layers run, quantization cannot
  swap them, and the table rounding would take ``in_proj_weight`` for an
  embedding table;
* in eval mode ``nn.TransformerEncoderLayer`` may run one fused kernel
  (``torch._transformer_encoder_layer_fwd``) that skips even its MLP's
  Linear modules;
* all of these are leaves to ``torch.fx``, so the dependency analysis of
  structured pruning sees an opaque call and prunes nothing inside.

:func:`explicit_attention` returns a copy of the model in which each of them
is replaced by a module computing the same function with separate
``q_proj`` / ``k_proj`` / ``v_proj`` / ``out_proj`` Linear layers and an
explicit ``softmax(q k^T / sqrt(d)) v`` (heads visible as a reshape), and the
layer / encoder / decoder classes run their plain (non-fast-path) forward.
The copy is checked against the model on the given inputs; where it differs
or fails, the model is returned unchanged and the reason said.

The copy's state dict has the split names (``self_attn.q_proj.weight`` where
the original has ``self_attn.in_proj_weight``).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from ..errors import describe

# The copy must match the original to float rounding: |a - b| <= TOL * max(1, max |b|).
EQUIVALENCE_TOLERANCE = 1e-4

#: The score bias of a masked (query, key) pair. Finite, so that a query whose every key is masked (a
#: padded history step under a block-causal mask) gets finite attention instead of ``softmax`` of all
#: ``-inf`` (NaN, which the values carry into every later row); large enough that ``exp`` of it is 0 in
#: float32, and small enough that two masks added stay finite in float16 (TensorRT's fp16 engines).
MASKED = -30000.0


@contextlib.contextmanager
def reference_attention() -> Iterator[None]:
    """PyTorch's attention modules on their reference path, not the inference fast path.

    In eval mode ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` may
    run a fused kernel that returns NaN for a query whose keys are all masked
    (the reference path, scaled-dot-product attention, returns a finite row), and
    that ``torch.export`` cannot trace. Builds and exports use the reference.
    """
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


def attention_bias(attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, is_causal: bool,
                   batch: int, heads: int, q_len: int, k_len: int, dtype: torch.dtype,
                   device: torch.device) -> torch.Tensor:
    """The additive score bias of ``nn.MultiheadAttention``'s masks, shaped ``(batch | 1, heads | 1, q, k)``.

    A boolean mask is True where attention is *not* allowed (:data:`MASKED`);
    a float mask is added as it is. ``attn_mask`` is ``(q, k)`` or ``(batch * heads,
    q, k)``; ``key_padding_mask`` is ``(batch, k)``. ``is_causal`` without an
    ``attn_mask`` masks the future. (Wrapped for ``torch.fx``: it branches on
    dtypes, so traced models see one opaque call, whose dimensions the
    dependency analysis then leaves alone.)
    """

    def additive(mask: torch.Tensor) -> torch.Tensor:
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(mask, MASKED)
        return mask.to(dtype)

    bias = torch.zeros((1, 1, q_len, k_len), dtype=dtype, device=device)
    if attn_mask is not None:
        mask = additive(attn_mask)
        bias = bias + (mask.view(batch, heads, q_len, k_len) if mask.dim() == 3 else mask)
    elif is_causal:
        future = torch.ones((q_len, k_len), dtype=torch.bool, device=device).triu(1)
        bias = bias + additive(future)
    if key_padding_mask is not None:
        bias = bias + additive(key_padding_mask).view(batch, 1, 1, k_len)
    return bias


torch.fx.wrap("attention_bias")


class ExplicitMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention``'s function (same arguments, same outputs) with separate projections.

    A head is a slice of the rows of ``q_proj``, ``k_proj``, ``v_proj`` and of
    the columns of ``out_proj``; ``num_heads`` and ``head_dim`` are what the
    forward reshapes by, so structured pruning can remove heads.
    """

    def __init__(self, embed_dim: int, num_heads: int, *, kdim: int | None = None, vdim: int | None = None,
                 bias: bool = True, out_bias: bool = True, dropout: float = 0.0, batch_first: bool = False):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} does not divide into {num_heads} heads")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = float(self.head_dim) ** -0.5  # fixed at build: pruning heads leaves a head's width
        self.dropout = dropout
        self.batch_first = batch_first
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(kdim or embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(vdim or embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=out_bias)

    @classmethod
    def from_fused(cls, mha: nn.MultiheadAttention) -> "ExplicitMultiheadAttention":
        """The same attention, its weights copied out of ``mha`` (which must not add bias_k/v or zero attention)."""
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("add_bias_kv / add_zero_attn are not supported")
        e = mha.embed_dim
        ref = mha.out_proj.weight
        new = cls(e, mha.num_heads, kdim=mha.kdim, vdim=mha.vdim, bias=mha.in_proj_bias is not None,
                  out_bias=mha.out_proj.bias is not None, dropout=mha.dropout, batch_first=mha.batch_first)
        new.to(device=ref.device, dtype=ref.dtype)
        if mha._qkv_same_embed_dim:
            weights = mha.in_proj_weight.detach().split(e, dim=0)
        else:
            weights = (mha.q_proj_weight.detach(), mha.k_proj_weight.detach(), mha.v_proj_weight.detach())
        biases = mha.in_proj_bias.detach().split(e) if mha.in_proj_bias is not None else (None,) * 3
        with torch.no_grad():
            for layer, w, b in zip((new.q_proj, new.k_proj, new.v_proj), weights, biases):
                layer.weight.copy_(w)
                if b is not None:
                    layer.bias.copy_(b)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                new.out_proj.bias.copy_(mha.out_proj.bias)
        new.train(mha.training)
        return new

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        b, lq, _ = query.shape
        lk = key.shape[1]

        def heads(y: torch.Tensor, length) -> torch.Tensor:
            return y.view(b, length, self.num_heads, self.head_dim).transpose(1, 2)

        q = heads(self.q_proj(query), lq)
        k = heads(self.k_proj(key), lk)
        v = heads(self.v_proj(value), lk)
        # Scaled after the product (PyTorch scales q before it; equal to float rounding): the form whose
        # export the native runtime fuses into one attention step.
        scores = (q @ k.transpose(-2, -1)) * self.scaling
        if attn_mask is not None or key_padding_mask is not None or is_causal:
            scores = scores + attention_bias(attn_mask, key_padding_mask, is_causal, b, self.num_heads, lq, lk,
                                             scores.dtype, scores.device)
        weights = F.dropout(scores.softmax(dim=-1), p=self.dropout, training=self.training)
        y = (weights @ v).transpose(1, 2).reshape(b, lq, self.num_heads * self.head_dim)
        out = self.out_proj(y)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(dim=1) if average_attn_weights else weights


class ExplicitTransformerEncoderLayer(nn.TransformerEncoderLayer):
    """``nn.TransformerEncoderLayer`` that always runs its plain forward (no fused fast path)."""

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor | None = None,
                src_key_padding_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            return x + self._ff_block(self.norm2(x))
        x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal))
        return self.norm2(x + self._ff_block(x))


class ExplicitTransformerDecoderLayer(nn.TransformerDecoderLayer):
    """``nn.TransformerDecoderLayer`` under a class ``torch.fx`` traces into (its forward is already plain)."""


class ExplicitTransformerEncoder(nn.TransformerEncoder):
    """``nn.TransformerEncoder``: its layers in turn, then its norm; no nested-tensor fast path."""

    def forward(self, src: torch.Tensor, mask: torch.Tensor | None = None,
                src_key_padding_mask: torch.Tensor | None = None, is_causal: bool | None = None) -> torch.Tensor:
        x = src
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=bool(is_causal))
        return x if self.norm is None else self.norm(x)


class ExplicitTransformerDecoder(nn.TransformerDecoder):
    """``nn.TransformerDecoder``: its layers in turn, then its norm."""

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, tgt_mask: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None, tgt_key_padding_mask: torch.Tensor | None = None,
                memory_key_padding_mask: torch.Tensor | None = None, tgt_is_causal: bool | None = None,
                memory_is_causal: bool = False) -> torch.Tensor:
        x = tgt
        for layer in self.layers:
            x = layer(x, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                      tgt_key_padding_mask=tgt_key_padding_mask, memory_key_padding_mask=memory_key_padding_mask,
                      tgt_is_causal=bool(tgt_is_causal), memory_is_causal=memory_is_causal)
        return x if self.norm is None else self.norm(x)


class ExplicitTransformer(nn.Transformer):
    """``nn.Transformer``: its encoder, then its decoder on the memory, without its input checks."""

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, src_mask: torch.Tensor | None = None,
                tgt_mask: torch.Tensor | None = None, memory_mask: torch.Tensor | None = None,
                src_key_padding_mask: torch.Tensor | None = None, tgt_key_padding_mask: torch.Tensor | None = None,
                memory_key_padding_mask: torch.Tensor | None = None, src_is_causal: bool | None = None,
                tgt_is_causal: bool | None = None, memory_is_causal: bool = False) -> torch.Tensor:
        memory = self.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=src_is_causal)
        return self.decoder(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                            tgt_key_padding_mask=tgt_key_padding_mask,
                            memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=tgt_is_causal,
                            memory_is_causal=memory_is_causal)


# Modules whose class is swapped for ours in place (they add no state: only the forward differs).
_CLASS_SWAPS = {
    nn.TransformerEncoderLayer: ExplicitTransformerEncoderLayer,
    nn.TransformerDecoderLayer: ExplicitTransformerDecoderLayer,
    nn.TransformerEncoder: ExplicitTransformerEncoder,
    nn.TransformerDecoder: ExplicitTransformerDecoder,
    nn.Transformer: ExplicitTransformer,
}


@dataclass
class ExplicitAttentionResult:
    """What :func:`explicit_attention` did: the modules rewritten, or why none was."""

    model: nn.Module
    rewritten: list[str] = field(default_factory=list)  # module paths
    left_fused: str | None = None  # why the model came back unchanged
    max_abs_diff: float | None = None

    def to_dict(self) -> dict:
        return {"rewritten": list(self.rewritten), "left_fused": self.left_fused, "max_abs_diff": self.max_abs_diff}


def _rewrite(model: nn.Module) -> list[str]:
    """Rewrite ``model`` in place; the paths of the modules changed."""
    changed = []
    for path, module in list(model.named_modules()):
        if type(module) in _CLASS_SWAPS:
            module.__class__ = _CLASS_SWAPS[type(module)]
            changed.append(path)
        if isinstance(module, nn.MultiheadAttention):
            parent_path, _, attr = path.rpartition(".")
            parent = model.get_submodule(parent_path) if parent_path else model
            setattr(parent, attr, ExplicitMultiheadAttention.from_fused(module))
            changed.append(path)
    return sorted(changed)


def _outputs(model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(*inputs)
    return [t for t in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(t, torch.Tensor)]


def explicit_attention(model: nn.Module, inputs: Sequence[torch.Tensor]) -> ExplicitAttentionResult:
    """A copy of ``model`` with its fused attention modules rewritten, checked on ``inputs`` (eval mode).

    Returns ``model`` itself (not a copy) when it has nothing to rewrite, or
    when the rewrite cannot be done or does not reproduce its outputs to
    :data:`EQUIVALENCE_TOLERANCE`: ``left_fused`` then says why.
    """
    fused = [p for p, m in model.named_modules() if isinstance(m, (nn.MultiheadAttention, *_CLASS_SWAPS))]
    if not fused:
        return ExplicitAttentionResult(model)
    copied = copy.deepcopy(model)
    try:
        rewritten = _rewrite(copied)
    except ValueError as e:
        return ExplicitAttentionResult(model, left_fused=f"{fused[0]}: {e}")
    was = model.training, copied.training
    model.eval()
    copied.eval()
    try:
        with reference_attention():  # the function the model was trained as (the fast path may return NaN)
            want, got = _outputs(model, inputs), _outputs(copied, inputs)
    except Exception as e:  # noqa: BLE001 - the user's forward may call the modules in ways ours do not take
        return ExplicitAttentionResult(model, left_fused=f"the rewritten model does not run: {describe(e)}")
    finally:
        model.train(was[0])
        copied.train(was[1])
    if len(want) != len(got) or any(a.shape != b.shape for a, b in zip(want, got)):
        return ExplicitAttentionResult(model, left_fused="the rewritten model's outputs have other shapes")
    diff = max((float((a.float() - b.float()).abs().max()) for a, b in zip(got, want)), default=0.0)
    scale = max((float(b.float().abs().max()) for b in want), default=0.0)
    if not diff <= EQUIVALENCE_TOLERANCE * max(1.0, scale):  # NaN fails too
        return ExplicitAttentionResult(model, left_fused=f"the rewritten model differs by {diff:.3g} "
                                                         f"(allowed {EQUIVALENCE_TOLERANCE:g} x max(1, {scale:.3g}))",
                                       max_abs_diff=diff)
    return ExplicitAttentionResult(copied, rewritten, max_abs_diff=diff)


__all__ = ["EQUIVALENCE_TOLERANCE", "MASKED", "ExplicitAttentionResult", "ExplicitMultiheadAttention",
           "ExplicitTransformer", "ExplicitTransformerDecoder", "ExplicitTransformerDecoderLayer", "ExplicitTransformerEncoder",
           "ExplicitTransformerEncoderLayer", "attention_bias", "explicit_attention", "reference_attention"]
