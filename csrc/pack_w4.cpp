// Packing into, and validation of, the int4 group-wise format W4_N16K8
// documented in packed_formats.h. The input is the layout of
// edgevla.quant.primitives: codes two per byte (element 2 i in the low nibble
// of byte i, 2 i + 1 in the high nibble, 4-bit two's complement, zero point 0)
// and one float32 scale per (row, group of `group` k).
#include "cpu_kernels.h"
#include "packed_header.h"

#include <cstring>

namespace edgevla {
namespace {

constexpr int64_t kBlockN = EDGEVLA_PACKED_W4_BLOCK_N;
constexpr int64_t kCellK = EDGEVLA_PACKED_W4_CELL_K;

bool valid_group(int64_t group) { return group == 32 || group == 64 || group == 128; }

}  // namespace

uint64_t packed_w4_bytes(int64_t n, int64_t k, int64_t group) {
    return edgevla_packed_w4_layout_of(n, k, group).total_bytes;
}

void pack_w4(int64_t n, int64_t k, int64_t group, const uint8_t* qdata, int64_t ldq, const float* scale,
             int64_t lds, uint8_t* out) {
    const edgevla_packed_w4_layout layout = edgevla_packed_w4_layout_of(n, k, group);
    std::memset(out, 0, layout.total_bytes);
    write_packed_header({EDGEVLA_PACKED_FORMAT_W4_N16K8, EDGEVLA_PACKED_W4_VERSION, kBlockN,
                         static_cast<uint16_t>(group), n, k, 0, 0, layout.total_bytes},
                        out);
    uint8_t* codes = out + sizeof(edgevla_packed_header);
    uint8_t* scales = out + layout.scales_offset;
    for (int64_t row = 0; row < n; ++row) {
        const int64_t block = row / kBlockN, lane = row % kBlockN;
        for (int64_t cell = 0; cell < layout.k_cells; ++cell) {
            uint32_t word = 0;
            for (int64_t i = 0; i < kCellK && cell * kCellK + i < k; ++i) {
                const int64_t col = cell * kCellK + i;
                const uint32_t nibble = (qdata[row * ldq + col / 2] >> (4 * (col % 2))) & 0xFu;
                word |= nibble << (4 * i);
            }
            std::memcpy(codes + 4 * ((block * layout.k_cells + cell) * kBlockN + lane), &word, 4);
        }
        for (int64_t g = 0; g < layout.k_groups; ++g) {
            std::memcpy(scales + 4 * ((block * layout.k_groups + g) * kBlockN + lane), &scale[row * lds + g], 4);
        }
    }
}

std::string validate_packed_w4(const uint8_t* data, uint64_t length, PackedW4View* view) {
    edgevla_packed_header header;
    const std::string problem = check_packed_header(data, length, EDGEVLA_PACKED_FORMAT_W4_N16K8, &header);
    if (!problem.empty()) return problem;
    if (header.block_n != kBlockN || !valid_group(header.block_k)) return corrupt_block_sizes(header);
    if (header.n < 0 || header.n >= kMaxPackedN || header.k < 0 || header.k > EDGEVLA_PACKED_F32_MAX_K) {
        return impossible_shape(header);
    }
    const edgevla_packed_w4_layout layout = edgevla_packed_w4_layout_of(header.n, header.k, header.block_k);
    if (header.param[0] != 0 || header.param[1] != 0 || header.total_bytes != layout.total_bytes) {
        return offsets_do_not_match(header);
    }
    if (length != layout.total_bytes) return length_does_not_match(length, header);
    view->n = header.n;
    view->k = header.k;
    view->group = header.block_k;
    view->n_blocks = layout.n_blocks;
    view->k_cells = layout.k_cells;
    view->k_groups = layout.k_groups;
    view->codes = reinterpret_cast<const uint32_t*>(data + sizeof header);
    view->scales = reinterpret_cast<const float*>(data + layout.scales_offset);
    return "";
}

}  // namespace edgevla
