#include "cpu_topology.h"

#include "thread_pool.h"

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#if defined(__linux__)
#include <sched.h>
#endif

namespace edgevla {
namespace {

// The first line of a small text file, or "" when it cannot be read.
std::string first_line(const std::string& path) {
    std::ifstream file(path);
    std::string line;
    if (file) std::getline(file, line);
    return line;
}

// A non-negative decimal number of at most 7 digits (CPU numbers), or -1.
int parse_cpu_number(const std::string& text) {
    if (text.empty() || text.size() > 7) return -1;
    int value = 0;
    for (const char c : text) {
        if (c < '0' || c > '9') return -1;
        value = value * 10 + (c - '0');
    }
    return value;
}

}  // namespace

std::vector<int> parse_cpu_list(const std::string& text) {
    std::set<int> cpus;
    std::stringstream items(text);
    std::string item;
    while (std::getline(items, item, ',')) {
        item.erase(std::remove_if(item.begin(), item.end(), [](char c) { return c == ' ' || c == '\n'; }),
                   item.end());
        const size_t dash = item.find('-');
        const int first = parse_cpu_number(item.substr(0, dash));
        const int last = dash == std::string::npos ? first : parse_cpu_number(item.substr(dash + 1));
        if (first < 0 || last < first) return {};
        for (int cpu = first; cpu <= last; ++cpu) cpus.insert(cpu);
    }
    return {cpus.begin(), cpus.end()};
}

std::vector<int> allowed_cpus() {
    std::vector<int> cpus;
#if defined(__linux__)
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
            if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
        }
    }
#endif
    if (cpus.empty()) {
        for (int cpu = 0; cpu < hardware_threads(); ++cpu) cpus.push_back(cpu);
    }
    return cpus;
}

int count_compute_cores(const std::vector<int>& cpus, const std::string& sysfs) {
    std::vector<int> chosen = cpus;
    const std::vector<int> performance = parse_cpu_list(first_line(sysfs + "/devices/cpu_core/cpus"));
    std::vector<int> performance_allowed;
    std::set_intersection(cpus.begin(), cpus.end(), performance.begin(), performance.end(),
                          std::back_inserter(performance_allowed));
    if (!performance_allowed.empty()) chosen = performance_allowed;
    std::set<int> cores;  // a core by the lowest CPU of its sibling list
    for (const int cpu : chosen) {
        const std::string topology = sysfs + "/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
        std::vector<int> siblings = parse_cpu_list(first_line(topology + "core_cpus_list"));
        if (siblings.empty()) siblings = parse_cpu_list(first_line(topology + "thread_siblings_list"));
        cores.insert(siblings.empty() ? cpu : siblings.front());
    }
    return static_cast<int>(cores.size());
}

int default_threads() { return std::max(1, count_compute_cores(allowed_cpus(), "/sys")); }

}  // namespace edgevla
