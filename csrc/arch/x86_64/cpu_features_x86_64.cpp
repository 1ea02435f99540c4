// x86-64 feature detection: cpuid says what the CPU implements, xgetbv says
// which register state the OS saves on a context switch. An instruction is
// usable only when both agree (a kernel or hypervisor may disable AVX-512
// state even on a CPU that has it). Bit positions: Intel SDM vol. 2A, CPUID.
#include "cpu_features.h"

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>

namespace edgevla {
namespace {

struct CpuidRegisters {
    uint32_t eax = 0, ebx = 0, ecx = 0, edx = 0;
};

// Returns false when the CPU does not implement `leaf`.
bool query_cpuid(uint32_t leaf, uint32_t subleaf, CpuidRegisters& r) {
    if (__get_cpuid_max(leaf & 0x80000000u, nullptr) < leaf) return false;
    __cpuid_count(leaf, subleaf, r.eax, r.ebx, r.ecx, r.edx);
    return true;
}

// XCR0, the OS-enabled register state. Inline asm rather than _xgetbv(), which
// needs the whole file compiled with -mxsave.
uint64_t read_xcr0() {
    uint32_t low = 0, high = 0;
    __asm__ volatile("xgetbv" : "=a"(low), "=d"(high) : "c"(0));
    return (uint64_t{high} << 32) | low;
}

constexpr bool bit(uint32_t reg, int n) { return ((reg >> n) & 1u) != 0; }

constexpr uint64_t kXcr0SseAvx = (1u << 1) | (1u << 2);                  // XMM, YMM upper halves
constexpr uint64_t kXcr0Avx512 = (1u << 5) | (1u << 6) | (1u << 7);     // opmask, ZMM0-15 upper, ZMM16-31
constexpr uint64_t kXcr0Amx = (1u << 17) | (1u << 18);                  // XTILECFG, XTILEDATA

// Linux (5.16+) hands out the large AMX tile state only to processes that ask
// for it, once; a process that executes a tile instruction without asking is
// killed with SIGILL. Granted permission covers every thread of the process.
bool request_amx_permission() {
#if defined(__linux__) && defined(SYS_arch_prctl)
    constexpr long kArchReqXcompPerm = 0x1023;
    constexpr long kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
    return false;
#endif
}

}  // namespace

CpuFeatures detect_cpu_features() {
    CpuFeatures f;
    CpuidRegisters leaf1;
    if (!query_cpuid(1, 0, leaf1)) return f;

    const bool osxsave = bit(leaf1.ecx, 27);
    const uint64_t xcr0 = osxsave ? read_xcr0() : 0;
    const bool os_saves_avx = (xcr0 & kXcr0SseAvx) == kXcr0SseAvx;
    const bool os_saves_avx512 = os_saves_avx && (xcr0 & kXcr0Avx512) == kXcr0Avx512;

    const bool avx = os_saves_avx && bit(leaf1.ecx, 28);
    f.fma = avx && bit(leaf1.ecx, 12);

    CpuidRegisters leaf7;
    if (!query_cpuid(7, 0, leaf7)) return f;
    f.avx2 = avx && bit(leaf7.ebx, 5);
    f.avx512f = os_saves_avx512 && bit(leaf7.ebx, 16);
    f.avx512bw = f.avx512f && bit(leaf7.ebx, 30);
    f.avx512vl = f.avx512f && bit(leaf7.ebx, 31);
    f.avx512_vnni = f.avx512f && bit(leaf7.ecx, 11);

    // AMX: the CPU's bits (EDX 24 AMX-TILE, 25 AMX-INT8), the OS's tile state
    // in XCR0, and the kernel's permission for this process.
    if (bit(leaf7.edx, 24) && (xcr0 & kXcr0Amx) == kXcr0Amx && request_amx_permission()) {
        f.amx_tile = true;
        f.amx_int8 = bit(leaf7.edx, 25);
    }

    // Leaf 7 reports its highest sub-leaf in EAX; sub-leaf 1 holds AVX-VNNI.
    if (leaf7.eax >= 1) {
        CpuidRegisters leaf7_1;
        query_cpuid(7, 1, leaf7_1);
        f.avx_vnni = avx && bit(leaf7_1.eax, 4);
    }
    return f;
}

const char* cpu_arch() { return "x86_64"; }

}  // namespace edgevla
