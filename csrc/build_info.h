// How this binary was built, recorded by CMake at configure time
// (build_info.cpp.in), so a bug report or a benchmark can say exactly which
// compiler, flags and CUDA architectures produced the numbers.
#pragma once

namespace edgevla {

struct BuildInfo {
    const char* version;           // package version, or "unknown" outside scikit-build-core
    const char* build_type;        // CMAKE_BUILD_TYPE
    const char* system_processor;  // CMAKE_SYSTEM_PROCESSOR of the build target
    const char* cxx_compiler;      // "<id> <version>", e.g. "GNU 12.2.0"
    const char* cxx_flags;         // CMAKE_CXX_FLAGS + build-type flags + edgevla's own options
    const char* sanitizers;        // ";"-separated EDGEVLA_SANITIZE, empty when none
    bool cuda;                     // whether the CUDA sources were compiled in
    const char* cuda_compiler;     // "<id> <version>", empty without CUDA
    const char* cuda_flags;        // empty without CUDA
    const char* cuda_archs;        // ";"-separated CUDA_ARCHITECTURES, empty without CUDA
    const char* cuda_runtime;      // how cudart is linked ("static"), empty without CUDA
};

const BuildInfo& build_info();

}  // namespace edgevla
