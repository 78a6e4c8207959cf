#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "agent/k8s/cgroup.h"

namespace tokenwatch::process {

// What the agent knows of one process at the moment of an event.
struct ProcessView {
  uint32_t pid = 0;
  uint32_t ppid = 0;
  uint32_t uid = 0;
  uint32_t gid = 0;
  // Boot-clock start in ns; with pid, the process's identity.
  uint64_t start_boottime_ns = 0;
  absl::Time start_time = absl::InfinitePast();
  std::string exe;   // full path when known, else the kernel-captured name
  std::string comm;
  std::vector<std::string> argv;  // already redacted
  std::string cgroup;             // cgroup v2 path, "" when unknown
  // The cgroup v2 id (the inode of its directory) at the event; 0 when
  // unknown. Taint stays inside the reader's (detect::Correlator).
  uint64_t cgroup_id = 0;
  std::optional<k8s::ContainerRef> container;  // nullopt: a host process
  // The pod's namespace and name, when a token of that pod is inventoried
  // (its claims name it); empty otherwise.
  std::string pod_namespace;
  std::string pod_name;
  bool exec_session = false;
  // This image came from an exec by the same process (same pid and start
  // time): the next entry of its lineage is the program it ran before.
  bool from_exec = false;
  // pid as its own pid namespace sees it (1: a container's init) and that
  // namespace's inode; 0 when unknown.
  uint32_t ns_pid = 0;
  uint32_t pidns = 0;
  // True when the process had exited by the time of the event.
  bool exited = false;
};

// "<node>:<start in clock ticks since boot>:<pid>": unique across nodes and
// time, and the same whether the kernel saw the process start or the agent
// found it in /proc (which only has clock ticks).
std::string ExecId(const std::string& node, const ProcessView& process);

}  // namespace tokenwatch::process
