#pragma once

#include <memory>
#include <optional>
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

// Turns the lineage the kernel captured with an event into ProcessViews:
// the reader and its ancestors as they were at that moment, complete even
// when every one of them has exited since. Where the kernel's chain stops
// early (an entry evicted from its table) the rest comes from /proc while
// those processes live. Marks exec sessions.
//
// Thread-compatible; the resolvers it uses are thread-safe.
class LineageBuilder {
 public:
  struct Options {
    size_t max_depth = TW_MAX_ANCESTORS;
  };
  LineageBuilder(Options options, const ProcReader* proc, k8s::CgroupResolver* cgroups,
                 const BootClock* clock)
      : options_(options), proc_(proc), cgroups_(cgroups), clock_(clock) {}

  Lineage FromTokenOpen(const tw_token_open& event) const;

  // Any record's lineage: the actor, its n ancestors (parent first), the
  // actor's cgroup at the event and whether the kernel cut the chain.
  Lineage FromRecord(uint32_t tgid, uint64_t cgroup_id, const tw_proc& actor,
                     const tw_proc* ancestors, uint32_t n, bool truncated) const;

  // One kernel process-table entry as a view (cgroup resolved, argv
  // redacted).
  ProcessView FromEntry(const tw_proc& entry) const;

 private:
  // The live process `pid`, or nullopt when it is gone.
  std::optional<ProcessView> FromProc(uint32_t pid) const;
  void Attribute(ProcessView* view, std::string cgroup) const;
  // The id of the cgroup at `path` (under the cgroup2 mount), 0 if unknown.
  uint64_t CgroupIdOf(const std::string& path) const;

  Options options_;
  const ProcReader* proc_;
  k8s::CgroupResolver* cgroups_;
  const BootClock* clock_;
};

// An exec session: the reader is in a container and the chain of its
// ancestors inside that container reaches the container runtime without
// passing through the container's init (pid 1 of its pid namespace), as
// with kubectl exec, crictl exec and runc exec. Sets exec_session on the
// processes of that chain. Exposed for tests.
void MarkExecSession(Lineage* lineage);

}  // namespace tokenwatch::process
