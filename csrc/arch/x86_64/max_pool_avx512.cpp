// The float32 max pool (max_pool_rows.h) compiled for the AVX-512 tables.
#include "cpu_kernels.h"
#include "max_pool_rows.h"

namespace edgevla {

void max_pool_f32_avx512(const WindowGeometry& g, const float* x, float* y, int64_t begin, int64_t end) {
    max_pool_f32_rows(g, x, y, begin, end);
}

}  // namespace edgevla
