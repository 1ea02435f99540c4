// Packing into, and validation of, the EDGEVLA_PACKED_FORMAT_S8_N16K4 layout
// documented in packed_formats.h.
#include "cpu_kernels.h"
#include "packed_header.h"

#include <cstring>

namespace edgevla {

uint64_t packed_s8_bytes(int64_t n, int64_t k) { return edgevla_packed_s8_layout_of(n, k).total_bytes; }

void pack_weight_s8(int64_t n, int64_t k, const int8_t* w, int64_t ldw, const float* w_scale, uint8_t* out) {
    const edgevla_packed_s8_layout layout = edgevla_packed_s8_layout_of(n, k);
    std::memset(out, 0, layout.total_bytes);

    write_packed_header({EDGEVLA_PACKED_FORMAT_S8_N16K4, EDGEVLA_PACKED_S8_N16K4_VERSION, EDGEVLA_PACKED_S8_BLOCK_N,
                         EDGEVLA_PACKED_S8_BLOCK_K, n, k, layout.w_scale_offset, layout.compensation_offset,
                         layout.total_bytes},
                        out);

    int8_t* weights = reinterpret_cast<int8_t*>(out + sizeof(edgevla_packed_header));
    uint8_t* scales = out + layout.w_scale_offset;
    uint8_t* compensation = out + layout.compensation_offset;
    constexpr int64_t kBlockN = EDGEVLA_PACKED_S8_BLOCK_N, kBlockK = EDGEVLA_PACKED_S8_BLOCK_K;
    for (int64_t row = 0; row < n; ++row) {
        const int64_t block = row / kBlockN, lane = row % kBlockN;
        int32_t row_sum = 0;
        for (int64_t col = 0; col < k; ++col) {
            const int64_t group = col / kBlockK;
            const int64_t cell = (block * layout.k_groups + group) * kBlockN * kBlockK;
            weights[cell + lane * kBlockK + col % kBlockK] = w[row * ldw + col];
            row_sum += w[row * ldw + col];
        }
        // 128 * row_sum fits int32 for K <= EDGEVLA_GEMM_S8S8_MAX_K (packed_formats.h).
        const int32_t row_compensation = 128 * row_sum;
        std::memcpy(scales + 4 * row, &w_scale[row], 4);
        std::memcpy(compensation + 4 * row, &row_compensation, 4);
    }
}

std::string validate_packed_s8(const uint8_t* data, uint64_t length, PackedS8View* view) {
    edgevla_packed_header header;
    const std::string problem = check_packed_header(data, length, EDGEVLA_PACKED_FORMAT_S8_N16K4, &header);
    if (!problem.empty()) return problem;
    if (header.block_n != EDGEVLA_PACKED_S8_BLOCK_N || header.block_k != EDGEVLA_PACKED_S8_BLOCK_K) {
        return corrupt_block_sizes(header);
    }
    if (header.n < 0 || header.n >= kMaxPackedN || header.k < 0 || header.k > EDGEVLA_GEMM_S8S8_MAX_K) {
        return impossible_shape(header);
    }
    const edgevla_packed_s8_layout layout = edgevla_packed_s8_layout_of(header.n, header.k);
    if (header.param[0] != layout.w_scale_offset || header.param[1] != layout.compensation_offset ||
        header.total_bytes != layout.total_bytes) {
        return offsets_do_not_match(header);
    }
    if (length != layout.total_bytes) return length_does_not_match(length, header);
    view->n = header.n;
    view->k = header.k;
    view->k_groups = layout.k_groups;
    view->n_blocks = layout.n_blocks;
    view->weights = reinterpret_cast<const int8_t*>(data + sizeof header);
    view->w_scale = reinterpret_cast<const float*>(data + layout.w_scale_offset);
    view->compensation = reinterpret_cast<const int32_t*>(data + layout.compensation_offset);
    return "";
}

}  // namespace edgevla
