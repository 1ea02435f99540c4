"""ONNX Runtime's own static int8 model of a float bundle against the native runtime on the bundle's w8a8 build.

ONNX Runtime's best int8 path on a CPU is its QOperator format (``QLinearConv``, ``QLinearAdd``, ``QGemm``:
int8 in and out of every convolution), which ``edgevla bench e2e`` does not build. This quantizes the float
bundle's ``model.onnx`` with ``onnxruntime.quantization.quantize_static`` (per-channel int8 weights, uint8
activations, 64 calibration observations drawn uniformly from [-1, 1]), then times it, the float model on ONNX
Runtime and the native runtime on the w8a8 bundle in the same process, in alternating rounds, and reports the
median of the per-round ratios (the build machines are shared: rounds differ, ratios within a round hold).

    python benchmarks/cpu/ort_qoperator.py FLOAT_BUNDLE W8A8_BUNDLE [--rounds 7] [--runs 50] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from edgevla import native
from edgevla.runtime import NativeModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("float_bundle", type=Path)
    parser.add_argument("w8a8_bundle", type=Path)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    native.set_num_threads(args.threads)
    model = NativeModel(args.w8a8_bundle / "model.onnx")
    rng = np.random.default_rng(0)

    def observation() -> dict[str, np.ndarray]:
        return {v.name: rng.uniform(-1, 1, [d or 1 for d in v.shape]).astype(v.dtype) for v in model.inputs}

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = 64

        def get_next(self):
            if not self.left:
                return None
            self.left -= 1
            return observation()

    def session(path: Path) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    with tempfile.TemporaryDirectory() as tmp:
        quantized = Path(tmp) / "qoperator.onnx"
        quantize_static(str(args.float_bundle / "model.onnx"), str(quantized), Reader(),
                        quant_format=QuantFormat.QOperator, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
        ops: dict[str, int] = {}
        for node in onnx.load(str(quantized)).graph.node:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
        int8, float32 = session(quantized), session(args.float_bundle / "model.onnx")

    feeds = observation()
    reference = float32.run(None, feeds)[0]

    def sqnr(y: np.ndarray) -> float:
        return float(10 * np.log10((reference ** 2).sum() / ((y.reshape(reference.shape) - reference) ** 2).sum()))

    print(f"ONNX Runtime QOperator graph: {ops}")
    print(f"SQNR against ONNX Runtime float32: ONNX Runtime int8 {sqnr(int8.run(None, feeds)[0]):.1f} dB, "
          f"native w8a8 {sqnr(next(iter(model.run(feeds).values()))):.1f} dB")

    def timed(call) -> float:
        for _ in range(10):
            call()
        start = time.perf_counter()
        for _ in range(args.runs):
            call()
        return (time.perf_counter() - start) / args.runs * 1e3

    rounds = []
    for r in range(args.rounds):
        row = (timed(lambda: model.run(feeds)), timed(lambda: int8.run(None, feeds)),
               timed(lambda: float32.run(None, feeds)))
        rounds.append(row)
        print(f"round {r + 1}: native w8a8 {row[0]:.3f} ms, ONNX Runtime QOperator int8 {row[1]:.3f} ms, "
              f"ONNX Runtime float32 {row[2]:.3f} ms")
    t = np.array(rounds)
    result = {"native_w8a8_ms": float(np.median(t[:, 0])), "ort_qoperator_ms": float(np.median(t[:, 1])),
              "ort_fp32_ms": float(np.median(t[:, 2])),
              "ratio_ort_qoperator_over_native": float(np.median(t[:, 1] / t[:, 0])),
              "ratio_ort_fp32_over_native": float(np.median(t[:, 2] / t[:, 0])), "rounds_ms": t.tolist(),
              "ort_qoperator_ops": ops, "threads": args.threads, "runs": args.runs, "onnxruntime": ort.__version__,
              "isa": native.get_isa()}
    print(json.dumps({k: v for k, v in result.items() if k != "rounds_ms"}))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
