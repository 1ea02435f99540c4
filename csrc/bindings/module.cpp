// The compiled module edgevla._C. Torch-free by design: it works on raw
// buffers, so one binary serves every PyTorch build (Jetson ships its own).
// The public, documented API is edgevla.native.
#include "bindings/module_parts.h"

PYBIND11_MODULE(_C, m) {
    m.doc() = "edgevla native kernels (private: use edgevla.native)";
    edgevla::bindings::register_system(m);
    edgevla::bindings::register_gemm(m);
    edgevla::bindings::register_kernels(m);
    edgevla::bindings::register_norms(m);
    edgevla::bindings::register_attention(m);
    edgevla::bindings::register_encoders(m);
    edgevla::bindings::register_formats(m);
    edgevla::bindings::register_cuda(m);
}
