// Architectures without a detector: no optional feature is reported, so only
// the portable reference kernels run. EDGEVLA_SYSTEM_PROCESSOR comes from CMake.
#include "cpu_features.h"

namespace edgevla {

CpuFeatures detect_cpu_features() { return CpuFeatures{}; }

const char* cpu_arch() { return EDGEVLA_SYSTEM_PROCESSOR; }

}  // namespace edgevla
