#pragma once

#include <cstdint>

namespace tokenwatch {

// Nanoseconds per clock tick (USER_HZ): the unit of /proc/<pid>/stat's
// starttime, and so of the process table's keys (tw_proc_key.start_ticks).
uint64_t NsPerTick();

// A boot-clock start time in clock ticks, as /proc and the keys count it.
inline uint64_t StartTicks(uint64_t start_boottime_ns) { return start_boottime_ns / NsPerTick(); }

}  // namespace tokenwatch
