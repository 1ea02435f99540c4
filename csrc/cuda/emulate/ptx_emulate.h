// Host versions of ptx_mma.cuh's functions for cuda_emulate.h: the same
// names and operands, with the PTX ISA's semantics. The MMAs gather the
// warp's fragments (the layouts in ptx_mma.cuh's header) and give each lane
// its own accumulators: int32 sums exact, float sums in double rounded once to
// float (a tensor core's internal rounding may differ in the last bits).
// ldmatrix reads each row as its lane arrives; cp.async lands at issue or at
// the wait (cuda_emulate.h, copy_landing). The sparse MMAs use the metadata
// layouts the H200 settled (pack_2to4_mma.h).
#pragma once

#ifndef EDGEVLA_CUDA_EMULATE
#error "ptx_emulate.h is for host builds with EDGEVLA_CUDA_EMULATE defined"
#endif

#include "cuda/emulate/cuda_emulate.h"

#include <cuda_fp16.h>

#include <array>
#include <cstdint>
#include <cstring>

namespace edgevla::cuda::ptx {

namespace detail {

inline float half_at(uint32_t reg, int which) {
    __half_raw raw;
    raw.x = static_cast<unsigned short>(reg >> (16 * which));
    return __half2float(__half(raw));
}
inline int32_t s8_at(uint32_t reg, int which) { return static_cast<int8_t>(reg >> (8 * which)); }

// mma.sync m16n8kK for one warp: A (16 x K) row-major fragments in in[0..3],
// B (K x 8) in in[4..5], C in in[6..9]; element(reg, e) reads element e of a
// register, `per` elements a register, `step` the k distance between a0 and a2.
template <typename Acc, typename Element>
void mma_warp(emulate::Collective kind, Acc (&d)[4], const std::array<uint32_t, 4>& a, uint32_t b0, uint32_t b1,
              Element element, int per, int k_half) {
    std::array<uint32_t, 16> in{};
    for (int i = 0; i < 4; ++i) in[i] = a[i];
    in[4] = b0, in[5] = b1;
    for (int i = 0; i < 4; ++i) in[6 + i] = emulate::bits_of(d[i]);
    Acc out[4];
    emulate::Block::current_block()->warp_collective(kind, in, [&](const auto& slots, unsigned lane) {
        const int g = static_cast<int>(lane) / 4, t = static_cast<int>(lane) % 4;
        for (int r = 0; r < 4; ++r) {
            const int row = g + 8 * (r / 2), col = 2 * t + (r % 2);
            // C from this lane's own slot; A row `row` and B column `col` from their owners.
            using Sum = std::conditional_t<std::is_same_v<Acc, float>, double, int64_t>;
            Sum sum = static_cast<Sum>(emulate::from_bits<Acc>(slots[lane].in[6 + r]));
            for (int kk = 0; kk < 2 * k_half; ++kk) {
                // A: row g' (+8 for a1, a3), k = per t' + e (+ k_half for a2, a3).
                const int a_reg = (row >= 8 ? 1 : 0) + (kk >= k_half ? 2 : 0);
                const int a_lane = 4 * (row % 8) + (kk % k_half) / per, a_e = (kk % k_half) % per;
                // B: column g' = col, k = per t' + e (+ k_half for b1).
                const int b_reg = kk >= k_half ? 5 : 4;
                const int b_lane = 4 * col + (kk % k_half) / per, b_e = (kk % k_half) % per;
                sum += static_cast<Sum>(element(slots[a_lane].in[a_reg], a_e)) *
                       static_cast<Sum>(element(slots[b_lane].in[b_reg], b_e));
            }
            out[r] = static_cast<Acc>(sum);
        }
    });
    for (int r = 0; r < 4; ++r) d[r] = out[r];
}

}  // namespace detail

inline void mma_s8_m16n8k32(int32_t (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                            uint32_t b1) {
    detail::mma_warp(emulate::Collective::mma_s8_m16n8k32, d, {a0, a1, a2, a3}, b0, b1, detail::s8_at, 4, 16);
}

inline void mma_f16_m16n8k16(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                             uint32_t b1) {
    detail::mma_warp(emulate::Collective::mma_f16_m16n8k16, d, {a0, a1, a2, a3}, b0, b1, detail::half_at, 2, 8);
}

// lop3.b32: bit i of the result is bit (a_i b_i c_i, as a 3-bit index) of kLut.
template <int kLut>
uint32_t lop3(uint32_t a, uint32_t b, uint32_t c) {
    uint32_t d = 0;
    for (int i = 0; i < 32; ++i) {
        const int index = (((a >> i) & 1u) << 2) | (((b >> i) & 1u) << 1) | ((c >> i) & 1u);
        d |= static_cast<uint32_t>((kLut >> index) & 1) << i;
    }
    return d;
}

inline uint4 ldg_v4(const void* pointer, bool pred) {
    return pred ? *static_cast<const uint4*>(pointer) : make_uint4(0, 0, 0, 0);
}
inline uint4 ldg_stream_v4(const void* pointer, bool pred) { return ldg_v4(pointer, pred); }
inline uint2 ldg_stream_v2(const void* pointer, bool pred) {
    return pred ? *static_cast<const uint2*>(pointer) : make_uint2(0, 0);
}
inline uint32_t ldg_stream_u32(const void* pointer, bool pred, uint32_t otherwise) {
    return pred ? *static_cast<const uint32_t*>(pointer) : otherwise;
}

// ldmatrix.x4 (16-bit elements): lanes 8i .. 8i + 7 give the addresses of
// matrix i's 8 rows (16 bytes each); lane l receives in r[i] bytes
// 4 (l % 4) .. 4 (l % 4) + 3 of row l / 4 of matrix i. Each lane reads the row
// it names as it arrives (so the race check sees the read as that lane's).
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row_address) {
    if (reinterpret_cast<uintptr_t>(row_address) % 16 != 0) {
        emulate::fail("ldmatrix: a row address that is not 16-byte aligned");
    }
    std::array<uint32_t, 16> in{};
    std::memcpy(in.data(), row_address, 16);
    uint32_t out[4];
    emulate::Block::current_block()->warp_collective(emulate::Collective::ldmatrix_x4, in,
                                                     [&](const auto& slots, unsigned lane) {
        for (unsigned i = 0; i < 4; ++i) out[i] = slots[8 * i + lane / 4].in[lane % 4];
    });
    for (int i = 0; i < 4; ++i) r[i] = out[i];
}

// cp.async: src_bytes of global memory, the rest of the size zero-filled; it
// lands when copy_landing() says (cuda_emulate.h).
inline void cp_async_16(void* smem, const void* global, int src_bytes) {
    emulate::Block::current_block()->copy_async(smem, global, 16, src_bytes);
}
inline void cp_async_4(void* smem, const void* global, int src_bytes) {
    emulate::Block::current_block()->copy_async(smem, global, 4, src_bytes);
}
inline void cp_async_commit() { emulate::Block::current_block()->copy_commit(); }
template <int kPending>
void cp_async_wait() {
    emulate::Block::current_block()->copy_wait(kPending);
}

template <int kThreads>
void bar_sync(int id) {
    emulate::Block::current_block()->named_barrier(id, kThreads);
}

// mma.sp (2:4 sparse A, sparsity selector 0) as the H200 computed it
// (pack_2to4_mma.h): A holds the kept values of logical group c of each row
// at compressed columns 2c, 2c + 1, in the dense layout's registers with K
// halved; B is the dense (2 k_half) x 8 operand; the metadata nibble of
// (row, c) names the two kept positions p0 | p1 << 2 in k = 4c .. 4c + 3.
// Which lane and nibble hold (row, c): int8 (layout 2) lane 4 (row % 8) +
// row / 8 + 2 (c / 8), nibble c % 8; float16 (layout 0) lane 4 (row % 8) +
// c / 4, nibble 4 (row / 8) + c % 4.
namespace detail {

template <typename Acc, typename Element, typename MetaSlot>
void mma_sp_warp(emulate::Collective kind, Acc (&d)[4], const uint4& a, const uint4& b, uint32_t meta,
                 Element element, int per, int k_half, MetaSlot meta_slot) {
    std::array<uint32_t, 16> in{};
    in[0] = a.x, in[1] = a.y, in[2] = a.z, in[3] = a.w;
    in[4] = b.x, in[5] = b.y, in[6] = b.z, in[7] = b.w;
    in[8] = meta;
    for (int i = 0; i < 4; ++i) in[9 + i] = emulate::bits_of(d[i]);
    Acc out[4];
    emulate::Block::current_block()->warp_collective(kind, in, [&](const auto& slots, unsigned lane) {
        const int g = static_cast<int>(lane) / 4, t = static_cast<int>(lane) % 4;
        const int groups = k_half;  // logical groups of 4 k: 2 k_half stored columns, 2 a group
        for (int r = 0; r < 4; ++r) {
            const int row = g + 8 * (r / 2), col = 2 * t + (r % 2);
            using Sum = std::conditional_t<std::is_same_v<Acc, float>, double, int64_t>;
            Sum sum = static_cast<Sum>(emulate::from_bits<Acc>(slots[lane].in[9 + r]));
            for (int c = 0; c < groups; ++c) {
                int meta_lane = 0, nibble = 0;
                meta_slot(row, c, meta_lane, nibble);
                const uint32_t kept = (slots[meta_lane].in[8] >> (4 * nibble)) & 0xFu;
                for (int i = 0; i < 2; ++i) {
                    const int cc = 2 * c + i, kk = 4 * c + static_cast<int>((kept >> (2 * i)) & 3u);
                    // A as the dense fragment of a 16 x (2 k_half) matrix of compressed columns.
                    const int a_reg = (row >= 8 ? 1 : 0) + (cc >= k_half ? 2 : 0);
                    const int a_lane = 4 * (row % 8) + (cc % k_half) / per, a_e = (cc % k_half) % per;
                    // B register j: k = 4 per j + per t' .. (per elements), column g' = col.
                    const int b_reg = 4 + kk / (4 * per);
                    const int b_lane = 4 * col + (kk % (4 * per)) / per, b_e = kk % per;
                    sum += static_cast<Sum>(element(slots[a_lane].in[a_reg], a_e)) *
                           static_cast<Sum>(element(slots[b_lane].in[b_reg], b_e));
                }
            }
            out[r] = static_cast<Acc>(sum);
        }
    });
    for (int r = 0; r < 4; ++r) d[r] = out[r];
}

}  // namespace detail

inline void mma_sp_s8_m16n8k64(int32_t (&d)[4], const uint4& a, const uint4& b, uint32_t meta) {
    detail::mma_sp_warp(emulate::Collective::mma_sp_s8_m16n8k64, d, a, b, meta, detail::s8_at, 4, 16,
                        [](int row, int c, int& lane, int& nibble) {
                            lane = 4 * (row % 8) + row / 8 + 2 * (c / 8), nibble = c % 8;
                        });
}

inline void mma_sp_f16_m16n8k32(float (&d)[4], const uint4& a, const uint4& b, uint32_t meta) {
    detail::mma_sp_warp(emulate::Collective::mma_sp_f16_m16n8k32, d, a, b, meta, detail::half_at, 2, 8,
                        [](int row, int c, int& lane, int& nibble) {
                            lane = 4 * (row % 8) + c / 4, nibble = 4 * (row / 8) + c % 4;
                        });
}

}  // namespace edgevla::cuda::ptx
