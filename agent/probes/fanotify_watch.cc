#include "agent/probes/fanotify_watch.h"

#include <fcntl.h>
#include <sys/fanotify.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "agent/probes/bpf_util.h"

namespace tokenwatch::probes {
namespace {

uint64_t BootNs() {
  timespec ts{};
  clock_gettime(CLOCK_BOOTTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

std::string Describe(const tw_file_id& id) {
  return absl::StrFormat("%u:%u ino %u", id.dev >> 20, id.dev & 0xfffff, id.ino);
}

}  // namespace

uint64_t KernelDev(uint64_t st_dev) {
  return (static_cast<uint64_t>(major(st_dev)) << 20) | minor(st_dev);
}

absl::StatusOr<std::unique_ptr<FanotifyWatcher>> FanotifyWatcher::Create(uint32_t self_tgid) {
  // Notification only: a reader is never blocked waiting for the agent.
  int fd = fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK,
                         O_RDONLY | O_LARGEFILE | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    if (err == EPERM) {
      return absl::PermissionDeniedError(
          "fanotify_init: Operation not permitted (needs CAP_SYS_ADMIN)");
    }
    return ErrnoStatus(err, "fanotify_init");
  }
  return std::unique_ptr<FanotifyWatcher>(new FanotifyWatcher(fd, self_tgid));
}

FanotifyWatcher::~FanotifyWatcher() {
  absl::MutexLock lock(&mu_);
  for (auto& [key, path_fd] : marks_) close(path_fd);
  close(fd_);
}

absl::Status FanotifyWatcher::Watch(const std::string& path, const tw_file_id& id) {
  // Hold the inode before marking it, and check it is the one the inventory
  // means: the kubelet may have swapped ..data since the scan.
  int path_fd = open(path.c_str(), O_PATH | O_CLOEXEC);
  if (path_fd < 0) return ErrnoStatus(errno, absl::StrCat("open ", path));
  struct stat st {};
  if (fstat(path_fd, &st) != 0 || KernelDev(st.st_dev) != id.dev || st.st_ino != id.ino) {
    close(path_fd);
    return absl::FailedPreconditionError(
        absl::StrCat(path, " is no longer token ", Describe(id), " (rotated)"));
  }
  absl::MutexLock lock(&mu_);
  Key key{id.dev, id.ino};
  if (marks_.contains(key)) {
    close(path_fd);
    return absl::OkStatus();
  }
  // The mark goes on the inode the fd holds; /proc/self/fd resolves to it.
  std::string self_path = absl::StrCat("/proc/self/fd/", path_fd);
  if (fanotify_mark(fd_, FAN_MARK_ADD, FAN_OPEN, AT_FDCWD, self_path.c_str()) != 0) {
    int err = errno;
    close(path_fd);
    return ErrnoStatus(err, absl::StrCat("fanotify_mark ", path));
  }
  marks_[key] = path_fd;
  return absl::OkStatus();
}

absl::Status FanotifyWatcher::Unwatch(const tw_file_id& id) {
  absl::MutexLock lock(&mu_);
  auto it = marks_.find(Key{id.dev, id.ino});
  if (it == marks_.end()) return absl::OkStatus();
  int path_fd = it->second;
  marks_.erase(it);
  std::string self_path = absl::StrCat("/proc/self/fd/", path_fd);
  int rc = fanotify_mark(fd_, FAN_MARK_REMOVE, FAN_OPEN, AT_FDCWD, self_path.c_str());
  int err = errno;
  close(path_fd);
  // ENOENT: the kernel dropped the mark with the inode already.
  if (rc != 0 && err != ENOENT) {
    return ErrnoStatus(err, absl::StrCat("fanotify unmark token ", Describe(id)));
  }
  return absl::OkStatus();
}

size_t FanotifyWatcher::watched() const {
  absl::MutexLock lock(&mu_);
  return marks_.size();
}

absl::StatusOr<int> FanotifyWatcher::Read(std::vector<Event>* out) {
  alignas(fanotify_event_metadata) char buf[16384];
  int count = 0;
  for (;;) {
    ssize_t len = read(fd_, buf, sizeof(buf));
    if (len < 0) {
      if (errno == EAGAIN || errno == EINTR) break;
      return ErrnoStatus(errno, "read fanotify events");
    }
    if (len == 0) break;
    uint64_t now = BootNs();
    auto* meta = reinterpret_cast<fanotify_event_metadata*>(buf);
    for (; FAN_EVENT_OK(meta, len); meta = FAN_EVENT_NEXT(meta, len)) {
      if (meta->vers != FANOTIFY_METADATA_VERSION) {
        return absl::InternalError("fanotify: unexpected event metadata version");
      }
      if ((meta->mask & FAN_Q_OVERFLOW) != 0) {
        overflows_.fetch_add(1);
        continue;
      }
      if (meta->fd < 0) continue;
      struct stat st {};
      bool ok = fstat(meta->fd, &st) == 0;
      close(meta->fd);
      if (!ok || static_cast<uint32_t>(meta->pid) == self_tgid_) continue;
      Event event;
      event.tgid = static_cast<uint32_t>(meta->pid);
      event.file = tw_file_id{KernelDev(st.st_dev), st.st_ino};
      event.ts_ns = now;
      out->push_back(event);
      ++count;
    }
  }
  return count;
}

}  // namespace tokenwatch::probes
