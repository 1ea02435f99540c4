"""Quantized convolutions: int8 filters with one scale each, a static int8 input under W8A8, the Q/DQ Conv
that TensorRT and ONNX Runtime read, and the formats that leave convolutions float."""

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from edgevla.errors import EdgevlaError
from edgevla.export.lint import lint_qdq
from edgevla.export.qdq import export_quantized, reference_session
from edgevla.quant import (
    Int4WeightOnlyConfig,
    Int8ActivationInt8WeightConv,
    Int8StaticActivationInt8WeightConfig,
    Int8WeightConv,
    Int8WeightOnlyConfig,
    PerLayerConfig,
    calibrate,
    float_mode,
    qat_mode,
    quantizable_layers,
    quantize_,
    quantize_policy,
    restore_quantized,
    sqnr_db,
)
from edgevla.quant.calibrate import observe_layer_inputs

from user_policies import ConvPolicy


def _reference_codes(w: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-filter symmetric int8 by hand: scale = max|filter| / 127, codes rounded half to even."""
    a = w.detach().double().numpy()
    amax = np.abs(a.reshape(a.shape[0], -1)).max(axis=1)
    scale = np.where(amax > 0, amax / 127, 1.0).astype(np.float32)
    codes = np.clip(np.rint(a / scale.reshape(-1, *([1] * (a.ndim - 1)))), -128, 127).astype(np.int8)
    return codes, scale


@pytest.mark.parametrize("conv", [
    nn.Conv1d(5, 7, 3, stride=2, padding=1),
    nn.Conv2d(6, 9, (3, 2), dilation=(2, 1), groups=3, bias=False),
    nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
    nn.Conv2d(4, 6, 3, padding="same", padding_mode="circular"),
    nn.Conv3d(2, 3, (1, 3, 3), padding=(0, 1, 1)),
], ids=["1d-stride", "2d-groups-dilated", "2d-reflect", "2d-circular-same", "3d"])
def test_int8_conv_codes_and_forward(conv):
    torch.manual_seed(0)
    x = torch.randn(2, conv.in_channels, *([9] * len(conv.kernel_size)))
    q = Int8WeightConv(conv)
    codes, scale = _reference_codes(conv.weight)
    assert q.weight_qdata.dtype == torch.int8 and np.array_equal(q.weight_qdata.numpy(), codes)
    assert np.array_equal(q.weight_scale.numpy(), scale)
    with torch.no_grad():
        assert torch.equal(q.quantized_weight(), q.weight_qdata.float() * q.weight_scale.reshape(-1, *[1] * (x.ndim - 1)))
        with float_mode(q):
            assert torch.equal(q(x), conv(x))  # same op, same attributes: the float export is the float model's
        expected = conv._conv_forward(x, q.quantized_weight(), conv.bias)
        assert torch.equal(q(x), expected)
        assert sqnr_db(conv(x), q(x)) > 35

    a8 = Int8ActivationInt8WeightConv(conv, input_amax=2.5)
    s = a8.input_scale.item()
    assert s == pytest.approx(2.5 / 127)
    with torch.no_grad():
        xq = torch.clamp(torch.round(x / s), -128, 127) * s
        assert torch.equal(a8(x), conv._conv_forward(xq, a8.quantized_weight(), conv.bias))
    assert a8.format_name == "w8a8" and q.format_name == "w8a16"
    assert a8.shipped_bytes() == conv.weight.numel() + 4 * conv.out_channels + 4 + (
        0 if conv.bias is None else 4 * conv.out_channels)


@pytest.mark.parametrize("up", [
    nn.ConvTranspose1d(5, 7, 4, stride=2, padding=1),
    nn.ConvTranspose2d(6, 3, (3, 2), stride=(2, 1), padding=(1, 0), output_padding=(1, 0), bias=False),
    nn.ConvTranspose2d(4, 4, 3, dilation=2),
    nn.ConvTranspose3d(2, 3, 2, stride=2),
], ids=["1d-unet-up", "2d-output-padding", "2d-dilated", "3d"])
def test_int8_transposed_conv_codes_are_per_output_channel_on_axis_1(up):
    """A transposed convolution's weight is (in, out, *kernel): one scale per output channel along axis 1."""
    torch.manual_seed(0)
    x = torch.randn(2, up.in_channels, *([5] * len(up.kernel_size)))
    q = Int8WeightConv(up)
    codes, scale = _reference_codes(up.weight.transpose(0, 1))
    assert np.array_equal(q.weight_qdata.numpy(), codes.swapaxes(0, 1))
    assert np.array_equal(q.weight_scale.numpy(), scale) and q.weight_scale.shape == (up.out_channels,)
    with torch.no_grad():
        dequantized = q.weight_qdata.float() * q.weight_scale.reshape(1, -1, *[1] * (x.ndim - 2))
        assert torch.equal(q.quantized_weight(), dequantized)
        with float_mode(q):
            assert torch.equal(q(x), up(x))
        assert torch.equal(q(x), _with_weight(up, dequantized)(x))
        assert sqnr_db(up(x), q(x)) > 35
    a8 = Int8ActivationInt8WeightConv(up, input_amax=2.0)
    s = a8.input_scale.item()
    with torch.no_grad():
        xq = torch.clamp(torch.round(x / s), -128, 127) * s
        assert torch.equal(a8(x), _with_weight(up, dequantized)(xq))
        if up.stride[0] > 1:  # output_size picks the output padding at call time, as nn.ConvTranspose*d's does
            size = [o - e if e else o + (s > 1) for o, e, s in zip(up(x).shape[2:], up.output_padding, up.stride)]
            assert list(a8(x, output_size=size).shape[2:]) == size
            assert torch.equal(a8(x, output_size=size), _with_weight(up, dequantized)(xq, output_size=size))


def _with_weight(module: nn.Module, weight: torch.Tensor) -> nn.Module:
    """A copy of ``module`` computing with ``weight``."""
    import copy

    clone = copy.deepcopy(module)
    with torch.no_grad():
        clone.weight.copy_(weight)
    return clone


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.grouped = nn.ConvTranspose2d(4, 4, 1, groups=2)  # no one axis holds its output channels: float
        self.fc = nn.Linear(4 * 16 * 16, 32)  # for 10x10 images

    def forward(self, x):
        return self.fc(self.grouped(torch.relu(self.up(torch.relu(self.conv(x))))).flatten(1))


def test_which_configs_take_convolutions():
    assert list(quantizable_layers(Mixed())) == ["conv", "up", "fc"]
    m = Mixed()
    assert quantize_(m, Int8WeightOnlyConfig()) == {"conv": "w8a16", "up": "w8a16", "fc": "w8a16"}
    assert isinstance(m.conv, Int8WeightConv) and isinstance(m.up, Int8WeightConv)
    assert type(m.grouped) is nn.ConvTranspose2d
    m = Mixed()
    assert quantize_(m, Int4WeightOnlyConfig(group_size=32)) == {"conv": "float", "up": "float", "fc": "w4a16"}
    with pytest.raises(EdgevlaError, match="convolution conv: Int4WeightOnlyConfig is a Linear format"):
        quantize_(Mixed(), PerLayerConfig(layers={"conv": Int4WeightOnlyConfig(group_size=32)}))
    with pytest.raises(EdgevlaError, match="no calibrated activation range for conv"):
        quantize_(Mixed(), Int8StaticActivationInt8WeightConfig(activation_amax={"fc": 1.0}))


def test_calibration_observes_convolution_inputs_per_channel():
    torch.manual_seed(0)
    m = Mixed().eval()
    x = torch.randn(4, 3, 10, 10) * torch.tensor([1.0, 5.0, 0.5]).reshape(1, 3, 1, 1)
    obs = observe_layer_inputs(m, [(x,)], ["conv"])["conv"]
    assert obs.amax == pytest.approx(x.abs().max().item())
    assert torch.allclose(obs.channel_amax, x.abs().amax(dim=(0, 2, 3)))  # axis 1, not the image's width
    assert calibrate(m, [(x,)], layers=["conv"]) == {"conv": pytest.approx(x.abs().max().item())}


def _calibration(policy, n=32, seed=1):
    obs = policy.spec.example(n, seed=seed)
    return [tuple(torch.from_numpy(obs[k][i:i + 16]) for k in policy.spec.input_names) for i in range(0, n, 16)]


@pytest.mark.parametrize("fmt, conv_format, min_sqnr", [("w8a8", "w8a8", 33), ("w8a16", "w8a16", 38),
                                                        ("w4a16", "w8a16", 20), ("fp8", "float", 20)])
def test_policy_formats_and_the_qdq_conv(tmp_path, fmt, conv_format, min_sqnr):
    """BatchNorm folded, every convolution in its format; the Q/DQ file holds the layers' own codes on Conv,
    passes the TensorRT lint, and ONNX Runtime running it literally matches the fake-quant model."""
    torch.manual_seed(0)
    policy = ConvPolicy().eval()
    r = quantize_policy(policy, fmt, batches=_calibration(policy), float_dtype="fp16")
    assert {n: r.formats[n] for n in ("stem.0", "block.0", "block.3")} == dict.fromkeys(
        ("stem.0", "block.0", "block.3"), conv_format)
    obs = policy.spec.example(24, seed=5)
    args = [torch.from_numpy(obs[k]) for k in policy.spec.input_names]
    with torch.no_grad():
        reference, quantized = policy(*args), r.model(*args)
    assert sqnr_db(reference, quantized) > min_sqnr
    if fmt == "fp8":
        assert r.folded_norms == [] and r.notes == ["fp8 is a Linear format: the convolutions stay float"]
    else:
        assert r.folded_norms == ["stem.1 -> stem.0"] and isinstance(r.model.stem[1], nn.Identity)

    path = export_quantized(r.model, tmp_path / f"{fmt}.onnx", float_dtype="fp16")
    assert lint_qdq(path) == []
    proto = onnx.load(str(path))
    inits = {i.name: i for i in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert len(convs) == 3
    for node in convs:
        w = producer.get(node.input[1])
        if conv_format == "float":
            assert w is None or w.op_type != "DequantizeLinear"
            continue
        assert w.op_type == "DequantizeLinear" and next(a.i for a in w.attribute if a.name == "axis") == 0
        name = w.input[0].removesuffix(".weight_quantized")
        layer = r.model.get_submodule(name)
        assert np.array_equal(numpy_helper.to_array(inits[w.input[0]]), layer.weight_qdata.numpy())
        assert np.array_equal(numpy_helper.to_array(inits[w.input[1]]), layer.weight_scale.numpy())
        act = producer.get(node.input[0])
        assert (act is not None and act.op_type == "DequantizeLinear") == (fmt == "w8a8")
    exported = reference_session(path).run(None, obs)[0]
    assert np.abs(exported - quantized.numpy()).max() <= 1e-5 * max(1.0, float(np.abs(exported).max()))


def test_restore_and_qat_reach_convolutions():
    torch.manual_seed(0)
    policy = ConvPolicy().eval()
    r = quantize_policy(policy, "w8a8", batches=_calibration(policy))
    fresh = ConvPolicy().eval()
    fresh.stem[1] = nn.Identity()  # the build's architecture: its BatchNorm folded
    formats = restore_quantized(fresh, r.model.state_dict())
    assert formats["stem.0"] == "w8a8" and formats["block.3"] == "w8a8" and formats["head.2"] == "w8a8"
    fresh.load_state_dict(r.model.state_dict())
    args = _calibration(policy, 16, seed=3)[0]
    with torch.no_grad():
        assert torch.equal(fresh(*args), r.model(*args))

    model = r.model.train()
    with qat_mode(model):
        F.mse_loss(model(*args), policy(*args).detach() + 0.1).backward()
    assert model.stem[0].weight.grad is not None and model.stem[0].weight.grad.abs().sum() > 0  # straight through


def test_onnxruntime_runs_qdq_convolutions_on_weights_dequantized_once(tmp_path):
    """ONNX Runtime fuses no Q/DQ Conv whose output is float (TensorRT's form), and would dequantize each filter
    bank on every call: the runner folds those DequantizeLinear nodes at load. Same values, same outputs."""
    import onnxruntime as ort

    from edgevla.backends import OnnxRuntimeRunner
    from edgevla.export.qdq import ORT_DISABLED_OPTIMIZERS, dequantize_conv_weights

    torch.manual_seed(0)
    policy = ConvPolicy().eval()
    r = quantize_policy(policy, "w8a8", batches=_calibration(policy))
    path = export_quantized(r.model, tmp_path / "w8a8.onnx")
    proto = onnx.load(str(path))
    before = sum(n.op_type == "DequantizeLinear" for n in proto.graph.node)
    folded = dequantize_conv_weights(proto)
    assert sorted(folded) == [f"{c}.weight_DequantizeLinear" for c in ("block.0", "block.3", "stem.0")]
    assert sum(n.op_type == "DequantizeLinear" for n in proto.graph.node) == before - 3  # Linears keep theirs
    inits = {i.name for i in proto.graph.initializer}
    assert not any(name.endswith(".weight_quantized") and name.startswith(("stem", "block")) for name in inits)
    obs = policy.spec.example(6, seed=4)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    literal = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"],
                                   disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS))
    assert np.array_equal(literal.run(None, obs)[0], reference_session(path).run(None, obs)[0])
    runner = OnnxRuntimeRunner(path, policy.spec, threads=1)
    assert np.abs(runner(obs) - reference_session(path).run(None, obs)[0]).max() < 1e-2


def test_a_convolution_called_twice_exports_one_dequantized_weight(tmp_path):
    """A denoiser unrolled over steps calls the same Conv twice: both Conv nodes read one int8 weight."""
    from test_runtime_layout import Temporal

    torch.manual_seed(0)
    policy = Temporal().eval()
    r = quantize_policy(policy, "w8a8", batches=_calibration(policy))
    assert r.formats["b"] == "w8a8" and r.formats["down"] == "w8a8" and r.formats["up"] == "w8a8"
    path = export_quantized(r.model, tmp_path / "t.onnx")
    assert lint_qdq(path) == []
    proto = onnx.load(str(path))
    readers = [n for n in proto.graph.node if "b.weight_DequantizeLinear" in n.input]
    assert [n.op_type for n in readers] == ["Conv", "Conv"]
    # the transposed convolution: int8 (in, out, k) codes, scales per output channel along axis 1
    (up_dq,) = [n for n in proto.graph.node if n.output[0] == "up.weight_DequantizeLinear"]
    assert next(a.i for a in up_dq.attribute if a.name == "axis") == 1
    assert [n.op_type for n in proto.graph.node if "up.weight_DequantizeLinear" in n.input] == ["ConvTranspose"]
    obs = policy.spec.example(4, seed=3)
    with torch.no_grad():
        expected = r.model(*[torch.from_numpy(obs[k]) for k in policy.spec.input_names]).numpy()
    exported = reference_session(path).run(None, obs)[0]
    assert np.abs(exported - expected).max() <= 1e-5 * max(1.0, float(np.abs(expected).max()))
    # saved and restored (a bundle's weights), and trained through (QAT), like any quantized convolution
    fresh = Temporal().eval()
    assert restore_quantized(fresh, r.model.state_dict())["up"] == "w8a8"
    fresh.load_state_dict(r.model.state_dict())
    args = [torch.from_numpy(obs[k]) for k in policy.spec.input_names]
    with torch.no_grad():
        assert torch.equal(fresh(*args), r.model(*args))
    model = r.model.train()
    with qat_mode(model):
        model(*args).square().mean().backward()
    assert model.up.weight.grad is not None and model.up.weight.grad.abs().sum() > 0


class Video(nn.Module):
    """Conv3d + BatchNorm3d over a short clip, a reflect-padded Conv2d called twice on one input, a depthwise Conv2d and a
    circular-padded Conv1d (both padding modes export a Pad node before the Conv)."""

    def __init__(self):
        from edgevla.spec import PolicySpec, TensorSpec

        super().__init__()
        self.spec = PolicySpec(observations=(TensorSpec("video", (3, 4, 16, 16), low=0, high=1),),
                               action=TensorSpec("a", (4, 6)))
        self.c3 = nn.Conv3d(3, 8, (2, 3, 3), padding=(0, 1, 1))
        self.bn3 = nn.BatchNorm3d(8)
        self.reflect = nn.Conv2d(8, 16, 3, padding=1, padding_mode="reflect")
        self.circular = nn.Conv1d(16, 16, 3, padding=1, padding_mode="circular")
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.head = nn.Linear(16, 24)
        with torch.no_grad():
            self.bn3.running_mean.uniform_(-0.2, 0.2)
            self.bn3.running_var.uniform_(0.5, 2.0)

    def forward(self, video):
        x = torch.relu(self.bn3(self.c3(video))).mean(2)
        x = torch.relu(self.reflect(x)) + self.depthwise(torch.relu(self.reflect(x)))
        return self.head(self.circular(x.flatten(2)).mean(-1)).reshape(-1, 4, 6)


def test_video_encoder_quantizes_exports_and_runs_natively(tmp_path):
    from edgevla.runtime import NativeModel

    torch.manual_seed(0)
    policy = Video().eval()
    r = quantize_policy(policy, "w8a8", batches=_calibration(policy))
    assert set(r.formats.values()) == {"w8a8"} and r.folded_norms == ["bn3 -> c3"]
    path = export_quantized(r.model, tmp_path / "video.onnx")
    assert lint_qdq(path) == [] and "Pad" in {n.op_type for n in onnx.load(str(path)).graph.node}
    obs = policy.spec.example(4, seed=5)
    args = [torch.from_numpy(obs[k]) for k in policy.spec.input_names]
    with torch.no_grad():
        assert sqnr_db(policy(*args), r.model(*args)) > 35
        expected = r.model(*args).numpy()
    exported = reference_session(path).run(None, obs)[0]
    assert np.abs(exported - expected).max() <= 1e-5 * max(1.0, float(np.abs(expected).max()))
    model = NativeModel(path)
    assert [(c.layer, c.mode) for c in model.plan()] == [
        ("c3", "int8-static"), ("reflect", "int8-static"), ("circular", "int8-static"),
        ("head", "int8-static")]  # the depthwise one runs in NumPy on its dequantized filters; the export
    # computes relu(reflect(x)), called twice on the same x, once
    assert np.abs(model.run(obs)["a"] - exported).max() < 1e-5
