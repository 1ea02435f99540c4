"""edgevla's native runtime: a bundle's ONNX model on edgevla's own CPU kernels.

``edgevla eval/profile --backend native`` run here. The model is loaded once
(:mod:`.graph`: read, order, fold constants), rewritten (:mod:`.fusion`: GELU
chains into one op, every constant-weight MatMul/Gemm with its bias,
activation and activation quantization into one linear layer, each
attention's transposes, products and softmax into one step,
:mod:`.attention`), and each linear layer is given a kernel by a small rule
table (:mod:`.linear`): W8A8 int8 GEMM, with the sparse, 2:4 and int4
kernels where this build has them, or NumPy float32; the packed weights are
kept together on huge pages (:mod:`.weights`). Everything else runs as
NumPy (:mod:`.ops`, the element-wise math in :mod:`.activations`, convolutions and
pooling in :mod:`.conv`, LSTM and GRU in :mod:`.recurrent`, Resize in :mod:`.resize`, scatters,
TopK and CumSum in :mod:`.indexing`), over
buffers planned once per input shape (:mod:`.executor`).

The runtime imports neither PyTorch nor ONNX Runtime.
"""

from __future__ import annotations

from . import conv, indexing, recurrent, resize  # noqa: F401  (register Conv, the pools, the norms, LSTM, GRU,
#                                                    scatters, TopK, CumSum, Resize)
from .linear import DEFAULT_PRECISION, PRECISIONS, RULES, LayerChoice
from .model import NativeModel, OpTime, format_plan
from .ops import supported_ops

__all__ = ["DEFAULT_PRECISION", "PRECISIONS", "RULES", "LayerChoice", "NativeModel", "OpTime", "format_plan",
           "supported_ops"]
