// The baseline reference of gated_f32.h, and the threaded dispatch of the
// kernel tables' copies (gated_rows.h, compiled per ISA under arch/).
#include "gated_f32.h"

#include "dispatch.h"
#include "gated_rows.h"
#include "thread_pool.h"

#include <algorithm>

namespace edgevla {
namespace {

struct GatedTask {
    const GatedF32Args* args;
    GatedF32Kernel kernel;
};

void run_part(void* context, int part, int parts) {
    const auto& task = *static_cast<const GatedTask*>(context);
    const int64_t m = task.args->m;
    const int64_t first = m * part / parts, last = m * (part + 1) / parts;
    if (first < last) task.kernel(*task.args, first, last);
}

}  // namespace

void gated_f32(const GatedF32Args& args) {
    if (args.m == 0 || args.n == 0) return;
    GatedTask task{&args, active_isa().gated_f32};
    ThreadPool& pool = ThreadPool::global();
    // ~20 flops a value; below ~2^15 values per thread the hand-off costs more than it saves.
    const int64_t by_work = std::max<int64_t>(1, (args.m * args.n) >> 15);
    const int parts = static_cast<int>(std::min<int64_t>({pool.num_threads(), args.m, by_work}));
    if (parts <= 1) {
        task.kernel(args, 0, args.m);
        return;
    }
    pool.run(parts, run_part, &task);
}

void gated_f32_ref(const GatedF32Args& args) { gated_f32_rows(args, 0, args.m); }

}  // namespace edgevla
