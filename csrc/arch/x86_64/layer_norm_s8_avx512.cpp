// LayerNorm + static int8 quantization (layer_norm_s8_rows.h) compiled for the avx512 table.
#include "cpu_kernels.h"
#include "layer_norm_s8_rows.h"

namespace edgevla {

int64_t layer_norm_s8_avx512(const LayerNormS8Args& args) { return layer_norm_s8_rows(args); }

void quantize_s8_avx512(const QuantizeS8Args& args) { quantize_s8_rows(args); }

int64_t layer_norm_f32_avx512(const LayerNormF32Args& args) { return layer_norm_f32_rows(args); }

}  // namespace edgevla
