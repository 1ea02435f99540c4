// Scalar reference int8 GEMM. See gemm_s8s8.h for the contract.
#include "gemm_ref.h"

#include "epilogue_math.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>
#include <vector>

namespace {

// Exact: with K <= EDGEVLA_GEMM_S8S8_MAX_K no partial sum leaves int32.
int32_t dot_s8s8_s32(const int8_t* a, const int8_t* w, int64_t k) {
    int32_t acc = 0;
    for (int64_t i = 0; i < k; ++i) acc += int32_t{a[i]} * int32_t{w[i]};
    return acc;
}

}  // namespace

// Fails to compile if the reference drifts from the kernel table's signatures.
[[maybe_unused]] constexpr edgevla_gemm_s8s8_s32_fn kReferenceS32 = &edgevla_gemm_s8s8_s32_ref;
[[maybe_unused]] constexpr edgevla_gemm_s8s8_f32_fn kReferenceF32 = &edgevla_gemm_s8s8_f32_ref;

extern "C" void edgevla_gemm_s8s8_s32_ref(int64_t m, int64_t n, int64_t k,
                                          const int8_t* a, int64_t lda,
                                          const int8_t* w, int64_t ldw,
                                          int32_t* c, int64_t ldc) {
    for (int64_t row = 0; row < m; ++row) {
        for (int64_t col = 0; col < n; ++col) {
            c[row * ldc + col] = dot_s8s8_s32(a + row * lda, w + col * ldw, k);
        }
    }
}

extern "C" void edgevla_gemm_s8s8_f32_ref(int64_t m, int64_t n, int64_t k,
                                          const int8_t* a, int64_t lda,
                                          const int8_t* w, int64_t ldw,
                                          const edgevla_gemm_epilogue_f32* epilogue,
                                          float* c, int64_t ldc) {
    const bool per_token = epilogue->a_scale_mode == EDGEVLA_ACT_SCALE_PER_TOKEN;
    for (int64_t row = 0; row < m; ++row) {
        const float a_scale = epilogue->a_scale[per_token ? row : 0];
        for (int64_t col = 0; col < n; ++col) {
            const int32_t acc = dot_s8s8_s32(a + row * lda, w + col * ldw, k);
            float value = edgevla_dequant_s8_f32(acc, a_scale, epilogue->w_scale[col]);
            if (epilogue->bias != nullptr) value += epilogue->bias[col];
            value = edgevla_activate_f32(epilogue->activation, value);
            if (epilogue->residual != nullptr) value = value + epilogue->residual[row * epilogue->ld_residual + col];
            c[row * ldc + col] = value;
        }
    }
}

extern "C" void edgevla_gemm_f32_ref(int64_t m, int64_t n, int64_t k,
                                     const float* x, int64_t ldx,
                                     const float* w, int64_t ldw,
                                     const float* bias, edgevla_activation activation,
                                     float* c, int64_t ldc) {
    for (int64_t row = 0; row < m; ++row) {
        for (int64_t col = 0; col < n; ++col) {
            double acc = 0.0;
            for (int64_t i = 0; i < k; ++i) acc += static_cast<double>(x[row * ldx + i]) * w[col * ldw + i];
            float value = static_cast<float>(acc);
            if (bias != nullptr) value += bias[col];
            c[row * ldc + col] = edgevla_activate_f32(activation, value);
        }
    }
}

extern "C" void edgevla_gemm_w4_f32_ref(int64_t m, int64_t n, int64_t k, int64_t group,
                                        const float* x, int64_t ldx,
                                        const uint8_t* qdata, int64_t ldq,
                                        const float* scale, int64_t lds,
                                        const float* bias, edgevla_activation activation,
                                        float* c, int64_t ldc) {
    for (int64_t row = 0; row < m; ++row) {
        for (int64_t col = 0; col < n; ++col) {
            double acc = 0.0;
            for (int64_t i = 0; i < k; ++i) {
                const int nibble = (qdata[col * ldq + i / 2] >> (4 * (i % 2))) & 0xF;
                const int code = nibble < 8 ? nibble : nibble - 16;
                const double weight = static_cast<double>(code) * scale[col * lds + i / group];
                acc += weight * x[row * ldx + i];
            }
            float value = static_cast<float>(acc);
            if (bias != nullptr) value += bias[col];
            c[row * ldc + col] = edgevla_activate_f32(activation, value);
        }
    }
}

extern "C" void edgevla_gemm_w4a8_f32_ref(int64_t m, int64_t n, int64_t k, int64_t group,
                                          const float* x, int64_t ldx,
                                          const uint8_t* qdata, int64_t ldq,
                                          const float* scale, int64_t lds,
                                          const float* bias, edgevla_activation activation,
                                          float* c, int64_t ldc) {
    const int64_t groups = (k + group - 1) / group;
    std::vector<int8_t> qx(static_cast<size_t>(k));
    std::vector<float> xs(static_cast<size_t>(groups));
    for (int64_t row = 0; row < m; ++row) {
        // The row's groups, each quantized on its own.
        for (int64_t g = 0; g < groups; ++g) {
            const int64_t begin = g * group, length = k - begin < group ? k - begin : group;
            int8_t* q = qx.data() + begin;
            if (!edgevla_quantize_row_ref(length, x + row * ldx + begin, q, &xs[static_cast<size_t>(g)])) {
                xs[static_cast<size_t>(g)] = std::numeric_limits<float>::quiet_NaN();
                std::fill(q, q + length, int8_t{0});
            }
        }
        for (int64_t col = 0; col < n; ++col) {
            float acc = 0.0f;
            for (int64_t g = 0; g < groups; ++g) {
                int32_t dot = 0;
                for (int64_t i = g * group; i < k && i < (g + 1) * group; ++i) {
                    const int nibble = (qdata[col * ldq + i / 2] >> (4 * (i % 2))) & 0xF;
                    dot += (nibble < 8 ? nibble : nibble - 16) * int32_t{qx[static_cast<size_t>(i)]};
                }
                acc = acc + static_cast<float>(dot) * (xs[static_cast<size_t>(g)] * scale[col * lds + g]);
            }
            float value = acc;
            if (bias != nullptr) value += bias[col];
            c[row * ldc + col] = edgevla_activate_f32(activation, value);
        }
    }
}

extern "C" int edgevla_quantize_row_ref(int64_t k, const float* x, int8_t* q, float* scale) {
    float amax = 0.0f;
    for (int64_t i = 0; i < k; ++i) {
        const float magnitude = std::fabs(x[i]);
        if (!(magnitude <= FLT_MAX)) return 0;  // NaN or infinity
        amax = edgevla_max_f32(magnitude, amax);
    }
    const float inv = amax >= EDGEVLA_QUANT_MIN_AMAX ? EDGEVLA_QUANT_QMAX / amax : 0.0f;
    for (int64_t i = 0; i < k; ++i) {
        float v = std::nearbyint(x[i] * inv);
        v = edgevla_min_f32(edgevla_max_f32(v, -EDGEVLA_QUANT_QMAX), EDGEVLA_QUANT_QMAX);
        q[i] = static_cast<int8_t>(v);
    }
    *scale = amax / EDGEVLA_QUANT_QMAX;
    return 1;
}

extern "C" int64_t edgevla_quantize_per_token_ref(int64_t m, int64_t k, const float* x, int64_t ldx,
                                                  int8_t* q, int64_t ldq, float* scale) {
    for (int64_t row = 0; row < m; ++row) {
        if (!edgevla_quantize_row_ref(k, x + row * ldx, q + row * ldq, &scale[row])) return row;
    }
    return -1;
}
