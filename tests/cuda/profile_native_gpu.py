"""On a GPU: batch-1 latency of the native backend's GPU path beside PyTorch on the same GPU.

Run by tests/cuda/run_device.sh; prints one JSON object (p50/p99 ms per backend,
the plan's kernels, whether CUDA graphs were used). Policies: the zoo's
tiny-vla (float: the int8 path quantizes per token at run time), its W8A8
fake-quant copy (static scales) and its W4A16 copy (the int4 kernels, float32
rows). ``native-graphs-tactics`` rows run each layer's kernel variant timed
fastest on this GPU (``--kernel-tactics``): bit-identical for int8; for int4
each layer within 1e-5 (float32 sums in another order), the actions checked
to 1e-3 after 39 layers.
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from edgevla.backends import CudaNativeRunner, TorchRunner
from edgevla.metrics.latency import measure_latency
from edgevla.models.zoo import load_policy
from edgevla.pipeline import batch_of, heldout_observations
from edgevla.quant import quantize_policy


def latency(runner, obs) -> dict:
    stats = measure_latency(lambda: runner(obs), warmup=20, runs=200)
    return {"p50_ms": round(stats.p50_ms, 4), "p99_ms": round(stats.p99_ms, 4)}


def main() -> int:
    float_policy = load_policy(sys.argv[1] if len(sys.argv) > 1 else "tiny-vla").policy.eval()
    policies = {"float": float_policy, "w8a8": quantize_policy(float_policy, "w8a8", samples=64).model,
                "w4a16": quantize_policy(float_policy, "w4a16", samples=64).model}
    obs = batch_of(heldout_observations(float_policy.spec, 8), 0, 1)
    result = {"device": torch.cuda.get_device_name(0), "batch": 1, "rows": {}}
    for name, policy in policies.items():
        graphed = CudaNativeRunner(copy.deepcopy(policy))
        eager = CudaNativeRunner(copy.deepcopy(policy), cuda_graphs=False)
        graphed.reset_peak_memory()
        result["rows"][f"native-graphs:{name}"] = {**latency(graphed, obs), "graph_error": graphed.graph_error,
                                                   "gpu_memory_mb": graphed.memory_mb()}
        result["rows"][f"native-eager:{name}"] = latency(eager, obs)
        result["rows"][f"kernels:{name}"] = sorted({c.kernel for c in graphed.plan()})
        with tempfile.TemporaryDirectory() as scratch:  # kernel variants timed on this GPU (cuda_tactics.py)
            tuned = CudaNativeRunner(copy.deepcopy(policy), tactics_path=Path(scratch) / "tactics.json")
            row = {**latency(tuned, obs), "graph_error": tuned.graph_error}
            if name == "w4a16":
                np.testing.assert_allclose(tuned(obs), graphed(obs), rtol=1e-3, atol=1e-4)
            else:
                np.testing.assert_array_equal(tuned(obs), graphed(obs))  # int8 variants are bit-identical
            result["rows"][f"native-graphs-tactics:{name}"] = {**row, "tactics": tuned.tactics_summary()["variants"]}
    result["rows"]["torch-fp32-eager"] = latency(TorchRunner(copy.deepcopy(float_policy).cuda()), obs)
    result["rows"]["torch-fp16-eager"] = latency(TorchRunner(copy.deepcopy(float_policy).half().cuda()), obs)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
