#include "agent/probes/fanotify_watch.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/fanotify.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/log.h"
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

// The bytes an event's FID record names a file by: fsid, handle type and
// handle. Built the same way from an O_PATH fd at Watch() and from events.
std::string HandleKey(const __kernel_fsid_t& fsid, int type, const unsigned char* handle,
                      size_t bytes) {
  std::string key(reinterpret_cast<const char*>(&fsid), sizeof(fsid));
  key.append(reinterpret_cast<const char*>(&type), sizeof(type));
  key.append(reinterpret_cast<const char*>(handle), bytes);
  return key;
}

// The handle key of the file behind `path_fd`, or "" when the file system
// cannot name it by handle.
std::string HandleKeyOf(int path_fd) {
  struct statfs fs {};
  if (fstatfs(path_fd, &fs) != 0) return "";
  alignas(file_handle) unsigned char storage[sizeof(file_handle) + MAX_HANDLE_SZ];
  auto* handle = reinterpret_cast<file_handle*>(storage);
  handle->handle_bytes = MAX_HANDLE_SZ;
  int mount_id = 0;
  if (name_to_handle_at(path_fd, "", handle, &mount_id, AT_EMPTY_PATH) != 0) return "";
  __kernel_fsid_t fsid{};
  static_assert(sizeof(fsid) == sizeof(fs.f_fsid));
  std::memcpy(&fsid, &fs.f_fsid, sizeof(fsid));
  return HandleKey(fsid, handle->handle_type, handle->f_handle, handle->handle_bytes);
}

// The mark refusals that mean "not by handle on this file system": the file
// goes on the fd group instead.
bool FidUnsupported(int err) { return err == ENODEV || err == EOPNOTSUPP || err == EXDEV; }

}  // namespace

uint64_t KernelDev(uint64_t st_dev) {
  return (static_cast<uint64_t>(major(st_dev)) << 20) | minor(st_dev);
}

absl::Status FanotifyWatcher::AddGroup(unsigned int flags, int* fd) {
  // Notification only: a reader is never blocked waiting for the agent.
  int group = fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | flags,
                            O_RDONLY | O_LARGEFILE | O_CLOEXEC);
  if (group < 0) {
    int err = errno;
    if (err == EPERM) {
      return absl::PermissionDeniedError(
          "fanotify_init: Operation not permitted (needs CAP_SYS_ADMIN)");
    }
    return ErrnoStatus(err, "fanotify_init");
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = group;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, group, &ev) != 0) {
    int err = errno;
    close(group);
    return ErrnoStatus(err, "epoll_ctl fanotify group");
  }
  *fd = group;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<FanotifyWatcher>> FanotifyWatcher::Create(const Options& options) {
  std::unique_ptr<FanotifyWatcher> watcher(new FanotifyWatcher(options));
  watcher->epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (watcher->epoll_fd_ < 0) return ErrnoStatus(errno, "epoll_create1");
  if (options.report_fid) {
    absl::Status s = watcher->AddGroup(FAN_REPORT_FID, &watcher->fid_group_);
    if (absl::IsPermissionDenied(s)) return s;
    // EINVAL: a kernel before 5.1; fd events still work.
    if (!s.ok()) Logf(LogLevel::kInfo, "fanotify file-handle events unavailable: %s", s.message());
  }
  if (watcher->fid_group_ < 0) {
    absl::MutexLock lock(&watcher->mu_);
    if (absl::Status s = watcher->EnsureFdGroup(); !s.ok()) return s;
  }
  return watcher;
}

absl::Status FanotifyWatcher::EnsureFdGroup() {
  if (fd_group_.load() >= 0) return absl::OkStatus();
  int group = -1;
  if (absl::Status s = AddGroup(0, &group); !s.ok()) return s;
  fd_group_.store(group);
  return absl::OkStatus();
}

FanotifyWatcher::~FanotifyWatcher() {
  absl::MutexLock lock(&mu_);
  for (auto& [key, mark] : marks_) close(mark.path_fd);
  if (fid_group_ >= 0) close(fid_group_);
  if (fd_group_.load() >= 0) close(fd_group_.load());
  if (epoll_fd_ >= 0) close(epoll_fd_);
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
  Mark mark;
  mark.path_fd = path_fd;
  if (fid_group_ >= 0) {
    mark.handle = HandleKeyOf(path_fd);
    if (!mark.handle.empty() &&
        fanotify_mark(fid_group_, FAN_MARK_ADD, FAN_OPEN, AT_FDCWD, self_path.c_str()) == 0) {
      mark.group = fid_group_;
    } else if (!mark.handle.empty() && !FidUnsupported(errno)) {
      int err = errno;
      close(path_fd);
      return ErrnoStatus(err, absl::StrCat("fanotify_mark ", path));
    }
  }
  if (mark.group < 0) {
    mark.handle.clear();
    if (absl::Status s = EnsureFdGroup(); !s.ok()) {
      close(path_fd);
      return s;
    }
    if (fanotify_mark(fd_group_.load(), FAN_MARK_ADD, FAN_OPEN, AT_FDCWD, self_path.c_str()) !=
        0) {
      int err = errno;
      close(path_fd);
      return ErrnoStatus(err, absl::StrCat("fanotify_mark ", path));
    }
    mark.group = fd_group_.load();
  }
  if (!mark.handle.empty()) by_handle_[mark.handle] = id;
  marks_[key] = std::move(mark);
  return absl::OkStatus();
}

absl::Status FanotifyWatcher::Unwatch(const tw_file_id& id) {
  absl::MutexLock lock(&mu_);
  auto it = marks_.find(Key{id.dev, id.ino});
  if (it == marks_.end()) return absl::OkStatus();
  Mark mark = std::move(it->second);
  marks_.erase(it);
  if (!mark.handle.empty()) by_handle_.erase(mark.handle);
  std::string self_path = absl::StrCat("/proc/self/fd/", mark.path_fd);
  int rc = fanotify_mark(mark.group, FAN_MARK_REMOVE, FAN_OPEN, AT_FDCWD, self_path.c_str());
  int err = errno;
  close(mark.path_fd);
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

size_t FanotifyWatcher::watched_by_handle() const {
  absl::MutexLock lock(&mu_);
  return by_handle_.size();
}

absl::StatusOr<int> FanotifyWatcher::Read(std::vector<Event>* out) {
  int count = 0;
  for (int group : {fid_group_, fd_group_.load()}) {
    if (group < 0) continue;
    auto read = ReadGroup(group, out);
    if (!read.ok()) return read.status();
    count += *read;
  }
  return count;
}

absl::StatusOr<int> FanotifyWatcher::ReadGroup(int group, std::vector<Event>* out) {
  alignas(fanotify_event_metadata) char buf[16384];
  const bool by_handle = group == fid_group_;
  int count = 0;
  for (;;) {
    ssize_t len = read(group, buf, sizeof(buf));
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
      Event event;
      event.tgid = static_cast<uint32_t>(meta->pid);
      event.ts_ns = now;
      if (by_handle) {
        // The file handle record follows the metadata; nothing was opened.
        const char* info = reinterpret_cast<const char*>(meta) + meta->metadata_len;
        const char* end = reinterpret_cast<const char*>(meta) + meta->event_len;
        bool found = false;
        while (!found && info + sizeof(fanotify_event_info_header) <= end) {
          fanotify_event_info_header hdr;
          std::memcpy(&hdr, info, sizeof(hdr));
          if (hdr.len < sizeof(hdr) || info + hdr.len > end) break;
          if (hdr.info_type == FAN_EVENT_INFO_TYPE_FID &&
              hdr.len >= sizeof(fanotify_event_info_fid) + sizeof(file_handle)) {
            fanotify_event_info_fid fid;
            std::memcpy(&fid, info, sizeof(fid));
            file_handle fh;
            const char* fh_at = info + sizeof(fanotify_event_info_fid);
            std::memcpy(&fh, fh_at, sizeof(fh));
            const size_t room = hdr.len - sizeof(fanotify_event_info_fid) - sizeof(file_handle);
            if (fh.handle_bytes <= room) {
              std::string key = HandleKey(
                  fid.fsid, fh.handle_type,
                  reinterpret_cast<const unsigned char*>(fh_at + sizeof(file_handle)),
                  fh.handle_bytes);
              absl::MutexLock lock(&mu_);
              auto it = by_handle_.find(key);
              if (it != by_handle_.end()) {
                event.file = it->second;
                found = true;
              }
            }
          }
          info += hdr.len;
        }
        // Not found: the mark was removed (rotation) after the open.
        if (!found || event.tgid == self_tgid_) continue;
      } else {
        if (meta->fd < 0) continue;
        struct stat st {};
        bool ok = fstat(meta->fd, &st) == 0;
        close(meta->fd);
        if (!ok || event.tgid == self_tgid_) continue;
        event.file = tw_file_id{KernelDev(st.st_dev), st.st_ino};
      }
      out->push_back(event);
      ++count;
    }
  }
  return count;
}

}  // namespace tokenwatch::probes
