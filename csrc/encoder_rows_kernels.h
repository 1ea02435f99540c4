// The conv encoders' float loops, one copy per kernel table: each
// arch/*/encoder_rows_<isa>.cpp, compiled with its ISA's flags, expands this
// macro once to define max_pool_f32_<isa> (max_pool_rows.h),
// group_norm_{sums,apply}_<isa> (group_norm_rows.h), gated_f32_<isa>
// (gated_rows.h: the gated MLPs' act(gate) * value) and rotary_f32_<isa>
// (rotary_rows.h: RoPE), declared in cpu_kernels.h.
#pragma once

#include "cpu_kernels.h"
#include "gated_rows.h"
#include "group_norm_rows.h"
#include "max_pool_rows.h"
#include "rotary_rows.h"

#define EDGEVLA_ENCODER_ROWS_KERNELS(isa)                                                                          \
    void max_pool_f32_##isa(const WindowGeometry& g, const float* x, float* y, int64_t begin, int64_t end) {       \
        max_pool_f32_rows(g, x, y, begin, end);                                                                    \
    }                                                                                                              \
    void group_norm_sums_##isa(const float* x, int64_t rows, int64_t c, const float* mean, double* sums) {         \
        group_norm_sums_rows(x, rows, c, mean, sums);                                                              \
    }                                                                                                              \
    void group_norm_apply_##isa(const float* x, float* y, int64_t rows, int64_t c, const float* mean,              \
                                const float* factor, const float* shift, GroupNormActivation act) {                \
        group_norm_apply_rows(x, y, rows, c, mean, factor, shift, act);                                            \
    }                                                                                                              \
    void gated_f32_##isa(const GatedF32Args& args, int64_t first, int64_t last) {                                  \
        gated_f32_rows(args, first, last);                                                                         \
    }                                                                                                              \
    void rotary_f32_##isa(const RotaryF32Args& args, int64_t first, int64_t last) {                                \
        rotary_f32_rows(args, first, last);                                                                        \
    }
