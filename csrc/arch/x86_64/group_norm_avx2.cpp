// The channels-last GroupNorm loops (group_norm_rows.h) compiled for the avx2 table.
#include "cpu_kernels.h"
#include "group_norm_rows.h"

namespace edgevla {

void group_norm_sums_avx2(const float* x, int64_t rows, int64_t c, const float* mean, double* sums) {
    group_norm_sums_rows(x, rows, c, mean, sums);
}

void group_norm_apply_avx2(const float* x, float* y, int64_t rows, int64_t c, const float* mean, const float* factor,
                           const float* shift, bool relu) {
    group_norm_apply_rows(x, y, rows, c, mean, factor, shift, relu);
}

}  // namespace edgevla
