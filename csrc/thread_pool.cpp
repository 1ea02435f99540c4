#include "thread_pool.h"

#include "cpu_kernels.h"
#include "cpu_topology.h"

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <new>

namespace edgevla {
namespace {

// The pool the fork handlers act on: the global pool while it lives.
std::atomic<ThreadPool*> fork_pool{nullptr};

void prepare_fork() {
    if (ThreadPool* pool = fork_pool.load()) pool->before_fork();
}
void parent_after_fork() {
    if (ThreadPool* pool = fork_pool.load()) pool->after_fork_in_parent();
}
void child_after_fork() {
    if (ThreadPool* pool = fork_pool.load()) pool->after_fork_in_child();
}

// One iteration of a polling loop: tells the core that this is a spin-wait
// (x86 pause, Arm yield), which frees its pipeline and saves power.
// Polling iterations of cpu_relax() before a poll yields the core on each (a few microseconds).
constexpr unsigned kPauseIterations = 256;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
    __asm__ __volatile__("yield");
#endif
}

}  // namespace

int hardware_threads() {
    const unsigned count = std::thread::hardware_concurrency();
    return count == 0 ? 1 : static_cast<int>(count);
}

uint8_t* thread_scratch(size_t bytes) {
    thread_local std::vector<uint8_t> buffer;
    if (buffer.size() < bytes) buffer.resize(bytes);
    return buffer.data();
}

ThreadPool& ThreadPool::global() {
    static ThreadPool pool(default_threads());  // one per physical core this process may use (cpu_topology.h)
    static const bool fork_safe = [] {
        fork_pool.store(&pool);
        return pthread_atfork(prepare_fork, parent_after_fork, child_after_fork) == 0;
    }();
    (void)fork_safe;  // without handlers (ENOMEM) the pool still works, only not across fork
    return pool;
}

ThreadPool::ThreadPool(int threads) { start_workers(threads); }

ThreadPool::~ThreadPool() {
    ThreadPool* self = this;
    fork_pool.compare_exchange_strong(self, nullptr);
    std::lock_guard<std::mutex> run_lock(run_mutex_);
    stop_workers();  // after a fork with no run since, there are none to stop
}

void ThreadPool::before_fork() {
    // The order of run(): a kernel running now finishes first, and no worker
    // is inside the pool's state when the address space is copied.
    run_mutex_.lock();
    mutex_.lock();
}

void ThreadPool::after_fork_in_parent() {
    mutex_.unlock();
    run_mutex_.unlock();
}

void ThreadPool::after_fork_in_child() {
    // Only this thread exists here. The parent's std::thread objects name
    // threads that are not in this process: destroying or joining them would
    // abort or hang, so they are moved aside and never touched again (a few
    // bytes, once per fork). The locks and condition variables are made anew:
    // this thread holds the locks (before_fork), and the condition variables
    // may count waiters that no longer exist.
    static_cast<void>(new std::vector<std::thread>(std::move(workers_)));
    workers_.clear();
    new (&run_mutex_) std::mutex();
    new (&mutex_) std::mutex();
    new (&wake_) std::condition_variable();
    new (&done_) std::condition_variable();
    pending_.store(0);
    stopping_.store(false);
    sleepers_ = 0;
    forked_ = true;  // threads_ is kept; the next run starts that many workers
}

void ThreadPool::restart_workers_if_forked() {
    if (!forked_) return;
    forked_ = false;
    start_workers(threads_);
}

void ThreadPool::set_spin_us(int64_t microseconds) { spin_us_.store(microseconds < 0 ? 0 : microseconds); }

int64_t ThreadPool::spin_us() const { return spin_us_.load(std::memory_order_relaxed); }

template <typename Done>
bool ThreadPool::poll(Done done) const {
    using Clock = std::chrono::steady_clock;
    const int64_t microseconds = spin_us();
    if (microseconds <= 0) return done();
    const Clock::time_point deadline = Clock::now() + std::chrono::microseconds(microseconds);
    for (unsigned i = 1;; ++i) {
        if (done()) return true;
        if (i < kPauseIterations) {
            cpu_relax();
        } else {
            // Past the first microseconds, let any other thread that wants this core run: with more
            // runnable threads than cores (another process, or another library's spinning pool) the
            // thread this one waits for may be waiting for the core.
            std::this_thread::yield();
        }
        if (i % 64 == 0 && Clock::now() >= deadline) return done();  // the clock read costs ~20 ns
    }
}

int ThreadPool::num_threads() {
    std::lock_guard<std::mutex> lock(mutex_);
    return threads_;
}

void ThreadPool::set_num_threads(int threads) {
    std::lock_guard<std::mutex> run_lock(run_mutex_);
    forked_ = false;  // the parent's workers are gone already; start the new count below
    stop_workers();
    start_workers(threads);
}

void ThreadPool::start_workers(int threads) {
    uint64_t generation;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        threads_ = threads < 1 ? 1 : threads;
        stopping_.store(false);
        generation = generation_.load();
    }
    workers_.reserve(static_cast<size_t>(threads_ - 1));
    // A worker must compare against the generation of its birth, not of its
    // first look: a run may start before the new thread is scheduled.
    for (int part = 1; part < threads_; ++part) {
        workers_.emplace_back(&ThreadPool::worker_loop, this, generation);
    }
}

void ThreadPool::stop_workers() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stopping_.store(true);
    }
    wake_.notify_all();
    for (std::thread& worker : workers_) worker.join();
    workers_.clear();
}

void ThreadPool::run(int parts, Task task, void* context) {
    std::lock_guard<std::mutex> run_lock(run_mutex_);
    restart_workers_if_forked();
    if (parts > threads_) parts = threads_;
    if (parts <= 1) {
        task(context, 0, 1);
        return;
    }
    uint64_t generation;
    bool sleepers;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        task_ = task;
        context_ = context;
        parts_ = parts;
        pending_.store(parts, std::memory_order_relaxed);
        generation = (generation_.load(std::memory_order_relaxed) + 1) & kGenerationMask;
        claim_.store(generation << kPartBits, std::memory_order_relaxed);
        generation_.store(generation, std::memory_order_release);
        // A worker counts itself and checks generation_ under this lock before it sleeps, so a
        // worker not counted here sees the new generation.
        sleepers = sleepers_ > 0;
    }
    if (sleepers) wake_.notify_all();
    run_parts(generation, task, context, parts);
    const auto finished = [this] { return pending_.load(std::memory_order_acquire) == 0; };
    if (poll(finished)) return;
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, finished);
}

void ThreadPool::run_parts(uint64_t generation, Task task, void* context, int parts) {
    uint64_t claim = claim_.load(std::memory_order_acquire);
    for (;;) {
        const int part = static_cast<int>(claim & kPartMask);
        if ((claim >> kPartBits) != generation || part >= parts) return;  // a later run's claims, or none left
        if (!claim_.compare_exchange_weak(claim, claim + 1, std::memory_order_acq_rel, std::memory_order_acquire)) {
            continue;  // another thread claimed first; `claim` is the new value
        }
        task(context, part, parts);
        if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
            // Under the lock: a caller that saw pending_ > 0 under it is waiting on done_ by now.
            std::lock_guard<std::mutex> lock(mutex_);
            done_.notify_one();
        }
        claim = claim_.load(std::memory_order_acquire);
    }
}

void ThreadPool::worker_loop(uint64_t seen) {
    const auto woken = [&] {
        return stopping_.load(std::memory_order_acquire) || generation_.load(std::memory_order_acquire) != seen;
    };
    for (;;) {
        Task task;
        void* context;
        int parts;
        {
            std::unique_lock<std::mutex> lock(mutex_, std::defer_lock);
            if (!poll(woken)) {
                lock.lock();
                ++sleepers_;
                wake_.wait(lock, woken);
                --sleepers_;
            } else {
                lock.lock();
            }
            if (stopping_.load()) return;
            seen = generation_.load();
            task = task_;
            context = context_;
            parts = parts_;
        }
        run_parts(seen, task, context, parts);
    }
}

}  // namespace edgevla
