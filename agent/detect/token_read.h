#pragma once

#include <cstdint>
#include <string>

#include "absl/time/time.h"
#include "agent/process/lineage.h"
#include "agent/tokens/inventory.h"

namespace tokenwatch::detect {

// One open of an inventoried token, enriched: the detector's input.
struct TokenRead {
  absl::Time time;               // when the kernel saw the open
  uint64_t kernel_ts_ns = 0;     // the same, on the boot clock (for latency)
  tokens::TokenInfo token;       // which token
  process::Lineage lineage;      // who read it, and their ancestors
  std::string syscall;           // "openat", "openat2", ...
  uint32_t flags = 0;            // O_* flags of the open
  bool io_uring = false;
  // Opens this read stands for: 1 for a record of its own; more when the
  // hook folded repeated opens of the same token by the same process within
  // the dedup window and reports them afterwards (counted in the kernel, or
  // at fanotify intake), so the finding's count is every open.
  uint64_t opens = 1;
  // The finding this read was raised as or folded into, set by the agent
  // after detection ("" for an expected read): a later use of the token
  // (TW010, TW011) raises that finding's severity.
  std::string finding_id;
  // The reader's container's entrypoint binary; "" for a host process or when
  // it could not be found.
  std::string entrypoint_exe;
};

}  // namespace tokenwatch::detect
