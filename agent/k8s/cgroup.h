#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace tokenwatch::k8s {

// The pod (and container) a cgroup belongs to, as the kubelet and the runtime named it.
struct ContainerRef {
  std::string pod_uid;       // dashes restored for the systemd driver (pod1234_5678 -> 1234-5678)
  std::string container_id;  // 64-hex id when present; empty for the pod-level cgroup
  std::string runtime;       // "containerd", "crio", "docker", "" (cgroupfs naming doesn't say)
  std::string qos;           // "guaranteed", "burstable", "besteffort"
  // CRI-O's conmon (crio-conmon-<id>.scope): a runtime helper living in the pod's cgroup, not a
  // process of the container. container_id is empty; conmon_of holds the container it serves.
  bool runtime_helper = false;
  std::string conmon_of;
};

// Parses a cgroup path such as
//   /kubepods/burstable/pod<uid>/<id>                       (cgroupfs driver)
//   /kubepods/pod<uid>/<id>                                  (guaranteed, cgroupfs)
//   /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_underscored>.slice/
//       cri-containerd-<id>.scope                            (systemd driver)
//   .../crio-<id>.scope, .../docker-<id>.scope, and crio-conmon-<id>.scope (conmon)
// and paths with a prefix before kubepods (nested, e.g. /system.slice/... or kind's
// /kubelet.slice/kubelet-kubepods.slice/...). Cgroups below the container's (a systemd inside
// the container) belong to that container. nullopt for non-pod cgroups (host).
std::optional<ContainerRef> ParseCgroupPath(absl::string_view path);

// Finds the cgroup v2 mount from /proc/self/mountinfo (on hybrid hosts it is
// /sys/fs/cgroup/unified; on pure v2, /sys/fs/cgroup).
absl::StatusOr<std::string> FindCgroup2Mount(const std::string& mountinfo = "/proc/self/mountinfo");

// Maps a cgroup v2 id (what bpf_get_current_cgroup_id() returns: the cgroup directory's inode
// number on kernfs) to its path relative to the mount ("/kubepods/..."; "/" for the root).
// Owns a cache of the hierarchy; on a miss it rescans (at most once per 100 ms, so a flood of
// unknown ids costs little). A cgroup that disappears stays resolvable until the rescan after
// next, so events that arrive after a short-lived container exits still find their pod.
// Thread-safe; the walk runs without the lock held.
class CgroupResolver {
 public:
  // "" = FindCgroup2Mount().
  static absl::StatusOr<std::unique_ptr<CgroupResolver>> Create(std::string mount = "");

  std::optional<std::string> PathOf(uint64_t cgroup_id) ABSL_LOCKS_EXCLUDED(mu_);

  const std::string& mount() const { return mount_; }
  // Number of full walks so far (for tests and metrics).
  uint64_t rescans() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  using Map = absl::flat_hash_map<uint64_t, std::string>;
  explicit CgroupResolver(std::string mount) : mount_(std::move(mount)) {}
  Map Walk() const;

  const std::string mount_;
  mutable absl::Mutex mu_;
  Map current_ ABSL_GUARDED_BY(mu_);
  Map previous_ ABSL_GUARDED_BY(mu_);
  std::optional<std::chrono::steady_clock::time_point> last_walk_ ABSL_GUARDED_BY(mu_);
  uint64_t rescans_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace tokenwatch::k8s
