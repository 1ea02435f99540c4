// Architectures without SIMD kernels: only the portable table (dispatch.cpp) exists.
#include "dispatch.h"

namespace edgevla {

IsaKernelList arch_isa_kernels() { return {nullptr, 0}; }

}  // namespace edgevla
