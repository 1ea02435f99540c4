// Host packing of 2:4 sparse weights into tensor-core fragment order; the
// layout is documented in pack_2to4_mma.h.
#include "cuda/pack_2to4_mma.h"

#include <stdexcept>
#include <string>

namespace edgevla::cuda {
namespace {

struct KeptPair {
    int p0 = 0, p1 = 1;
    uint32_t nibble() const { return static_cast<uint32_t>(p0 | (p1 << 2)); }
};

// The kept positions of group (row, 4 c): the non-zeros, completed with the
// lowest zero positions. `nonzero(kk)` is false past K.
template <typename NonZero>
KeptPair kept_pair(NonZero nonzero, int64_t row, int64_t k_first) {
    int positions[4], count = 0;
    for (int p = 0; p < 4; ++p) {
        if (nonzero(k_first + p)) positions[count++] = p;
    }
    if (count > 2) {
        throw std::invalid_argument("not 2:4 sparse: row " + std::to_string(row) + " has " + std::to_string(count) +
                                    " non-zeros in k = " + std::to_string(k_first) + ".." +
                                    std::to_string(k_first + 3));
    }
    for (int p = 0; p < 4 && count < 2; ++p) {
        if (count == 1 && positions[0] == p) continue;
        positions[count++] = p;
    }
    KeptPair pair;
    pair.p0 = positions[0] < positions[1] ? positions[0] : positions[1];
    pair.p1 = positions[0] < positions[1] ? positions[1] : positions[0];
    return pair;
}

struct RowGroup {
    int row, group;
};

RowGroup meta_slot_s8(int layout, int g, int t, int q) {
    switch (layout) {
        case 0: return {g + 8 * (q / 4), 4 * t + q % 4};
        case 1: {
            const int reg = q / 2;
            return {g + 8 * (reg % 2), (reg / 2) * 8 + 2 * t + q % 2};
        }
        case 2: return {g + 8 * (t % 2), 8 * (t / 2) + q};
        default: return {g + 8 * (t / 2), 8 * (t % 2) + q};
    }
}

RowGroup meta_slot_f16(int layout, int g, int t, int q) {
    t %= 2;  // threads 2, 3 of a quad repeat 0, 1
    if (layout == 0) return {g + 8 * (q / 4), 4 * t + q % 4};
    return {g + 8 * t, q};
}

// Logical group c of an int8 tile lies at physical group 4 (c % 4) + c / 4.
int physical_group_s8(int c) { return 4 * (c % 4) + c / 4; }

template <typename T, typename NonZero>
void pack_tiles(const T* w, int64_t n, int64_t k, int64_t ldw, bool f16, int meta_layout, NonZero nonzero,
                uint32_t* values, uint32_t* meta) {
    const Packed2to4MmaLayout layout = packed_2to4_mma_layout(n, k, f16);
    const int tile_k = f16 ? kTile2to4F16K : kTile2to4S8K;
    const int bits = 8 * static_cast<int>(sizeof(T));
    const int per_word = 32 / bits;
    auto value_at = [&](int64_t row, int64_t kk) -> uint32_t {
        if (row >= n || kk >= k) return 0;
        return static_cast<uint32_t>(w[row * ldw + kk]) & ((1u << bits) - 1u);
    };
    auto first_k = [&](int64_t kt, int group) -> int64_t {
        return kt * tile_k + 4 * (f16 ? group : physical_group_s8(group));
    };
    auto pair_of = [&](int64_t row, int64_t k_first) -> KeptPair {
        if (row >= n) return KeptPair{};
        return kept_pair([&](int64_t kk) { return kk < k && nonzero(w[row * ldw + kk]); }, row, k_first);
    };
    for (int64_t nt = 0; nt < layout.n_tiles; ++nt) {
        for (int64_t kt = 0; kt < layout.k_tiles; ++kt) {
            const int64_t tile = nt * layout.k_tiles + kt;
            for (int lane = 0; lane < 32; ++lane) {
                const int g = lane / 4, t = lane % 4;
                for (int r = 0; r < 4; ++r) {
                    const int64_t row = nt * 16 + g + 8 * (r % 2);
                    uint32_t word = 0;
                    for (int e = 0; e < per_word; ++e) {
                        // compressed column of element e of register r
                        const int cc = f16 ? (r / 2) * 8 + 2 * t + e : (r / 2) * 16 + 4 * t + e;
                        const int group = cc / 2, which = cc % 2;
                        const int64_t k_first = first_k(kt, group);
                        const KeptPair pair = pair_of(row, k_first);
                        word |= value_at(row, k_first + (which ? pair.p1 : pair.p0)) << (bits * e);
                    }
                    values[(tile * 32 + lane) * 4 + r] = word;
                }
                uint32_t word = 0;
                for (int q = 0; q < 8; ++q) {
                    const RowGroup slot = f16 ? meta_slot_f16(meta_layout, g, t, q) : meta_slot_s8(meta_layout, g, t, q);
                    const KeptPair pair = pair_of(nt * 16 + slot.row, first_k(kt, slot.group));
                    word |= pair.nibble() << (4 * q);
                }
                meta[tile * 32 + lane] = word;
            }
        }
    }
}

void check_args(int64_t n, int64_t k, int64_t ldw, int meta_layout, int layouts) {
    if (n < 0 || k < 0 || ldw < k) throw std::invalid_argument("pack_2to4_mma: bad shape or row stride");
    if (meta_layout < 0 || meta_layout >= layouts) {
        throw std::invalid_argument("pack_2to4_mma: meta_layout must be in [0, " + std::to_string(layouts) + "), got " +
                                    std::to_string(meta_layout));
    }
}

}  // namespace

Packed2to4MmaLayout packed_2to4_mma_layout(int64_t n, int64_t k, bool f16) {
    Packed2to4MmaLayout l;
    const int64_t tile_k = f16 ? kTile2to4F16K : kTile2to4S8K;
    l.n_tiles = (n + 15) / 16;
    l.k_tiles = (k + tile_k - 1) / tile_k;
    l.value_words = l.n_tiles * l.k_tiles * 32 * 4;
    l.meta_words = l.n_tiles * l.k_tiles * 32;
    return l;
}

void pack_2to4_s8_mma(const int8_t* w, int64_t n, int64_t k, int64_t ldw, int meta_layout, uint32_t* values,
                      uint32_t* meta) {
    check_args(n, k, ldw, meta_layout, kMetaLayoutsS8);
    pack_tiles(reinterpret_cast<const uint8_t*>(w), n, k, ldw, false, meta_layout,
               [](uint8_t v) { return v != 0; }, values, meta);
}

void pack_2to4_f16_mma(const uint16_t* w, int64_t n, int64_t k, int64_t ldw, int meta_layout, uint32_t* values,
                       uint32_t* meta) {
    check_args(n, k, ldw, meta_layout, kMetaLayoutsF16);
    pack_tiles(w, n, k, ldw, true, meta_layout, [](uint16_t v) { return (v & 0x7fffu) != 0; }, values, meta);
}

}  // namespace edgevla::cuda
