// Runs CUDA kernel source on the CPU, one block at a time, for tests on
// machines without a GPU. Compiled by a host C++ compiler with
// EDGEVLA_CUDA_EMULATE defined (ptx_mma.cuh then takes its instructions from
// ptx_emulate.h).
//
// Each thread of a block is a fiber (ucontext) on one OS thread; a fiber runs
// until it reaches a collective (__syncthreads, bar.sync, a warp shuffle, an
// MMA, ldmatrix) and then hands over to the next one. So the kernel's own
// code runs: its indexing, its loop bounds, its fragment layouts, its
// reductions through shared memory. cp.async copies land either at issue or
// as late as the kernel's cp.async.wait_group allows (copy_landing): run both
// ways, a kernel that reads a stage before waiting for it, or refills one
// that other warps still read, computes wrong sums. Built with
// -fsanitize=thread it also reports every access a barrier does not order
// (below; tests add -fsanitize=undefined). What this cannot show: timing, or memory ordering between blocks
// (blocks run one after another).
//
// Build flags: -fno-strict-aliasing (kernels read a uint4 as __half2, as
// CUDA allows), -fno-extern-tls-init (`extern __shared__` arrays become
// thread_locals that the driver defines), -ffp-contract=off (the
// epilogues' float steps as the --fmad=false device build has them).
//
// Checks on the way:
//   * every lane of a warp must reach the same collectives in the same order
//     (a full-mask shuffle or an MMA under divergence is undefined on a GPU);
//     a mismatch, or a collective that some lanes never reach, stops the
//     program naming the block, warp and collective;
//   * a __syncthreads that some threads never reach is reported as a deadlock;
//   * every block's shared memory starts as 0xFF bytes (NaN, -1), not zeros
//     (poison_shared_memory).
// Buffers from guarded_alloc end at a page that cannot be read or written,
// so a kernel that touches one element past an output or input faults.
#pragma once

#ifndef EDGEVLA_CUDA_EMULATE
#error "cuda_emulate.h is for host builds of kernel source with EDGEVLA_CUDA_EMULATE defined"
#endif

// The CUDA headers first: they declare threadIdx and friends, which the
// macros below then replace.
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <vector_types.h>

#include <link.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <memory>
#include <vector>

// Built with -fsanitize=thread, the emulation is a race detector for the
// kernels (tests/test_cuda_emulated.py, the race check): each fiber is one of
// ThreadSanitizer's fibers, and the emulation tells it what orders memory on a
// GPU, which is only what the CUDA memory model says: __syncthreads and
// bar.sync order the threads that meet there; shuffles, MMAs and ldmatrix
// exchange registers and order nothing. A shared-memory (or global) access
// that no barrier orders against another thread's write is then reported,
// whatever order the fibers happened to run in. The emulation's own
// bookkeeping is hidden from it (Untracked); a block's accesses are ordered
// after the previous block's, since blocks reuse the same shared arrays.
#if defined(__SANITIZE_THREAD__)
extern "C" {
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_acquire(void* address);
void __tsan_release(void* address);
void __tsan_ignore_thread_begin(void);
void __tsan_ignore_thread_end(void);
}
#endif

// The fiber switches: not instrumented at all (a function's entry and exit
// would be counted on different fibers; a thread's last accesses come after it
// has released its writes to the host).
#if defined(__SANITIZE_THREAD__)
#define EDGEVLA_EMULATE_UNINSTRUMENTED __attribute__((no_sanitize_thread))
#else
#define EDGEVLA_EMULATE_UNINSTRUMENTED
#endif

namespace edgevla::cuda::emulate::race {
#if defined(__SANITIZE_THREAD__)
inline void* current_fiber() { return __tsan_get_current_fiber(); }
inline void* new_fiber() { return __tsan_create_fiber(0); }
// Uninstrumented: an instrumented call would enter on one fiber's shadow stack and leave on the other's.
EDGEVLA_EMULATE_UNINSTRUMENTED inline void switch_to(void* fiber) {
    __tsan_switch_to_fiber(fiber, 1 /* no synchronization */);
}
inline void release(void* sync) { __tsan_release(sync); }
inline void acquire(void* sync) { __tsan_acquire(sync); }
// The emulation's own state (slots, counters, copy queues) while it lives.
struct Untracked {
    Untracked() { __tsan_ignore_thread_begin(); }
    ~Untracked() { __tsan_ignore_thread_end(); }
    Untracked(const Untracked&) = delete;
    Untracked& operator=(const Untracked&) = delete;
};
#else
inline void* current_fiber() { return nullptr; }
inline void* new_fiber() { return nullptr; }
inline void switch_to(void*) {}
inline void release(void*) {}
inline void acquire(void*) {}
struct Untracked {
    Untracked() {}  // user-provided: a scope guard, not an unused variable
};
#endif
}  // namespace edgevla::cuda::emulate::race

// The kernel-source keywords a host compiler does not know (the CUDA headers
// define __device__ and friends for host compilers already).
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#ifndef __forceinline__
#define __forceinline__ inline
#endif
// One block runs at a time and all its fibers on one OS thread, so a block's
// shared arrays can be function-local thread_locals (static storage; and
// `extern __shared__` still parses, for kernels this build never runs).
#undef __shared__
#define __shared__ thread_local

namespace edgevla::cuda::emulate {

struct Index3 {
    unsigned x = 0, y = 0, z = 0;
};

[[noreturn]] inline void fail(const char* what) {
    std::fprintf(stderr, "cuda emulation: %s\n", what);
    std::fflush(stderr);
    std::_Exit(3);
}

// A warp collective in flight: what each lane brought, and what it gets back.
enum class Collective : int {
    none,
    shfl,
    mma_f16_m16n8k16,
    mma_s8_m16n8k32,
    mma_sp_f16_m16n8k32,
    mma_sp_s8_m16n8k64,
    ldmatrix_x4
};

struct LaneSlot {
    Collective kind = Collective::none;
    std::array<uint32_t, 16> in{};
};

// cp.async: copies a thread has issued and not yet seen land, by commit group.
struct AsyncCopy {
    void* dst;
    std::array<unsigned char, 16> bytes;
    int size;
};

// When an issued cp.async lands: at once (a later overwrite of a stage other
// threads still read shows), or as late as cp.async.wait_group allows (a read
// before the wait that covers it shows). Drivers run a kernel both ways.
enum class CopyLanding { at_issue, at_wait };
inline CopyLanding& copy_landing() {
    static CopyLanding landing = CopyLanding::at_wait;
    return landing;
}

struct Fiber {
    ucontext_t context{};
    std::vector<AsyncCopy> open_group;
    std::vector<std::vector<AsyncCopy>> committed;  // oldest first
    Index3 thread;
    bool done = false;
    const char* waiting_at = nullptr;          // the collective it waits in, if any
    const uint64_t* wait_generation = nullptr;  // ... and the generation that must move first
    uint64_t wait_value = 0;
    void* race_fiber = nullptr;  // ThreadSanitizer's, under -fsanitize=thread
};

// Thread i of every block runs on stack i (and is ThreadSanitizer's fiber i):
// made once, for the largest block so far, and kept for the program's life.
// A block's threads start once the previous block's have all returned.
struct ThreadResources {
    static constexpr size_t kStackBytes = 256 * 1024;
    std::unique_ptr<char[]> stack;
    void* race_fiber = nullptr;
};
inline ThreadResources& thread_resources(unsigned thread) {
    static std::vector<ThreadResources> pool;
    while (pool.size() <= thread) {
        pool.push_back({std::unique_ptr<char[]>(new char[ThreadResources::kStackBytes]), race::new_fiber()});
    }
    return pool[thread];
}

inline const char* name_of(Collective kind) {
    switch (kind) {
        case Collective::shfl: return "a shuffle";
        case Collective::mma_f16_m16n8k16: return "mma.m16n8k16.f16";
        case Collective::mma_s8_m16n8k32: return "mma.m16n8k32.s8";
        case Collective::mma_sp_f16_m16n8k32: return "mma.sp.m16n8k32.f16";
        case Collective::mma_sp_s8_m16n8k64: return "mma.sp.m16n8k64.s8";
        case Collective::ldmatrix_x4: return "ldmatrix.x4";
        default: return "nothing";
    }
}

class Block {
public:
    Block(Index3 block, Index3 block_dim, Index3 grid_dim, std::function<void()> body)
        : block_(block), block_dim_(block_dim), grid_dim_(grid_dim), body_(std::move(body)) {
        const unsigned threads = block_dim.x * block_dim.y * block_dim.z;
        if (threads == 0 || threads > 1024 || threads % 32 != 0) fail("block size must be a multiple of 32, <= 1024");
        fibers_.resize(threads);
        warps_.resize(threads / 32);
        for (unsigned i = 0; i < threads; ++i) {
            fibers_[i].thread = {i % block_dim.x, (i / block_dim.x) % block_dim.y, i / (block_dim.x * block_dim.y)};
            start_fiber(fibers_[i], i, &scheduler_);
        }
    }
    Block(const Block&) = delete;
    Block& operator=(const Block&) = delete;

    // Runs every thread to its end; stops the program on a deadlock.
    void run() {
        report_faults();
        race::Untracked untracked;
        host_fiber_ = race::current_fiber();
        race::release(&launch_sync_);  // what the host wrote before, every thread sees
        if (current_block() != nullptr) fail("a launch from inside a kernel (threads share their stacks)");
        current_block() = this;
        // The scheduler's state lives in members: locals would not survive swapcontext's second return.
        for (;;) {
            live_ = false;
            progress_ = false;
            const bool wake_all = wake_all_;
            wake_all_ = false;
            for (current_ = 0; current_ < fibers_.size(); ++current_) {
                const Fiber& f = fibers_[current_];
                if (f.done) continue;
                live_ = true;
                if (!wake_all && f.wait_generation != nullptr && *f.wait_generation == f.wait_value) continue;
                resume(fibers_[current_]);
            }
            if (!live_) break;
            if (!progress_) describe_deadlock();
        }
        race::acquire(&finish_sync_);  // and the host sees what every thread wrote
        current_block() = nullptr;
    }

    static Block*& current_block() {
        static Block* block = nullptr;
        return block;
    }
    const Index3& thread_idx() const { return fibers_[current_].thread; }
    const Index3& block_idx() const { return block_; }
    const Index3& block_dim() const { return block_dim_; }
    const Index3& grid_dim() const { return grid_dim_; }

    // __syncthreads: waits for every thread of the block that has not returned.
    void sync_threads() {
        race::Untracked untracked;
        arrive_and_wait(barrier_arrived_, barrier_generation_, [this] { return live_threads(); }, "__syncthreads",
                        nullptr, &barrier_sync_);
    }

    // bar.sync id, count: waits for `count` threads at barrier `id`.
    void named_barrier(int id, unsigned count) {
        race::Untracked untracked;
        if (id <= 0 || id >= 16 || count % 32 != 0) fail("bar.sync: id 1..15 and a multiple of 32 threads");
        Barrier& b = named_[id];
        arrive_and_wait(b.arrived, b.generation, [count] { return count; }, "bar.sync", nullptr, &b.sync);
    }

    // cp.async's commit groups, for the current thread. A landing is the
    // issuing thread's write into shared memory (what the race check sees).
    void copy_async(void* dst, const void* src, int size, int src_bytes) {
        AsyncCopy copy{dst, {}, size};
        std::memcpy(copy.bytes.data(), src, static_cast<size_t>(src_bytes));  // the rest stays zero
        if (copy_landing() == CopyLanding::at_issue) {
            std::memcpy(dst, copy.bytes.data(), static_cast<size_t>(size));
        } else {
            race::Untracked untracked;
            fibers_[current_].open_group.push_back(copy);
        }
    }
    void copy_commit() {
        race::Untracked untracked;
        Fiber& f = fibers_[current_];
        f.committed.push_back(std::move(f.open_group));
        f.open_group.clear();
    }
    void copy_wait(size_t pending) {
        std::vector<AsyncCopy> landing;
        {
            race::Untracked untracked;
            Fiber& f = fibers_[current_];
            while (f.committed.size() > pending) {
                landing.insert(landing.end(), f.committed.front().begin(), f.committed.front().end());
                f.committed.erase(f.committed.begin());
            }
        }
        for (const AsyncCopy& c : landing) std::memcpy(c.dst, c.bytes.data(), static_cast<size_t>(c.size));
    }

    // A warp collective: every lane deposits `in`, waits for the other 31, and
    // computes its own result from all 32 deposits (compute(slots, lane)).
    // Deposits alternate between two sets of slots by the warp's generation: a
    // lane can reach the next-but-one collective, which reuses this set, only
    // after every lane has arrived at the next one, so after all have read.
    template <typename Compute>
    void warp_collective(Collective kind, const std::array<uint32_t, 16>& in, Compute compute) {
        race::Untracked untracked;
        const unsigned thread = current_, lane = thread % 32;
        Warp& w = warps_[thread / 32];
        std::array<LaneSlot, 32>& slots = w.slots[w.generation % 2];
        slots[lane].kind = kind;
        slots[lane].in = in;
        arrive_and_wait(w.arrived, w.generation, [] { return 32u; }, name_of(kind), &w, nullptr);
        for (unsigned l = 0; l < 32; ++l) {
            if (slots[l].kind != kind) {
                char what[160];
                std::snprintf(what, sizeof(what),
                              "block (%u, %u) warp %u: lane %u and lane %u are at different collectives (divergence)",
                              block_.x, block_.y, thread / 32, lane, l);
                fail(what);
            }
        }
        compute(slots, lane);
    }

private:
    struct Barrier {
        unsigned arrived = 0;
        uint64_t generation = 0;
        char sync[2] = {};  // the race check's objects, by generation parity
    };
    struct Warp {
        std::array<std::array<LaneSlot, 32>, 2> slots;
        unsigned arrived = 0;
        uint64_t generation = 0;
    };

    // Outside the constructor's loop: getcontext may return twice as far as the compiler knows.
    static void start_fiber(Fiber& f, unsigned thread, ucontext_t* scheduler) {
        ThreadResources& resources = thread_resources(thread);
        if (getcontext(&f.context) != 0) fail("getcontext");
        f.context.uc_stack.ss_sp = resources.stack.get();
        f.context.uc_stack.ss_size = ThreadResources::kStackBytes;
        f.context.uc_link = scheduler;
        makecontext(&f.context, &Block::entry, 0);
        f.race_fiber = resources.race_fiber;
    }

    // A fault (a guard page, say) names the block and thread before the program dies.
    static void report_faults() {
        static const bool installed = [] {
            struct sigaction action {};
            action.sa_handler = &Block::on_fault;
            sigemptyset(&action.sa_mask);
            sigaction(SIGSEGV, &action, nullptr);
            sigaction(SIGBUS, &action, nullptr);
            return true;
        }();
        (void)installed;
    }
    static void on_fault(int) {
        char what[160];
        const Block* b = current_block();
        const int length =
            b == nullptr ? std::snprintf(what, sizeof(what), "cuda emulation: invalid memory access outside a kernel\n")
                         : std::snprintf(what, sizeof(what),
                                         "cuda emulation: invalid memory access in block (%u, %u), thread %u\n",
                                         b->block_.x, b->block_.y, b->current_);
        if (write(2, what, static_cast<size_t>(length)) < 0) _exit(4);
        _exit(4);
    }

    EDGEVLA_EMULATE_UNINSTRUMENTED static void entry() {
        Block* block = current_block();
        race::acquire(&block->launch_sync_);
        block->body_();
        block->copy_commit();
        block->copy_wait(0);
        Fiber& me = block->fibers_[block->current_];
        race::release(&block->finish_sync_);
        me.done = true;
        block->progress_ = true;
        block->wake_all_ = true;
        block->yield(me);  // for good: the scheduler resumes no thread that is done
    }

    // The scheduler hands over to a thread, which hands back with yield.
    EDGEVLA_EMULATE_UNINSTRUMENTED void resume(Fiber& f) {
        race::switch_to(f.race_fiber);
        if (swapcontext(&scheduler_, &f.context) != 0) fail("swapcontext");
    }
    EDGEVLA_EMULATE_UNINSTRUMENTED void yield(Fiber& me) {
        race::switch_to(host_fiber_);
        if (swapcontext(&me.context, &scheduler_) != 0) fail("swapcontext");
    }

    unsigned live_threads() const {
        unsigned live = 0;
        for (const Fiber& f : fibers_) live += f.done ? 0 : 1;
        return live;
    }

    // Arrives at a barrier (`arrived` of needed() so far, `generation` bumped
    // by the last to arrive) and waits for it to open. A waiting fiber is not
    // resumed until the generation moves (or a thread returns: then each
    // waiter looks again, since a barrier may open, or a warp lose a lane).
    // warp: for a warp collective, the warp whose lanes must not return meanwhile.
    // sync: for a barrier, its two race-check objects (a warp collective orders no memory).
    template <typename Needed>
    void arrive_and_wait(unsigned& arrived, uint64_t& generation, Needed needed, const char* where, const Warp* warp,
                         char (*sync)[2]) {
        const uint64_t mine = generation;
        // By parity: a thread through this barrier that reaches the next one releases into the other object.
        if (sync != nullptr) race::release(&(*sync)[mine % 2]);
        ++arrived;
        progress_ = true;
        Fiber& me = fibers_[current_];
        me.waiting_at = where;
        for (;;) {
            if (generation != mine) break;
            if (arrived == needed()) {
                arrived = 0;
                ++generation;
                break;
            }
            if (warp != nullptr) check_no_lane_returned(current_ / 32);
            me.wait_generation = &generation;
            me.wait_value = mine;
            yield(me);
            me.wait_generation = nullptr;
        }
        me.waiting_at = nullptr;
        if (sync != nullptr) race::acquire(&(*sync)[mine % 2]);
    }

    void check_no_lane_returned(unsigned warp) {
        for (unsigned l = 0; l < 32; ++l) {
            if (fibers_[warp * 32 + l].done) {
                char what[160];
                std::snprintf(what, sizeof(what),
                              "block (%u, %u) warp %u: lane %u returned while the warp waits in a collective", block_.x,
                              block_.y, warp, l);
                fail(what);
            }
        }
    }

    // Names the first warp whose lanes wait in different places (a collective
    // reached under divergence), else the barrier count.
    [[noreturn]] void describe_deadlock() {
        char what[240];
        for (unsigned i = 0; i + 1 < fibers_.size(); ++i) {
            const Fiber &a = fibers_[i], &b = fibers_[i + 1];
            if (i / 32 == (i + 1) / 32 && !a.done && !b.done && a.waiting_at != b.waiting_at) {
                std::snprintf(what, sizeof(what),
                              "block (%u, %u) warp %u: deadlock: lane %u waits at %s, lane %u at %s (divergence)",
                              block_.x, block_.y, i / 32, i % 32, a.waiting_at, (i + 1) % 32, b.waiting_at);
                fail(what);
            }
        }
        std::snprintf(what, sizeof(what), "block (%u, %u): deadlock: %u of %u live threads at __syncthreads", block_.x,
                      block_.y, barrier_arrived_, live_threads());
        fail(what);
    }

    Index3 block_, block_dim_, grid_dim_;
    std::function<void()> body_;
    std::vector<Fiber> fibers_;
    std::vector<Warp> warps_;
    std::array<Barrier, 16> named_{};
    ucontext_t scheduler_{};
    unsigned current_ = 0;
    unsigned barrier_arrived_ = 0;
    uint64_t barrier_generation_ = 0;
    bool progress_ = false;
    bool live_ = false;
    bool wake_all_ = false;
    // The race check's: the host's own fiber, and objects for the launch and the barriers.
    void* host_fiber_ = nullptr;
    char launch_sync_ = 0, finish_sync_ = 0;
    char barrier_sync_[2] = {};
};

// The launches made so far (grid, block), for drivers to say what a launcher chose.
struct LaunchRecord {
    Index3 grid, block;
};
inline std::vector<LaunchRecord>& launch_log() {
    static std::vector<LaunchRecord> log;
    return log;
}
inline std::string describe_launches() {
    std::string text;
    for (const LaunchRecord& r : launch_log()) {
        char one[64];
        std::snprintf(one, sizeof(one), "%s%ux%u blocks of %u", text.empty() ? "" : " + ", r.grid.x, r.grid.y,
                      r.block.x);
        text += one;
    }
    return text;
}

// Shared memory as a GPU leaves it: whatever the SM's last user wrote. Every
// block here starts with its shared arrays (this emulation makes them the
// program's thread_locals: a driver must have no others) filled with 0xFF
// bytes: NaN as a float or half, -1 as an integer. A kernel that reads shared
// memory it never wrote (a k tail it counts on being zero, say) then sums
// wrong, as it could on a GPU, instead of reading the zeros of a fresh
// thread_local or the previous block's leftovers.
constexpr unsigned char kSharedPoison = 0xFF;

struct ProgramTls {
    unsigned char* data = nullptr;
    size_t size = 0;
};
// The program's own PT_TLS block on this thread (every block runs on it).
inline ProgramTls program_tls() {
    static const ProgramTls tls = [] {
        ProgramTls found;
        dl_iterate_phdr(
            [](dl_phdr_info* info, size_t, void* out) -> int {
                // The program comes first, named "".
                auto* result = static_cast<ProgramTls*>(out);
                for (int i = 0; i < info->dlpi_phnum; ++i) {
                    if (info->dlpi_phdr[i].p_type == PT_TLS && info->dlpi_tls_data != nullptr) {
                        result->data = static_cast<unsigned char*>(info->dlpi_tls_data);
                        result->size = info->dlpi_phdr[i].p_memsz;
                    }
                }
                return 1;
            },
            &found);
        return found;
    }();
    return tls;
}
inline void poison_shared_memory() {
    const ProgramTls tls = program_tls();
    if (tls.data != nullptr) std::memset(tls.data, kSharedPoison, tls.size);
}

// kernel<<<grid, block>>>(args...) as launch(grid, block, [&] { kernel(args...); }).
// before_block, if given, runs before each block, after the poisoning above (to
// fill shared memory with other garbage, say).
inline void launch(Index3 grid, Index3 block, const std::function<void()>& body,
                   const std::function<void()>& before_block = nullptr) {
    launch_log().push_back({grid, block});
    for (unsigned z = 0; z < std::max(grid.z, 1u); ++z)
        for (unsigned y = 0; y < std::max(grid.y, 1u); ++y)
            for (unsigned x = 0; x < std::max(grid.x, 1u); ++x) {
                poison_shared_memory();
                if (before_block) before_block();
                Block b({x, y, z}, {block.x, std::max(block.y, 1u), std::max(block.z, 1u)},
                        {std::max(grid.x, 1u), std::max(grid.y, 1u), std::max(grid.z, 1u)}, body);
                b.run();
            }
}

// `count` elements of T, the start aligned to `align` bytes, ending as close
// before an inaccessible page as that alignment allows (at it, when the size
// is a multiple of it): reading or writing past the end faults at once.
// Not freed: the tests that use it are short programs.
template <typename T>
T* guarded_alloc(size_t count, size_t align) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t bytes = count * sizeof(T);
    const size_t pages = (bytes + page - 1) / page + 1;
    void* base = mmap(nullptr, pages * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) fail("mmap");
    char* guard = static_cast<char*>(base) + (pages - 1) * page;
    if (mprotect(guard, page, PROT_NONE) != 0) fail("mprotect");
    size_t offset = (pages - 1) * page - bytes;
    offset -= offset % align;
    return reinterpret_cast<T*>(static_cast<char*>(base) + offset);
}

// A guarded copy of `count` elements of `values`.
template <typename T>
T* guarded_copy(const T* values, size_t count, size_t align) {
    T* copy = guarded_alloc<T>(count, align);
    std::memcpy(static_cast<void*>(copy), values, count * sizeof(T));
    return copy;
}

// Outputs start as this NaN: an element the kernel should not write must still hold it.
constexpr uint32_t kPoison = 0x7FC0DEADu;

template <typename T>
T* poisoned_output(size_t count) {
    static_assert(sizeof(T) == 4);
    T* out = guarded_alloc<T>(count, sizeof(T));
    for (size_t i = 0; i < count; ++i) std::memcpy(static_cast<void*>(out + i), &kPoison, 4);
    return out;
}

template <typename T>
bool is_poison(const T& v) {
    static_assert(sizeof(T) == 4);
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    return bits == kPoison;
}

template <typename T>
uint32_t bits_of(T v) {
    static_assert(sizeof(T) == 4);
    uint32_t u;
    std::memcpy(&u, &v, 4);
    return u;
}
template <typename T>
T from_bits(uint32_t u) {
    static_assert(sizeof(T) == 4);
    T v;
    std::memcpy(&v, &u, 4);
    return v;
}

}  // namespace edgevla::cuda::emulate

// ---- The built-in variables and functions the kernels use -----------------
#define threadIdx (::edgevla::cuda::emulate::Block::current_block()->thread_idx())
#define blockIdx (::edgevla::cuda::emulate::Block::current_block()->block_idx())
#define blockDim (::edgevla::cuda::emulate::Block::current_block()->block_dim())
#define gridDim (::edgevla::cuda::emulate::Block::current_block()->grid_dim())

inline void __syncthreads() { ::edgevla::cuda::emulate::Block::current_block()->sync_threads(); }

// __shfl_sync(mask, v, src) and __shfl_xor_sync(mask, v, m) for 32-bit values, full mask only.
template <typename T>
T edgevla_emulate_shfl(unsigned mask, T v, int lane_of_source, bool xor_mode) {
    using namespace ::edgevla::cuda::emulate;
    if (mask != 0xffffffffu) fail("only full-mask shuffles are emulated");
    std::array<uint32_t, 16> in{};
    in[0] = bits_of(v);
    in[1] = static_cast<uint32_t>(lane_of_source);
    in[2] = xor_mode ? 1u : 0u;
    T out{};
    Block::current_block()->warp_collective(Collective::shfl, in, [&](const auto& slots, unsigned lane) {
        const unsigned arg = slots[lane].in[1];
        const unsigned source = (slots[lane].in[2] ? lane ^ arg : arg) % 32;
        out = from_bits<T>(slots[source].in[0]);
    });
    return out;
}
template <typename T>
T __shfl_sync(unsigned mask, T v, int source) {
    return edgevla_emulate_shfl(mask, v, source, false);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
    return edgevla_emulate_shfl(mask, v, lane_mask, true);
}

template <typename T>
T __ldg(const T* p) {
    return *p;
}
template <typename T>
T __ldcs(const T* p) {
    return *p;
}

inline float __fmaf_rn(float a, float b, float c) { return std::fmaf(a, b, c); }
inline float __uint_as_float(unsigned u) { return ::edgevla::cuda::emulate::from_bits<float>(u); }
inline unsigned __float_as_uint(float f) { return ::edgevla::cuda::emulate::bits_of(f); }
using std::max;
using std::min;

// Byte i of the result is byte s_i (selector nibble i, 0..7) of the pair (x, y), x the low word.
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const uint64_t pair = (static_cast<uint64_t>(y) << 32) | x;
    unsigned out = 0;
    for (int i = 0; i < 4; ++i) {
        const unsigned selector = (s >> (4 * i)) & 7u;
        out |= static_cast<unsigned>((pair >> (8 * selector)) & 0xFFu) << (8 * i);
    }
    return out;
}

// cuda_fp16.h offers no host __hfma2: a * b + c per half, rounded once
// (the product of two halves is exact in double, and so is the sum).
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) {
    const float2 fa = __half22float2(a), fb = __half22float2(b), fc = __half22float2(c);
    return __halves2half2(__double2half(static_cast<double>(fa.x) * fb.x + fc.x),
                          __double2half(static_cast<double>(fa.y) * fb.y + fc.y));
}
