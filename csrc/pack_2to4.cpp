// Packing into, and validation of, the 2:4 formats 2TO4_F32_N16K16 and
// 2TO4_S8_N16K16 documented in packed_formats.h.
#include "cpu_kernels.h"
#include "packed_header.h"

#include <cstring>

namespace edgevla {
namespace {

constexpr int64_t kBlockN = EDGEVLA_PACKED_2TO4_BLOCK_N;
constexpr int64_t kBlockK = EDGEVLA_PACKED_2TO4_BLOCK_K;
constexpr int64_t kGroups = kBlockK / 4;  // groups of 4 k per k-block

inline bool is_nonzero(float v) { return v != 0.0f; }
inline bool is_nonzero(int8_t v) { return v != 0; }

template <typename T>
Violation2to4 find_violation(int64_t n, int64_t k, const T* w, int64_t ldw) {
    for (int64_t row = 0; row < n; ++row) {
        for (int64_t group = 0; 4 * group < k; ++group) {
            int64_t count = 0;
            for (int64_t col = 4 * group; col < 4 * group + 4 && col < k; ++col) count += is_nonzero(w[row * ldw + col]);
            if (count > 2) return {true, row, group, count};
        }
    }
    return {};
}

// The two kept positions (p0 < p1) of a group and their values: the
// non-zeros, completed with the lowest free positions.
template <typename T>
void kept_pair(int64_t k, const T* row, int64_t group, int positions[2], T values[2]) {
    int kept = 0;
    bool taken[4] = {};
    for (int p = 0; p < 4; ++p) {
        const int64_t col = 4 * group + p;
        if (col < k && is_nonzero(row[col]) && kept < 2) {
            taken[p] = true;
            ++kept;
        }
    }
    for (int p = 0; p < 4 && kept < 2; ++p) {
        if (!taken[p]) {
            taken[p] = true;
            ++kept;
        }
    }
    int slot = 0;
    for (int p = 0; p < 4; ++p) {
        if (!taken[p]) continue;
        const int64_t col = 4 * group + p;
        positions[slot] = p;
        values[slot] = col < k ? row[col] : T(0);
        ++slot;
    }
}

// The int8 cell stores value j of a channel at byte kS8ByteOf[j] of its 8
// (vector j / 4 ... see packed_formats.h: [0][c] = v0 v4 v1 v5, [1][c] = v2 v6 v3 v7).
constexpr int kS8Vector[8] = {0, 0, 1, 1, 0, 0, 1, 1};
constexpr int kS8Byte[8] = {0, 2, 0, 2, 1, 3, 1, 3};

template <typename T>
void pack_2to4(int64_t n, int64_t k, const T* w, int64_t ldw, const float* w_scale, edgevla_packed_format format,
               uint8_t* out) {
    constexpr int value_bytes = static_cast<int>(sizeof(T));
    const edgevla_packed_2to4_layout layout = edgevla_packed_2to4_layout_of(n, k, value_bytes);
    std::memset(out, 0, layout.total_bytes);
    write_packed_header({format, EDGEVLA_PACKED_2TO4_VERSION, kBlockN, kBlockK, n, k, 0, 0, layout.total_bytes}, out);

    constexpr uint64_t values_bytes = 8u * kBlockN * value_bytes;  // the metadata follows the values
    for (int64_t row = 0; row < n; ++row) {
        const int64_t block = row / kBlockN, lane = row % kBlockN;
        int32_t row_sum = 0;
        for (int64_t kb = 0; kb < layout.k_blocks; ++kb) {
            uint8_t* cell = out + sizeof(edgevla_packed_header) +
                            static_cast<uint64_t>(block * layout.k_blocks + kb) * layout.cell_bytes;
            uint16_t meta = 0;
            for (int64_t g = 0; g < kGroups; ++g) {
                int positions[2];
                T values[2];
                kept_pair(k, w + row * ldw, kb * kGroups + g, positions, values);
                for (int slot = 0; slot < 2; ++slot) {
                    const int j = static_cast<int>(2 * g) + slot;
                    meta = static_cast<uint16_t>(meta | positions[slot] << (2 * j));
                    if (value_bytes == 4) {
                        std::memcpy(cell + 4 * (j * kBlockN + lane), &values[slot], 4);
                    } else {
                        cell[kS8Vector[j] * 4 * kBlockN + 4 * lane + kS8Byte[j]] = static_cast<uint8_t>(values[slot]);
                        row_sum += static_cast<int32_t>(values[slot]);
                    }
                }
            }
            std::memcpy(cell + values_bytes + 2 * lane, &meta, 2);
        }
        if (value_bytes == 1) {
            // 128 * row_sum fits int32 for K <= EDGEVLA_GEMM_S8S8_MAX_K (packed_formats.h).
            const int32_t compensation = 128 * row_sum;
            std::memcpy(out + layout.w_scale_offset + 4 * row, &w_scale[row], 4);
            std::memcpy(out + layout.compensation_offset + 4 * row, &compensation, 4);
        }
    }
}

}  // namespace

Violation2to4 find_2to4_violation_f32(int64_t n, int64_t k, const float* w, int64_t ldw) {
    return find_violation(n, k, w, ldw);
}

Violation2to4 find_2to4_violation_s8(int64_t n, int64_t k, const int8_t* w, int64_t ldw) {
    return find_violation(n, k, w, ldw);
}

uint64_t packed_2to4_bytes(int64_t n, int64_t k, int value_bytes) {
    return edgevla_packed_2to4_layout_of(n, k, value_bytes).total_bytes;
}

void pack_2to4_f32(int64_t n, int64_t k, const float* w, int64_t ldw, uint8_t* out) {
    pack_2to4(n, k, w, ldw, nullptr, EDGEVLA_PACKED_FORMAT_2TO4_F32_N16K16, out);
}

void pack_2to4_s8(int64_t n, int64_t k, const int8_t* w, int64_t ldw, const float* w_scale, uint8_t* out) {
    pack_2to4(n, k, w, ldw, w_scale, EDGEVLA_PACKED_FORMAT_2TO4_S8_N16K16, out);
}

std::string validate_packed_2to4(const uint8_t* data, uint64_t length, edgevla_packed_format format,
                                 Packed2to4View* view) {
    edgevla_packed_header header;
    const std::string problem = check_packed_header(data, length, format, &header);
    if (!problem.empty()) return problem;
    if (header.block_n != kBlockN || header.block_k != kBlockK) return corrupt_block_sizes(header);
    const bool is_s8 = format == EDGEVLA_PACKED_FORMAT_2TO4_S8_N16K16;
    const int64_t max_k = is_s8 ? EDGEVLA_GEMM_S8S8_MAX_K : EDGEVLA_PACKED_F32_MAX_K;
    if (header.n < 0 || header.n >= kMaxPackedN || header.k < 0 || header.k > max_k) return impossible_shape(header);
    const edgevla_packed_2to4_layout layout = edgevla_packed_2to4_layout_of(header.n, header.k, is_s8 ? 1 : 4);
    if (header.param[0] != 0 || header.param[1] != 0 || header.total_bytes != layout.total_bytes) {
        return offsets_do_not_match(header);
    }
    if (length != layout.total_bytes) return length_does_not_match(length, header);
    view->n = header.n;
    view->k = header.k;
    view->n_blocks = layout.n_blocks;
    view->k_blocks = layout.k_blocks;
    view->cells = data + sizeof header;
    view->w_scale = is_s8 ? reinterpret_cast<const float*>(data + layout.w_scale_offset) : nullptr;
    view->compensation = is_s8 ? reinterpret_cast<const int32_t*>(data + layout.compensation_offset) : nullptr;
    return "";
}

}  // namespace edgevla
