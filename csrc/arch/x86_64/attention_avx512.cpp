// Float32 attention (attention_f32_rows.h) compiled for the avx512 table.
#define EDGEVLA_ATTENTION_VECTOR_BYTES 64
#include "attention_f32_rows.h"
#include "cpu_kernels.h"

namespace edgevla {

void attention_f32_avx512(const AttentionF32Args& args, int64_t first, int64_t last) {
    attention_f32_heads(args, first, last);
}

void softmax_f32_avx512(const SoftmaxF32Args& args) { softmax_f32_rows(args); }

}  // namespace edgevla
