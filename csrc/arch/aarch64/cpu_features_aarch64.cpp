// aarch64 feature detection. User space cannot read the ID registers on every
// kernel, so Linux publishes them as bits of the auxiliary vector, which
// getauxval() returns. The bit values are Linux ABI
// (arch/arm64/include/uapi/asm/hwcap.h); they are spelled out here because
// older toolchains (JetPack's glibc) lack the newer HWCAP2 macros.
#include "cpu_features.h"

#include <sys/auxv.h>

#include <cstdint>

namespace edgevla {
namespace {

constexpr uint64_t kHwcapAsimd = 1ull << 1;
constexpr uint64_t kHwcapAsimddp = 1ull << 20;
constexpr uint64_t kHwcapSve = 1ull << 22;
constexpr uint64_t kHwcap2I8mm = 1ull << 13;

}  // namespace

CpuFeatures detect_cpu_features() {
    const uint64_t hwcap = getauxval(AT_HWCAP);
    const uint64_t hwcap2 = getauxval(AT_HWCAP2);
    CpuFeatures f;
    f.asimd = (hwcap & kHwcapAsimd) != 0;
    f.asimddp = (hwcap & kHwcapAsimddp) != 0;
    f.sve = (hwcap & kHwcapSve) != 0;
    f.i8mm = (hwcap2 & kHwcap2I8mm) != 0;
    return f;
}

const char* cpu_arch() { return "aarch64"; }

}  // namespace edgevla
