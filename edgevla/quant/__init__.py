"""Post-training quantization: primitives, calibration, SmoothQuant, fake-quant layers."""

from __future__ import annotations

from .apply import FORMATS, QuantizeResult, check_precision_supported, quantize_policy
from .calibrate import (
    METHODS,
    ActivationObserver,
    calibrate,
    calibration_observations,
    clip_value,
    iter_batches,
    load_observation_dir,
    observe_linear_inputs,
)
from .fakequant import (
    FakeQuantLinear,
    Float8Linear,
    Float8StaticActivationFloat8WeightConfig,
    Int4WeightLinear,
    Int4WeightOnlyConfig,
    Int8ActivationInt8WeightLinear,
    Int8StaticActivationInt8WeightConfig,
    Int8WeightLinear,
    Int8WeightOnlyConfig,
    QuantConfig,
    float_mode,
    quantize_,
    quantized_layers,
)
from .primitives import Int4GroupedWeight, Int8Weight, pack_int4, sqnr_db, unpack_int4
from .smoothquant import SmoothGroup, find_smooth_groups, smooth_quant

__all__ = [
    "FORMATS", "METHODS", "ActivationObserver", "FakeQuantLinear", "Float8Linear",
    "Float8StaticActivationFloat8WeightConfig", "Int4GroupedWeight", "Int4WeightLinear", "Int4WeightOnlyConfig",
    "Int8ActivationInt8WeightLinear", "Int8StaticActivationInt8WeightConfig", "Int8Weight", "Int8WeightLinear",
    "Int8WeightOnlyConfig", "QuantConfig", "QuantizeResult", "SmoothGroup", "calibrate", "calibration_observations",
    "check_precision_supported", "clip_value", "find_smooth_groups", "float_mode", "iter_batches",
    "load_observation_dir", "observe_linear_inputs", "pack_int4", "quantize_", "quantize_policy",
    "quantized_layers", "smooth_quant", "sqnr_db", "unpack_int4",
]
