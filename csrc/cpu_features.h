// Run-time CPU feature detection.
//
// A wheel is built once for a baseline CPU (x86-64 or ARMv8.0) and runs on
// many machines, so fast kernels must be chosen when the process starts, not
// when the compiler runs. Each architecture has its own detector
// (arch/<arch>/cpu_features_<arch>.cpp, only that one is compiled); this header
// is the single view of the result that dispatch code and Python share.
#pragma once

#include <array>

namespace edgevla {

// Every feature a kernel may dispatch on. A field is true only when the CPU
// has the instructions AND the operating system saves the registers they use,
// so a true field means "safe to execute". Fields of the other architecture
// are always false.
struct CpuFeatures {
    // x86-64 (cpuid + xgetbv)
    bool avx2 = false;
    bool fma = false;
    bool avx512f = false;
    bool avx512bw = false;
    bool avx512vl = false;
    bool avx512_vnni = false;  // EVEX int8 dot product (vpdpbusd on zmm/ymm/xmm)
    bool avx_vnni = false;     // VEX int8 dot product (vpdpbusd on ymm/xmm), Alder Lake and later
    bool amx_tile = false;     // AMX tiles (ldtilecfg, tileloadd); true only once Linux granted XTILEDATA
    bool amx_int8 = false;     // AMX int8 tile dot products (tdpbssd), Sapphire Rapids and later
    // aarch64 (getauxval)
    bool asimd = false;    // NEON, baseline on ARMv8-A
    bool asimddp = false;  // SDOT/UDOT int8 dot product (ARMv8.2-A, all Jetson Orin cores)
    bool i8mm = false;     // SMMLA int8 matrix multiply (ARMv8.6-A, Neoverse V-class)
    bool sve = false;
};

// One feature's name and where it lives in CpuFeatures. The names are the
// flag names Linux prints in /proc/cpuinfo, so a user can check them by hand.
struct CpuFeatureField {
    const char* name;
    bool CpuFeatures::*member;
};

inline constexpr std::array<CpuFeatureField, 13> kCpuFeatureFields = {{
    {"avx2", &CpuFeatures::avx2},
    {"fma", &CpuFeatures::fma},
    {"avx512f", &CpuFeatures::avx512f},
    {"avx512bw", &CpuFeatures::avx512bw},
    {"avx512vl", &CpuFeatures::avx512vl},
    {"avx512_vnni", &CpuFeatures::avx512_vnni},
    {"avx_vnni", &CpuFeatures::avx_vnni},
    {"amx_tile", &CpuFeatures::amx_tile},
    {"amx_int8", &CpuFeatures::amx_int8},
    {"asimd", &CpuFeatures::asimd},
    {"asimddp", &CpuFeatures::asimddp},
    {"i8mm", &CpuFeatures::i8mm},
    {"sve", &CpuFeatures::sve},
}};

// Queries the CPU and the OS. Implemented once per architecture.
CpuFeatures detect_cpu_features();

// The features of the CPU this process runs on, detected on first use and
// cached (the answer cannot change while the process lives).
const CpuFeatures& cpu_features();

// "x86_64", "aarch64", or the CMake system processor name elsewhere.
const char* cpu_arch();

}  // namespace edgevla
