#pragma once

#include <string>
#include <utility>
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
// Folding: findings with the same (rule, reader pod, exe, token) within the
// dedup window, counted from the first, fold into the first one. That one
// is exported at once; when its window closes it is exported again (same
// id, final count and last_seen) if reads folded into it, so a burst costs
// two exports and a quiet fold one. A later use of the token (a TW010 or
// TW011 finding for one of the fold's readers) raises its severity and
// re-exports it at once: that is news the analyst must not wait for.
//
// Threading: not thread-safe; the event thread owns it.
class Detector {
 public:
  explicit Detector(DetectorOptions options) : options_(std::move(options)) {}

  // Findings to export now: a new finding, or nothing when the read was
  // expected or folded into an earlier finding.
  std::vector<v1::Finding> OnTokenRead(const TokenRead& read);

  // Folds whose window has closed by `now`: the ones that grew since they
  // were exported, to export again (same id, final count: the collector
  // keeps the latest); all of them are forgotten. The agent calls it about
  // once a second.
  std::vector<v1::Finding> Flush(absl::Time now);

  // Every fold that grew since it was exported, whatever its window: the
  // agent calls it at shutdown so no count is lost. The folds stay open (a
  // later read still folds into them) and count as exported.
  std::vector<v1::Finding> FlushAll();

  // The token that `read_finding_id` (a read finding this detector raised
  // or folded into, TokenRead::finding_id) stands for was then used:
  // `use_rule` TW010 (API server) raises it to critical, TW011 (egress) to
  // high, with the reason listed. Returns the finding to export now while
  // its fold is open, or nothing when it was already so.
  std::vector<v1::Finding> OnTokenUsed(const std::string& use_rule,
                                       const std::string& read_finding_id);

  uint64_t folded() const { return folded_; }
  // Whether the last OnTokenRead judged the read unexpected (a finding was
  // raised or folded), so the correlator taints only such readers.
  bool last_unexpected() const { return last_unexpected_; }
  // The id of the finding the last unexpected read was raised as or folded
  // into ("" when it was expected).
  const std::string& last_finding_id() const { return last_finding_id_; }

 private:
  struct Fold {
    v1::Finding finding;
    absl::Time first;
    // Reads folded in since the finding was last exported.
    bool dirty = false;
  };

  // Forgets a fold (and its id).
  void Erase(absl::flat_hash_map<std::string, Fold>::iterator it);

  DetectorOptions options_;
  absl::flat_hash_map<std::string, Fold> folds_;
  // finding id -> its fold's key, for OnTokenUsed.
  absl::flat_hash_map<std::string, std::string> fold_of_id_;
  // Grown folds whose window closed when a new read replaced them, waiting
  // for the next Flush.
  std::vector<v1::Finding> closed_;
  uint64_t folded_ = 0;
  bool last_unexpected_ = false;
  std::string last_finding_id_;
};

// Raises a token-read finding's severity for its context — a shell or tool
// reader (`tool`), an exec session, another pod for TW005 — appending a
// reason for each, in that order. Never lowers it.
void RaiseForContext(const std::string& rule_id, const TokenRead& read, bool tool,
                     v1::Severity* severity, std::vector<std::string>* reasons);

// True for shells, interpreters, busybox and the usual file/transfer tools,
// judged by the executable's basename and the task's comm.
bool IsShellOrTool(const std::string& exe, const std::string& comm);

}  // namespace tokenwatch::detect
