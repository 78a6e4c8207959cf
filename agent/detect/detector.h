#pragma once

#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "agent/detect/baseline.h"
#include "agent/detect/token_read.h"
#include "tokenwatch/v1/finding.pb.h"

namespace tokenwatch::detect {

struct DetectorOptions {
  std::string node;
  std::string hook_mode;
  // Identical findings (rule, reader pod, exe, token) within this window fold
  // into one with a count. Zero disables folding.
  absl::Duration dedup_window = absl::Minutes(10);
  // Host executables (full paths or basenames) that may read pod tokens: the
  // node's own components.
  std::vector<std::string> host_allowed_exes = {
      "kubelet", "containerd", "containerd-shim", "containerd-shim-runc-v2", "crio", "conmon",
      "runc",    "crun",       "dockerd",         "cri-dockerd",
      // CNI plugins the runtime runs on the host at pod setup.
      "calico", "calico-ipam", "cilium-cni", "flannel", "multus", "multus-shim", "aws-cni",
      "azure-vnet", "istio-cni", "ovn-k8s-cni-overlay"};
  // Policy, learned baselines and severity settings (agent/detect/policy.h,
  // baseline.h); null: only the built-in defaults above and the entrypoint.
  Expectations* expectations = nullptr;
};

// Decides whether a token read was expected and turns the unexpected ones into
// findings, folding repeats.
//
// Rules: TW001 token-read-unexpected (a process of the owner pod that is not
// the container's entrypoint binary; high for shells, interpreters and
// transfer tools), TW002 token-read-cross-pod (a process of another pod),
// TW003 token-read-host (a host process other than the node's components),
// TW004 token-read-exec-session (a process of the owner pod that entered
// through an exec session rather than descending from the entrypoint),
// TW005 token-read-io-uring (any open through io_uring; it takes precedence,
// critical from another pod).
//
// Threading: not thread-safe; the event thread owns it.
class Detector {
 public:
  explicit Detector(DetectorOptions options) : options_(std::move(options)) {}

  // Findings to export now: a new finding, or nothing when the read was
  // expected or folded into an earlier finding.
  std::vector<v1::Finding> OnTokenRead(const TokenRead& read);

  // Folded findings whose count grew since they were last exported (same id,
  // higher count: the collector keeps the latest); forgets folds whose window
  // has passed.
  std::vector<v1::Finding> Flush(absl::Time now);

  uint64_t folded() const { return folded_; }
  // Whether the last OnTokenRead judged the read unexpected (a finding was
  // raised or folded), so the correlator taints only such readers.
  bool last_unexpected() const { return last_unexpected_; }

 private:
  struct Fold {
    v1::Finding finding;
    absl::Time first;
    bool dirty = false;
  };

  DetectorOptions options_;
  absl::flat_hash_map<std::string, Fold> folds_;
  uint64_t folded_ = 0;
  bool last_unexpected_ = false;
};

// True for shells, interpreters, busybox and the usual file/transfer tools,
// judged by the executable's basename and the task's comm.
bool IsShellOrTool(const std::string& exe, const std::string& comm);

}  // namespace tokenwatch::detect
