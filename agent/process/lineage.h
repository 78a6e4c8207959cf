#pragma once

#include <memory>
#include <string>
#include <vector>

#include "agent/k8s/cgroup.h"
#include "agent/process/proc_reader.h"
#include "agent/process/process_view.h"
#include "tokenwatch/token_open.h"

namespace tokenwatch::process {

// The actor of an event with its ancestors, parent first.
struct Lineage {
  ProcessView process;
  std::vector<ProcessView> ancestors;
  bool truncated = false;
};

// Builds the lineage of a kernel record: the reader from the record itself
// (complete even when the process is already gone), its exe path and the
// ancestors from /proc while they live. Issue #3 replaces the /proc walk with
// the kernel's process table. Thread-compatible; the resolvers it uses are
// thread-safe.
class LineageBuilder {
 public:
  struct Options {
    size_t max_depth = 16;
  };
  LineageBuilder(Options options, const ProcReader* proc, k8s::CgroupResolver* cgroups,
                 const BootClock* clock)
      : options_(options), proc_(proc), cgroups_(cgroups), clock_(clock) {}

  Lineage FromTokenOpen(const tw_token_open& event) const;

 private:
  // The live process `pid`, or nullopt when it is gone or was reused.
  std::optional<ProcessView> FromProc(uint32_t pid) const;
  void Attribute(ProcessView* view, std::string cgroup) const;

  Options options_;
  const ProcReader* proc_;
  k8s::CgroupResolver* cgroups_;
  const BootClock* clock_;
};

}  // namespace tokenwatch::process
