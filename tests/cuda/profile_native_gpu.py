"""On a GPU: batch-1 latency of the native backend's GPU path beside PyTorch on the same GPU.

Run by tests/cuda/run_device.sh; writes one JSON object to ``--json FILE``, rewritten after every row
(p50/p99 ms per backend, the plan's kernels, whether CUDA graphs were used, GPU memory), and prints it
at the end. Policies: the zoo's tiny-vla (float: the int8 path quantizes per token at run time), its
W8A8 fake-quant copy (static scales) and its W4A16 copy (the int4 kernels, float32 rows).
``native-graphs-tactics`` rows run each layer's kernel variant timed fastest on this GPU
(``--kernel-tactics``), checked against the untuned runner's actions: bit-identical for int8; for int4
each layer within 1e-5 (float32 sums in another order), the actions to 1e-3 after 39 layers. A
mismatch is recorded in its row (``agrees``), not raised, so the other rows survive it. The three
policies share one tactics file: its preflight verdicts are probed once.

Usage: python tests/cuda/profile_native_gpu.py [POLICY] [--json FILE]
"""

from __future__ import annotations

import copy
import gc
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


def fresh_gpu() -> None:
    """Frees what earlier runners left, so that a runner's memory peak is its own."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def native_rows(name: str, policy, obs, tactics_path: Path):
    """The native rows of one policy, one at a time: (row name, row)."""
    graphed = CudaNativeRunner(copy.deepcopy(policy))
    graphed.reset_peak_memory()
    yield f"native-graphs:{name}", {**latency(graphed, obs), "graph_error": graphed.graph_error,
                                    "gpu_memory_mb": graphed.memory_mb(),
                                    "kernels": sorted({c.kernel for c in graphed.plan()})}
    expected = graphed(obs)
    del graphed
    fresh_gpu()
    yield f"native-eager:{name}", latency(CudaNativeRunner(copy.deepcopy(policy), cuda_graphs=False), obs)
    fresh_gpu()
    tuned = CudaNativeRunner(copy.deepcopy(policy), tactics_path=tactics_path)
    row = {**latency(tuned, obs), "graph_error": tuned.graph_error}
    got = tuned(obs)
    tuned.close()  # saves the table: the next policy reads its preflight verdicts
    if name == "w4a16":
        agrees = bool(np.allclose(got, expected, rtol=1e-3, atol=1e-4))
    else:
        agrees = bool(np.array_equal(got, expected))  # int8 variants are bit-identical
    yield f"native-graphs-tactics:{name}", {**row, "agrees": agrees, "max_abs_diff": float(np.abs(got - expected).max()),
                                           "tactics": tuned.tactics_summary()["variants"]}


def main(argv: list[str]) -> int:
    json_path = None
    if "--json" in argv:
        at = argv.index("--json")
        json_path, argv = Path(argv[at + 1]), argv[:at] + argv[at + 2:]
    float_policy = load_policy(argv[0] if argv else "tiny-vla").policy.eval()
    obs = batch_of(heldout_observations(float_policy.spec, 8), 0, 1)
    result = {"device": torch.cuda.get_device_name(0), "batch": 1, "complete": False, "rows": {}}

    def save() -> None:
        if json_path is not None:
            json_path.write_text(json.dumps(result, indent=2) + "\n")

    with tempfile.TemporaryDirectory() as scratch:
        tactics_path = Path(scratch) / "tactics.json"  # shared: keys are per kernel and shape
        for name in ("float", "w8a8", "w4a16"):
            policy = float_policy if name == "float" else quantize_policy(float_policy, name, samples=64).model
            for row_name, row in native_rows(name, policy, obs, tactics_path):
                result["rows"][row_name] = row
                save()
            fresh_gpu()
    for name, dtype in (("torch-fp32-eager", torch.float32), ("torch-fp16-eager", torch.float16)):
        result["rows"][name] = latency(TorchRunner(copy.deepcopy(float_policy).to(dtype).cuda()), obs)
        save()
    result["complete"] = True
    save()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
