#include "agent/probes/token_open_probe.h"

#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/log.h"
#include "agent/probes/bpf_util.h"
#include "agent/probes/process_probe.h"
#include "token_open.skel.h"
#include "token_open_lsm.skel.h"

namespace tokenwatch::probes {
namespace {

// libbpf finds tracepoint ids through tracefs. Nodes do not always mount it
// (this development machine does not), so the agent mounts it where needed.
absl::Status EnsureTracefs() {
  for (const char* events : {"/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"}) {
    if (access(events, F_OK) == 0) return absl::OkStatus();
  }
  if (mount("tracefs", "/sys/kernel/tracing", "tracefs", 0, nullptr) != 0) {
    int err = errno;
    return absl::FailedPreconditionError(absl::StrCat(
        "tracefs is not mounted at /sys/kernel/tracing and mounting it failed: ",
        std::strerror(err), err == EPERM ? " (needs root or CAP_SYS_ADMIN)" : ""));
  }
  Logf(LogLevel::kInfo, "mounted tracefs at /sys/kernel/tracing");
  return absl::OkStatus();
}

bool TracepointExists(absl::string_view category, absl::string_view name) {
  for (const char* root : {"/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"}) {
    std::string dir = absl::StrCat(root, "/", category);
    if (access(dir.c_str(), F_OK) == 0) {
      return access(absl::StrCat(dir, "/", name).c_str(), F_OK) == 0;
    }
  }
  return true;  // no tracefs to ask: try, and let attach tell
}

// The settings both skeletons share, set before load.
template <typename Skel>
absl::Status Configure(Skel* skel, const TokenOpenProbe::Options& options) {
  skel->rodata->self_tgid = options.self_tgid;
  skel->rodata->ns_per_tick = NsPerTick();
  skel->rodata->argv_max = std::min<uint32_t>(options.argv_bytes, TW_ARGV_LEN);
  skel->rodata->lineage_depth = std::min<uint32_t>(options.max_depth, TW_MAX_ANCESTORS);
  // The shared lineage code declares the taint map; the token hooks never
  // touch it, so keep their private copy small.
  bpf_map__set_max_entries(skel->maps.taint, 256);
  // The process table belongs to process.bpf.c; share it when given.
  if (options.procs_fd >= 0 && bpf_map__reuse_fd(skel->maps.procs, options.procs_fd) != 0) {
    return ErrnoStatus(errno, "share the process table with the token hooks");
  }
  if (options.exited_fd >= 0 && bpf_map__reuse_fd(skel->maps.exited, options.exited_fd) != 0) {
    return ErrnoStatus(errno, "share the exited table with the token hooks");
  }
  bpf_map__set_max_entries(skel->maps.events, options.ring_bytes);
  bpf_map__set_max_entries(skel->maps.tokens, options.max_tokens);
  skel->rodata->dedup_window_ns =
      static_cast<uint64_t>(absl::ToInt64Nanoseconds(options.dedup_window));
  return absl::OkStatus();
}

}  // namespace

std::string OpenAccessText(const tw_token_open& event) {
  std::string name = OpenSyscallName(event.syscall);
  switch (event.access) {
    case TW_ACCESS_IO_URING:
      if (event.syscall == TW_SYSCALL_IO_URING) return "io_uring open";
      return name;  // "io_uring openat" already
    case TW_ACCESS_COMPAT_SYSCALL:
      return absl::StrCat(name, " (32-bit compat)");
    default:
      return name;
  }
}

const char* OpenSyscallName(uint32_t syscall) {
  switch (syscall) {
    case TW_SYSCALL_OPENAT:
      return "openat";
    case TW_SYSCALL_OPENAT2:
      return "openat2";
    case TW_SYSCALL_OPEN:
      return "open";
    case TW_SYSCALL_OPEN_BY_HANDLE_AT:
      return "open_by_handle_at";
    case TW_SYSCALL_IO_URING_OPENAT:
      return "io_uring openat";
    case TW_SYSCALL_IO_URING_OPENAT2:
      return "io_uring openat2";
    case TW_SYSCALL_IO_URING:
      return "io_uring";
    case TW_SYSCALL_CREAT:
      return "creat";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<TokenOpenProbe>> TokenOpenProbe::Create(const Options& options) {
  InstallLibbpfLogger();
  // Permission first: without it nothing else matters, and the message
  // should say so rather than name a later symptom.
  if (absl::Status s = CheckBtf(options.btf_path); !s.ok()) return s;
  if (absl::Status s = CheckBpfPermission(); !s.ok()) return s;
  std::unique_ptr<TokenOpenProbe> probe(new TokenOpenProbe());
  if (absl::Status s = probe->Load(options); !s.ok()) return s;
  return probe;
}

absl::Status TokenOpenProbe::Load(const Options& options) {
  LIBBPF_OPTS(bpf_object_open_opts, open_opts);
  if (!options.btf_path.empty()) open_opts.btf_custom_path = options.btf_path.c_str();
  // Every mode needs tracefs: io_uring_complete here, and the other probes'
  // tracepoints (connections) whatever the token hooks are.
  if (absl::Status s = EnsureTracefs(); !s.ok()) return s;

  // Hooks the running kernel lacks, or this mode does not use, are switched
  // off before load, so a missing one never leaves a half-loaded object.
  struct Hook {
    bpf_program* prog;
    std::string name;  // as attached() reports it
  };
  std::vector<Hook> hooks;
  if (options.hooks == Hooks::kLsm || options.hooks == Hooks::kFentry) {
    lsm_skel_ = token_open_lsm_bpf__open_opts(&open_opts);
    if (lsm_skel_ == nullptr) return ErrnoStatus(errno, "open token_open_lsm.bpf.o");
    if (absl::Status s = Configure(lsm_skel_, options); !s.ok()) return s;
    bool lsm = options.hooks == Hooks::kLsm;
    bpf_program__set_autoload(lsm_skel_->progs.handle_file_open, lsm);
    bpf_program__set_autoload(lsm_skel_->progs.handle_security_file_open, !lsm);
    hooks.push_back({lsm ? lsm_skel_->progs.handle_file_open
                         : lsm_skel_->progs.handle_security_file_open,
                     lsm ? "lsm/file_open" : "fentry/security_file_open"});
    if (int err = token_open_lsm_bpf__load(lsm_skel_); err != 0) {
      return ErrnoStatus(err, absl::StrCat("load token_open_lsm.bpf.o (", hooks[0].name, ")"));
    }
    tokens_ = lsm_skel_->maps.tokens;
    events_ = lsm_skel_->maps.events;
    stats_ = lsm_skel_->maps.stats;
    reopens_ = lsm_skel_->maps.reopens;
  } else {
    skel_ = token_open_bpf__open_opts(&open_opts);
    if (skel_ == nullptr) return ErrnoStatus(errno, "open token_open.bpf.o");
    if (absl::Status s = Configure(skel_, options); !s.ok()) return s;
    const std::pair<bpf_program*, const char*> syscalls[] = {
        {skel_->progs.handle_sys_exit_openat, "sys_exit_openat"},
        {skel_->progs.handle_sys_exit_openat2, "sys_exit_openat2"},
        {skel_->progs.handle_sys_exit_open, "sys_exit_open"},
        {skel_->progs.handle_sys_exit_open_by_handle_at, "sys_exit_open_by_handle_at"},
    };
    bool with_syscalls = options.hooks == Hooks::kTracepoint;
    for (const auto& [prog, name] : syscalls) {
      bool wanted = with_syscalls && TracepointExists("syscalls", name);
      bpf_program__set_autoload(prog, wanted);
      if (wanted) {
        hooks.push_back({prog, absl::StrCat("syscalls/", name)});
      } else if (with_syscalls) {
        Logf(LogLevel::kInfo, "tracepoint syscalls/%s absent on this kernel; skipped", name);
      }
    }
    // A kernel without io_uring (or with it compiled out) has no such event.
    bool uring = TracepointExists("io_uring", "io_uring_complete");
    bpf_program__set_autoload(skel_->progs.handle_io_uring_complete, uring);
    if (uring) {
      hooks.push_back({skel_->progs.handle_io_uring_complete, "io_uring/io_uring_complete"});
    } else {
      Logf(LogLevel::kInfo, "tracepoint io_uring/io_uring_complete absent; io_uring not watched");
    }
    if (int err = token_open_bpf__load(skel_); err != 0) {
      return ErrnoStatus(err, "load token_open.bpf.o");
    }
    tokens_ = skel_->maps.tokens;
    events_ = skel_->maps.events;
    stats_ = skel_->maps.stats;
    reopens_ = skel_->maps.reopens;
  }

  for (const Hook& hook : hooks) {
    bpf_link* link = bpf_program__attach(hook.prog);
    if (link == nullptr) return ErrnoStatus(errno, absl::StrCat("attach ", hook.name));
    links_.push_back(link);
    attached_.push_back(hook.name);
  }

  ring_ = ring_buffer__new(bpf_map__fd(events_), &TokenOpenProbe::OnSample, this, nullptr);
  if (ring_ == nullptr) return ErrnoStatus(errno, "open events ring buffer");
  return absl::OkStatus();
}

TokenOpenProbe::~TokenOpenProbe() {
  if (ring_ != nullptr) ring_buffer__free(ring_);
  for (bpf_link* link : links_) bpf_link__destroy(link);
  if (skel_ != nullptr) token_open_bpf__destroy(skel_);
  if (lsm_skel_ != nullptr) token_open_lsm_bpf__destroy(lsm_skel_);
}

absl::Status TokenOpenProbe::Watch(const tw_file_id& id) {
  uint8_t one = 1;
  if (bpf_map__update_elem(tokens_, &id, sizeof(id), &one, sizeof(one), BPF_ANY) != 0) {
    return ErrnoStatus(errno, absl::StrFormat("watch token %u:%u ino %u", id.dev >> 20,
                                              id.dev & 0xfffff, id.ino));
  }
  return absl::OkStatus();
}

absl::Status TokenOpenProbe::Unwatch(const tw_file_id& id) {
  if (bpf_map__delete_elem(tokens_, &id, sizeof(id), 0) != 0 && errno != ENOENT) {
    return ErrnoStatus(errno, "unwatch token");
  }
  return absl::OkStatus();
}

absl::StatusOr<size_t> TokenOpenProbe::WatchedCount() const {
  size_t count = 0;
  tw_file_id key{};
  tw_file_id next{};
  const void* prev = nullptr;
  while (bpf_map__get_next_key(tokens_, prev, &next, sizeof(next)) == 0) {
    ++count;
    key = next;
    prev = &key;
  }
  if (errno != ENOENT) return ErrnoStatus(errno, "walk tokens map");
  return count;
}

int TokenOpenProbe::OnSample(void* ctx, void* data, size_t size) {
  auto* self = static_cast<TokenOpenProbe*>(ctx);
  tw_event_header header;
  if (size < sizeof(header)) {
    ++self->short_records_;
    return 0;
  }
  // Records in the ring are not guaranteed to be aligned: copy before use.
  std::memcpy(&header, data, sizeof(header));
  if (header.type == TW_EVENT_TOKEN_OPEN && size >= TW_TOKEN_OPEN_FIXED_SIZE &&
      size <= sizeof(tw_token_open)) {
    // Variable size: the record ends after its n_ancestors entries.
    static thread_local tw_token_open event;
    std::memset(&event, 0, sizeof(event));
    std::memcpy(&event, data, size);
    size_t room = (size - TW_TOKEN_OPEN_FIXED_SIZE) / sizeof(tw_proc);
    if (event.n_ancestors > room) event.n_ancestors = static_cast<uint32_t>(room);
    ++self->handled_;
    if (self->handler_ != nullptr) (*self->handler_)(event);
  } else {
    ++self->short_records_;
  }
  return 0;
}

int TokenOpenProbe::ring_epoll_fd() const { return ring_buffer__epoll_fd(ring_); }

absl::StatusOr<int> TokenOpenProbe::Consume(const Handler& handler) {
  handler_ = &handler;
  handled_ = 0;
  int err = ring_buffer__consume(ring_);
  handler_ = nullptr;
  if (err < 0 && err != -EINTR) return ErrnoStatus(err, "consume events ring buffer");
  return handled_;
}

absl::StatusOr<int> TokenOpenProbe::Poll(absl::Duration timeout, const Handler& handler) {
  handler_ = &handler;
  handled_ = 0;
  int err = ring_buffer__poll(ring_, static_cast<int>(absl::ToInt64Milliseconds(timeout)));
  if (err >= 0) err = ring_buffer__consume(ring_);
  handler_ = nullptr;
  if (err < 0 && err != -EINTR) return ErrnoStatus(err, "poll events ring buffer");
  return handled_;
}

absl::StatusOr<std::vector<TokenOpenProbe::Reopen>> TokenOpenProbe::ReadReopens() const {
  std::vector<Reopen> out;
  const int fd = bpf_map__fd(reopens_);
  // Batches cost a syscall per few hundred entries; kernels before 5.6 (no
  // batch ops) and odd map types fall back to walking key by key.
  constexpr uint32_t kBatch = 512;
  std::vector<tw_reopen_key> keys(kBatch);
  std::vector<tw_reopen> values(kBatch);
  tw_reopen_key out_batch{};
  bool first = true;
  bool batched = true;
  for (;;) {
    uint32_t count = kBatch;
    LIBBPF_OPTS(bpf_map_batch_opts, opts);
    int err = bpf_map_lookup_batch(fd, first ? nullptr : &out_batch, &out_batch, keys.data(),
                                   values.data(), &count, &opts);
    int saved = errno;
    for (uint32_t i = 0; i < count; ++i) out.push_back(Reopen{keys[i], values[i]});
    if (err == 0) {
      first = false;
      continue;
    }
    if (saved == ENOENT) break;  // the last batch (count may be > 0)
    if (first && (saved == EINVAL || saved == ENOTSUP || saved == EOPNOTSUPP)) {
      batched = false;
      break;
    }
    return ErrnoStatus(saved, "read the reopens map");
  }
  if (!batched) {
    out.clear();
    tw_reopen_key key{};
    tw_reopen_key next{};
    const void* prev = nullptr;
    while (bpf_map_get_next_key(fd, prev, &next) == 0) {
      Reopen entry{next, {}};
      if (bpf_map_lookup_elem(fd, &next, &entry.value) == 0) out.push_back(entry);
      key = next;
      prev = &key;
    }
  }
  return out;
}

void TokenOpenProbe::DeleteReopen(const tw_reopen_key& key) {
  bpf_map__delete_elem(reopens_, &key, sizeof(key), 0);
}

std::array<uint64_t, TW_STAT_MAX> TokenOpenProbe::ReadStats() const {
  return SumPerCpuStats(stats_);
}

}  // namespace tokenwatch::probes
