#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/process/process_view.h"

namespace tokenwatch::process {

// Converts the kernel's boot clock (bpf_ktime_get_boot_ns, task start_boottime)
// to wall-clock time. The offset is taken once; NTP slews after that are small
// against what a finding needs.
class BootClock {
 public:
  BootClock();
  absl::Time ToTime(uint64_t boottime_ns) const;
  uint64_t NowBoottimeNs() const;

 private:
  int64_t offset_ns_ = 0;  // realtime - boottime
};

// Reads what /proc says about a live process. Every function fails with
// NOT_FOUND once the process is gone: the kernel-captured record is then all
// there is (DESIGN.md decision 4 moves lineage into the kernel).
class ProcReader {
 public:
  explicit ProcReader(std::string proc_root = "/proc") : proc_root_(std::move(proc_root)) {}

  struct Stat {
    uint32_t ppid = 0;
    uint64_t start_boottime_ns = 0;
    std::string comm;
  };
  absl::StatusOr<Stat> ReadStat(uint32_t pid) const;
  absl::StatusOr<std::string> ReadExe(uint32_t pid) const;
  absl::StatusOr<std::vector<std::string>> ReadArgv(uint32_t pid) const;
  // uid and gid (real) from /proc/<pid>/status.
  absl::StatusOr<std::pair<uint32_t, uint32_t>> ReadIds(uint32_t pid) const;
  // The pid as the innermost pid namespace sees it (last NSpid field).
  absl::StatusOr<uint32_t> ReadInnermostPid(uint32_t pid) const;
  // The cgroup v2 path ("0::" line) of the process.
  absl::StatusOr<std::string> ReadCgroupV2(uint32_t pid) const;

  const std::string& root() const { return proc_root_; }

 private:
  std::string proc_root_;
};

// Finds the entrypoint binary of a container: the exe of the process that is
// pid 1 in the container's pid namespace, among the processes of its cgroup.
// Caches per cgroup; thread-safe.
class EntrypointResolver {
 public:
  EntrypointResolver(std::string cgroup2_mount, const ProcReader* proc)
      : mount_(std::move(cgroup2_mount)), proc_(proc) {}

  // "" when no process of the cgroup is the namespace's init.
  std::string EntrypointExe(const std::string& cgroup_path);

 private:
  std::string mount_;
  const ProcReader* proc_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::string> cache_ ABSL_GUARDED_BY(mu_);
};

// Splits a NUL-separated argv block (as in /proc/<pid>/cmdline or the kernel
// record) into arguments, redacting every JWT-shaped string. `cut` says the
// block was truncated (the kernel keeps only its head), so a trailing partial
// JWT is redacted too.
std::vector<std::string> SplitArgv(absl::string_view block, bool cut = false);

}  // namespace tokenwatch::process
