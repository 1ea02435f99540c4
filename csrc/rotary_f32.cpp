// The baseline reference of rotary_f32.h, and the threaded dispatch of the
// kernel tables' copies (rotary_rows.h, compiled per ISA under arch/).
#include "rotary_f32.h"

#include "dispatch.h"
#include "rotary_rows.h"
#include "thread_pool.h"

#include <algorithm>

namespace edgevla {
namespace {

struct RotaryTask {
    const RotaryF32Args* args;
    RotaryF32Kernel kernel;
};

void run_part(void* context, int part, int parts) {
    const auto& task = *static_cast<const RotaryTask*>(context);
    const int64_t m = task.args->m;
    const int64_t first = m * part / parts, last = m * (part + 1) / parts;
    if (first < last) task.kernel(*task.args, first, last);
}

}  // namespace

void rotary_f32(const RotaryF32Args& args) {
    if (args.m == 0 || args.d == 0) return;
    RotaryTask task{&args, active_isa().rotary_f32};
    ThreadPool& pool = ThreadPool::global();
    // 3 flops a value: below ~2^16 values per thread the hand-off costs more than it saves.
    const int64_t by_work = std::max<int64_t>(1, (args.m * args.d) >> 16);
    const int parts = static_cast<int>(std::min<int64_t>({pool.num_threads(), args.m, by_work}));
    if (parts <= 1) {
        task.kernel(args, 0, args.m);
        return;
    }
    pool.run(parts, run_part, &task);
}

void rotary_f32_ref(const RotaryF32Args& args) { rotary_f32_rows(args, 0, args.m); }

}  // namespace edgevla
