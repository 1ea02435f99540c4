// Packing into, and validation of, the unstructured sparse formats
// SPARSE_F32_N16W32 and SPARSE_S8_N16W32 (sliced ELLPACK over windows of 32 k),
// documented in packed_formats.h. Packing takes two passes: counting the slots
// sizes the buffer, which the caller allocates, then filling it.
#include "cpu_kernels.h"
#include "packed_header.h"

#include <cstring>

namespace edgevla {
namespace {

constexpr int64_t kSlice = EDGEVLA_PACKED_SPARSE_SLICE;
constexpr int64_t kWindow = EDGEVLA_PACKED_SPARSE_WINDOW;

// -0.0 is a zero; a NaN is not (it must reach the output, as in a dense GEMM).
inline bool is_nonzero(float v) { return v != 0.0f; }
inline bool is_nonzero(int8_t v) { return v != 0; }

// Non-zeros of row `row` in window `window`.
template <typename T>
int64_t window_count(int64_t k, const T* w, int64_t ldw, int64_t row, int64_t window) {
    int64_t count = 0;
    const int64_t end = (window + 1) * kWindow < k ? (window + 1) * kWindow : k;
    for (int64_t col = window * kWindow; col < end; ++col) count += is_nonzero(w[row * ldw + col]);
    return count;
}

template <typename T>
SparseCounts count_sparse(int64_t n, int64_t k, const T* w, int64_t ldw) {
    SparseCounts counts;
    const int64_t n_slices = edgevla_packed_blocks(n, kSlice), n_windows = edgevla_packed_blocks(k, kWindow);
    for (int64_t slice = 0; slice < n_slices; ++slice) {
        for (int64_t window = 0; window < n_windows; ++window) {
            int64_t longest = 0;
            for (int64_t row = slice * kSlice; row < n && row < (slice + 1) * kSlice; ++row) {
                const int64_t count = window_count(k, w, ldw, row, window);
                counts.nonzeros += static_cast<uint64_t>(count);
                longest = count > longest ? count : longest;
            }
            counts.slots += static_cast<uint64_t>(longest);
        }
    }
    return counts;
}

template <typename T>
void pack_sparse(int64_t n, int64_t k, const T* w, int64_t ldw, const float* w_scale, SparseCounts counts,
                 edgevla_packed_format format, uint8_t* out) {
    const int value_bytes = static_cast<int>(sizeof(T));
    const edgevla_packed_sparse_layout layout = edgevla_packed_sparse_layout_of(n, k, counts.slots, value_bytes);
    std::memset(out, 0, layout.total_bytes);
    write_packed_header({format, EDGEVLA_PACKED_SPARSE_VERSION, kSlice, kWindow, n, k, counts.slots,
                         counts.nonzeros, layout.total_bytes},
                        out);

    uint8_t* slice_slots = out + sizeof(edgevla_packed_header);
    uint8_t* window_slots = out + layout.window_slots_offset;
    uint8_t* slot = out + layout.slots_offset;
    uint32_t slots_so_far = 0;
    for (int64_t slice = 0; slice < layout.n_slices; ++slice) {
        std::memcpy(slice_slots + 4 * slice, &slots_so_far, 4);
        for (int64_t window = 0; window < layout.n_windows; ++window) {
            int64_t longest = 0;
            for (int64_t lane = 0; lane < kSlice && slice * kSlice + lane < n; ++lane) {
                const int64_t row = slice * kSlice + lane;
                int64_t t = 0;  // the lane's next slot in this window
                const int64_t end = (window + 1) * kWindow < k ? (window + 1) * kWindow : k;
                for (int64_t col = window * kWindow; col < end; ++col) {
                    const T value = w[row * ldw + col];
                    if (!is_nonzero(value)) continue;
                    uint8_t* target = slot + static_cast<uint64_t>(t) * layout.slot_bytes;
                    target[lane] = static_cast<uint8_t>(col - window * kWindow);
                    std::memcpy(target + kSlice + lane * value_bytes, &value, sizeof value);
                    ++t;
                }
                longest = t > longest ? t : longest;
            }
            window_slots[slice * layout.n_windows + window] = static_cast<uint8_t>(longest);
            slot += static_cast<uint64_t>(longest) * layout.slot_bytes;
            slots_so_far += static_cast<uint32_t>(longest);
        }
    }
    std::memcpy(slice_slots + 4 * layout.n_slices, &slots_so_far, 4);
    if (w_scale != nullptr) std::memcpy(out + layout.w_scale_offset, w_scale, static_cast<size_t>(n) * 4);
}

}  // namespace

SparseCounts count_sparse_f32(int64_t n, int64_t k, const float* w, int64_t ldw) { return count_sparse(n, k, w, ldw); }
SparseCounts count_sparse_s8(int64_t n, int64_t k, const int8_t* w, int64_t ldw) { return count_sparse(n, k, w, ldw); }

uint64_t packed_sparse_bytes(int64_t n, int64_t k, SparseCounts counts, int value_bytes) {
    return edgevla_packed_sparse_layout_of(n, k, counts.slots, value_bytes).total_bytes;
}

void pack_sparse_f32(int64_t n, int64_t k, const float* w, int64_t ldw, SparseCounts counts, uint8_t* out) {
    pack_sparse(n, k, w, ldw, nullptr, counts, EDGEVLA_PACKED_FORMAT_SPARSE_F32_N16W32, out);
}

void pack_sparse_s8(int64_t n, int64_t k, const int8_t* w, int64_t ldw, const float* w_scale, SparseCounts counts,
                    uint8_t* out) {
    pack_sparse(n, k, w, ldw, w_scale, counts, EDGEVLA_PACKED_FORMAT_SPARSE_S8_N16W32, out);
}

std::string validate_packed_sparse(const uint8_t* data, uint64_t length, edgevla_packed_format format,
                                   PackedSparseView* view) {
    edgevla_packed_header header;
    const std::string problem = check_packed_header(data, length, format, &header);
    if (!problem.empty()) return problem;
    if (header.block_n != kSlice || header.block_k != kWindow) return corrupt_block_sizes(header);
    const bool is_s8 = format == EDGEVLA_PACKED_FORMAT_SPARSE_S8_N16W32;
    const int64_t max_k = is_s8 ? EDGEVLA_GEMM_S8S8_MAX_K : EDGEVLA_PACKED_F32_MAX_K;
    if (header.n < 0 || header.n >= kMaxPackedN || header.k < 0 || header.k > max_k) return impossible_shape(header);
    const uint64_t slots = header.param[0], nonzeros = header.param[1];
    const uint64_t most_slots = static_cast<uint64_t>(edgevla_packed_blocks(header.n, kSlice)) *
                                static_cast<uint64_t>(edgevla_packed_blocks(header.k, kWindow)) * kWindow;
    if (slots > most_slots || slots > UINT32_MAX || nonzeros > slots * kSlice) {
        return "has " + std::to_string(slots) + " slots and " + std::to_string(nonzeros) +
               " non-zeros, impossible for shape N = " + std::to_string(header.n) + ", K = " +
               std::to_string(header.k) + " (corrupt header)";
    }
    const edgevla_packed_sparse_layout layout =
        edgevla_packed_sparse_layout_of(header.n, header.k, slots, is_s8 ? 1 : 4);
    if (header.total_bytes != layout.total_bytes) return offsets_do_not_match(header);
    if (length != layout.total_bytes) return length_does_not_match(length, header);
    view->n = header.n;
    view->k = header.k;
    view->n_slices = layout.n_slices;
    view->n_windows = layout.n_windows;
    view->slots = slots;
    view->nonzeros = nonzeros;
    view->slice_slots = reinterpret_cast<const uint32_t*>(data + sizeof header);
    view->window_slots = data + layout.window_slots_offset;
    view->slot_data = data + layout.slots_offset;
    view->w_scale = is_s8 ? reinterpret_cast<const float*>(data + layout.w_scale_offset) : nullptr;
    return "";
}

}  // namespace edgevla
