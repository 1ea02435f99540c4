// A small persistent thread pool with a fixed thread count.
//
// Kernels split their work into `parts` (at most the thread count). The
// calling thread and the parked workers claim parts one at a time until none
// is left, so a worker that is slow to wake (its core busy with another
// process) leaves its part to the caller instead of holding the run up. Workers are
// created when the pool starts or is resized (and, in a forked child, before
// its first run), never during a run, and a run allocates nothing: the task
// is a function pointer and a context pointer.
// Runs are serialised (a second caller waits), so kernels called from several
// Python threads at once share the pool safely.
//
// Hand-off: a worker that finishes a part polls for the next run for
// spin_us() before it sleeps on a condition variable, and the caller polls for
// the parts it waits on as long before it sleeps. Waking a sleeping thread
// goes through the kernel's scheduler: on the 2-vCPU KVM build machine a run
// split over 2 threads cost ~42 us more than on one (futex wake and wait),
// more than half of a ~21M multiply-add convolution GEMM's 100 us, so
// splitting gained nothing. Polling, the same hand-off costs well under a
// microsecond (see the benchmarks README). A polling thread keeps its core busy
// for up to spin_us() after each run; 0 makes every wait a sleep.
//
// Fork safety: fork() copies only the calling thread, so a child forked after
// the pool started (multiprocessing, DataLoader workers, gunicorn) would wait
// forever for workers that do not exist. The global pool registers
// pthread_atfork handlers: before a fork it waits for a running kernel and
// holds its locks, so the child inherits them in a known state; in the child
// it forgets the parent's workers and starts its own at its first run, with
// the same thread count.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace edgevla {

class ThreadPool {
public:
    using Task = void (*)(void* context, int part, int parts);

    // The process-wide pool, started on first use with one thread per physical core the process may run on
    // (default_threads(), cpu_topology.h).
    static ThreadPool& global();

    explicit ThreadPool(int threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int num_threads();
    // Stops the workers and starts threads - 1 new ones (threads >= 1).
    void set_num_threads(int threads);

    // Runs task(context, p, parts) for p in [0, parts), parts in [1, num_threads()],
    // and returns when all are done.
    void run(int parts, Task task, void* context);

    // How long (microseconds, >= 0) a thread polls before it sleeps (above).
    static constexpr int64_t kDefaultSpinUs = 200;
    void set_spin_us(int64_t microseconds);
    int64_t spin_us() const;

    // The pthread_atfork handlers of global() (public only for them).
    void before_fork();
    void after_fork_in_parent();
    void after_fork_in_child();

private:
    void start_workers(int threads);
    void stop_workers();
    void restart_workers_if_forked();
    void worker_loop(uint64_t seen);
    // Claims and runs parts of run `generation` until none is left.
    void run_parts(uint64_t generation, Task task, void* context, int parts);
    // Polls until done() is true or spin_us() has passed; returns done().
    template <typename Done>
    bool poll(Done done) const;

    std::mutex run_mutex_;  // held for a whole run or resize
    std::mutex mutex_;      // guards the fields below; the atomics are written under it too
    std::condition_variable wake_;
    std::condition_variable done_;
    std::vector<std::thread> workers_;
    int threads_ = 1;
    // Bumped (release) once a run's task_, context_ and parts_ are set; polled without the lock.
    std::atomic<uint64_t> generation_{0};
    std::atomic<bool> stopping_{false};
    Task task_ = nullptr;
    void* context_ = nullptr;
    int parts_ = 0;
    std::atomic<int> pending_{0};  // parts of the current run not finished yet
    // The current run's generation in the high bits, its next unclaimed part in the low kPartBits: a
    // thread still claiming for a finished run sees another generation and claims nothing.
    static constexpr int kPartBits = 16;
    static constexpr uint64_t kPartMask = (uint64_t{1} << kPartBits) - 1;
    static constexpr uint64_t kGenerationMask = ~uint64_t{0} >> kPartBits;
    std::atomic<uint64_t> claim_{0};
    int sleepers_ = 0;             // workers waiting on wake_: a run notifies only when there are any
    bool forked_ = false;          // a child after fork: workers_ are the parent's, start new ones
    std::atomic<int64_t> spin_us_{kDefaultSpinUs};
};

// The machine's hardware threads (at least 1).
int hardware_threads();

}  // namespace edgevla
