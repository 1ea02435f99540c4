#include "cpu_ops.h"

#include "dispatch.h"
#include "epilogue_math.h"
#include "layer_norm_s8.h"
#include "thread_pool.h"

#include <atomic>
#include <type_traits>
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

// Every packed format's output blocks are 16 channels wide.
constexpr int64_t kBlockN = 16;
static_assert(EDGEVLA_PACKED_S8_BLOCK_N == kBlockN && EDGEVLA_PACKED_SPARSE_SLICE == kBlockN &&
              EDGEVLA_PACKED_2TO4_BLOCK_N == kBlockN, "the output stage assumes 16-wide output blocks");
// With an output stage, a part's rows go through the kernel this many at a
// time (a multiple of the row tiles: 8 rows, 16 on AMX), each slab finished
// while it is in L1/L2: 64 rows x 256 channels of float are 64 KiB.
constexpr int64_t kStageRows = 64;

// One packed GEMM split into tiles of rows x output blocks.
template <typename Args>
struct GemmJob {
    const Args* args;
    TileKernel<Args> kernel;
    int64_t m, n, n_blocks;
    bool split_rows;
    const GemmOutputStage* stage;  // nullptr: none
    const WindowSource* windows;   // nullptr: A is args.a
};

// The GEMMs whose A is int8 codes, which a WindowSource can supply.
template <typename Args>
constexpr bool kTakesWindows = std::is_same_v<Args, GemmPackedArgs> || std::is_same_v<Args, GemmSparseS8Args> ||
                               std::is_same_v<Args, Gemm2to4S8Args>;

// Runs rows [row_begin, row_end) x blocks [block_begin, block_end) with A's
// rows gathered from the windows into this thread's buffer: the kernel sees a
// GEMM of those rows alone (A, C, the residual and per-token scales moved to
// the slab's first row).
template <typename Args>
void run_window_slab(const GemmJob<Args>& job, int64_t row_begin, int64_t row_end, int64_t block_begin,
                     int64_t block_end) {
    if constexpr (kTakesWindows<Args>) {
        thread_local std::vector<int8_t> slab;
        const Args& args = *job.args;
        const int64_t k = args.w.k, rows = row_end - row_begin;
        if (slab.size() < static_cast<size_t>(rows * k)) slab.resize(static_cast<size_t>(rows * k));
        gather_window_rows(job.windows->geometry, 1, reinterpret_cast<const uint8_t*>(job.windows->x), row_begin,
                           row_end, reinterpret_cast<uint8_t*>(slab.data()));
        Args part = args;
        part.m = rows;
        part.a = slab.data();
        part.lda = k;
        part.c = args.c + row_begin * args.ldc;
        if (part.epilogue.a_scale_mode == EDGEVLA_ACT_SCALE_PER_TOKEN) part.epilogue.a_scale += row_begin;
        if (part.epilogue.residual != nullptr) part.epilogue.residual += row_begin * part.epilogue.ld_residual;
        job.kernel(part, 0, rows, block_begin, block_end);
    }
}

// The output stage (cpu_ops.h) on rows [row_begin, row_end) x columns [col_begin, col_end) of c.
void finish_tile(const GemmOutputStage& stage, float* c, int64_t ldc, int64_t row_begin, int64_t row_end,
                 int64_t col_begin, int64_t col_end) {
    const int64_t cols = col_end - col_begin;
    if (stage.relu) {
        for (int64_t row = row_begin; row < row_end; ++row) {
            float* __restrict y = c + row * ldc + col_begin;
            for (int64_t i = 0; i < cols; ++i) y[i] = edgevla_relu_f32(y[i]);
        }
    }
    if (stage.codes != nullptr) {
        QuantizeS8Args q;
        q.m = row_end - row_begin;
        q.k = cols;
        q.x = c + row_begin * ldc + col_begin;
        q.ldx = ldc;
        q.scale = stage.scale;
        q.q = stage.codes + row_begin * stage.ldq + col_begin;
        q.ldq = stage.ldq;
        active_isa().quantize_s8(q);
    }
}

template <typename Args>
void run_gemm_part(void* context, int part, int parts) {
    const GemmJob<Args>& job = *static_cast<const GemmJob<Args>*>(context);
    int64_t row_begin = 0, row_end = job.m, block_begin = 0, block_end = job.n_blocks;
    if (job.split_rows) {
        row_begin = row_split_point(job.m, part, parts);
        row_end = row_split_point(job.m, part + 1, parts);
    } else {
        block_begin = split_point(job.n_blocks, part, parts);
        block_end = split_point(job.n_blocks, part + 1, parts);
    }
    if (job.stage == nullptr && job.windows == nullptr) {
        job.kernel(*job.args, row_begin, row_end, block_begin, block_end);
        return;
    }
    const int64_t col_end = block_end * kBlockN < job.n ? block_end * kBlockN : job.n;
    for (int64_t row = row_begin; row < row_end; row += kStageRows) {
        const int64_t end = row_end - row < kStageRows ? row_end : row + kStageRows;
        if (job.windows != nullptr) {
            run_window_slab(job, row, end, block_begin, block_end);
        } else {
            job.kernel(*job.args, row, end, block_begin, block_end);
        }
        if (job.stage != nullptr) {
            finish_tile(*job.stage, job.args->c, job.args->ldc, row, end, block_begin * kBlockN, col_end);
        }
    }
}

// Runs kernel over m rows x n_blocks blocks of 16 of the n output channels,
// `macs` being the multiply-adds it does (which decides whether threads pay
// off), then the output stage if it is active.
template <typename Args>
void run_gemm(TileKernel<Args> kernel, const Args& args, int64_t m, int64_t n, int64_t n_blocks, int64_t macs,
              const GemmOutputStage& stage = {}, const WindowSource* windows = nullptr) {
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
    GemmJob<Args> job{&args, kernel, m, n, n_blocks, split_rows, stage.active() ? &stage : nullptr, windows};
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

void gemm_packed_s8_f32(const GemmPackedArgs& args, const GemmOutputStage& stage, const WindowSource* windows) {
    if (args.w.n == 0) return;
    run_gemm(active_isa().gemm_packed_s8_f32, args, args.m, args.w.n, args.w.n_blocks,
             args.m * args.w.n_blocks * EDGEVLA_PACKED_S8_BLOCK_N * args.w.k, stage, windows);
}

void gemm_sparse_f32(const GemmSparseF32Args& args) {
    run_gemm(active_isa().gemm_sparse_f32, args, args.m, args.w.n, args.w.n_slices,
             args.m * static_cast<int64_t>(args.w.slots) * kSparseMacsPerSlot);
}

void gemm_sparse_s8(const GemmSparseS8Args& args, const GemmOutputStage& stage, const WindowSource* windows) {
    run_gemm(active_isa().gemm_sparse_s8, args, args.m, args.w.n, args.w.n_slices,
             args.m * static_cast<int64_t>(args.w.slots) * kSparseMacsPerSlot, stage, windows);
}

void gemm_2to4_f32(const Gemm2to4F32Args& args) {
    run_gemm(active_isa().gemm_2to4_f32, args, args.m, args.w.n, args.w.n_blocks,
             args.m * args.w.n_blocks * args.w.k_blocks * k2to4MacsPerCell);
}

void gemm_2to4_s8(const Gemm2to4S8Args& args, const GemmOutputStage& stage, const WindowSource* windows) {
    run_gemm(active_isa().gemm_2to4_s8, args, args.m, args.w.n, args.w.n_blocks,
             args.m * args.w.n_blocks * args.w.k_blocks * k2to4MacsPerCell, stage, windows);
}

void gemm_w4_f32(const GemmW4F32Args& args) {
    run_gemm(active_isa().gemm_w4_f32, args, args.m, args.w.n, args.w.n_blocks,
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
        run_gemm(isa.gemm_w4a8_f32, part, rows, w.n, w.n_blocks, rows * w.n_blocks * EDGEVLA_PACKED_W4_BLOCK_N * w.k);
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
