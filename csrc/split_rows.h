// Rows [0, m) of a row kernel, split over the thread pool in contiguous runs
// when each thread would get at least 2^min_log2 values, else on the calling
// thread: what the element-wise row kernels (gated_f32, rotary_f32) share.
#pragma once

#include "thread_pool.h"

#include <algorithm>
#include <cstdint>

namespace edgevla {

template <typename Args>
void split_rows(const Args& args, void (*kernel)(const Args&, int64_t, int64_t), int64_t m, int64_t values,
                int min_log2) {
    if (m == 0 || values == 0) return;
    struct Task {
        const Args* args;
        void (*kernel)(const Args&, int64_t, int64_t);
        int64_t m;
        static void run(void* context, int part, int parts) {
            const auto& task = *static_cast<const Task*>(context);
            const int64_t first = task.m * part / parts, last = task.m * (part + 1) / parts;
            if (first < last) task.kernel(*task.args, first, last);
        }
    } task{&args, kernel, m};
    ThreadPool& pool = ThreadPool::global();
    const int64_t by_work = std::max<int64_t>(1, values >> min_log2);
    const int parts = static_cast<int>(std::min<int64_t>({pool.num_threads(), m, by_work}));
    if (parts <= 1) {
        kernel(args, 0, m);
        return;
    }
    pool.run(parts, Task::run, &task);
}

}  // namespace edgevla
