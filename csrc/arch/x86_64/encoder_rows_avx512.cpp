// The conv encoders' float loops (encoder_rows_kernels.h) compiled for the AVX-512 tables.
#include "encoder_rows_kernels.h"

namespace edgevla {

EDGEVLA_ENCODER_ROWS_KERNELS(avx512)

}  // namespace edgevla
