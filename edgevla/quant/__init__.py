"""Quantization: primitives, calibration, SmoothQuant, fake-quant layers, mixed precision and QAT.

>>> from edgevla.quant import quantize_policy, layer_sqnr, fallback_by_sqnr
>>> r = quantize_policy(policy, "w8a8", batches=calibration, method="percentile", float_dtype="fp16")
>>> raised = raise_by_sqnr(r.model, layer_sqnr(r.model, calibration), 30, calibration)  # sensitive layers
>>> r = quantize_policy(policy, "w8a8", batches=calibration, forms=raised.forms)     # up their ladder
>>> quantization_aware_training(r.model, policy, batches, steps=200, heldout=obs)    # optional QAT
"""

from __future__ import annotations

from .apply import (FLOAT_DTYPES, FORMATS, QuantizeResult, check_precision_supported, layer_group_size,
                    quantize_policy, round_float_storage, round_tables, storage_dtype, table_tensors)
from .calibrate import (
    METHODS,
    ActivationObserver,
    calibrate,
    calibration_observations,
    clip_value,
    iter_batches,
    load_observation_dir,
    observe_layer_inputs,
)
from .fakequant import (
    FakeQuantConv,
    FakeQuantLayer,
    FakeQuantLinear,
    Float8Linear,
    Float8StaticActivationFloat8WeightConfig,
    Int4WeightLinear,
    Int4WeightOnlyConfig,
    Int8ActivationInt8WeightConv,
    Int8ActivationInt8WeightLinear,
    Int8StaticActivationInt8WeightConfig,
    Int8WeightConv,
    Int8WeightLinear,
    Int8WeightOnlyConfig,
    PerLayerConfig,
    QuantConfig,
    float_mode,
    is_any_convolution,
    is_convolution,
    is_transposed_convolution,
    qat_mode,
    quantizable_layers,
    quantize_,
    quantized_layers,
    refresh_quantized,
    restore_quantized,
)
from .fold import FoldedNorm, fold_batch_norms
from .ladder import form_of, parse_form, rungs_above
from .mixed import (RaisedBySqnr, SuccessSearch, fallback_by_sqnr, fallback_by_success, layer_sqnr, model_sqnr,
                    raise_by_sqnr, wearing)
from .primitives import Int4GroupedWeight, Int8Weight, pack_int4, sqnr_db, unpack_int4
from .qat import QATReport, quantization_aware_training, settle, settled_copy, zeros_held
from .smoothquant import SmoothGroup, find_smooth_groups, smooth_quant

__all__ = [
    "FLOAT_DTYPES", "FORMATS", "METHODS", "ActivationObserver", "FakeQuantConv", "FakeQuantLayer", "FakeQuantLinear",
    "Float8Linear", "FoldedNorm", "Int8ActivationInt8WeightConv", "Int8WeightConv", "fold_batch_norms",
    "is_any_convolution", "is_convolution", "is_transposed_convolution", "quantizable_layers",
    "Float8StaticActivationFloat8WeightConfig", "Int4GroupedWeight", "Int4WeightLinear", "Int4WeightOnlyConfig",
    "Int8ActivationInt8WeightLinear", "Int8StaticActivationInt8WeightConfig", "Int8Weight", "Int8WeightLinear",
    "Int8WeightOnlyConfig", "PerLayerConfig", "QATReport", "QuantConfig", "QuantizeResult", "RaisedBySqnr",
    "SmoothGroup",
    "SuccessSearch", "calibrate", "calibration_observations", "check_precision_supported", "clip_value",
    "fallback_by_sqnr", "fallback_by_success", "find_smooth_groups", "float_mode", "form_of", "iter_batches",
    "layer_group_size", "layer_sqnr", "load_observation_dir", "model_sqnr", "observe_layer_inputs", "pack_int4",
    "parse_form", "qat_mode", "quantization_aware_training", "quantize_", "quantize_policy", "quantized_layers",
    "raise_by_sqnr", "rungs_above",
    "refresh_quantized", "restore_quantized", "round_float_storage", "round_tables", "settle", "settled_copy",
    "smooth_quant", "sqnr_db", "storage_dtype", "table_tensors", "unpack_int4", "wearing", "zeros_held",
]
