// Architecture-independent part of CPU feature detection: the cache.
#include "cpu_features.h"

namespace edgevla {

const CpuFeatures& cpu_features() {
    // A function-local static is initialised once, thread-safely (C++11).
    static const CpuFeatures detected = detect_cpu_features();
    return detected;
}

}  // namespace edgevla
