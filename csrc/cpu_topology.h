// How many kernel threads a process should start: one per physical core it
// may run on.
//
// A robot's computer rarely gives a policy the whole machine: the process is
// pinned (taskset, a cgroup cpuset, a ROS 2 executor's affinity) to a few
// cores, two hardware threads of one core share its vector units, and the
// efficient cores of a hybrid Intel part (Alder Lake and later) run a GEMM
// at a fraction of a performance core's speed, so a fork-join kernel split
// evenly waits on them. std::thread::hardware_concurrency() counts every
// logical CPU of the machine; starting that many polling threads on two
// pinned cores oversubscribes them. The default here counts, among the CPUs
// the process may run on (sched_getaffinity), its physical cores (SMT
// siblings once, from sysfs topology), and only the performance cores of a
// hybrid part when it may run on any (/sys/devices/cpu_core/cpus, which Linux
// lists on such parts). A CPU quota without a cpuset (docker --cpus) is not
// seen: set the threads explicitly there.
#pragma once

#include <string>
#include <vector>

namespace edgevla {

// The CPU numbers of a Linux cpulist ("0-3,8,10-11"), ascending, without
// repeats; empty when the text is not one.
std::vector<int> parse_cpu_list(const std::string& text);

// The CPUs this process may run on (sched_getaffinity), ascending; where that
// is unknown, 0 .. hardware_threads() - 1.
std::vector<int> allowed_cpus();

// The physical cores among `cpus`, read from the sysfs tree at `sysfs`
// ("/sys" on a live system): a CPU's core is its SMT sibling list
// (devices/system/cpu/cpuN/topology/core_cpus_list, or thread_siblings_list
// on older kernels), a CPU without one is a core of its own; on a hybrid part
// (devices/cpu_core/cpus lists the performance cores) only the performance
// cores count when `cpus` holds any. At least 1 for a non-empty `cpus`.
int count_compute_cores(const std::vector<int>& cpus, const std::string& sysfs);

// count_compute_cores(allowed_cpus(), "/sys"), at least 1: the kernels'
// default thread count.
int default_threads();

}  // namespace edgevla
