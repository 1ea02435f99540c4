// Each binding file registers its functions on the module; module.cpp only
// calls them, so adding a family of kernels is adding one file and one line.
#pragma once

#include <pybind11/pybind11.h>

namespace edgevla::bindings {

void register_attention(pybind11::module_& m);
void register_cuda(pybind11::module_& m);
void register_formats(pybind11::module_& m);
void register_gemm(pybind11::module_& m);
void register_kernels(pybind11::module_& m);
void register_norms(pybind11::module_& m);
void register_system(pybind11::module_& m);
void register_encoders(pybind11::module_& m);

}  // namespace edgevla::bindings
