// The scalar reference of attention_f32.h, and the threaded dispatch of the
// fast kernels (attention_f32_rows.h, compiled per ISA under arch/).
#include "attention_f32.h"

#include "dispatch.h"
#include "thread_pool.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace edgevla {
namespace {

struct AttentionTask {
    const AttentionF32Args* args;
    AttentionF32Kernel kernel;
    int64_t heads;
};

void run_part(void* context, int part, int parts) {
    const auto& task = *static_cast<const AttentionTask*>(context);
    const int64_t first = task.heads * part / parts, last = task.heads * (part + 1) / parts;
    if (first < last) task.kernel(*task.args, first, last);
}

// y = softmax(x) over k values (y may be x), one element at a time, std::exp.
void softmax_row_ref(const float* x, float* y, int64_t k) {
    float m = x[0];
    for (int64_t j = 1; j < k; ++j) m = x[j] > m ? x[j] : m;
    float sum = 0.0f;
    for (int64_t j = 0; j < k; ++j) {
        y[j] = std::exp(x[j] - m);
        sum = sum + y[j];
    }
    for (int64_t j = 0; j < k; ++j) y[j] = y[j] / sum;
}

}  // namespace

void attention_f32(const AttentionF32Args& args) {
    const int64_t heads = args.batch * args.heads;
    if (heads == 0 || args.t == 0) return;
    AttentionTask task{&args, active_isa().attention_f32, heads};
    ThreadPool& pool = ThreadPool::global();
    // A head of T x S x D multiply-adds twice; below ~2^17 of them per thread the hand-off costs more.
    const int64_t work = heads * args.t * args.s * std::max<int64_t>(args.d, 1) * 2;
    const int64_t by_work = std::max<int64_t>(1, work >> 17);
    const int parts = static_cast<int>(std::min<int64_t>({pool.num_threads(), heads, by_work}));
    if (parts <= 1) {
        task.kernel(args, 0, heads);
        return;
    }
    pool.run(parts, run_part, &task);
}

void softmax_f32(const SoftmaxF32Args& args) { active_isa().softmax_f32(args); }

void softmax_f32_ref(const SoftmaxF32Args& a) {
    for (int64_t row = 0; row < a.m; ++row) softmax_row_ref(a.x + row * a.ldx, a.y + row * a.ldy, a.k);
}

void attention_f32_ref(const AttentionF32Args& a) {
    std::vector<float> row(static_cast<size_t>(a.s));
    for (int64_t b = 0; b < a.batch; ++b) {
        for (int64_t h = 0; h < a.heads; ++h) {
            const int64_t g = attention_kv_head(a, h);
            const float* qb = a.q + b * a.q_strides.batch + h * a.q_strides.head;
            const float* kb = a.k + b * a.k_strides.batch + g * a.k_strides.head;
            const float* vb = a.v + b * a.v_strides.batch + g * a.v_strides.head;
            float* ob = a.out + b * a.out_strides.batch + h * a.out_strides.head;
            for (int64_t i = 0; i < a.t; ++i) {
                const float* qi = qb + i * a.q_strides.token;
                for (int64_t j = 0; j < a.s; ++j) {
                    const float* kj = kb + j * a.k_strides.token;
                    float acc = 0.0f;
                    for (int64_t d = 0; d < a.d; ++d) acc = acc + qi[d] * kj[d];
                    if (a.scale_mode == kAttentionMultiply) acc = acc * a.scale;
                    if (a.scale_mode == kAttentionDivide) acc = acc / a.scale;
                    if (a.bias != nullptr) {
                        acc = acc + a.bias[b * a.bias_strides.batch + h * a.bias_strides.head +
                                           i * a.bias_strides.token + j];
                    }
                    row[j] = acc;
                }
                softmax_row_ref(row.data(), row.data(), a.s);
                bool nan = false;
                for (int64_t j = 0; j < a.s; ++j) nan = nan || row[j] != row[j];
                if (a.zero_nan_rows && nan) std::fill(row.begin(), row.end(), 0.0f);
                float* oi = ob + i * a.out_strides.token;
                for (int64_t d = 0; d < a.d; ++d) {
                    float acc = 0.0f;
                    for (int64_t j = 0; j < a.s; ++j) acc = acc + row[j] * vb[j * a.v_strides.token + d];
                    oi[d] = acc;
                }
            }
        }
    }
}

}  // namespace edgevla
