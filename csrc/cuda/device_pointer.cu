// Which memory a pointer is: the bindings refuse host or other-device
// pointers before a kernel would fault on them.
#include "cuda/cuda_kernels.h"
#include "cuda/launch_check.cuh"

#include <stdexcept>
#include <string>

namespace edgevla::cuda {

bool kernels_compiled() { return true; }

int current_device() {
    int device = 0;
    check_cuda(cudaGetDevice(&device), "cudaGetDevice");
    return device;
}

void check_device_pointer(const void* pointer, const char* name) {
    cudaPointerAttributes attributes{};
    const cudaError_t status = cudaPointerGetAttributes(&attributes, pointer);
    if (status != cudaSuccess) {
        cudaGetLastError();  // clear the sticky-free error so later launches are not blamed
        throw std::invalid_argument(std::string(name) + ": not a CUDA pointer (" + cudaGetErrorName(status) + ")");
    }
    if (attributes.type != cudaMemoryTypeDevice && attributes.type != cudaMemoryTypeManaged) {
        throw std::invalid_argument(std::string(name) + ": host memory; the CUDA kernels need device memory");
    }
    const int device = current_device();
    if (attributes.device != device) {
        throw std::invalid_argument(std::string(name) + ": memory of CUDA device " +
                                    std::to_string(attributes.device) + ", but the current device is " +
                                    std::to_string(device));
    }
}

}  // namespace edgevla::cuda
