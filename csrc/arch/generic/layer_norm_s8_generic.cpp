// LayerNorm + static int8 quantization (layer_norm_s8_rows.h) compiled for the generic table.
#include "cpu_kernels.h"
#include "layer_norm_s8_rows.h"

namespace edgevla {

int64_t layer_norm_s8_generic(const LayerNormS8Args& args) { return layer_norm_s8_rows(args); }

void quantize_s8_generic(const QuantizeS8Args& args) { quantize_s8_rows(args); }

int64_t layer_norm_f32_generic(const LayerNormF32Args& args) { return layer_norm_f32_rows(args); }

}  // namespace edgevla
