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
#include "agent/common/log.h"
#include "agent/probes/bpf_util.h"
#include "agent/probes/process_probe.h"
#include "token_open.skel.h"

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

}  // namespace

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
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<TokenOpenProbe>> TokenOpenProbe::Create(const Options& options) {
  InstallLibbpfLogger();
  // Permission first: without it nothing else matters, and the message
  // should say so rather than name a later symptom.
  if (absl::Status s = CheckBtf(options.btf_path); !s.ok()) return s;
  if (absl::Status s = CheckBpfPermission(); !s.ok()) return s;
  if (absl::Status s = EnsureTracefs(); !s.ok()) return s;

  std::unique_ptr<TokenOpenProbe> probe(new TokenOpenProbe());
  LIBBPF_OPTS(bpf_object_open_opts, open_opts);
  if (!options.btf_path.empty()) open_opts.btf_custom_path = options.btf_path.c_str();
  probe->skel_ = token_open_bpf__open_opts(&open_opts);
  if (probe->skel_ == nullptr) return ErrnoStatus(errno, "open token_open.bpf.o");

  token_open_bpf* skel = probe->skel_;
  skel->rodata->self_tgid = options.self_tgid;
  skel->rodata->ns_per_tick = NsPerTick();
  skel->rodata->argv_max = std::min<uint32_t>(options.argv_bytes, TW_ARGV_LEN);
  skel->rodata->max_depth = std::min<uint32_t>(options.max_depth, TW_MAX_ANCESTORS);
  // The process table belongs to process.bpf.c; share it when given.
  if (options.procs_fd >= 0 && bpf_map__reuse_fd(skel->maps.procs, options.procs_fd) != 0) {
    return ErrnoStatus(errno, "share the process table with token_open.bpf.o");
  }
  if (options.exited_fd >= 0 && bpf_map__reuse_fd(skel->maps.exited, options.exited_fd) != 0) {
    return ErrnoStatus(errno, "share the exited table with token_open.bpf.o");
  }
  bpf_map__set_max_entries(skel->maps.events, options.ring_bytes);
  bpf_map__set_max_entries(skel->maps.tokens, options.max_tokens);

  // Hooks the running kernel lacks are switched off before load, so a
  // missing one never leaves a half-loaded object.
  struct Hook {
    bpf_program* prog;
    const char* tracepoint;
  };
  const Hook hooks[] = {
      {skel->progs.handle_sys_exit_openat, "sys_exit_openat"},
      {skel->progs.handle_sys_exit_openat2, "sys_exit_openat2"},
      {skel->progs.handle_sys_exit_open, "sys_exit_open"},
      {skel->progs.handle_sys_exit_open_by_handle_at, "sys_exit_open_by_handle_at"},
  };
  for (const Hook& hook : hooks) {
    if (!TracepointExists("syscalls", hook.tracepoint)) {
      bpf_program__set_autoload(hook.prog, false);
      Logf(LogLevel::kInfo, "tracepoint syscalls/%s absent on this kernel; skipped",
           hook.tracepoint);
    }
  }

  if (int err = token_open_bpf__load(skel); err != 0) {
    return ErrnoStatus(err, "load token_open.bpf.o");
  }
  for (const Hook& hook : hooks) {
    if (!bpf_program__autoload(hook.prog)) continue;
    bpf_link* link = bpf_program__attach(hook.prog);
    if (link == nullptr) {
      return ErrnoStatus(errno, absl::StrCat("attach tracepoint syscalls/", hook.tracepoint));
    }
    probe->links_.push_back(link);
    probe->attached_.push_back(absl::StrCat("syscalls/", hook.tracepoint));
  }

  probe->ring_ = ring_buffer__new(bpf_map__fd(skel->maps.events), &TokenOpenProbe::OnSample,
                                  probe.get(), nullptr);
  if (probe->ring_ == nullptr) return ErrnoStatus(errno, "open events ring buffer");
  return probe;
}

TokenOpenProbe::~TokenOpenProbe() {
  if (ring_ != nullptr) ring_buffer__free(ring_);
  for (bpf_link* link : links_) bpf_link__destroy(link);
  if (skel_ != nullptr) token_open_bpf__destroy(skel_);
}

absl::Status TokenOpenProbe::Watch(const tw_file_id& id) {
  uint8_t one = 1;
  if (bpf_map__update_elem(skel_->maps.tokens, &id, sizeof(id), &one, sizeof(one), BPF_ANY) != 0) {
    return ErrnoStatus(errno, absl::StrFormat("watch token %u:%u ino %u", id.dev >> 20,
                                              id.dev & 0xfffff, id.ino));
  }
  return absl::OkStatus();
}

absl::Status TokenOpenProbe::Unwatch(const tw_file_id& id) {
  if (bpf_map__delete_elem(skel_->maps.tokens, &id, sizeof(id), 0) != 0 && errno != ENOENT) {
    return ErrnoStatus(errno, "unwatch token");
  }
  return absl::OkStatus();
}

absl::StatusOr<size_t> TokenOpenProbe::WatchedCount() const {
  size_t count = 0;
  tw_file_id key{};
  tw_file_id next{};
  const void* prev = nullptr;
  while (bpf_map__get_next_key(skel_->maps.tokens, prev, &next, sizeof(next)) == 0) {
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

absl::StatusOr<int> TokenOpenProbe::Poll(absl::Duration timeout, const Handler& handler) {
  handler_ = &handler;
  handled_ = 0;
  int err = ring_buffer__poll(ring_, static_cast<int>(absl::ToInt64Milliseconds(timeout)));
  if (err >= 0) err = ring_buffer__consume(ring_);
  handler_ = nullptr;
  if (err < 0 && err != -EINTR) return ErrnoStatus(err, "poll events ring buffer");
  return handled_;
}

std::array<uint64_t, TW_STAT_MAX> TokenOpenProbe::ReadStats() const {
  std::array<uint64_t, TW_STAT_MAX> total{};
  int ncpus = libbpf_num_possible_cpus();
  if (ncpus <= 0) return total;
  std::vector<uint64_t> values(static_cast<size_t>(ncpus));
  for (uint32_t i = 0; i < TW_STAT_MAX; ++i) {
    if (bpf_map__lookup_elem(skel_->maps.stats, &i, sizeof(i), values.data(),
                             values.size() * sizeof(uint64_t), 0) != 0) {
      continue;
    }
    for (uint64_t v : values) total[i] += v;
  }
  return total;
}

}  // namespace tokenwatch::probes
