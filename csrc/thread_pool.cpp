#include "thread_pool.h"

namespace edgevla {

int hardware_threads() {
    const unsigned count = std::thread::hardware_concurrency();
    return count == 0 ? 1 : static_cast<int>(count);
}

ThreadPool& ThreadPool::global() {
    static ThreadPool pool(hardware_threads());
    return pool;
}

ThreadPool::ThreadPool(int threads) { start_workers(threads); }

ThreadPool::~ThreadPool() {
    std::lock_guard<std::mutex> run_lock(run_mutex_);
    stop_workers();
}

int ThreadPool::num_threads() {
    std::lock_guard<std::mutex> lock(mutex_);
    return threads_;
}

void ThreadPool::set_num_threads(int threads) {
    std::lock_guard<std::mutex> run_lock(run_mutex_);
    stop_workers();
    start_workers(threads);
}

void ThreadPool::start_workers(int threads) {
    uint64_t generation;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        threads_ = threads < 1 ? 1 : threads;
        stopping_ = false;
        generation = generation_;
    }
    workers_.reserve(static_cast<size_t>(threads_ - 1));
    // A worker must compare against the generation of its birth, not of its
    // first look: a run may start before the new thread is scheduled.
    for (int part = 1; part < threads_; ++part) {
        workers_.emplace_back(&ThreadPool::worker_loop, this, part, generation);
    }
}

void ThreadPool::stop_workers() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stopping_ = true;
    }
    wake_.notify_all();
    for (std::thread& worker : workers_) worker.join();
    workers_.clear();
}

void ThreadPool::run(int parts, Task task, void* context) {
    std::lock_guard<std::mutex> run_lock(run_mutex_);
    if (parts > threads_) parts = threads_;
    if (parts <= 1) {
        task(context, 0, 1);
        return;
    }
    {
        std::lock_guard<std::mutex> lock(mutex_);
        task_ = task;
        context_ = context;
        parts_ = parts;
        pending_ = parts - 1;
        ++generation_;
    }
    wake_.notify_all();
    task(context, 0, parts);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return pending_ == 0; });
}

void ThreadPool::worker_loop(int part, uint64_t seen) {
    for (;;) {
        Task task;
        void* context;
        int parts;
        {
            std::unique_lock<std::mutex> lock(mutex_);
            wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
            if (stopping_) return;
            seen = generation_;
            if (part >= parts_) continue;  // this run needs fewer threads
            task = task_;
            context = context_;
            parts = parts_;
        }
        task(context, part, parts);
        std::lock_guard<std::mutex> lock(mutex_);
        if (--pending_ == 0) done_.notify_one();
    }
}

}  // namespace edgevla
