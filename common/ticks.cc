#include "common/ticks.h"

#include <unistd.h>

namespace tokenwatch {

uint64_t NsPerTick() {
  static const uint64_t kNsPerTick = 1000000000ull / static_cast<uint64_t>(sysconf(_SC_CLK_TCK));
  return kNsPerTick;
}

}  // namespace tokenwatch
