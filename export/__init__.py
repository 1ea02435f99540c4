"""Export a policy to ONNX and prove the exported graph matches PyTorch."""

from __future__ import annotations

from .onnx_export import InitializerRef, export_onnx, initializer_map, match_initializers
from .verify import VerifyResult, compare, verify_onnx

__all__ = ["InitializerRef", "VerifyResult", "compare", "export_onnx", "initializer_map",
           "match_initializers", "verify_onnx"]
