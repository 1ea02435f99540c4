// GroupNorm of float32 values in either layout, with a following activation,
// as the native runtime's edgevla.GroupNorm step runs it (nn.GroupNorm, which
// Diffusion Policy's ResNets and 1-d U-Nets use in place of BatchNorm).
//
// For each sample n and group g of cg = channels / groups channels, over the
// group's channels and every position p:
//   mean_g  = sum(x) / (positions * cg)                  (double sums)
//   var_g   = sum((x - float(mean_g))^2) / (positions * cg)   (double sums)
//   factor_c = float(scale[c] / sqrt(var_g + epsilon))    (in double, rounded once)
//   y        = act((x - float(mean_g)) * factor_c + shift[c])   (float32)
// Two passes, as a float32 GroupNorm must: E[x^2] - mean^2 lost three digits
// at a mean of 50 (tests/test_runtime_group_norm.py). scale and shift are the
// per-channel affine constants with InstanceNormalization's per-group ones
// folded in (runtime/group_norm.py). act: none, relu, or mish
// (y tanh(log1p(exp(y))), computed as y n / (n + 2) with n = e^y (e^y + 2):
// one exp per value, a polynomial every ISA vectorizes: group_norm_rows.h).
// Then the output stage, where given (the graph's next ops, run on each chunk
// while it is in cache):
//   y = y * film_scale[n][c]   (FiLM: a per sample and channel scale, as
//   y = y + film_shift[n][c]    Diffusion Policy's conditional blocks apply)
//   y = y + residual     (a skip connection, same shape and layout as y)
//   y = max(y, 0)        (relu_after: edgevla_relu_f32)
//   codes = clamp(round_half_even(y / codes_scale), -128, 127)   (quantize_s8)
// The sums are taken over fixed chunks (64 positions channels last, one
// channel channels first) added in order, so the result is the same whatever
// the thread count; the chunks are split over the thread pool. Arguments are
// trusted (the bindings validate).
#pragma once

#include <cstdint>

namespace edgevla {

enum class GroupNormActivation { none, relu, mish };

struct GroupNormF32Args {
    int64_t batch = 0, channels = 0, positions = 0, groups = 1;
    bool channels_last = false;  // x and y (batch, positions, channels), else (batch, channels, positions)
    const float* x = nullptr;
    float* y = nullptr;  // may be x itself
    const float* scale = nullptr;  // [channels]
    const float* shift = nullptr;  // [channels]
    float epsilon = 1e-5f;
    GroupNormActivation activation = GroupNormActivation::none;
    // [batch][channels], or [1][channels] for every sample (stride 0); or nullptr.
    const float* film_scale = nullptr;
    const float* film_shift = nullptr;
    int64_t film_scale_stride = 0, film_shift_stride = 0;  // floats from one sample's row to the next
    const float* residual = nullptr;  // x's shape and layout, overlapping neither y nor codes; or nullptr
    bool relu_after = false;
    int8_t* codes = nullptr;  // x's shape and layout, or nullptr
    float codes_scale = 1.0f;  // > 0
};

void group_norm_f32(const GroupNormF32Args& args);

}  // namespace edgevla
