"""Measure a model's memory in a process of its own: ``python -m edgevla.metrics.memory_probe``.

Peak resident memory is a property of a whole process, so the only honest
figure comes from a fresh one that does nothing but load and run the model.
The probe reads the kernel's own counters in ``/proc/self/status``:

1. import the runtime (onnxruntime or torch) and read the inputs, then read
   ``VmRSS``: the *baseline* (interpreter and libraries, no model);
2. load the model and run the warm-up calls (arenas and caches grow here),
   read ``VmRSS`` again: *after load*; ``VmHWM`` so far is the *load peak*;
3. reset ``VmHWM`` to the current RSS (``echo 5 > /proc/self/clear_refs``)
   so the next reading reflects the inference phase alone, run the timed
   calls, read ``VmHWM``: the *peak*.

If the kernel refuses the reset, ``hwm_reset`` is false and the peak also
covers loading. Sizes are MiB (2^20 bytes). The result is one JSON object on
the last line of stdout; on failure ``{"error": "..."}`` and exit status 2.
Anything the model prints goes to stderr so stdout stays parseable.

Model kinds: ``onnx`` (a .onnx path, run on onnxruntime's CPU execution
provider) and ``torch`` (a policy reference for
:func:`edgevla.models.zoo.load_policy`: zoo name, checkpoint or
``module:factory``). Inputs: an .npz whose arrays are named like the model's
inputs; a torch policy gets them positionally in ``spec.observations`` order.

This module imports nothing heavy at module level, so the baseline holds
only the runtime being measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Mapping
from typing import Any, Callable

KIND_CHOICES = ("onnx", "torch")


class ProbeError(Exception):
    """A user-facing failure inside the probe, reported as JSON."""


def read_status_mib() -> dict[str, float]:
    """VmRSS and VmHWM of this process in MiB."""
    values: dict[str, float] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024.0  # the kernel reports kB
    if len(values) != 2:
        raise ProbeError("/proc/self/status has no VmRSS/VmHWM: memory can only be probed on Linux")
    return values


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _load_inputs(path: str) -> dict[str, Any]:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise ProbeError(f"cannot read inputs {path!r}: {e}") from None


def _onnx_runner(model: str, inputs: dict[str, Any], threads: int | None,
                 entries: Mapping[str, str]) -> Callable[[], Any]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    for key, value in entries.items():
        opts.add_session_config_entry(key, value)
    try:
        session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise ProbeError(f"onnxruntime cannot load {model!r}: {' '.join(str(e).split())}") from None
    names = [i.name for i in session.get_inputs()]
    missing = [n for n in names if n not in inputs]
    if missing:
        raise ProbeError(f"inputs file lacks {', '.join(missing)}; the model takes {', '.join(names)}")
    feed = {n: inputs[n] for n in names}
    return lambda: session.run(None, feed)


def _torch_runner(ref: str, inputs: dict[str, Any], threads: int | None) -> Callable[[], Any]:
    import torch

    from edgevla.models.zoo import load_policy
    from edgevla.spec import spec_of

    if threads:
        torch.set_num_threads(threads)
    policy = load_policy(ref).policy.eval()
    args = tuple(torch.from_numpy(a) for a in spec_of(policy).cast(inputs).values())

    def run() -> Any:
        with torch.inference_mode():
            return policy(*args)

    return run


def probe(kind: str, model: str, inputs_path: str, runs: int, warmup: int,
          threads: int | None = None, entries: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run the three measurement phases; figures in MiB."""
    if kind not in KIND_CHOICES:
        raise ProbeError(f"model kind {kind!r} is not one of {', '.join(KIND_CHOICES)}")
    if runs < 1 or warmup < 0:
        raise ProbeError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    if kind == "onnx":
        import onnxruntime  # noqa: F401  (part of the baseline)
    else:
        import torch  # noqa: F401
    inputs = _load_inputs(inputs_path)
    baseline = read_status_mib()["VmRSS"]

    run = (_onnx_runner(model, inputs, threads, entries or {}) if kind == "onnx"
           else _torch_runner(model, inputs, threads))
    for _ in range(warmup):
        run()
    status = read_status_mib()
    after_load, load_peak = status["VmRSS"], status["VmHWM"]

    hwm_reset = reset_peak()
    for _ in range(runs):
        run()
    status = read_status_mib()
    peak = max(status["VmHWM"], status["VmRSS"])
    return {"kind": kind, "runs": runs, "baseline_mb": baseline, "after_load_mb": after_load,
            "peak_mb": peak, "inference_mb": max(peak - after_load, 0.0),
            "load_peak_mb": load_peak, "hwm_reset": hwm_reset}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgevla.metrics.memory_probe", description=__doc__.splitlines()[0])
    parser.add_argument("--kind", required=True, choices=KIND_CHOICES)
    parser.add_argument("--model", required=True, help=".onnx path (onnx) or policy reference (torch)")
    parser.add_argument("--inputs", required=True, help=".npz of input arrays named like the model's inputs")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--session-entry", action="append", default=[], metavar="KEY=VALUE",
                        help="an ONNX Runtime session config entry (repeatable)")
    args = parser.parse_args(argv)

    stdout = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            entries = dict(e.split("=", 1) for e in args.session_entry if "=" in e)
            result = probe(args.kind, args.model, args.inputs, args.runs, args.warmup, args.threads, entries)
    except Exception as e:  # every failure becomes one JSON line the caller can report
        from edgevla.errors import EdgevlaError

        message = str(e) if isinstance(e, (ProbeError, EdgevlaError)) else f"{type(e).__name__}: {e}"
        print(json.dumps({"error": " ".join(message.split())}), file=stdout)
        return 2
    print(json.dumps(result), file=stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
