// Stress test of ThreadPool's hand-off (thread_pool.h), built with
// ThreadSanitizer by tests/native/run_sanitizers.sh: runs of every part count
// with the workers polling (spin_us > 0), asleep (0), and at the edge between
// the two (a spin that expires while a run is published), with and without
// gaps between runs, from two caller threads at once, with more busy threads
// than cores, across resizes. Every
// part must run exactly once per run, and a lost wake-up shows as a hang,
// which the caller's timeout turns into a failure.
#include "thread_pool.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

namespace {

using edgevla::ThreadPool;

constexpr int kMaxParts = 4;

struct Tally {
    std::atomic<int> runs[kMaxParts];
    int parts = 0;
};

void count_part(void* context, int part, int parts) {
    Tally& tally = *static_cast<Tally*>(context);
    if (parts != tally.parts || part < 0 || part >= parts) {
        std::printf("FAIL thread pool: part %d of %d, expected parts %d\n", part, parts, tally.parts);
        std::abort();
    }
    tally.runs[part].fetch_add(1, std::memory_order_relaxed);
}

// `runs` runs of `parts` parts; a pause of `gap_us` before every other one.
int run_many(ThreadPool& pool, int runs, int parts, int gap_us) {
    int failures = 0;
    for (int i = 0; i < runs; ++i) {
        if (gap_us > 0 && i % 2 == 1) std::this_thread::sleep_for(std::chrono::microseconds(gap_us));
        Tally tally;
        tally.parts = parts < pool.num_threads() ? parts : pool.num_threads();
        for (std::atomic<int>& count : tally.runs) count.store(0);
        pool.run(parts, count_part, &tally);
        for (int part = 0; part < kMaxParts; ++part) {
            const int expected = part < tally.parts ? 1 : 0;
            if (tally.runs[part].load() != expected) {
                std::printf("FAIL thread pool: part %d ran %d times (run %d, parts %d, gap %d us, spin %lld us)\n",
                            part, tally.runs[part].load(), i, parts, gap_us, static_cast<long long>(pool.spin_us()));
                ++failures;
            }
        }
    }
    return failures;
}

}  // namespace

int main() {
    int failures = 0;
    ThreadPool pool(kMaxParts);
    const std::atomic<bool>* done_flag = nullptr;
    std::atomic<bool> done{false};
    done_flag = &done;
    // A watchdog: a lost wake-up hangs a run forever.
    std::thread watchdog([done_flag] {
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
        while (!done_flag->load()) {
            if (std::chrono::steady_clock::now() > deadline) {
                std::printf("FAIL thread pool: a run did not finish within 120 s (lost wake-up)\n");
                std::fflush(stdout);
                std::_Exit(1);
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
    });

    for (const int64_t spin : {int64_t{200}, int64_t{0}, int64_t{1}, int64_t{20}}) {
        pool.set_spin_us(spin);
        for (int parts = 1; parts <= kMaxParts; ++parts) {
            for (const int gap : {0, 5, 30, 300}) failures += run_many(pool, 60, parts, gap);
        }
    }
    // Two callers at once: runs are serialised, each sees all of its parts.
    pool.set_spin_us(10);
    std::atomic<int> concurrent_failures{0};
    std::thread other([&] { concurrent_failures += run_many(pool, 300, 3, 7); });
    failures += run_many(pool, 300, 4, 3);
    other.join();
    failures += concurrent_failures.load();
    // More runnable threads than cores: busy threads of another "library" keep the workers from
    // their cores, so the caller claims most parts itself.
    {
        std::atomic<bool> busy{true};
        std::vector<std::thread> hogs;
        for (unsigned i = 0; i < std::thread::hardware_concurrency() + 1; ++i) {
            hogs.emplace_back([&busy] {
                while (busy.load(std::memory_order_relaxed)) {
                }
            });
        }
        for (const int64_t spin : {int64_t{200}, int64_t{0}}) {
            pool.set_spin_us(spin);
            failures += run_many(pool, 200, kMaxParts, 0);
        }
        busy.store(false);
        for (std::thread& hog : hogs) hog.join();
    }
    // Resizes between runs, the workers polling or asleep.
    for (int round = 0; round < 20; ++round) {
        pool.set_spin_us(round % 2 == 0 ? 50 : 0);
        pool.set_num_threads(1 + round % kMaxParts);
        failures += run_many(pool, 10, kMaxParts, round % 3 == 0 ? 100 : 0);
    }

    done.store(true);
    watchdog.join();
    if (failures == 0) std::printf("thread pool: every part ran once per run, polling, asleep and in between\n");
    return failures == 0 ? 0 : 1;
}
