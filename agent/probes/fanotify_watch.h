#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "tokenwatch/common.h"

namespace tokenwatch::probes {

// Owns fanotify groups with one inode mark (FAN_OPEN) per watched token
// file. Marks sit on the inodes, not on paths or mounts, so every path to
// the file reports and opens of any other file never reach a group: the
// hook costs nothing to the rest of the node. Each mark keeps an O_PATH fd
// on its inode, so it can be removed after rotation has pointed the token's
// path at a newer file.
//
// Events name the file by its file handle (FAN_REPORT_FID, Linux 5.1) where
// the kernel and the file system allow it: then reading an event opens
// nothing. Otherwise (older kernels; tmpfs before Linux 6.7 has no fsid for
// fanotify to report) the mark goes on a second group whose events carry an
// fd the agent must open, stat and close. Both groups are read alike.
//
// Threading: Watch()/Unwatch() from any thread (marks under mu_); Read()
// from one thread, the event thread. overflows() from any thread.
class FanotifyWatcher {
 public:
  // One open of a marked file.
  struct Event {
    uint32_t tgid = 0;   // the opener's process (node pid namespace)
    tw_file_id file{};   // the file, kernel device encoding
    uint64_t ts_ns = 0;  // boot clock when the agent read the event
  };

  struct Options {
    uint32_t self_tgid = 0;  // events from this process (the agent) are dropped
    // Try file-handle events first; false: fd events only.
    bool report_fid = true;
  };

  // fanotify_init; fails (EPERM) without CAP_SYS_ADMIN, or where the kernel
  // lacks fanotify.
  static absl::StatusOr<std::unique_ptr<FanotifyWatcher>> Create(const Options& options);
  static absl::StatusOr<std::unique_ptr<FanotifyWatcher>> Create(uint32_t self_tgid) {
    return Create(Options{self_tgid, true});
  }
  ~FanotifyWatcher();
  FanotifyWatcher(const FanotifyWatcher&) = delete;
  FanotifyWatcher& operator=(const FanotifyWatcher&) = delete;

  // Marks the file at `path` if it still is `id` (the inventory may lag a
  // rotation: then the newer file is reported by the next delta).
  absl::Status Watch(const std::string& path, const tw_file_id& id);
  // Removes the mark on `id`, wherever its path points now.
  absl::Status Unwatch(const tw_file_id& id);
  size_t watched() const;
  // Marks whose events name the file by handle (the rest carry an fd).
  size_t watched_by_handle() const;

  // An fd to wait on with poll(2): readable when any group has events.
  int fd() const { return epoll_fd_; }
  // Appends the events queued now (never blocks). Returns how many.
  absl::StatusOr<int> Read(std::vector<Event>* out);
  // Times the kernel's event queue overflowed (FAN_Q_OVERFLOW): opens lost.
  uint64_t overflows() const { return overflows_.load(); }

 private:
  FanotifyWatcher(const Options& options) : self_tgid_(options.self_tgid) {}
  struct Key {
    uint64_t dev, ino;
    bool operator==(const Key& o) const { return dev == o.dev && ino == o.ino; }
    template <typename H>
    friend H AbslHashValue(H h, const Key& k) {
      return H::combine(std::move(h), k.dev, k.ino);
    }
  };
  struct Mark {
    int path_fd = -1;
    int group = -1;      // the fanotify fd the mark is on
    std::string handle;  // fsid + handle type + handle bytes ("" in fd mode)
  };

  absl::Status AddGroup(unsigned int flags, int* fd);
  absl::Status EnsureFdGroup() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<int> ReadGroup(int group, std::vector<Event>* out);

  const uint32_t self_tgid_;
  int epoll_fd_ = -1;
  int fid_group_ = -1;  // FAN_REPORT_FID group, -1 if the kernel has none
  std::atomic<int> fd_group_{-1};  // fd-event group, made when first needed
  std::atomic<uint64_t> overflows_{0};
  mutable absl::Mutex mu_;
  absl::flat_hash_map<Key, Mark> marks_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, tw_file_id> by_handle_ ABSL_GUARDED_BY(mu_);
};

// The kernel's encoding of a user-space dev_t (major << 20 | minor), the
// one the BPF maps and the inventory use.
uint64_t KernelDev(uint64_t st_dev);

}  // namespace tokenwatch::probes
