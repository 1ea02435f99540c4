// device_info for builds without CUDA (EDGEVLA_CUDA=OFF, or AUTO without nvcc):
// such a binary cannot use a GPU, so it sees none.
#include "cuda/device_info.h"

namespace edgevla::cuda {

std::vector<DeviceInfo> list_devices() { return {}; }

}  // namespace edgevla::cuda
