#include "cpu_ops.h"

#include "dispatch.h"
#include "thread_pool.h"

#include <atomic>
#include <vector>

namespace edgevla {
namespace {

// The least work per GEMM thread (cpu_ops.h), kDefaultMinMacsPerThread unless set.
std::atomic<int64_t> g_min_macs_per_thread{kDefaultMinMacsPerThread};
// Multiply-adds of one sparse slot (16 lanes) and of one 2:4 cell (16
// channels x 8 kept values).
constexpr int64_t kSparseMacsPerSlot = EDGEVLA_PACKED_SPARSE_SLICE;
constexpr int64_t k2to4MacsPerCell = EDGEVLA_PACKED_2TO4_BLOCK_N * 8;
// Each thread of a quantization gets at least this many elements.
constexpr int64_t kMinElementsPerThread = int64_t{1} << 15;

int64_t split_point(int64_t units, int part, int parts) { return units * part / parts; }

// split_point over rows, rounded to whole register tiles of kRowTile rows
// (the last part takes the rest), so that no part but the last ends in a thin tile.
constexpr int64_t kRowTile = 8;
int64_t row_split_point(int64_t m, int part, int parts) {
    if (part == parts) return m;
    const int64_t row = (m * part / parts + kRowTile / 2) / kRowTile * kRowTile;
    return row < m ? row : m;
}

// How many threads share `work` split into `units` pieces: at most one per
// unit and per thread, each with at least `min_per_thread` of the work.
int split_count(int64_t work, int64_t min_per_thread, int64_t units, int threads) {
    int64_t parts = work / min_per_thread;
    parts = parts < units ? parts : units;
    parts = parts < threads ? parts : threads;
    return parts < 1 ? 1 : static_cast<int>(parts);
}

// One packed GEMM split into tiles of rows x output blocks.
template <typename Args>
struct GemmJob {
    const Args* args;
    TileKernel<Args> kernel;
    int64_t m, n_blocks;
    bool split_rows;
};

template <typename Args>
void run_gemm_part(void* context, int part, int parts) {
    const GemmJob<Args>& job = *static_cast<const GemmJob<Args>*>(context);
    if (job.split_rows) {
        job.kernel(*job.args, row_split_point(job.m, part, parts), row_split_point(job.m, part + 1, parts), 0,
                   job.n_blocks);
    } else {
        job.kernel(*job.args, 0, job.m, split_point(job.n_blocks, part, parts),
                   split_point(job.n_blocks, part + 1, parts));
    }
}

// Runs kernel over m rows x n_blocks blocks of 16 output channels, `macs`
// being the multiply-adds it does (which decides whether threads pay off).
template <typename Args>
void run_gemm(TileKernel<Args> kernel, const Args& args, int64_t m, int64_t n_blocks, int64_t macs) {
    if (m == 0 || n_blocks == 0) return;
    ThreadPool& pool = ThreadPool::global();
    const int threads = pool.num_threads();
    // Output blocks, so that each thread streams only its own slice of the
    // weights, unless there are fewer blocks than threads or the rows outnumber
    // the output channels: then each thread stages only its own rows and reads
    // the (smaller) weights whole.
    const bool split_rows = (n_blocks < threads && m > n_blocks) || m >= 16 * n_blocks;
    const int64_t units = split_rows ? m : n_blocks;
    const int parts = gemm_part_count(macs, units, threads);
    GemmJob<Args> job{&args, kernel, m, n_blocks, split_rows};
    pool.run(parts, run_gemm_part<Args>, &job);
}

struct QuantizeJob {
    int64_t m, k, ldx, ldq;
    const float* x;
    int8_t* q;
    float* scale;
    QuantizeRowKernel kernel;
    std::atomic<int64_t> first_bad_row;
};

void run_quantize_part(void* context, int part, int parts) {
    QuantizeJob& job = *static_cast<QuantizeJob*>(context);
    const int64_t end = split_point(job.m, part + 1, parts);
    for (int64_t row = split_point(job.m, part, parts); row < end; ++row) {
        if (job.kernel(job.k, job.x + row * job.ldx, job.q + row * job.ldq, &job.scale[row])) continue;
        int64_t seen = job.first_bad_row.load();
        while ((seen < 0 || row < seen) && !job.first_bad_row.compare_exchange_weak(seen, row)) {
        }
        return;
    }
}

// ---- W4A8 ----

constexpr int64_t kW4CellK = EDGEVLA_PACKED_W4_CELL_K;
// Rows quantized at a time: the buffer holds about this many codes at most.
constexpr int64_t kW4A8ChunkBytes = int64_t{1} << 20;

// The calling thread's quantized rows, grown to the largest chunk it has seen.
struct W4A8Buffer {
    std::vector<int8_t> q;
    std::vector<float> scale;
    std::vector<int32_t> sum;
};

}  // namespace

void set_min_macs_per_thread(int64_t macs) { g_min_macs_per_thread.store(macs < 1 ? 1 : macs); }

int64_t min_macs_per_thread() { return g_min_macs_per_thread.load(); }

int gemm_part_count(int64_t macs, int64_t units, int threads) {
    return split_count(macs, g_min_macs_per_thread.load(std::memory_order_relaxed), units, threads);
}

void gemm_packed_s8_f32(const GemmPackedArgs& args) {
    if (args.w.n == 0) return;
    run_gemm(active_isa().gemm_packed_s8_f32, args, args.m, args.w.n_blocks,
             args.m * args.w.n_blocks * EDGEVLA_PACKED_S8_BLOCK_N * args.w.k);
}

void gemm_sparse_f32(const GemmSparseF32Args& args) {
    run_gemm(active_isa().gemm_sparse_f32, args, args.m, args.w.n_slices,
             args.m * static_cast<int64_t>(args.w.slots) * kSparseMacsPerSlot);
}

void gemm_sparse_s8(const GemmSparseS8Args& args) {
    run_gemm(active_isa().gemm_sparse_s8, args, args.m, args.w.n_slices,
             args.m * static_cast<int64_t>(args.w.slots) * kSparseMacsPerSlot);
}

void gemm_2to4_f32(const Gemm2to4F32Args& args) {
    run_gemm(active_isa().gemm_2to4_f32, args, args.m, args.w.n_blocks,
             args.m * args.w.n_blocks * args.w.k_blocks * k2to4MacsPerCell);
}

void gemm_2to4_s8(const Gemm2to4S8Args& args) {
    run_gemm(active_isa().gemm_2to4_s8, args, args.m, args.w.n_blocks,
             args.m * args.w.n_blocks * args.w.k_blocks * k2to4MacsPerCell);
}

void gemm_w4_f32(const GemmW4F32Args& args) {
    run_gemm(active_isa().gemm_w4_f32, args, args.m, args.w.n_blocks,
             args.m * args.w.n_blocks * EDGEVLA_PACKED_W4_BLOCK_N * args.w.k);
}

void gemm_w4a8_f32(const GemmW4F32Args& args) {
    const PackedW4View& w = args.w;
    if (args.m == 0 || w.n == 0) return;
    thread_local W4A8Buffer buffer;
    const int64_t ldq = w.k_cells * kW4CellK, ldg = w.k_groups;
    int64_t chunk = kW4A8ChunkBytes / (ldq > 0 ? ldq : 1);
    chunk = chunk < 1 ? 1 : chunk < args.m ? chunk : args.m;
    const size_t q_size = static_cast<size_t>(chunk * ldq), g_size = static_cast<size_t>(chunk * ldg);
    if (buffer.q.size() < q_size) buffer.q.resize(q_size);
    if (buffer.scale.size() < g_size) {
        buffer.scale.resize(g_size);
        buffer.sum.resize(g_size);
    }
    const IsaKernels& isa = active_isa();
    for (int64_t row = 0; row < args.m; row += chunk) {
        const int64_t rows = args.m - row < chunk ? args.m - row : chunk;
        isa.quantize_w4a8({rows, w.k, w.group, args.x + row * args.ldx, args.ldx, buffer.q.data(), buffer.scale.data(),
                           buffer.sum.data(), ldq, ldg});
        GemmW4A8Args part;
        part.w = w;
        part.m = rows;
        part.a = {buffer.q.data(), buffer.scale.data(), buffer.sum.data(), ldq, ldg};
        part.epilogue = args.epilogue;
        part.c = args.c + row * args.ldc;
        part.ldc = args.ldc;
        run_gemm(isa.gemm_w4a8_f32, part, rows, w.n_blocks, rows * w.n_blocks * EDGEVLA_PACKED_W4_BLOCK_N * w.k);
    }
}

int64_t quantize_per_token(int64_t m, int64_t k, const float* x, int64_t ldx, int8_t* q, int64_t ldq,
                           float* scale) {
    ThreadPool& pool = ThreadPool::global();
    const int threads = pool.num_threads();
    QuantizeJob job{m, k, ldx, ldq, x, q, scale, active_isa().quantize_row, {-1}};
    const int parts = split_count(m * k, kMinElementsPerThread, m, threads);
    if (m > 0) pool.run(parts, run_quantize_part, &job);
    return job.first_bad_row.load();
}

}  // namespace edgevla
