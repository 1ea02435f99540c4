// The conv encoders' float loops (encoder_rows_kernels.h) compiled for the avx2 table.
#include "encoder_rows_kernels.h"

namespace edgevla {

EDGEVLA_ENCODER_ROWS_KERNELS(avx2)

}  // namespace edgevla
