#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "tokenwatch/process.h"
#include "tokenwatch/token_open.h"

namespace tokenwatch::probes {

// Reads the kernel's process table (process.bpf.c's `procs` and `exited`
// maps) from user space, for hooks that report only a pid: fanotify events
// carry the opener's tgid, and by the time the agent reads one a
// one-millisecond `cat` has exited. The table keeps exited entries, so the
// lineage is still there; this class finds it and builds the same
// tw_token_open record the BPF hooks emit.
//
// Threading: const and stateless beyond the fds (borrowed, not owned); each
// call is a few bpf(2) and /proc reads. Safe from any thread.
class ProcTableReader {
 public:
  ProcTableReader(int procs_fd, int exited_fd, std::string proc_root = "/proc")
      : procs_fd_(procs_fd), exited_fd_(exited_fd), proc_root_(std::move(proc_root)) {}

  // The entry for `key`, live table first.
  std::optional<tw_proc> Lookup(const tw_proc_key& key) const;

  // The process `tgid` names: the live entry keyed by its start time from
  // /proc/<tgid>/stat; if it is gone, the most recently exited entry with
  // that tgid (its current image, not an image an exec replaced).
  std::optional<tw_proc> FindByTgid(uint32_t tgid) const;

  // The record for an open of `file` by `tgid` seen at boot-clock `ts_ns`:
  // reader and up to `max_depth` ancestors from the table. A reader the
  // table does not know is filled from /proc as far as it can be
  // (reader_known = 0), and the lineage builder continues from /proc.
  tw_token_open BuildRecord(uint32_t tgid, const tw_file_id& file, uint64_t ts_ns,
                            uint32_t max_depth, uint16_t hook) const;

 private:
  int procs_fd_;
  int exited_fd_;
  std::string proc_root_;
};

// Fields of /proc/<pid>/stat the table needs: start time in clock ticks
// since boot (the key's start_ticks) and the parent pid.
struct ProcStatFields {
  uint64_t start_ticks = 0;
  uint32_t ppid = 0;
  std::string comm;
};
std::optional<ProcStatFields> ReadProcStat(const std::string& proc_root, uint32_t pid);

}  // namespace tokenwatch::probes
