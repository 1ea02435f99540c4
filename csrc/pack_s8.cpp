// Packing into, and validation of, the EDGEVLA_PACKED_FORMAT_S8_N16K4 layout
// documented in packed_formats.h.
#include "cpu_kernels.h"

#include <cstring>

namespace edgevla {
namespace {

// Larger N than this is no linear layer; the bound keeps every size product
// of the layout far from int64 overflow.
constexpr int64_t kMaxPackedN = int64_t{1} << 31;

}  // namespace

uint64_t packed_s8_bytes(int64_t n, int64_t k) { return edgevla_packed_s8_layout_of(n, k).total_bytes; }

void pack_weight_s8(int64_t n, int64_t k, const int8_t* w, int64_t ldw, const float* w_scale, uint8_t* out) {
    const edgevla_packed_s8_layout layout = edgevla_packed_s8_layout_of(n, k);
    std::memset(out, 0, layout.total_bytes);

    edgevla_packed_header header{};
    header.magic = EDGEVLA_PACKED_MAGIC;
    header.format = EDGEVLA_PACKED_FORMAT_S8_N16K4;
    header.version = EDGEVLA_PACKED_S8_N16K4_VERSION;
    header.block_n = EDGEVLA_PACKED_S8_BLOCK_N;
    header.block_k = EDGEVLA_PACKED_S8_BLOCK_K;
    header.header_bytes = sizeof(edgevla_packed_header);
    header.n = n;
    header.k = k;
    header.w_scale_offset = layout.w_scale_offset;
    header.compensation_offset = layout.compensation_offset;
    header.total_bytes = layout.total_bytes;
    std::memcpy(out, &header, sizeof header);
    header.header_checksum = edgevla_packed_header_checksum(out);
    std::memcpy(out, &header, sizeof header);

    int8_t* weights = reinterpret_cast<int8_t*>(out + sizeof header);
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
    if (length < sizeof header) {
        return "is " + std::to_string(length) + " bytes, shorter than the 64-byte header of a packed weight";
    }
    std::memcpy(&header, data, sizeof header);
    if (header.magic != EDGEVLA_PACKED_MAGIC) {
        return "does not start with the magic bytes 'EVLA' of a packed weight (not made by pack_weight_s8?)";
    }
    if (header.format != EDGEVLA_PACKED_FORMAT_S8_N16K4) {
        return "has packed format " + std::to_string(header.format) + ", not " +
               std::to_string(EDGEVLA_PACKED_FORMAT_S8_N16K4) + " (int8 N16K4, made by pack_weight_s8)";
    }
    if (header.version != EDGEVLA_PACKED_S8_N16K4_VERSION) {
        return "has format version " + std::to_string(header.version) + ", this build reads version " +
               std::to_string(EDGEVLA_PACKED_S8_N16K4_VERSION) + ": pack the weight again with this edgevla";
    }
    if (header.header_checksum != edgevla_packed_header_checksum(data)) {
        return "has a header whose checksum does not match its contents (corrupt header)";
    }
    if (header.block_n != EDGEVLA_PACKED_S8_BLOCK_N || header.block_k != EDGEVLA_PACKED_S8_BLOCK_K ||
        header.header_bytes != sizeof header) {
        return "has a corrupt header (block sizes " + std::to_string(header.block_n) + "x" +
               std::to_string(header.block_k) + ", header size " + std::to_string(header.header_bytes) + ")";
    }
    if (header.n < 0 || header.n >= kMaxPackedN || header.k < 0 || header.k > EDGEVLA_GEMM_S8S8_MAX_K) {
        return "has an impossible shape N = " + std::to_string(header.n) + ", K = " + std::to_string(header.k);
    }
    const edgevla_packed_s8_layout layout = edgevla_packed_s8_layout_of(header.n, header.k);
    if (header.w_scale_offset != layout.w_scale_offset ||
        header.compensation_offset != layout.compensation_offset || header.total_bytes != layout.total_bytes) {
        return "has section offsets that do not match its shape N = " + std::to_string(header.n) +
               ", K = " + std::to_string(header.k) + " (corrupt header)";
    }
    if (length != layout.total_bytes) {
        return "is " + std::to_string(length) + " bytes, but a packed weight of shape N = " +
               std::to_string(header.n) + ", K = " + std::to_string(header.k) + " is " +
               std::to_string(layout.total_bytes) + " bytes (truncated or padded)";
    }
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
