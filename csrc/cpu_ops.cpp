#include "cpu_ops.h"

#include "dispatch.h"
#include "thread_pool.h"

#include <atomic>

namespace edgevla {
namespace {

// Below this many multiply-adds a GEMM runs on the calling thread: waking the
// workers costs more than it saves.
constexpr int64_t kMinParallelMacs = int64_t{1} << 18;
// Below this many elements quantization runs on the calling thread.
constexpr int64_t kMinParallelElements = int64_t{1} << 15;

int64_t split_point(int64_t units, int part, int parts) { return units * part / parts; }

struct GemmJob {
    const GemmPackedArgs* args;
    GemmPackedS8F32Kernel kernel;
    bool split_rows;
};

void run_gemm_part(void* context, int part, int parts) {
    const GemmJob& job = *static_cast<const GemmJob*>(context);
    const GemmPackedArgs& args = *job.args;
    if (job.split_rows) {
        job.kernel(args, split_point(args.m, part, parts), split_point(args.m, part + 1, parts), 0,
                   args.w.n_blocks);
    } else {
        job.kernel(args, 0, args.m, split_point(args.w.n_blocks, part, parts),
                   split_point(args.w.n_blocks, part + 1, parts));
    }
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

}  // namespace

void gemm_packed_s8_f32(const GemmPackedArgs& args) {
    if (args.m == 0 || args.w.n == 0) return;
    ThreadPool& pool = ThreadPool::global();
    const int threads = pool.num_threads();
    const int64_t macs = args.m * args.w.n_blocks * EDGEVLA_PACKED_S8_BLOCK_N * args.w.k;
    // Split the dimension with more units; output blocks first, since each
    // thread then streams only its own slice of the weights.
    const bool split_rows = args.w.n_blocks < threads && args.m > args.w.n_blocks;
    const int64_t units = split_rows ? args.m : args.w.n_blocks;
    const int parts = macs < kMinParallelMacs ? 1 : static_cast<int>(units < threads ? units : threads);
    GemmJob job{&args, active_isa().gemm_packed_s8_f32, split_rows};
    pool.run(parts, run_gemm_part, &job);
}

int64_t quantize_per_token(int64_t m, int64_t k, const float* x, int64_t ldx, int8_t* q, int64_t ldq,
                           float* scale) {
    ThreadPool& pool = ThreadPool::global();
    const int threads = pool.num_threads();
    QuantizeJob job{m, k, ldx, ldq, x, q, scale, active_isa().quantize_row, {-1}};
    const int parts = m * k < kMinParallelElements ? 1 : static_cast<int>(m < threads ? m : threads);
    if (m > 0) pool.run(parts, run_quantize_part, &job);
    return job.first_bad_row.load();
}

}  // namespace edgevla
