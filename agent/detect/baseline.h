#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_map.h"
#include "absl/container/btree_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/detect/policy.h"
#include "agent/detect/token_read.h"
#include "agent/detect/workload.h"
#include "tokenwatch/v1/collector.pb.h"

namespace tokenwatch::detect {

// What a baseline says about one observation.
enum class Observation {
  kLearning,  // inside the workload's learning window: recorded, expected
  kKnown,     // learned earlier: expected
  kNew,       // after the window and never learned: unexpected
};

// Learned profiles: per workload (namespace, workload name, container
// entrypoint), the executables that read the workload's token and those that
// contacted the API server during its learning window, which starts when the
// workload is first seen. Persisted in <state-dir>/baseline.yaml so that a
// restart neither forgets a profile nor restarts a window.
//
// Threading: thread-safe (one mutex); Save() writes outside the lock.
class Baseline {
 public:
  static constexpr const char* kFileName = "baseline.yaml";

  // Loads <state_dir>/baseline.yaml when present. A damaged file is moved
  // aside to baseline.yaml.bad and learning starts afresh (returned in
  // `warning` so the caller can log it); only an unusable directory is an
  // error.
  // `read_only`: leave a damaged file where it is (and fail), never write.
  static absl::StatusOr<std::unique_ptr<Baseline>> Open(const std::string& state_dir,
                                                         std::string* warning = nullptr,
                                                         bool read_only = false);
  // An in-memory baseline (tests, --export-profile on a copy).
  static std::unique_ptr<Baseline> InMemory();

  // Learning settings come from the (reloadable) policy.
  void SetLearning(const LearningSettings& learning) ABSL_LOCKS_EXCLUDED(mu_);

  // `exe` read the token of `workload` at `now`. Inside the window it is
  // learned. With learning off nothing is recorded and only earlier profiles
  // count.
  Observation RecordTokenRead(const WorkloadKey& workload, const std::string& exe,
                              absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);
  // The same for a connection to the API server (the connection rules call
  // this; TW020 is raised for kNew unless the policy says contact is expected).
  Observation RecordApiserverContact(const WorkloadKey& workload, const std::string& exe,
                                     absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);

  // Whether the workload is inside its learning window at `now`.
  bool Learning(const WorkloadKey& workload, absl::Time now) const ABSL_LOCKS_EXCLUDED(mu_);

  // Writes the file if something changed since the last save (atomic: a
  // temporary file, fsync, rename). No-op for an in-memory baseline.
  absl::Status Save() ABSL_LOCKS_EXCLUDED(mu_);

  // The profiles as a `policy:` document the agent's config accepts, for
  // review (tokenwatch-agent --export-profile). `filter` is a glob on
  // "namespace/workload"; "" exports all.
  std::string ExportPolicyYaml(const std::string& filter = "") const ABSL_LOCKS_EXCLUDED(mu_);

  // Every profile as the collector stores it (node and updated left empty),
  // ordered by namespace, workload and container; what the agent uploads.
  std::vector<v1::LearnedProfile> Profiles() const ABSL_LOCKS_EXCLUDED(mu_);
  // Grows by one with every change to the profiles (a new workload, a newly
  // learned executable) and with every change of the learning settings, so
  // that an uploader can tell whether Profiles() would differ from the last
  // copy it sent.
  uint64_t generation() const ABSL_LOCKS_EXCLUDED(mu_);

  size_t workloads() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Profile {
    std::string namespace_name;
    std::string workload;
    std::string container;
    std::string service_account;
    absl::Time first_seen;
    absl::btree_set<std::string> token_readers;
    absl::btree_set<std::string> apiserver_clients;
  };
  Baseline() = default;
  Observation Record(const WorkloadKey& workload, const std::string& exe, absl::Time now,
                     bool apiserver) ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status LoadText(const std::string& text) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string SerializeLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  std::string path_;  // "" for in-memory
  mutable absl::Mutex mu_;
  LearningSettings learning_ ABSL_GUARDED_BY(mu_);
  absl::btree_map<std::string, Profile> profiles_ ABSL_GUARDED_BY(mu_);  // by WorkloadKey::Id()
  bool dirty_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
};

// Decides whether a token read was expected, from the policy, the learned
// baseline and the defaults, and what severity a finding gets. The Detector
// asks it; it owns nothing (the agent owns the store, baseline and hasher).
// Thread-safe as its parts are.
class Expectations {
 public:
  Expectations(PolicyStore* policies, Baseline* baseline, ExeHasher* hasher, std::string node)
      : policies_(policies), baseline_(baseline), hasher_(hasher), node_(std::move(node)) {}

  // A host process reading a pod's token: allowed by policy.host_executables?
  bool HostReaderAllowed(const process::ProcessView& reader) const;

  // A process of the token's own pod, outside an exec session. Expected when
  // the policy allows its executable for the workload (shells and tools too,
  // if named), or, unless it is a shell or tool (`tool`), when it is the
  // container's entrypoint binary or in the learned baseline (learning it
  // while the window is open). `why` gets the reason it was expected.
  bool OwnPodReaderExpected(const TokenRead& read, bool tool, std::string* why = nullptr);

  // The policy's severity for a finding of `rule_id` in the reader's
  // workload (nullopt: the rule is off); when it differs from `base`, the
  // reason is appended. Context raises it afterwards (the detector).
  std::optional<v1::Severity> RuleSeverity(const std::string& rule_id, const TokenRead& read,
                                           v1::Severity base,
                                           std::vector<std::string>* reasons) const;

  // For the connection rules: whether the workload's API-server contact by
  // `exe` is expected (policy apiserver_contact, else the baseline, learning
  // it inside the window).
  bool ApiserverContactExpected(const WorkloadKey& workload, const std::string& exe,
                                absl::Time now);

  // Whether `exe` of live process `pid` matches one of `allowed`.
  bool ExecutableAllowed(const std::vector<AllowedExecutable>& allowed, const std::string& exe,
                         uint32_t pid) const;

  const std::string& node() const { return node_; }

 private:
  PolicyStore* policies_;
  Baseline* baseline_;
  ExeHasher* hasher_;
  std::string node_;
};

// Owns the agent's policy machinery: the policy store (reloaded when the
// config file changes or on SIGHUP), the learned baseline (saved under the
// state dir), the executable hasher and the Expectations the Detector asks.
// Threading: Housekeeping() and Stop() on one thread (the agent's event
// loop); RequestReload() from anywhere, including a signal handler;
// expectations() is used by the Detector on the same event thread.
class PolicyRuntime {
 public:
  struct Options {
    std::string config_file;  // "" : default policy, no reloads
    std::string state_dir;
    std::string node;
    std::string proc_root = "/proc";
    // Validates the agent's own keys of the file on reload.
    std::function<absl::Status(const std::string&)> check_agent_keys;
    absl::Duration save_interval = absl::Seconds(5);
  };
  // Fails (one line, the file, line and key) when the config's policy is
  // invalid or the state dir cannot hold the baseline.
  static absl::StatusOr<std::unique_ptr<PolicyRuntime>> Create(Options options);

  Expectations* expectations() { return expectations_.get(); }
  PolicyStore* policies() { return policies_.get(); }
  Baseline* baseline() { return baseline_.get(); }

  // Async-signal-safe: the next Housekeeping() reloads.
  void RequestReload() { reload_requested_.store(true); }
  // Reloads when asked or when the file changed; saves the baseline now and
  // then. Logs each reload's outcome.
  void Housekeeping(absl::Time now);
  // Saves the baseline (at exit).
  void Stop();

  PolicyReloadStats reload_stats() const { return policies_->stats(); }

 private:
  explicit PolicyRuntime(Options options) : options_(std::move(options)) {}
  Options options_;
  std::unique_ptr<PolicyStore> policies_;
  std::unique_ptr<Baseline> baseline_;
  std::unique_ptr<ExeHasher> hasher_;
  std::unique_ptr<Expectations> expectations_;
  std::unique_ptr<ConfigFileWatcher> watcher_;
  std::atomic<bool> reload_requested_{false};
  absl::Time next_save_ = absl::InfinitePast();
  bool change_pending_ = false;
  absl::Time last_change_ = absl::InfinitePast();
};

// `tokenwatch-agent --export-profile`: prints the learned profiles found in
// `state_dir` as policy YAML (filter: glob on "namespace/workload").
// `config_file` (may be "") supplies the learning window, to say which
// profiles are complete.
absl::StatusOr<std::string> ExportProfile(const std::string& state_dir,
                                          const std::string& config_file,
                                          const std::string& filter = "");

}  // namespace tokenwatch::detect
