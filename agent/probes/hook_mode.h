#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "agent/probes/fanotify_watch.h"
#include "agent/probes/proc_table.h"
#include "agent/probes/token_open_probe.h"
#include "tokenwatch/token_open.h"

namespace tokenwatch::probes {

// How token opens are hooked; DESIGN.md decision 3. Ordered strongest first.
enum class HookMode { kLsm, kFentry, kFanotify, kTracepoint };

const char* HookModeName(HookMode mode);
// "lsm", "fentry", "fanotify", "tracepoint"; "auto" gives nullopt (try all).
absl::StatusOr<std::optional<HookMode>> ParseHookMode(absl::string_view text);

// The token hooks of the chosen mode behind one interface: the agent watches
// and unwatches token files and polls records, whatever the mode.
//   lsm, fentry: token_open_lsm.bpf.c; the kernel matches the file.
//   fanotify:    inode marks on the token files; the agent builds each
//                record from the kernel's process table by pid. Next to it,
//                the io_uring_complete tracepoint marks io_uring opens.
//   tracepoint:  the open syscalls' exits and io_uring_complete.
//
// Open() decides the mode before anything stays attached: each candidate is
// checked (LSM: "bpf" in the active LSM list) and loaded, and a refusal
// destroys what it made before the next one is tried.
//
// Threading: Poll() on the event thread; Watch()/Unwatch() from any thread
// (the inventory watcher's); the counters from any thread.
class TokenHooks {
 public:
  ~TokenHooks();
  struct Options {
    std::string requested = "auto";  // --hook-mode
    // hooks is set per mode; procs/exited fds required. probe.dedup_window
    // folds a process's rereads of a token: in the kernel for the BPF
    // modes, at intake (before any lineage work) in fanotify mode.
    TokenOpenProbe::Options probe;
    // Where the active LSM list is read ("<dir>/lsm"); mounted if absent.
    std::string securityfs = "/sys/kernel/security";
    std::string proc_root = "/proc";
    // How often the kernel's reopens entries of exited processes are
    // deleted (a /proc read per entry); BPF modes.
    absl::Duration reopen_sweep = absl::Minutes(1);
  };

  static absl::StatusOr<std::unique_ptr<TokenHooks>> Open(const Options& options);

  HookMode mode() const { return mode_; }
  const char* mode_name() const { return HookModeName(mode_); }
  // What is attached, e.g. "lsm/file_open" or "fanotify/FAN_OPEN inode marks".
  const std::vector<std::string>& attached() const { return attached_; }
  // Why stronger modes were passed over, one line each ("lsm: ...").
  const std::vector<std::string>& refusals() const { return refusals_; }

  // Starts/stops watching a token file; `path` is where it is now (the
  // fanotify mark needs it; the BPF map needs only the id).
  absl::Status Watch(const tw_file_id& id, const std::string& path);
  absl::Status Unwatch(const tw_file_id& id);
  absl::StatusOr<size_t> WatchedCount() const;

  // Waits up to `timeout` and hands every token-open record to `handler`.
  absl::StatusOr<int> Poll(absl::Duration timeout, const TokenOpenProbe::Handler& handler);

  // The folded reopens, one entry per (process, token, route), each with its
  // running folded total: from the kernel's reopens map, or from the
  // fanotify intake. An entry whose process has exited (or, at intake, whose
  // window ended) is reported one last time and then forgotten.
  absl::StatusOr<std::vector<TokenOpenProbe::Reopen>> ReadReopens();

  // Kernel counters of the BPF side, enum tw_stat.
  std::array<uint64_t, TW_STAT_MAX> ReadStats() const { return probe_->ReadStats(); }
  // fanotify queue overflows (0 in other modes).
  uint64_t fanotify_overflows() const { return fanotify_ ? fanotify_->overflows() : 0; }
  // fanotify events folded into the io_uring record of the same open.
  uint64_t fanotify_merged() const { return merged_; }
  // fanotify events read from the group (before any folding); 0 in other modes.
  uint64_t fanotify_events() const { return fanotify_events_; }

 private:
  TokenHooks() = default;
  absl::Status Try(HookMode mode, const Options& options);
  absl::StatusOr<int> PollFanotify(absl::Duration timeout, const TokenOpenProbe::Handler& handler);

  struct UringOpen {
    uint32_t tgid;
    tw_file_id file;
    uint64_t ts_ns;
  };

  HookMode mode_ = HookMode::kTracepoint;
  std::vector<std::string> attached_;
  std::vector<std::string> refusals_;
  uint32_t max_depth_ = TW_MAX_ANCESTORS;
  std::unique_ptr<TokenOpenProbe> probe_;
  std::unique_ptr<FanotifyWatcher> fanotify_;
  std::unique_ptr<ProcTableReader> table_;
  // fanotify mode, event thread only: events held one poll round so the
  // io_uring record of the same open (if any) is seen first.
  std::vector<FanotifyWatcher::Event> pending_;
  std::deque<UringOpen> recent_uring_;
  uint64_t merged_ = 0;
  uint64_t fanotify_events_ = 0;

  // fanotify intake folding, event thread only. A pid is reused, so each
  // entry holds a pidfd on the process it counts for (checked against the
  // start time the record carries): an event from the same pid whose
  // pidfd says "exited" is another process, and gets a record of its own.
  struct Intake {
    int pidfd = -1;
    uint64_t start_ticks = 0;
    uint64_t window_start_ns = 0;
    uint64_t folded = 0;
  };
  using IntakeKey = std::tuple<uint32_t, uint64_t, uint64_t>;  // tgid, dev, ino
  // Whether `event` repeats an open already reported in its window (then counted).
  bool FoldAtIntake(const FanotifyWatcher::Event& event);
  // `record` begins a window for its process: returns the folded count so far.
  uint64_t BeginIntakeWindow(const FanotifyWatcher::Event& event, const tw_token_open& record);
  static TokenOpenProbe::Reopen IntakeReopen(const IntakeKey& key, const Intake& entry);
  // BPF modes: deletes the kernel's entries of exited processes (once a minute).
  void ForgetExitedReopens(const std::vector<TokenOpenProbe::Reopen>& reopens);
  uint64_t reopen_sweep_ns_ = 0;
  uint64_t next_reopen_sweep_ns_ = 0;
  uint64_t dedup_window_ns_ = 0;
  uint64_t next_fanotify_read_ns_ = 0;  // boot clock; pacing during reread storms
  std::string proc_root_ = "/proc";
  absl::flat_hash_map<IntakeKey, Intake> intake_;
  std::vector<TokenOpenProbe::Reopen> retired_;  // replaced entries, reported once more
};

// Whether "bpf" is in the kernel's active LSM list (<securityfs>/lsm), with
// the reason when it is not. Mounts securityfs at `securityfs` if needed.
absl::Status CheckBpfLsmActive(const std::string& securityfs);

}  // namespace tokenwatch::probes
