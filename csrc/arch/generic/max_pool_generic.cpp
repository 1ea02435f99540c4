// The float32 max pool (max_pool_rows.h) compiled for the portable table (and aarch64's).
#include "cpu_kernels.h"
#include "max_pool_rows.h"

namespace edgevla {

void max_pool_f32_generic(const WindowGeometry& g, const float* x, float* y, int64_t begin, int64_t end) {
    max_pool_f32_rows(g, x, y, begin, end);
}

}  // namespace edgevla
