#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/detect/workload.h"
#include "tokenwatch/v1/finding.pb.h"

namespace tokenwatch::detect {

// An executable the policy allows: a glob on its full path and, optionally,
// the SHA-256 of the binary (then both must match).
struct AllowedExecutable {
  std::string exe;     // glob on the full path, e.g. /usr/local/bin/vault-agent
  std::string sha256;  // 64 lower-case hex digits, or "" for any content
};

// A rule's setting: off, or the severity it starts from (context such as a
// shell or an exec session can still raise it).
struct RuleSetting {
  bool off = false;
  v1::Severity severity = v1::SEVERITY_UNSPECIFIED;
};

// One `policy.workloads[i]` entry. The selectors are globs; an absent one
// matches everything.
struct WorkloadPolicy {
  std::string namespace_glob = "*";
  std::string workload_glob = "*";
  // Matched against the container's entrypoint executable (its full path or
  // its basename): the container's name is not visible on the node.
  std::string container_glob = "*";
  std::string service_account_glob = "*";
  std::vector<AllowedExecutable> executables;
  // Whether contacting the API server is expected for this workload; nullopt:
  // the policy does not say, the learned baseline decides.
  std::optional<bool> apiserver_contact;
  // Per-rule settings for this workload, by rule id ("TW001"); they win over
  // the policy-wide `rules`.
  absl::flat_hash_map<std::string, RuleSetting> rules;
  int line = 0;  // where the entry starts in the config file (for messages)

  bool Matches(const WorkloadKey& key) const;
};

struct LearningSettings {
  bool enabled = true;
  // How long after a workload is first seen its behaviour is learned.
  absl::Duration window = absl::Hours(24);
};

// The parsed `policy:` key of the agent's config file. Immutable once built;
// share it as std::shared_ptr<const Policy>.
class Policy {
 public:
  // The policy with nothing configured: learning on for 24 h, base severities.
  Policy() = default;

  // Parses the `policy:` key of a whole config document (`text`, named `file`
  // in messages); an absent key gives the default policy. Errors are one line:
  //   config FILE:LINE: key 'policy.workloads[2].executables[0].exe': problem
  static absl::StatusOr<std::shared_ptr<const Policy>> Parse(const std::string& text,
                                                             const std::string& file);
  static absl::StatusOr<std::shared_ptr<const Policy>> LoadFile(const std::string& path);

  // The first workload entry, in file order, whose selectors all match; null
  // when none does. This is what the connection rules read apiserver_contact
  // from.
  const WorkloadPolicy* Match(const WorkloadKey& key) const;

  // The severity `rule_id` starts from for `workload` (may be null): the
  // workload's setting, else the policy-wide one, else `base`. nullopt: the
  // rule is off.
  std::optional<v1::Severity> RuleSeverity(const std::string& rule_id, v1::Severity base,
                                           const WorkloadPolicy* workload) const;

  // Host executables allowed to read pods' tokens, beyond the built-in list
  // of node components.
  const std::vector<AllowedExecutable>& host_executables() const { return host_executables_; }
  const LearningSettings& learning() const { return learning_; }
  const std::vector<WorkloadPolicy>& workloads() const { return workloads_; }

 private:
  friend class PolicyParser;
  LearningSettings learning_;
  std::vector<AllowedExecutable> host_executables_;
  absl::flat_hash_map<std::string, RuleSetting> rules_;
  std::vector<WorkloadPolicy> workloads_;
};

// fnmatch(3) globbing ('*' also crosses '/'); `ValidateGlob` rejects empty
// patterns, unclosed '[' classes and a trailing '\'.
bool GlobMatch(const std::string& glob, const std::string& text);
absl::Status ValidateGlob(const std::string& glob);

// Rule ids and names the policy may name (TW001 ... TW090).
bool IsKnownRule(const std::string& id_or_name, std::string* id);
// "off", "low", "medium", "high", "critical" -> RuleSetting.
absl::StatusOr<RuleSetting> ParseRuleSetting(const std::string& text);
const char* SeverityName(v1::Severity severity);

// SHA-256 of executables, for allowlist entries that pin a binary's content.
// The hash is taken from /proc/<pid>/exe while the process lives (the file it
// really runs, wherever its mount namespace put it), cached by the file's
// (device, inode, mtime, size) so a binary is read once however often it runs.
// Thread-safe.
class ExeHasher {
 public:
  explicit ExeHasher(std::string proc_root = "/proc") : proc_root_(std::move(proc_root)) {}

  // Lower-case hex SHA-256 of the executable of live process `pid`; an error
  // when it has exited (a pinned entry then does not match: fail closed).
  absl::StatusOr<std::string> OfProcess(uint32_t pid) ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<std::string> OfFile(const std::string& path) ABSL_LOCKS_EXCLUDED(mu_);

  uint64_t files_hashed() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  absl::StatusOr<std::string> OfFd(int fd, const std::string& what) ABSL_LOCKS_EXCLUDED(mu_);

  struct FileKey {
    dev_t dev;
    ino_t ino;
    int64_t mtime_ns;
    int64_t size;
    template <typename H>
    friend H AbslHashValue(H h, const FileKey& k) {
      return H::combine(std::move(h), k.dev, k.ino, k.mtime_ns, k.size);
    }
    bool operator==(const FileKey& o) const {
      return dev == o.dev && ino == o.ino && mtime_ns == o.mtime_ns && size == o.size;
    }
  };
  std::string proc_root_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<FileKey, std::string> cache_ ABSL_GUARDED_BY(mu_);
  uint64_t files_hashed_ ABSL_GUARDED_BY(mu_) = 0;
};

// Counters of policy reloads, for the metrics.
struct PolicyReloadStats {
  uint64_t successes = 0;
  uint64_t failures = 0;
  std::string last_error;  // "" after a success
  absl::Time last_success = absl::InfinitePast();
};

// Owns the current policy and replaces it on reload. A reload that fails
// (bad YAML, a bad key, an unreadable file) keeps the old policy, and the
// error is counted and returned. Learned baselines live elsewhere and are
// not touched by a reload.
// Thread-safe: readers take a shared_ptr snapshot; Reload may run anywhere.
class PolicyStore {
 public:
  // `extra_check` validates the rest of the file (the agent's own keys) on
  // reload; may be empty. `path` "" means no file: the default policy, and
  // reloads are no-ops.
  PolicyStore(std::shared_ptr<const Policy> initial, std::string path,
              std::function<absl::Status(const std::string&)> extra_check = {});

  std::shared_ptr<const Policy> Current() const ABSL_LOCKS_EXCLUDED(mu_);

  // Re-reads the file. With `only_if_changed`, a file whose content is the
  // same as the last one loaded is left alone and not counted (inotify also
  // reports unrelated writes in the directory).
  absl::Status Reload(bool only_if_changed = false) ABSL_LOCKS_EXCLUDED(mu_);

  PolicyReloadStats stats() const ABSL_LOCKS_EXCLUDED(mu_);
  const std::string& path() const { return path_; }

 private:
  const std::string path_;
  const std::function<absl::Status(const std::string&)> extra_check_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const Policy> current_ ABSL_GUARDED_BY(mu_);
  std::string loaded_content_ ABSL_GUARDED_BY(mu_);
  PolicyReloadStats stats_ ABSL_GUARDED_BY(mu_);
};

// Notices changes to the config file: an inotify watch on its directory (so
// editors that write a new file and rename it, and Kubernetes ConfigMap
// volumes that swap a `..data` symlink, are seen too). Non-blocking.
// Threading: one thread polls it.
class ConfigFileWatcher {
 public:
  static absl::StatusOr<std::unique_ptr<ConfigFileWatcher>> Create(const std::string& path);
  ~ConfigFileWatcher();
  ConfigFileWatcher(const ConfigFileWatcher&) = delete;
  ConfigFileWatcher& operator=(const ConfigFileWatcher&) = delete;

  // True when something in the file's directory changed since the last call.
  bool Poll();

 private:
  explicit ConfigFileWatcher(int fd) : fd_(fd) {}
  int fd_;
};

}  // namespace tokenwatch::detect
