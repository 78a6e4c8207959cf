#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <optional>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "agent/tokens/inventory.h"

namespace tokenwatch::tokens {
namespace {

using Clock = std::chrono::steady_clock;

// Events come in bursts (the atomic writer makes a dir, a symlink, a rename, a delete); one scan
// after the burst settles is enough. Fixed from the first event, not extended, so a steady stream
// of events still gets scanned every debounce period.
constexpr auto kDebounce = std::chrono::milliseconds(100);

// Directory structure changes: what creation, deletion and the ..data swap produce.
constexpr uint32_t kDirMask = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF |
                              IN_MOVE_SELF | IN_ONLYDIR;
// Configured files may be rewritten in place, which only a write event shows.
constexpr uint32_t kConfiguredDirMask = kDirMask | IN_CLOSE_WRITE | IN_ATTRIB;

std::vector<std::string> ListSubdirs(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return out;
  while (struct dirent* e = readdir(d)) {
    absl::string_view name(e->d_name);
    if (name == "." || name == "..") continue;
    // Kubelet-private names (..data, ..<timestamp>) live inside volume dirs, which are watched
    // for them; their contents never change after the swap.
    if (absl::StartsWith(name, "..")) continue;
    std::string path = absl::StrCat(dir, "/", name);
    struct stat st;
    if (stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) out.push_back(std::move(path));
  }
  closedir(d);
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<InventoryWatcher>> InventoryWatcher::Start(
    TokenInventory* inventory, std::function<void(const InventoryDelta&)> on_change,
    absl::Duration rescan_interval) {
  if (inventory == nullptr) return absl::InvalidArgumentError("inventory watcher: no inventory");
  if (rescan_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("inventory watcher: rescan interval must be positive");
  }
  int ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (ifd < 0) {
    return absl::ErrnoToStatus(errno, "inventory watcher: inotify_init1");
  }
  int wfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wfd < 0) {
    int err = errno;
    close(ifd);
    return absl::ErrnoToStatus(err, "inventory watcher: eventfd");
  }
  std::unique_ptr<InventoryWatcher> watcher(
      new InventoryWatcher(inventory, std::move(on_change), rescan_interval, ifd, wfd));
  // Watches are in place when Start returns, so a pod created right after is seen.
  watcher->SyncWatches();
  watcher->thread_ = std::thread([w = watcher.get()] { w->Run(); });
  return watcher;
}

InventoryWatcher::InventoryWatcher(TokenInventory* inventory,
                                   std::function<void(const InventoryDelta&)> on_change,
                                   absl::Duration rescan_interval, int inotify_fd, int wake_fd)
    : inventory_(inventory),
      on_change_(std::move(on_change)),
      rescan_interval_(rescan_interval),
      inotify_fd_(inotify_fd),
      wake_fd_(wake_fd) {}

InventoryWatcher::~InventoryWatcher() {
  Stop();
  close(inotify_fd_);
  close(wake_fd_);
}

void InventoryWatcher::Stop() {
  if (stopped_) return;
  stopped_ = true;
  uint64_t one = 1;
  while (write(wake_fd_, &one, sizeof(one)) < 0 && errno == EINTR) {
  }
  if (thread_.joinable()) thread_.join();
}

size_t InventoryWatcher::watch_count() const {
  absl::MutexLock lock(&mu_);
  return wd_by_path_.size();
}

void InventoryWatcher::Run() {
  const auto interval = absl::ToChronoMilliseconds(rescan_interval_);
  auto next_periodic = Clock::now() + interval;
  // A plain flag and time point rather than std::optional: GCC 12 misreports the latter as
  // maybe-uninitialized at -O2.
  bool debounce_pending = false;
  Clock::time_point debounce_deadline{};
  while (true) {
    auto now = Clock::now();
    auto wake_at = next_periodic;
    if (debounce_pending && debounce_deadline < wake_at) wake_at = debounce_deadline;
    auto wait_ms = std::chrono::duration_cast<std::chrono::milliseconds>(wake_at - now).count();
    if (wait_ms < 0) wait_ms = 0;
    // Round up so we do not spin on a sub-millisecond remainder.
    if (wake_at > now && wait_ms == 0) wait_ms = 1;

    struct pollfd fds[2] = {{inotify_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    int n = poll(fds, 2, static_cast<int>(std::min<int64_t>(wait_ms, 60'000)));
    if (n < 0 && errno != EINTR) return;  // cannot happen with valid fds; the rescan stops
    if (n > 0 && (fds[1].revents & POLLIN)) return;
    if (n > 0 && (fds[0].revents & POLLIN)) {
      bool overflow = false;
      if (DrainEvents(&overflow)) {
        now = Clock::now();
        if (overflow) {
          // Events were lost: what changed is unknown, so rewatch and rescan everything now.
          debounce_pending = true;
          debounce_deadline = now;
        } else if (!debounce_pending) {
          debounce_pending = true;
          debounce_deadline = now + kDebounce;
        }
      }
    }
    now = Clock::now();
    if ((debounce_pending && now >= debounce_deadline) || now >= next_periodic) {
      debounce_pending = false;
      next_periodic = now + interval;
      ScanAndNotify();
    }
  }
}

bool InventoryWatcher::DrainEvents(bool* overflow) {
  alignas(struct inotify_event) char buf[16 * 1024];
  bool any = false;
  while (true) {
    ssize_t len = read(inotify_fd_, buf, sizeof(buf));
    if (len < 0 && errno == EINTR) continue;
    if (len <= 0) break;  // EAGAIN: drained
    any = true;
    for (char* p = buf; p < buf + len;) {
      struct inotify_event ev;
      std::memcpy(&ev, p, sizeof(ev));
      if (ev.mask & IN_Q_OVERFLOW) *overflow = true;
      if (ev.mask & IN_IGNORED) {
        // The kernel dropped the watch (its directory is gone); forget it so SyncWatches can
        // watch a new directory of the same name.
        absl::MutexLock lock(&mu_);
        auto it = path_by_wd_.find(ev.wd);
        if (it != path_by_wd_.end()) {
          auto by_path = wd_by_path_.find(it->second);
          if (by_path != wd_by_path_.end() && by_path->second == ev.wd) {
            wd_by_path_.erase(by_path);
          }
          path_by_wd_.erase(it);
        }
      }
      p += sizeof(struct inotify_event) + ev.len;
    }
  }
  return any;
}

void InventoryWatcher::SyncWatches() {
  const TokenInventory::Options& options = inventory_->options();
  absl::flat_hash_set<std::string> wanted;
  // Watch first, then list: anything created after the listing raises an event on the watch.
  auto watch = [&](const std::string& path, uint32_t mask) {
    // Added every time, not only when new: the call is idempotent for a watched inode, and a
    // directory deleted and recreated under the same name gets its new inode watched even if
    // the old watch's IN_IGNORED has not been read yet.
    int wd = inotify_add_watch(inotify_fd_, path.c_str(), mask);
    if (wd < 0) return false;  // missing or not a dir: the next scan retries
    wanted.insert(path);
    absl::MutexLock lock(&mu_);
    wd_by_path_[path] = wd;
    path_by_wd_.try_emplace(wd, path);
    return true;
  };

  const std::string& root = options.kubelet_root;
  // The root too, so a kubelet that creates pods/ after we start is noticed.
  watch(root, kDirMask);
  std::string pods = absl::StrCat(root, "/pods");
  if (watch(pods, kDirMask)) {
    for (const std::string& pod : ListSubdirs(pods)) {
      if (!watch(pod, kDirMask)) continue;
      std::string volumes = absl::StrCat(pod, "/volumes");
      if (!watch(volumes, kDirMask)) continue;
      for (absl::string_view plugin : {"kubernetes.io~projected", "kubernetes.io~secret"}) {
        std::string plugin_dir = absl::StrCat(volumes, "/", plugin);
        if (!watch(plugin_dir, kDirMask)) continue;
        // The volume dir is where the kubelet renames ..data_tmp over ..data.
        for (const std::string& volume : ListSubdirs(plugin_dir)) watch(volume, kDirMask);
      }
    }
  }
  for (const std::string& extra : options.extra_paths) {
    struct stat st;
    if (stat(extra.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
      watch(extra, kConfiguredDirMask);
    }
    size_t slash = extra.rfind('/');
    std::string parent = slash == std::string::npos ? "." : extra.substr(0, slash);
    if (parent.empty()) parent = "/";
    watch(parent, kConfiguredDirMask);
  }

  absl::MutexLock lock(&mu_);
  std::vector<std::string> stale;
  for (const auto& [path, wd] : wd_by_path_) {
    if (!wanted.contains(path)) stale.push_back(path);
  }
  for (const std::string& path : stale) {
    int wd = wd_by_path_[path];
    wd_by_path_.erase(path);
    // inotify hands out one wd per inode: keep it while another wanted path shares it.
    const std::string* other = nullptr;
    for (const auto& [p, w] : wd_by_path_) {
      if (w == wd) other = &p;
    }
    if (other != nullptr) {
      path_by_wd_[wd] = *other;
    } else {
      path_by_wd_.erase(wd);
      inotify_rm_watch(inotify_fd_, wd);
    }
  }
}

void InventoryWatcher::ScanAndNotify() {
  SyncWatches();
  InventoryDelta delta = inventory_->Rescan();
  if (!delta.empty() && on_change_) on_change_(delta);
}

}  // namespace tokenwatch::tokens
