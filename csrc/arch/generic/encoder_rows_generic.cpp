// The conv encoders' float loops (encoder_rows_kernels.h) compiled for the portable table (and aarch64's).
#include "encoder_rows_kernels.h"

namespace edgevla {

EDGEVLA_ENCODER_ROWS_KERNELS(generic)

}  // namespace edgevla
