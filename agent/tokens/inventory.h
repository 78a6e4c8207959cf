#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/tokens/claims.h"

namespace tokenwatch::tokens {

// (device, inode) of a file with the device in the kernel's internal encoding
// (MKDEV(major, minor) = major << 20 | minor), i.e. what the kernel's inode->i_sb->s_dev holds,
// so BPF can compare it directly.
struct FileId {
  uint64_t dev = 0;
  uint64_t ino = 0;

  bool operator==(const FileId& o) const { return dev == o.dev && ino == o.ino; }
  bool operator!=(const FileId& o) const { return !(*this == o); }
  template <typename H>
  friend H AbslHashValue(H h, const FileId& id) {
    return H::combine(std::move(h), id.dev, id.ino);
  }
};

// Converts stat's st_dev (glibc's encoding) into the kernel's MKDEV encoding.
FileId FileIdFromStat(const struct stat& st);

enum class TokenKind { kProjected, kSecret, kConfigured };

absl::string_view TokenKindName(TokenKind kind);  // "projected", "secret", "configured"

// One token file on the node. Holds the token's digest and claims, never its content.
struct TokenInfo {
  FileId id;
  // The real file (..data resolved), e.g.
  // <root>/pods/<uid>/volumes/kubernetes.io~projected/<vol>/..2025_01_01_00_00_00.123/token
  std::string host_path;
  std::string pod_uid;    // from the path; empty for configured paths
  std::string volume;     // volume dir name; empty for configured paths
  std::string file_name;  // e.g. token, azure-identity-token (the visible name, path in volume)
  TokenKind kind = TokenKind::kProjected;
  Claims claims;
  std::string digest;  // TokenDigest of the trimmed content
};

// scans, added and removed count since start; tokens, malformed and unreadable describe the
// latest scan. "malformed" counts JWT-shaped files (eyJ..., two dots) that do not parse as a
// Kubernetes token; other files in the volumes (ca.crt, namespace, config) are not tokens and
// are not counted at all.
struct InventoryStats {
  uint64_t scans = 0;
  uint64_t tokens = 0;
  uint64_t malformed = 0;
  uint64_t unreadable = 0;
  uint64_t added = 0;
  uint64_t removed = 0;
};

struct InventoryDelta {
  std::vector<TokenInfo> added;
  std::vector<TokenInfo> removed;
  bool empty() const { return added.empty() && removed.empty(); }
};

// The set of token files on the node, keyed by FileId. Owns its index only (no fds, no token
// content). Thread-safe: Rescan runs on the watcher thread, lookups on the event thread; the
// filesystem walk runs without holding the lookup lock, so lookups never wait for disk.
class TokenInventory {
 public:
  struct Options {
    std::string kubelet_root = "/var/lib/kubelet";
    // Token files or directories outside the kubelet's volumes (kind kConfigured).
    std::vector<std::string> extra_paths;
  };

  explicit TokenInventory(Options options);

  // Walks <root>/pods/*/volumes/kubernetes.io~projected/*/ and kubernetes.io~secret/*/ (and the
  // extra paths), returns what changed since the previous scan. Rotation yields added+removed.
  InventoryDelta Rescan() ABSL_LOCKS_EXCLUDED(scan_mu_, mu_);

  std::optional<TokenInfo> Lookup(const FileId& id) const ABSL_LOCKS_EXCLUDED(mu_);
  std::optional<TokenInfo> LookupDigest(absl::string_view digest) const ABSL_LOCKS_EXCLUDED(mu_);
  std::vector<TokenInfo> Snapshot() const ABSL_LOCKS_EXCLUDED(mu_);
  InventoryStats stats() const ABSL_LOCKS_EXCLUDED(mu_);

  const Options& options() const { return options_; }

 private:
  const Options options_;
  // Serializes whole scans so each delta is against the scan before it.
  absl::Mutex scan_mu_;
  mutable absl::Mutex mu_ ABSL_ACQUIRED_AFTER(scan_mu_);
  absl::flat_hash_map<FileId, TokenInfo> tokens_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, FileId> by_digest_ ABSL_GUARDED_BY(mu_);
  InventoryStats stats_ ABSL_GUARDED_BY(mu_);
};

// Watches the kubelet tree with inotify and calls on_change with each non-empty delta, within
// 2 s of a pod created, deleted or rotated (the kubelet swaps a new timestamped dir in as ..data
// by renaming a ..data_tmp symlink); also rescans every rescan_interval as a safety net. Owns the
// inotify fd, a wake-up eventfd and one thread of its own; on_change runs on that thread.
// Stop() / the destructor joins it. Start does not scan first: call inventory->Rescan() before
// Start to load the initial set synchronously.
class InventoryWatcher {
 public:
  static absl::StatusOr<std::unique_ptr<InventoryWatcher>> Start(
      TokenInventory* inventory, std::function<void(const InventoryDelta&)> on_change,
      absl::Duration rescan_interval = absl::Seconds(30));
  ~InventoryWatcher();
  InventoryWatcher(const InventoryWatcher&) = delete;
  InventoryWatcher& operator=(const InventoryWatcher&) = delete;

  // Idempotent. Must not be called from on_change.
  void Stop();

  // Number of directories currently watched (for tests and metrics).
  size_t watch_count() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  InventoryWatcher(TokenInventory* inventory, std::function<void(const InventoryDelta&)> on_change,
                   absl::Duration rescan_interval, int inotify_fd, int wake_fd);
  void Run();
  // Returns true if any event was read; sets *overflow on IN_Q_OVERFLOW.
  bool DrainEvents(bool* overflow);
  // Brings the watch set in line with the directories that exist now.
  void SyncWatches();
  void ScanAndNotify();

  TokenInventory* const inventory_;
  const std::function<void(const InventoryDelta&)> on_change_;
  const absl::Duration rescan_interval_;
  const int inotify_fd_;
  const int wake_fd_;
  std::thread thread_;
  bool stopped_ = false;  // only touched by the owner's thread (Stop / destructor)

  mutable absl::Mutex mu_;
  // Directory path -> watch descriptor, and back. Only the watcher thread writes them.
  absl::flat_hash_map<std::string, int> wd_by_path_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<int, std::string> path_by_wd_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tokenwatch::tokens
