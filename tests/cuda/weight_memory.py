"""Weights the GPU path's layers hold (packed, where the kernels read them) and the host copies kept only for
their CPU references, with and without ``keep_reference`` (edgevla/cuda_policy.py). Runs on a CPU: the layers
are built on the host, as ``swap_linears`` builds them before moving them.

Usage: python tests/cuda/weight_memory.py [tiny-vla|small-vla|base-vla]   (prints JSON)
"""
import copy
import json
import sys

from edgevla.cuda_policy import CudaLinear, swap_linears, weight_bytes
from edgevla.models.zoo import load_policy
from edgevla.prune import apply_masks, nm_masks, remove_masks
from edgevla.quant import quantize_policy

name = sys.argv[1] if len(sys.argv) > 1 else "tiny-vla"
base = load_policy(name).policy.eval()
pruned = copy.deepcopy(base)
apply_masks(pruned, nm_masks(pruned))
remove_masks(pruned)
cases = {"w8a8 2:4": (quantize_policy(pruned, "w8a8", samples=32).model, "int8"),
         "w4a16": (quantize_policy(base, "w4a16", samples=32, group_size=32).model, "int8"),
         "fp16 2:4": (pruned, "fp16")}
rows = {}
for case, (policy, precision) in cases.items():
    row = {}
    for keep in (True, False):
        p = copy.deepcopy(policy)
        swap_linears(p, precision=precision, device="cpu", keep_reference=keep)
        host = sum(m.host_bytes() for m in p.modules() if isinstance(m, CudaLinear))
        row["kept" if keep else "deployed"] = {"weights_mib": round(weight_bytes(p) / 2**20, 4),
                                               "host_copies_mib": round(host / 2**20, 4)}
    rows[case] = row
print(json.dumps({"policy": name, "rows": rows}, indent=1))
