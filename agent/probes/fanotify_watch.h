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

// Owns a fanotify group with one inode mark (FAN_OPEN) per watched token
// file. Marks sit on the inodes, not on paths or mounts, so every path to
// the file reports and opens of any other file never reach the group: the
// hook costs nothing to the rest of the node. Each mark keeps an O_PATH fd
// on its inode, so it can be removed after rotation has pointed the token's
// path at a newer file.
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

  // fanotify_init; fails (EPERM) without CAP_SYS_ADMIN, or where the kernel
  // lacks fanotify. Events from `self_tgid` (the agent) are dropped.
  static absl::StatusOr<std::unique_ptr<FanotifyWatcher>> Create(uint32_t self_tgid);
  ~FanotifyWatcher();
  FanotifyWatcher(const FanotifyWatcher&) = delete;
  FanotifyWatcher& operator=(const FanotifyWatcher&) = delete;

  // Marks the file at `path` if it still is `id` (the inventory may lag a
  // rotation: then the newer file is reported by the next delta).
  absl::Status Watch(const std::string& path, const tw_file_id& id);
  // Removes the mark on `id`, wherever its path points now.
  absl::Status Unwatch(const tw_file_id& id);
  size_t watched() const;

  // The group's fd, to wait on with poll(2).
  int fd() const { return fd_; }
  // Appends the events queued now (never blocks). Returns how many.
  absl::StatusOr<int> Read(std::vector<Event>* out);
  // Times the kernel's event queue overflowed (FAN_Q_OVERFLOW): opens lost.
  uint64_t overflows() const { return overflows_.load(); }

 private:
  FanotifyWatcher(int fd, uint32_t self_tgid) : fd_(fd), self_tgid_(self_tgid) {}
  struct Key {
    uint64_t dev, ino;
    bool operator==(const Key& o) const { return dev == o.dev && ino == o.ino; }
    template <typename H>
    friend H AbslHashValue(H h, const Key& k) {
      return H::combine(std::move(h), k.dev, k.ino);
    }
  };

  const int fd_;
  const uint32_t self_tgid_;
  std::atomic<uint64_t> overflows_{0};
  mutable absl::Mutex mu_;
  absl::flat_hash_map<Key, int> marks_ ABSL_GUARDED_BY(mu_);  // inode -> O_PATH fd
};

// The kernel's encoding of a user-space dev_t (major << 20 | minor), the
// one the BPF maps and the inventory use.
uint64_t KernelDev(uint64_t st_dev);

}  // namespace tokenwatch::probes
