#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tokenwatch/token_open.h"

struct token_open_bpf;
struct token_open_lsm_bpf;
struct ring_buffer;
struct bpf_link;
struct bpf_map;

namespace tokenwatch::probes {

// Owns one token-open BPF skeleton, chosen by Options::hooks: token_open
// (the open syscalls' exit tracepoints and io_uring_complete, or
// io_uring_complete alone next to fanotify) or token_open_lsm (BPF-LSM
// file_open, or fentry on security_file_open). Either way it owns the
// `tokens` map of watched (dev, ino), the `events` ring and the counters.
//
// Threading: Poll() runs on one thread (the event thread). Watch(), Unwatch()
// and ReadStats() are single bpf(2) calls on map fds and may run on any thread.
class TokenOpenProbe {
 public:
  // Which programs to load and attach; the others are never loaded.
  enum class Hooks {
    kTracepoint,   // sys_exit_open* and io_uring:io_uring_complete
    kIoUringOnly,  // io_uring:io_uring_complete (fanotify mode sees the rest)
    kLsm,          // lsm/file_open
    kFentry,       // fentry/security_file_open
  };

  struct Options {
    Hooks hooks = Hooks::kTracepoint;
    // Records from this process are dropped in the kernel (the agent itself
    // reads every token while it builds its inventory).
    uint32_t self_tgid = 0;
    // Kernel BTF to use instead of /sys/kernel/btf/vmlinux ("" = that one).
    std::string btf_path;
    // Ring buffer size in bytes (a power of two, at least one page).
    uint32_t ring_bytes = 4u << 20;
    // Capacity of the tokens map.
    uint32_t max_tokens = 65536;
    // Ancestors carried on each record (at most TW_MAX_ANCESTORS).
    uint32_t max_depth = TW_MAX_ANCESTORS;
    // Head of argv kept for a reader the process table does not know.
    uint32_t argv_bytes = TW_ARGV_LEN;
    // The process table's maps (ProcessProbe::procs_fd/exited_fd); -1 gives
    // this probe private, empty tables (tests only: no lineage).
    int procs_fd = -1;
    int exited_fd = -1;
    // Repeated opens of a token by the same process within this window are
    // counted in the kernel (the reopens map) instead of each making a
    // record; zero makes every open a record.
    absl::Duration dedup_window = absl::ZeroDuration();
  };

  // One entry of the reopens map: a process's folded opens of one token.
  struct Reopen {
    tw_reopen_key key{};
    tw_reopen value{};
  };

  using Handler = std::function<void(const tw_token_open&)>;

  // Checks the kernel (BTF, BPF permission), loads and attaches. Errors say
  // what is missing in one line, e.g. "load token_open.bpf.o: Operation not
  // permitted (needs root, or CAP_BPF and CAP_PERFMON)".
  static absl::StatusOr<std::unique_ptr<TokenOpenProbe>> Create(const Options& options);

  ~TokenOpenProbe();
  TokenOpenProbe(const TokenOpenProbe&) = delete;
  TokenOpenProbe& operator=(const TokenOpenProbe&) = delete;

  absl::Status Watch(const tw_file_id& id);
  absl::Status Unwatch(const tw_file_id& id);
  // Number of entries in the tokens map, counted by walking its keys.
  absl::StatusOr<size_t> WatchedCount() const;

  // The ring's epoll fd, for callers that wait on it with other fds.
  int ring_epoll_fd() const;
  // Hands every record already in the ring to `handler`; returns how many.
  absl::StatusOr<int> Consume(const Handler& handler);

  // Waits up to `timeout` for records and hands each, copied out of the ring,
  // to `handler`. The kernel wakes us only for batches, so this also drains
  // whatever arrived when the wait times out. Returns the records handled.
  absl::StatusOr<int> Poll(absl::Duration timeout, const Handler& handler);

  // Every entry of the reopens map, a few bpf(2) calls for the whole map.
  absl::StatusOr<std::vector<Reopen>> ReadReopens() const;
  // Deletes an entry. Only for a process that has exited: the kernel
  // restarts a live process's window in place, and deleting under it would
  // race that restart.
  void DeleteReopen(const tw_reopen_key& key);

  // Per-CPU counters summed, indexed by enum tw_stat.
  std::array<uint64_t, TW_STAT_MAX> ReadStats() const;

  // The hooks attached, e.g. "syscalls/sys_exit_openat", "lsm/file_open".
  const std::vector<std::string>& attached() const { return attached_; }

 private:
  TokenOpenProbe() = default;
  static int OnSample(void* ctx, void* data, size_t size);

  absl::Status Load(const Options& options);

  token_open_bpf* skel_ = nullptr;
  token_open_lsm_bpf* lsm_skel_ = nullptr;
  bpf_map* tokens_ = nullptr;
  bpf_map* events_ = nullptr;
  bpf_map* stats_ = nullptr;
  bpf_map* reopens_ = nullptr;
  ring_buffer* ring_ = nullptr;
  std::vector<bpf_link*> links_;
  std::vector<std::string> attached_;
  const Handler* handler_ = nullptr;  // set for the duration of Poll()
  int handled_ = 0;
  uint64_t short_records_ = 0;
};

// Name of the syscall for enum tw_open_syscall, e.g. "openat2".
const char* OpenSyscallName(uint32_t syscall);

// How the record says the file was opened, for people: "openat",
// "openat (32-bit compat)", "io_uring openat2", "unknown".
std::string OpenAccessText(const tw_token_open& event);

}  // namespace tokenwatch::probes
