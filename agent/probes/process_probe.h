#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/ticks.h"
#include "tokenwatch/process.h"

struct process_bpf;
struct bpf_link;

namespace tokenwatch::probes {

// Owns the process_bpf skeleton: the kernel's process table (`procs`, and
// `exited` for processes that exited a moment ago) and the raw tracepoints
// on fork, exec and exit that fill it. Other probes reuse its maps.
//
// Threading: Create() and Seed() on the main thread before events flow;
// ReadStats() and CountEntries() from any thread (single bpf(2) calls).
class ProcessProbe {
 public:
  struct Options {
    std::string btf_path;           // "" = /sys/kernel/btf/vmlinux
    uint32_t max_processes = 32768; // capacity of the procs table
    uint32_t max_exited = 8192;     // capacity of the exited table
    uint32_t argv_bytes = TW_ARGV_LEN;  // head of argv kept per process
  };

  static absl::StatusOr<std::unique_ptr<ProcessProbe>> Create(const Options& options);
  ~ProcessProbe();
  ProcessProbe(const ProcessProbe&) = delete;
  ProcessProbe& operator=(const ProcessProbe&) = delete;

  // Adds every process alive now, read from `proc_root`, to the table, so
  // that processes older than the agent have lineage. Entries the kernel
  // already made (a process that exec'd since attach) are left alone.
  // Returns the number of entries added.
  absl::StatusOr<int> Seed(const std::string& proc_root, const std::string& cgroup2_mount);

  int procs_fd() const;
  int exited_fd() const;
  int taint_fd() const;
  // The entry for `key` from the live or the exited table.
  std::optional<tw_proc> Lookup(const tw_proc_key& key) const;
  std::array<uint64_t, TW_STAT_MAX> ReadStats() const;
  // Entries in the live table (walks the keys: call it rarely).
  size_t CountEntries() const;
  const std::vector<std::string>& attached() const { return attached_; }

 private:
  ProcessProbe() = default;
  process_bpf* skel_ = nullptr;
  std::vector<bpf_link*> links_;
  std::vector<std::string> attached_;
};

using ::tokenwatch::NsPerTick;  // the unit of tw_proc_key.start_ticks

}  // namespace tokenwatch::probes
