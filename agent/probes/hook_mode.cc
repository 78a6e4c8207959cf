#include "agent/probes/hook_mode.h"

#include <poll.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/log.h"

namespace tokenwatch::probes {
namespace {

constexpr HookMode kAutoOrder[] = {HookMode::kLsm, HookMode::kFentry, HookMode::kFanotify,
                                   HookMode::kTracepoint};
// An io_uring record and the fanotify event of the same open are this close.
constexpr uint64_t kMergeWindowNs = 2'000'000'000;
// fanotify intake entries each hold a pidfd: bound them. Past this, opens by
// new processes are records of their own (the detector still folds them).
constexpr size_t kMaxIntake = 4096;
// After a fanotify read of nothing but rereads, the next read waits this long.
constexpr uint64_t kRereadReadGapNs = 2'000'000;

uint64_t BootNowNs() {
  timespec now{};
  clock_gettime(CLOCK_BOOTTIME, &now);
  return static_cast<uint64_t>(now.tv_sec) * 1000000000ull + static_cast<uint64_t>(now.tv_nsec);
}

// A pidfd on `tgid` (pidfd_open, Linux 5.3), or -1.
int OpenPidfd(uint32_t tgid) {
#ifdef SYS_pidfd_open
  return static_cast<int>(syscall(SYS_pidfd_open, static_cast<pid_t>(tgid), 0));
#else
  return -1;
#endif
}

// A pidfd polls readable once its process has exited.
bool PidfdExited(int pidfd) {
  pollfd p{pidfd, POLLIN, 0};
  return poll(&p, 1, 0) != 0;
}

}  // namespace

const char* HookModeName(HookMode mode) {
  switch (mode) {
    case HookMode::kLsm:
      return "lsm";
    case HookMode::kFentry:
      return "fentry";
    case HookMode::kFanotify:
      return "fanotify";
    case HookMode::kTracepoint:
      return "tracepoint";
  }
  return "unknown";
}

absl::StatusOr<std::optional<HookMode>> ParseHookMode(absl::string_view text) {
  if (text == "auto") return std::optional<HookMode>();
  for (HookMode mode : kAutoOrder) {
    if (text == HookModeName(mode)) return std::optional<HookMode>(mode);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--hook-mode ", text, ": expected auto, lsm, fentry, fanotify or tracepoint"));
}

absl::Status CheckBpfLsmActive(const std::string& securityfs) {
  std::string list_path = absl::StrCat(securityfs, "/lsm");
  if (access(list_path.c_str(), R_OK) != 0 &&
      mount("securityfs", securityfs.c_str(), "securityfs", 0, nullptr) != 0 && errno != EBUSY) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot read the active LSM list: securityfs is not mounted at ", securityfs,
                     " and mounting it failed: ", std::strerror(errno)));
  }
  std::ifstream in(list_path);
  std::stringstream text;
  text << in.rdbuf();
  if (!in) {
    return absl::FailedPreconditionError(absl::StrCat("cannot read ", list_path));
  }
  std::string list(absl::StripAsciiWhitespace(text.str()));
  for (absl::string_view lsm : absl::StrSplit(list, ',')) {
    if (lsm == "bpf") return absl::OkStatus();
  }
  // Attaching would succeed and then never run: the BPF LSM's hooks are
  // only called when it is in the list.
  return absl::FailedPreconditionError(absl::StrCat("the BPF LSM is not active (", list_path, ": ",
                                                    list.empty() ? "empty" : list,
                                                    "; boot with lsm=...,bpf)"));
}

TokenHooks::~TokenHooks() {
  for (auto& [key, entry] : intake_) {
    if (entry.pidfd >= 0) close(entry.pidfd);
  }
}

absl::StatusOr<std::unique_ptr<TokenHooks>> TokenHooks::Open(const Options& options) {
  auto requested = ParseHookMode(options.requested);
  if (!requested.ok()) return requested.status();
  std::unique_ptr<TokenHooks> hooks(new TokenHooks());
  hooks->max_depth_ = options.probe.max_depth;
  hooks->proc_root_ = options.proc_root;
  hooks->reopen_sweep_ns_ =
      static_cast<uint64_t>(std::max<int64_t>(0, absl::ToInt64Nanoseconds(options.reopen_sweep)));
  hooks->dedup_window_ns_ =
      static_cast<uint64_t>(std::max<int64_t>(0, absl::ToInt64Nanoseconds(options.probe.dedup_window)));

  if (requested->has_value()) {
    HookMode mode = **requested;
    if (absl::Status s = hooks->Try(mode, options); !s.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("--hook-mode ", HookModeName(mode), ": ", s.message()));
    }
    return hooks;
  }
  absl::Status last;
  for (HookMode mode : kAutoOrder) {
    last = hooks->Try(mode, options);
    if (last.ok()) {
      for (const std::string& refusal : hooks->refusals_) {
        Logf(LogLevel::kInfo, "hook mode passed over, %s", refusal);
      }
      return hooks;
    }
    hooks->refusals_.push_back(absl::StrCat(HookModeName(mode), ": ", last.message()));
  }
  return absl::FailedPreconditionError(absl::StrCat("no hook mode is usable on this kernel: ",
                                                    absl::StrJoin(hooks->refusals_, "; ")));
}

absl::Status TokenHooks::Try(HookMode mode, const Options& options) {
  // Whatever a failed attempt made is destroyed here, before the next.
  probe_.reset();
  fanotify_.reset();
  table_.reset();
  attached_.clear();

  TokenOpenProbe::Options probe_options = options.probe;
  switch (mode) {
    case HookMode::kLsm:
      if (absl::Status s = CheckBpfLsmActive(options.securityfs); !s.ok()) return s;
      probe_options.hooks = TokenOpenProbe::Hooks::kLsm;
      break;
    case HookMode::kFentry:
      probe_options.hooks = TokenOpenProbe::Hooks::kFentry;
      break;
    case HookMode::kFanotify: {
      auto watcher = FanotifyWatcher::Create(options.probe.self_tgid);
      if (!watcher.ok()) return watcher.status();
      fanotify_ = *std::move(watcher);
      table_ = std::make_unique<ProcTableReader>(options.probe.procs_fd, options.probe.exited_fd,
                                                 options.proc_root);
      probe_options.hooks = TokenOpenProbe::Hooks::kIoUringOnly;
      // Every io_uring record must meet its fanotify event (see PollFanotify);
      // the opens folded are the fanotify events', at intake.
      probe_options.dedup_window = absl::ZeroDuration();
      break;
    }
    case HookMode::kTracepoint:
      probe_options.hooks = TokenOpenProbe::Hooks::kTracepoint;
      break;
  }
  auto probe = TokenOpenProbe::Create(probe_options);
  if (!probe.ok()) {
    fanotify_.reset();
    table_.reset();
    // BPF itself is permitted (Create checked): the kernel refuses this
    // program type, which is what "needs root" would hide.
    if ((mode == HookMode::kLsm || mode == HookMode::kFentry) &&
        absl::IsPermissionDenied(probe.status())) {
      std::string what(probe.status().message());
      what = what.substr(0, what.find(" (needs root"));
      return absl::FailedPreconditionError(
          absl::StrCat(what, ": the kernel refuses ", HookModeName(mode),
                       " programs although other BPF programs load"));
    }
    return probe.status();
  }
  probe_ = *std::move(probe);
  mode_ = mode;
  if (fanotify_ != nullptr) attached_.push_back("fanotify/FAN_OPEN inode marks");
  for (const std::string& name : probe_->attached()) attached_.push_back(name);
  return absl::OkStatus();
}

absl::Status TokenHooks::Watch(const tw_file_id& id, const std::string& path) {
  // The map first: in fanotify mode it serves the io_uring hook.
  if (absl::Status s = probe_->Watch(id); !s.ok()) return s;
  if (fanotify_ != nullptr) return fanotify_->Watch(path, id);
  return absl::OkStatus();
}

absl::Status TokenHooks::Unwatch(const tw_file_id& id) {
  absl::Status status = probe_->Unwatch(id);
  if (fanotify_ != nullptr) status.Update(fanotify_->Unwatch(id));
  return status;
}

absl::StatusOr<size_t> TokenHooks::WatchedCount() const { return probe_->WatchedCount(); }

absl::StatusOr<int> TokenHooks::Poll(absl::Duration timeout,
                                     const TokenOpenProbe::Handler& handler) {
  if (fanotify_ == nullptr) return probe_->Poll(timeout, handler);
  return PollFanotify(timeout, handler);
}

absl::StatusOr<int> TokenHooks::PollFanotify(absl::Duration timeout,
                                             const TokenOpenProbe::Handler& handler) {
  // Held events are due next round: do not sleep long on them. After a read
  // of nothing but rereads, the group is left alone a moment (the ring is
  // still watched): the kernel merges a process's queued rereads meanwhile,
  // so a reread storm costs the agent a few reads a millisecond, not one per
  // open. A new reader's open waits that moment at most.
  absl::Duration wait = pending_.empty() ? timeout : absl::Milliseconds(5);
  const uint64_t start_ns = BootNowNs();
  const bool fanotify_due = start_ns >= next_fanotify_read_ns_;
  if (!fanotify_due) {
    wait = std::min(wait, absl::Nanoseconds(next_fanotify_read_ns_ - start_ns) +
                              absl::Microseconds(999));
  }
  pollfd fds[2] = {{probe_->ring_epoll_fd(), POLLIN, 0}, {fanotify_->fd(), POLLIN, 0}};
  if (poll(fds, fanotify_due ? 2 : 1, static_cast<int>(absl::ToInt64Milliseconds(wait))) < 0 &&
      errno != EINTR) {
    return absl::InternalError(absl::StrCat("poll token hooks: ", std::strerror(errno)));
  }

  // io_uring records first: they carry the kernel's view and say io_uring.
  const TokenOpenProbe::Handler on_record = [&](const tw_token_open& event) {
    if (event.access == TW_ACCESS_IO_URING) {
      recent_uring_.push_back(UringOpen{event.tgid, event.file, event.hdr.ts_ns});
    }
    handler(event);
  };
  auto consumed = probe_->Consume(on_record);
  if (!consumed.ok()) return consumed.status();
  int handled = *consumed;

  // The events read last round, each unless it is an io_uring open already
  // reported (fanotify cannot tell io_uring apart; the tracepoint can).
  std::vector<FanotifyWatcher::Event> due;
  due.swap(pending_);
  size_t folded_in_round = 0;
  for (const FanotifyWatcher::Event& event : due) {
    bool merged = false;
    for (auto it = recent_uring_.begin(); it != recent_uring_.end(); ++it) {
      if (it->tgid == event.tgid && it->file.dev == event.file.dev &&
          it->file.ino == event.file.ino) {
        recent_uring_.erase(it);
        merged = true;
        break;
      }
    }
    if (merged) {
      ++merged_;
      continue;
    }
    // A reread within the window: counted before any lineage work.
    if (FoldAtIntake(event)) {
      ++folded_in_round;
      continue;
    }
    static thread_local tw_token_open record;
    record = table_->BuildRecord(event.tgid, event.file, event.ts_ns, max_depth_, TW_HOOK_FANOTIFY);
    record.folded_before = BeginIntakeWindow(event, record);
    handler(record);
    ++handled;
  }
  uint64_t now_ns = BootNowNs();
  while (!recent_uring_.empty() &&
         (recent_uring_.front().ts_ns + kMergeWindowNs < now_ns || recent_uring_.size() > 4096)) {
    recent_uring_.pop_front();
  }

  if (BootNowNs() < next_fanotify_read_ns_) return handled;
  // The round's events were all rereads: pace the next read.
  if (!due.empty() && folded_in_round == due.size()) {
    next_fanotify_read_ns_ = BootNowNs() + kRereadReadGapNs;
  }
  auto read = fanotify_->Read(&pending_);
  if (!read.ok()) return read.status();
  fanotify_events_ += static_cast<uint64_t>(*read);
  return handled;
}

bool TokenHooks::FoldAtIntake(const FanotifyWatcher::Event& event) {
  if (dedup_window_ns_ == 0) return false;
  auto it = intake_.find(IntakeKey{event.tgid, event.file.dev, event.file.ino});
  if (it == intake_.end()) return false;
  Intake& entry = it->second;
  if (event.ts_ns - entry.window_start_ns >= dedup_window_ns_) return false;
  // The pid may be another process's by now: only a live pidfd says it is not.
  if (entry.pidfd < 0 || PidfdExited(entry.pidfd)) return false;
  ++entry.folded;
  return true;
}

TokenOpenProbe::Reopen TokenHooks::IntakeReopen(const IntakeKey& key, const Intake& entry) {
  TokenOpenProbe::Reopen reopen;
  reopen.key.proc = tw_proc_key{std::get<0>(key), 0, entry.start_ticks};
  reopen.key.file = tw_file_id{std::get<1>(key), std::get<2>(key)};
  reopen.key.access = TW_ACCESS_UNKNOWN;
  reopen.value.window_start_ns = entry.window_start_ns;
  reopen.value.folded = entry.folded;
  return reopen;
}

uint64_t TokenHooks::BeginIntakeWindow(const FanotifyWatcher::Event& event,
                                       const tw_token_open& record) {
  if (dedup_window_ns_ == 0) return 0;
  const uint64_t start_ticks = record.reader.key.start_ticks;
  IntakeKey key{event.tgid, event.file.dev, event.file.ino};
  auto it = intake_.find(key);
  if (it != intake_.end()) {
    Intake& entry = it->second;
    if (entry.pidfd >= 0 && entry.start_ticks == start_ticks && !PidfdExited(entry.pidfd)) {
      // The same process, its window over: the next window begins here.
      entry.window_start_ns = event.ts_ns;
      return entry.folded;
    }
    // Another process under a reused pid: its predecessor's count is
    // reported once more, then the entry is this process's.
    retired_.push_back(IntakeReopen(key, entry));
    if (entry.pidfd >= 0) close(entry.pidfd);
    intake_.erase(it);
  }
  if (start_ticks == 0 || intake_.size() >= kMaxIntake) return 0;
  // Hold the process, then check it is the one the record names: the pid
  // may have been reused between the open and now.
  int pidfd = OpenPidfd(event.tgid);
  if (pidfd < 0) return 0;  // already gone: it opens nothing more
  std::optional<ProcStatFields> stat = ReadProcStat(proc_root_, event.tgid);
  if (!stat.has_value() || stat->start_ticks != start_ticks) {
    close(pidfd);
    return 0;
  }
  intake_[key] = Intake{pidfd, start_ticks, event.ts_ns, 0};
  return 0;
}

absl::StatusOr<std::vector<TokenOpenProbe::Reopen>> TokenHooks::ReadReopens() {
  if (fanotify_ == nullptr) {
    auto reopens = probe_->ReadReopens();
    if (reopens.ok()) ForgetExitedReopens(*reopens);
    return reopens;
  }
  std::vector<TokenOpenProbe::Reopen> out;
  out.swap(retired_);
  const uint64_t now_ns = BootNowNs();
  for (auto it = intake_.begin(); it != intake_.end();) {
    Intake& entry = it->second;
    out.push_back(IntakeReopen(it->first, entry));
    // Ended (window over, or the process is gone): reported this last time.
    if (now_ns - entry.window_start_ns >= dedup_window_ns_ || PidfdExited(entry.pidfd)) {
      close(entry.pidfd);
      intake_.erase(it++);
    } else {
      ++it;
    }
  }
  return out;
}

void TokenHooks::ForgetExitedReopens(const std::vector<TokenOpenProbe::Reopen>& reopens) {
  // The kernel never forgets an entry but under LRU pressure: without this,
  // every process that ever read a token (a cron job, 2,000 cats) would be
  // read back every second. A process that has exited opens nothing more,
  // so its entry, reported this last time, can go without racing the
  // kernel. Checked every reopen_sweep (a minute): a /proc read per entry.
  const uint64_t now_ns = BootNowNs();
  if (now_ns < next_reopen_sweep_ns_) return;
  next_reopen_sweep_ns_ = now_ns + reopen_sweep_ns_;
  for (const TokenOpenProbe::Reopen& reopen : reopens) {
    std::optional<ProcStatFields> stat = ReadProcStat(proc_root_, reopen.key.proc.tgid);
    if (!stat.has_value() || stat->start_ticks != reopen.key.proc.start_ticks) {
      probe_->DeleteReopen(reopen.key);
    }
  }
}

}  // namespace tokenwatch::probes
