"""Peak memory measured in a fresh process, and weight bytes on paper."""

from __future__ import annotations

import textwrap

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgevla.errors import EdgevlaError
from edgevla.metrics.memory import MemoryStats, measure_peak_memory, model_weight_bytes
from edgevla.metrics.memory_probe import read_status_mib, reset_peak

WEIGHT_MIB = 32  # large enough to stand out of allocator noise, small enough to stay quick




@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    """y = x @ W with a 32 MiB random float32 W, plus a Constant bias."""
    rng = np.random.default_rng(0)
    k, n = 1024, WEIGHT_MIB * 1024 * 1024 // (1024 * 4)
    w = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "W")
    bias = helper.make_node("Constant", [], ["b"], value=numpy_helper.from_array(rng.standard_normal(n).astype(np.float32)))
    graph = helper.make_graph(
        [bias, helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path_factory.mktemp("onnx") / "matmul.onnx"
    onnx.save(model, str(path))
    return path, k, n


def _check_phases(stats: MemoryStats) -> None:
    assert 0 < stats.baseline_mb <= stats.after_load_mb <= stats.peak_mb
    # The weights are random, so every page holding them is resident after loading.
    assert stats.after_load_mb - stats.baseline_mb >= WEIGHT_MIB * 0.9
    assert stats.inference_mb == pytest.approx(stats.peak_mb - stats.after_load_mb)
    assert stats.model_mb == pytest.approx(stats.peak_mb - stats.baseline_mb)
    assert stats.hwm_reset == reset_peak()
    assert stats.load_peak_mb >= stats.after_load_mb
    assert MemoryStats.from_dict(stats.to_dict()) == stats


def test_onnx_model_memory_in_a_fresh_process(onnx_model):
    path, k, _ = onnx_model
    x = np.random.default_rng(1).standard_normal((1, k)).astype(np.float32)
    stats = measure_peak_memory("onnx", path, {"x": x}, runs=3, warmup=1, threads=1)
    _check_phases(stats)
    assert stats.runs == 3


def test_torch_policy_memory_in_a_fresh_process(tmp_path):
    (tmp_path / "memprobe_policy.py").write_text(textwrap.dedent(f"""
        import torch
        from edgevla.spec import PolicySpec, TensorSpec

        class Wide(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(1024, {WEIGHT_MIB} * 256)  # {WEIGHT_MIB} MiB of float32
                self.spec = PolicySpec(observations=(TensorSpec("state", (1024,)),),
                                       action=TensorSpec("action", ({WEIGHT_MIB} * 128, 2)))

            def forward(self, state):
                return self.fc(state).reshape(state.shape[0], -1, 2)

        def make():
            return Wide()
        """))
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, state=np.random.default_rng(2).standard_normal((1, 1024)).astype(np.float32))
    stats = measure_peak_memory("torch", "memprobe_policy:make", inputs, runs=2, warmup=1, threads=1,
                                pythonpath=[str(tmp_path)])
    _check_phases(stats)


def test_probe_errors_are_user_errors(onnx_model, tmp_path):
    path, k, _ = onnx_model
    with pytest.raises(EdgevlaError, match="lacks x"):
        measure_peak_memory("onnx", path, {"wrong": np.ones((1, k), np.float32)}, runs=1, warmup=0)
    with pytest.raises(EdgevlaError, match="does not exist"):
        measure_peak_memory("onnx", path, tmp_path / "missing.npz")
    with pytest.raises(EdgevlaError, match="kind"):
        measure_peak_memory("tflite", path, {"x": np.ones((1, k), np.float32)}, runs=1, warmup=0)


def test_status_counters_of_this_process():
    status = read_status_mib()
    assert status["VmHWM"] >= status["VmRSS"] > 0


def test_weight_bytes_of_an_onnx_file(onnx_model):
    path, k, n = onnx_model
    assert model_weight_bytes(path) == 4 * (k * n + n)  # initializer W and the Constant bias


def test_weight_bytes_of_a_torch_module():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Linear(8, 8).half())
    expected = 4 * (8 * 3 * 9 + 8) + 4 * (8 + 8 + 8 + 8) + 8 + 2 * (64 + 8)  # conv; bn incl. int64 counter; fp16 linear
    assert model_weight_bytes(model) == expected


def test_weight_bytes_of_something_else_is_a_user_error(tmp_path):
    with pytest.raises(EdgevlaError):
        model_weight_bytes(tmp_path / "model.onnx")
    with pytest.raises(EdgevlaError):
        model_weight_bytes(3)


def test_probe_imports_no_heavy_library_before_its_baseline(tmp_path):
    import subprocess
    import sys

    code = ("import sys, edgevla.metrics.memory_probe; "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path).stdout
    assert out.strip() == "[]", "importing the probe pulls in a runtime, inflating every memory baseline"


def test_package_exports_resolve_lazily():
    import edgevla.metrics as metrics

    for name in metrics.__all__:
        assert getattr(metrics, name).__name__ == name
    with pytest.raises(AttributeError):
        metrics.no_such_name  # noqa: B018


def test_onnx_session_entries_reach_the_probe(onnx_model):
    """The probe's session takes the entries it is given (those the onnxruntime backend sets): one that makes
    ONNX Runtime read the file as its own ORT format fails the load, and the failure comes back as one line."""
    path, k, _ = onnx_model
    x = {"x": np.ones((1, k), np.float32)}
    with pytest.raises(EdgevlaError, match="onnxruntime cannot load .*ORT model verification failed"):
        measure_peak_memory("onnx", path, x, runs=1, warmup=0, session_entries={"session.load_model_format": "ORT"})
    stats = measure_peak_memory("onnx", path, x, runs=1, warmup=0, session_entries={"session.disable_quant_qdq": "1"})
    assert stats.after_load_mb - stats.baseline_mb >= WEIGHT_MIB * 0.9
