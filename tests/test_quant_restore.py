"""A saved fake-quant model loads back: restore_quantized reads each layer's format off its tensors,
and the torch backend runs a quantized bundle as the fake-quant model it was built from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgevla.errors import EdgevlaError
from edgevla.quant import quantize_policy, restore_quantized

from user_policies import SmallPolicy

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.mark.parametrize("fmt", ["w8a8", "w8a16", "w4a16", "fp8"])
def test_a_saved_quantized_model_loads_back_and_computes_the_same(fmt):
    torch.manual_seed(3)
    float_policy = SmallPolicy().eval()
    result = quantize_policy(float_policy, fmt, batches=[(torch.rand(32, 6, 32) * 2 - 1,)], group_size=32,
                             skip=["head"])  # one layer left float: it must stay a plain Linear
    saved = {k: v.clone() for k, v in result.model.state_dict().items()}
    fresh = SmallPolicy().eval()  # other random weights: everything must come from the saved state
    formats = restore_quantized(fresh, saved)
    assert formats == {"fc1": fmt, "fc2": fmt}
    assert type(fresh.head) is torch.nn.Linear
    fresh.load_state_dict(saved, strict=True)
    x = torch.rand(5, 6, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(fresh(x), result.model(x))


def test_inconsistent_saved_layers_are_one_line_errors():
    policy = SmallPolicy().eval()
    saved = quantize_policy(policy, "w4a16", batches=[(torch.rand(8, 6, 32),)], group_size=32).model.state_dict()
    broken = dict(saved, **{"fc1.weight_scale": torch.ones(64, 3)})  # 3 groups cannot divide 32 inputs
    with pytest.raises(EdgevlaError, match="fc1: 3 int4 scale groups do not divide 32 inputs"):
        restore_quantized(SmallPolicy(), broken)
    missing = {k: v for k, v in saved.items() if k != "fc2.weight_scale"}
    with pytest.raises(EdgevlaError, match="fc2: the saved quantized layer lacks"):
        restore_quantized(SmallPolicy(), missing)


def test_torch_backend_runs_a_w8a8_bundle_as_its_fake_quant_model(tmp_path_factory, fast):
    from edgevla.bundle import load_bundle
    from edgevla.deploy import bundle_runner
    from edgevla.pipeline import BuildRequest, build, heldout_observations

    out = tmp_path_factory.mktemp("quantized") / "tiny-w8a8"
    build(BuildRequest(target="jetson-orin", output=str(out), overrides={**fast, "quantize.format": "w8a8"}))
    bundle = load_bundle(out)
    obs = heldout_observations(bundle.spec, 16)
    with bundle_runner(bundle, "torch", threads=1) as torch_runner, \
            bundle_runner(bundle, "onnxruntime", threads=1) as ort_runner:
        a, b = torch_runner(obs), ort_runner(obs)
    # The same quantized model in two runtimes: rounding ties in activation quantization differ, nothing more.
    assert np.abs(a - b).max() < 0.05 and np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.999
