"""The native runtime's attention fusion: the exporter's head-splitting chain as one step, against ONNX Runtime."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from edgevla import native
from edgevla.export import export_onnx
from edgevla.runtime import NativeModel
from edgevla.runtime.attention import ATTENTION_OP
from edgevla.spec import PolicySpec, TensorSpec

RNG = np.random.default_rng(11)
# A few float32 ulps: ONNX Runtime and our kernel sum in different orders, and ONNX Runtime's order follows the
# CPU (on an AMD EPYC it differed from ours by 2.4e-6 at 2.06: under 1.2e-6 relative).
CLOSE = dict(rtol=2e-6, atol=2e-6)
HEADS, DIM = 3, 8


def _attention_model(scale_op="Mul", scale_first=False, extra_output=None, opset=18, tokens=(5, 7), bias=None):
    """q, k, v (B, T, H*D) -> heads -> softmax(q k^T * c [+ bias]) v -> (B, T, H*D), as torch.onnx writes it.

    ``bias``: a graph input of that shape (a mask, "first" puts it first in the Add)."""
    c = np.float32(DIM ** -0.5) if scale_op == "Mul" else np.float32(DIM ** 0.5)
    shape4, shape3 = np.array([0, 0, HEADS, DIM], np.int64), np.array([0, 0, HEADS * DIM], np.int64)
    nodes = [helper.make_node("Reshape", ["q", "shape4"], ["q4"]),
             helper.make_node("Reshape", ["k", "shape4"], ["k4"]),
             helper.make_node("Reshape", ["v", "shape4"], ["v4"]),
             helper.make_node("Transpose", ["q4"], ["qh"], perm=[0, 2, 1, 3]),
             helper.make_node("Transpose", ["k4"], ["kh"], perm=[0, 2, 3, 1]),
             helper.make_node("Transpose", ["v4"], ["vh"], perm=[0, 2, 1, 3]),
             helper.make_node("MatMul", ["qh", "kh"], ["scores"])]
    scaled = "scores"
    if scale_op is not None:
        inputs = ["c", "scores"] if scale_first else ["scores", "c"]
        nodes.append(helper.make_node(scale_op, inputs, ["scaled"]))
        scaled = "scaled"
    if bias is not None:
        nodes.append(helper.make_node("Add", ["bias", scaled] if scale_first else [scaled, "bias"], ["masked"]))
        scaled = "masked"
    nodes.append(helper.make_node("Softmax", [scaled], ["p"], axis=-1))
    nodes += [helper.make_node("MatMul", ["p", "vh"], ["o"]),
              helper.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ot", "shape3"], ["y"])]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", t, HEADS * DIM])
              for n, t in (("q", tokens[0]), ("k", tokens[1]), ("v", tokens[1]))]
    if bias is not None:
        inputs.append(helper.make_tensor_value_info("bias", TensorProto.FLOAT, bias))
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ["y"] + ([extra_output] if extra_output else [])]
    inits = [numpy_helper.from_array(a, n) for n, a in (("c", c), ("shape4", shape4), ("shape3", shape3))]
    graph = helper.make_graph(nodes, "attention", inputs, outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _feeds(batch=2, tokens=(5, 7)):
    return {"q": RNG.normal(0, 2, (batch, tokens[0], HEADS * DIM)).astype(np.float32),
            "k": RNG.normal(0, 2, (batch, tokens[1], HEADS * DIM)).astype(np.float32),
            "v": RNG.normal(0, 1, (batch, tokens[1], HEADS * DIM)).astype(np.float32)}


def _ort(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("isa", native.available_isas() if native.available() else ["none"])
@pytest.mark.parametrize("scale_op,scale_first", [("Mul", False), ("Mul", True), ("Div", False), (None, False)])
def test_attention_chain_fuses_and_matches_onnxruntime(scale_op, scale_first, isa, restore_dispatch):
    """On the AVX-512 tables the step is the native kernel, elsewhere NumPy: both match ONNX Runtime."""
    if isa != "none":
        native.set_isa(isa)
    model = _attention_model(scale_op, scale_first)
    native_model = NativeModel(model, precision="fp32")
    assert native_model.op_count() == {"Reshape": 4, ATTENTION_OP: 1}  # transposes, products, scale, softmax: one
    for batch in (2, 1, 2):  # a trace, a second signature, then the planned buffers of the first again
        feeds = _feeds(batch)
        y = native_model.run(feeds)["y"]
        assert y.shape == (batch, 5, HEADS * DIM) and y.dtype == np.float32
        np.testing.assert_allclose(y, _ort(model, feeds)[0], **CLOSE)


@pytest.mark.parametrize("bias_shape, scale_first", [((None, 1, 1, 7), False), ((5, 7), True),
                                                     ((None, HEADS, 5, 7), False)],
                         ids=["key-padding", "causal-first", "per-head"])
def test_a_masked_attention_fuses_with_its_bias(bias_shape, scale_first):
    """nn.MultiheadAttention's masks, rewritten (edgevla.models.explicit_attention): an Add of a bias between the
    scaling and the softmax, a key-padding bias per sample, a (T, S) causal one, or one per head."""
    shape = ["batch" if d is None else d for d in bias_shape]
    model = _attention_model("Mul", scale_first, bias=shape)
    native_model = NativeModel(model, precision="fp32")
    assert native_model.op_count() == {"Reshape": 4, ATTENTION_OP: 1}
    for batch in (2, 1, 2):
        feeds = _feeds(batch)
        dims = [batch if d is None else d for d in bias_shape]
        feeds["bias"] = np.where(RNG.random(dims) < 0.3, np.float32(-30000), RNG.normal(0, 1, dims)).astype(np.float32)
        y = native_model.run(feeds)["y"]
        np.testing.assert_allclose(y, _ort(model, feeds)[0], **CLOSE)


def test_attention_intermediate_read_elsewhere_is_not_fused():
    """The probabilities are a graph output: the chain must stay as it is (and still be right)."""
    model = _attention_model(extra_output="p")
    native_model = NativeModel(model, precision="fp32")
    assert ATTENTION_OP not in native_model.op_count()
    feeds = _feeds()
    out, ref = native_model.run(feeds), _ort(model, feeds)
    np.testing.assert_allclose(out["y"], ref[0], **CLOSE)
    np.testing.assert_allclose(out["p"], ref[1], **CLOSE)


def test_attention_output_is_not_aliased_between_calls():
    """Outputs are copied out of the planned buffers: a second call leaves the first result intact."""
    native_model = NativeModel(_attention_model(), precision="fp32")
    first_feeds = _feeds()
    first = native_model.run(first_feeds)["y"]
    kept = first.copy()
    native_model.run(_feeds())
    np.testing.assert_array_equal(first, kept)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("tokens", [(5, 7), (30, 32), (40, 48), (60, 70), (80, 78), (190, 192), (200, 180)])
def test_the_native_kernel_takes_short_sequences_only(tokens, threads, monkeypatch, restore_dispatch):
    """Up to the table's and thread count's NATIVE_ATTENTION_MAX_TOKENS the step is the native kernel; longer
    ones, and every one on a table without a limit, go to NumPy."""
    from edgevla.runtime import attention

    native.set_num_threads(threads)

    calls = []
    raw = native.raw

    def counted(name):
        kernel = raw(name)
        return (lambda *a: calls.append(1) or kernel(*a)) if name == "attention_f32" else kernel
    monkeypatch.setattr(native, "raw", counted)
    model = _attention_model(tokens=tokens)
    feeds = _feeds(2, tokens)
    y = NativeModel(model, precision="fp32").run(feeds)["y"]
    np.testing.assert_allclose(y, _ort(model, feeds)[0], **CLOSE)
    limits = attention.NATIVE_ATTENTION_MAX_TOKENS.get(native.get_isa(), (0, 0))
    assert attention.native_attention_max_tokens() == limits[0 if threads == 1 else 1]
    assert bool(calls) == (max(tokens) <= limits[0 if threads == 1 else 1])


@pytest.mark.parametrize("isa, threads, limit", [("avx512_vnni", 1, 48), ("avx512_vnni", 2, 192),
                                                 ("avx_vnni", 1, 32), ("avx_vnni", 2, 80), ("avx2", 2, 80),
                                                 ("generic", 2, 0)])
def test_native_attention_limits_per_table_and_threads(isa, threads, limit, restore_dispatch):
    from edgevla.runtime import attention

    if isa not in native.available_isas():
        pytest.skip(f"this CPU has no {isa}")
    native.set_isa(isa)
    native.set_num_threads(threads)
    assert attention.native_attention_max_tokens() == limit


class ScaledDotProductBlock(nn.Module):
    """A block calling ``F.scaled_dot_product_attention`` on (B, H, T, D) heads, as Llama-style trunks and
    flow-matching action experts do: no mask, ``is_causal``, or a boolean mask (True: attend)."""

    def __init__(self, mask: str):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("x", (6, 24)),), action=TensorSpec("a", (6, 24)))
        self.qkv, self.o = nn.Linear(24, 72), nn.Linear(24, 24)
        self.mask = mask

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, HEADS, DIM).permute(2, 0, 3, 1, 4)
        allowed = torch.arange(t)[None, :] <= torch.arange(t)[:, None] + 1 if self.mask == "bool" else None
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, is_causal=self.mask == "causal")
        return self.o(a.transpose(1, 2).reshape(b, t, d))


@pytest.mark.parametrize("mask", ["none", "causal", "bool"])
def test_scaled_dot_product_attention_as_exported_fuses(tmp_path, mask, monkeypatch):
    """The exporter writes SDPA with k's last axes swapped by a Reshape-Transpose-Reshape over Shape(k), both
    sides scaled by sqrt(c), a mask added (a boolean one's fully-masked rows zeroed by Where(IsNaN)): one step,
    the native kernel's where it takes the sequence, mask and all."""
    from edgevla.runtime import attention

    torch.manual_seed(5)
    block = ScaledDotProductBlock(mask).eval()
    path = export_onnx(block, tmp_path / "sdpa.onnx")
    calls, raw = [], native.raw
    monkeypatch.setattr(native, "raw", lambda name: (lambda *a: calls.append(a) or raw(name)(*a))
                        if name == "attention_f32" else raw(name))
    native_model = NativeModel(path, precision="fp32")
    ops = native_model.op_count()
    assert ops[ATTENTION_OP] == 1 and not {"Softmax", "MatMul", "IsNaN"} & set(ops), ops
    x = RNG.normal(0, 1, (3, 6, 24)).astype(np.float32)
    with torch.no_grad():
        want = block(torch.from_numpy(x)).numpy()
    for _ in range(2):  # traced, then on planned buffers
        np.testing.assert_allclose(native_model.run({"x": x})["a"], want, rtol=0, atol=2e-6)
    assert bool(calls) == (attention.native_attention_max_tokens() >= 6)
    assert all((a[6] is not None) == (mask != "none") and a[7] == (mask == "bool") for a in calls)


def _run_fused(block, path, monkeypatch, x):
    """``block`` exported to ``path`` and run natively twice (traced, then on planned buffers), each time against
    PyTorch on ``x``: the op types of the steps it runs, the attention kernel's calls, PyTorch's output."""
    calls, raw = [], native.raw
    monkeypatch.setattr(native, "raw", lambda name: (lambda *a: calls.append(a) or raw(name)(*a))
                        if name == "attention_f32" else raw(name))
    model = NativeModel(export_onnx(block, path), precision="fp32")
    with torch.no_grad():
        want = block(torch.from_numpy(x)).numpy()
    for _ in range(2):
        np.testing.assert_allclose(model.run({"x": x})["a"], want, rtol=0, atol=2e-6)
    (bound,) = model._program._bound.values()
    return [step.node.op_type for step in bound.steps], calls, want


class GroupedQueryBlock(nn.Module):
    """Grouped-query attention as Llama-style trunks write it: 4 query heads, 2 key/value heads repeated to 4
    (``repeat_interleave``, or ``repeat_kv``'s expand and reshape), causal SDPA."""

    def __init__(self, repeat: str):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("x", (6, 24)),), action=TensorSpec("a", (6, 24)))
        self.q, self.kv, self.o = nn.Linear(24, 4 * 6), nn.Linear(24, 2 * 2 * 6), nn.Linear(24, 24)
        self.repeat = repeat

    def forward(self, x):
        b, t, _ = x.shape
        q = self.q(x).view(b, t, 4, 6).transpose(1, 2)
        k, v = self.kv(x).view(b, t, 2, 2, 6).permute(2, 0, 3, 1, 4).unbind(0)  # (b, 2, t, 6) each
        if self.repeat == "interleave":
            k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
        else:
            k = k[:, :, None].expand(b, 2, 2, t, 6).reshape(b, 4, t, 6)
            v = v[:, :, None].expand(b, 2, 2, t, 6).reshape(b, 4, t, 6)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(a.transpose(1, 2).reshape(b, t, 24))


@pytest.mark.parametrize("repeat", ["interleave", "expand"])
def test_grouped_query_attention_reads_the_unrepeated_heads(tmp_path, repeat, monkeypatch):
    """The repeat of k's and v's heads is not computed: the attention reads 2 key/value heads for 4 query heads
    (the kernel's grouped heads, or NumPy's repeat where the kernel does not run)."""
    from edgevla.runtime import attention

    torch.manual_seed(6)
    block = GroupedQueryBlock(repeat).eval()
    x = RNG.normal(0, 1, (2, 6, 24)).astype(np.float32)
    running, calls, want = _run_fused(block, tmp_path / "gqa.onnx", monkeypatch, x)
    assert ATTENTION_OP in running and not {"Expand", "Tile"} & set(running), running
    assert bool(calls) == (attention.native_attention_max_tokens() >= 6)
    assert all(a[1].shape == (2, 6, 2, 6) and a[0].shape == (2, 6, 4, 6) for a in calls)
    monkeypatch.setattr(attention, "native_attention_max_tokens", lambda: 0)  # the NumPy path repeats them
    np.testing.assert_allclose(NativeModel(export_onnx(block, tmp_path / "gqa2.onnx"), precision="fp32").run(
        {"x": x})["a"], want, rtol=0, atol=2e-6)


class EagerAttentionBlock(nn.Module):
    """Attention as Hugging Face's eager Llama-family code writes it: grouped heads repeated by ``repeat_kv``,
    the scores ``q @ k.transpose(2, 3)`` then scaled (``* scaling``, or ``/ sqrt(d)`` in older models), a
    causal mask of ``finfo.min`` added, a float32 softmax."""

    def __init__(self, scaling: str):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("x", (6, 24)),), action=TensorSpec("a", (6, 24)))
        self.q, self.kv, self.o = nn.Linear(24, 4 * 6), nn.Linear(24, 2 * 2 * 6), nn.Linear(24, 24)
        self.scaling = scaling
        self.register_buffer("causal", torch.full((6, 6), torch.finfo(torch.float32).min).triu(1)[None, None],
                             persistent=False)

    def forward(self, x):
        b, t, _ = x.shape
        q = self.q(x).view(b, t, 4, 6).transpose(1, 2)
        k, v = self.kv(x).view(b, t, 2, 2, 6).permute(2, 0, 3, 1, 4).unbind(0)
        k = k[:, :, None].expand(b, 2, 2, t, 6).reshape(b, 4, t, 6)
        v = v[:, :, None].expand(b, 2, 2, t, 6).reshape(b, 4, t, 6)
        scores = torch.matmul(q, k.transpose(2, 3))
        scores = scores * 6 ** -0.5 if self.scaling == "mul" else scores / math.sqrt(6)
        p = F.softmax(scores + self.causal, dim=-1, dtype=torch.float32).to(q.dtype)
        return self.o(torch.matmul(p, v).transpose(1, 2).contiguous().reshape(b, t, 24))


@pytest.mark.parametrize("scaling", ["mul", "div"])
def test_eager_attention_with_scaled_scores_fuses(tmp_path, scaling, monkeypatch):
    """The scores' scaling after the product and the additive mask are the fused step's, and the repeated
    key/value heads are read unrepeated: one step, on the kernel where it takes the sequence."""
    from edgevla.runtime import attention

    torch.manual_seed(7)
    x = RNG.normal(0, 1, (2, 6, 24)).astype(np.float32)
    running, calls, _ = _run_fused(EagerAttentionBlock(scaling).eval(), tmp_path / "eager.onnx", monkeypatch, x)
    assert ATTENTION_OP in running and not {"Softmax", "MatMul", "Expand", "Div"} & set(running), running
    assert bool(calls) == (attention.native_attention_max_tokens() >= 6)
    assert all(a[1].shape == (2, 6, 2, 6) and a[4] == (scaling == "div") and a[6] is not None for a in calls)


class StackedQKVBlock(nn.Module):
    """A fused qkv projection cut into heads as timm's ViT (``unbind``) and OpenVLA-style trunks (unpacking)
    write it: ``qkv.view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)``, then SDPA on the pieces. ``reuse``: v is
    also read by something other than the attention."""

    def __init__(self, cut: str, reuse: bool = False):
        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("x", (6, 24)),), action=TensorSpec("a", (6, 24)))
        self.qkv, self.o = nn.Linear(24, 72), nn.Linear(24, 24)
        self.cut, self.reuse = cut, reuse

    def forward(self, x):
        b, t, d = x.shape
        qkv = self.qkv(x).view(b, t, 3, HEADS, DIM).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0) if self.cut == "unbind" else (qkv[0], qkv[1], qkv[2]) if self.cut == "index" \
            else qkv
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        return self.o(a) + (v.transpose(1, 2).reshape(b, t, d) if self.reuse else 0)


@pytest.mark.parametrize("cut", ["unbind", "index", "unpack"])
@pytest.mark.parametrize("reuse", [False, True])
def test_stacked_qkv_pieces_are_views_of_the_projection(tmp_path, cut, reuse, monkeypatch):
    """No transposing copy of the stacked projection: q, k and v are strided views the attention reads in
    place; a piece something else reads too keeps its own steps (and the transpose stays for it)."""
    from edgevla.runtime import attention

    torch.manual_seed(8)
    x = RNG.normal(0, 1, (2, 6, 24)).astype(np.float32)
    running, calls, _ = _run_fused(StackedQKVBlock(cut, reuse).eval(), tmp_path / "qkv.onnx", monkeypatch, x)
    assert running.count(attention.HEADS_VIEW_OP) == (2 if reuse else 3), running
    assert running.count("Transpose") == (2 if reuse else 0), running  # v read elsewhere: its cut and its copy
    assert bool(calls) == (attention.native_attention_max_tokens() >= 6)
    assert all(not a[0].flags.c_contiguous and a[0].base is not None for a in calls)
