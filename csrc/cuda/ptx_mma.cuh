// Thin wrappers over the PTX instructions the CUDA kernels use: tensor-core
// MMA (dense and 2:4 sparse), ldmatrix and cp.async. One instruction per
// function, operands named as in the PTX ISA ("Warp-level matrix multiply-
// accumulate"), so a kernel reads as the fragment algebra it is.
//
// Fragment layouts (groupID g = lane / 4, threadID_in_group t = lane % 4):
//   mma.m16n8k32 s8:  A a0 = row g, k 4t..4t+3; a1 = row g+8, k 4t..; a2 = row g,
//                     k 16+4t..; a3 = row g+8, k 16+4t..   (4 int8 per register)
//                     B b0 = col g, k 4t..4t+3; b1 = col g, k 16+4t..
//                     C c0, c1 = row g, cols 2t, 2t+1; c2, c3 = row g+8, same cols
//   mma.m16n8k16 f16: A a0 = row g, k 2t, 2t+1; a1 = row g+8, k 2t, 2t+1; a2 = row g,
//                     k 2t+8, 2t+9; a3 = row g+8, k 2t+8, 2t+9   (2 halves per register,
//                     the lower k in the low half)
//                     B b0 = col g, k 2t, 2t+1; b1 = col g, k 2t+8, 2t+9
//                     C float32, as for s8
//   mma.sp m16n8k64 s8 and m16n8k32 f16: see csrc/cuda/pack_2to4_mma.h.
#pragma once

#include <cuda_fp16.h>
#include <cstdint>

#ifdef EDGEVLA_CUDA_EMULATE
#include "cuda/emulate/ptx_emulate.h"  // the same functions for host tests (cuda_emulate.h)
#else
namespace edgevla::cuda::ptx {

__device__ __forceinline__ void mma_s8_m16n8k32(int32_t (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_f16_m16n8k16(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                 uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Any bitwise function of three words, bit by bit: kLut is the function's
// truth table evaluated on a = 0xF0, b = 0xCC, c = 0xAA.
template <int kLut>
__device__ __forceinline__ uint32_t lop3(uint32_t a, uint32_t b, uint32_t c) {
    uint32_t d;
    asm("lop3.b32 %0, %1, %2, %3, %4;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c), "n"(kLut));
    return d;
}

// 2:4 sparse A (16 x 64 logical, 16 x 32 stored), dense B (64 x 8). Sparsity
// selector 0: all four threads of a quad hold metadata.
__device__ __forceinline__ void mma_sp_s8_m16n8k64(int32_t (&d)[4], const uint4& a, const uint4& b, uint32_t meta) {
    asm volatile(
        "mma.sp::ordered_metadata.sync.aligned.m16n8k64.row.col.s32.s8.s8.s32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b.x), "r"(b.y), "r"(b.z), "r"(b.w), "r"(meta));
}

// 2:4 sparse A (16 x 32 logical f16, 16 x 16 stored), dense B (32 x 8 f16),
// float32 accumulators. Sparsity selector 0: threads 0 and 1 of each quad
// hold metadata.
__device__ __forceinline__ void mma_sp_f16_m16n8k32(float (&d)[4], const uint4& a, const uint4& b, uint32_t meta) {
    asm volatile(
        "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b.x), "r"(b.y), "r"(b.z), "r"(b.w), "r"(meta));
}

__device__ __forceinline__ uint32_t smem_address(const void* pointer) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

// Four 8x8 matrices of 16-bit elements (here: 8 rows x 16 int8): lanes 8i..8i+7
// give the row addresses of matrix i; register i receives matrix i.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row_address) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_address(row_address)));
}

// 16 bytes global -> shared, bypassing L1; bytes past src_bytes (0 or 16)
// are zero-filled, so out-of-range rows need no branch.
__device__ __forceinline__ void cp_async_16(void* smem, const void* global, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(smem)), "l"(global),
                 "r"(src_bytes));
}
// 4 bytes global -> shared (through L1: .ca is the only form for 4 bytes).
__device__ __forceinline__ void cp_async_4(void* smem, const void* global, int src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_address(smem)), "l"(global),
                 "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// Predicated 16-byte loads through the read-only path, zero when !pred. As
// volatile asm they keep their place in program order: a kernel that issues a
// batch of them before its first MMA keeps the whole batch in flight (plain
// C++ loads behind `if`s compiled to branches that ptxas serialized).
//   ldg_v4         activations (may be re-read by other warps: cached in L1)
//   ldg_stream_v4  weights, read once: no L1 allocation, 256-byte L2 prefetch
// bar.sync id, threads: waits for `threads` threads (a multiple of 32) at
// named barrier `id` (1..15; 0 is __syncthreads').
template <int kThreads>
__device__ __forceinline__ void bar_sync(int id) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "n"(kThreads) : "memory");
}

__device__ __forceinline__ uint4 ldg_v4(const void* pointer, bool pred) {
    uint4 v;
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, %5, 0;\n"
        " mov.b32 %0, 0;\n mov.b32 %1, 0;\n mov.b32 %2, 0;\n mov.b32 %3, 0;\n"
        " @p ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];\n}\n"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(pointer), "r"(static_cast<int>(pred)));
    return v;
}

__device__ __forceinline__ uint4 ldg_stream_v4(const void* pointer, bool pred) {
    uint4 v;
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, %5, 0;\n"
        " mov.b32 %0, 0;\n mov.b32 %1, 0;\n mov.b32 %2, 0;\n mov.b32 %3, 0;\n"
        " @p ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];\n}\n"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(pointer), "r"(static_cast<int>(pred)));
    return v;
}

// The same for 8 bytes.
__device__ __forceinline__ uint2 ldg_stream_v2(const void* pointer, bool pred) {
    uint2 v;
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, %3, 0;\n mov.b32 %0, 0;\n mov.b32 %1, 0;\n"
        " @p ld.global.nc.L1::no_allocate.L2::256B.v2.u32 {%0, %1}, [%2];\n}\n"
        : "=r"(v.x), "=r"(v.y)
        : "l"(pointer), "r"(static_cast<int>(pred)));
    return v;
}

// The same for one word, `otherwise` when !pred.
__device__ __forceinline__ uint32_t ldg_stream_u32(const void* pointer, bool pred, uint32_t otherwise) {
    uint32_t v;
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, %2, 0;\n mov.b32 %0, %3;\n"
        " @p ld.global.nc.L1::no_allocate.u32 %0, [%1];\n}\n"
        : "=r"(v)
        : "l"(pointer), "r"(static_cast<int>(pred)), "r"(otherwise));
    return v;
}

}  // namespace edgevla::cuda::ptx
#endif
