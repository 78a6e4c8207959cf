#include "agent/probes/token_use_probe.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <strings.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "agent/probes/bpf_util.h"
#include "agent/probes/process_probe.h"
#include "token_use.skel.h"

namespace tokenwatch::probes {

absl::StatusOr<std::unique_ptr<TokenUseProbe>> TokenUseProbe::Create(const Options& options) {
  InstallLibbpfLogger();
  if (absl::Status s = CheckBtf(options.btf_path); !s.ok()) return s;
  if (absl::Status s = CheckBpfPermission(); !s.ok()) return s;

  std::unique_ptr<TokenUseProbe> probe(new TokenUseProbe());
  LIBBPF_OPTS(bpf_object_open_opts, open_opts);
  if (!options.btf_path.empty()) open_opts.btf_custom_path = options.btf_path.c_str();
  probe->skel_ = token_use_bpf__open_opts(&open_opts);
  if (probe->skel_ == nullptr) return ErrnoStatus(errno, "open token_use.bpf.o");
  token_use_bpf* skel = probe->skel_;
  skel->rodata->self_tgid = options.self_tgid;
  skel->rodata->ns_per_tick = NsPerTick();
  skel->rodata->lineage_depth = std::min<uint32_t>(options.lineage_depth, TW_MAX_ANCESTORS);
  skel->rodata->argv_max = std::min<uint32_t>(options.argv_bytes, TW_ARGV_LEN);
  // The process table and the taint map belong to process.bpf.c.
  const std::pair<bpf_map*, int> shared[] = {{skel->maps.procs, options.procs_fd},
                                             {skel->maps.exited, options.exited_fd},
                                             {skel->maps.taint, options.taint_fd}};
  for (const auto& [map, fd] : shared) {
    if (fd >= 0 && bpf_map__reuse_fd(map, fd) != 0) {
      return ErrnoStatus(errno, absl::StrCat("share map ", bpf_map__name(map),
                                             " with token_use.bpf.o"));
    }
  }
  if (int err = token_use_bpf__load(skel); err != 0) return ErrnoStatus(err, "load token_use.bpf.o");

  struct Hook {
    bpf_program* prog;
    const char* name;
  };
  const Hook hooks[] = {
      {skel->progs.handle_inet_sock_set_state, "tracepoint/sock/inet_sock_set_state"},
      {skel->progs.handle_exec_argv, "raw_tracepoint/sched_process_exec"},
  };
  for (const Hook& hook : hooks) {
    bpf_link* link = bpf_program__attach(hook.prog);
    if (link == nullptr) return ErrnoStatus(errno, absl::StrCat("attach ", hook.name));
    probe->links_.push_back(link);
    probe->attached_.push_back(hook.name);
  }
  probe->taint_fd_ = bpf_map__fd(skel->maps.taint);
  probe->ring_ = ring_buffer__new(bpf_map__fd(skel->maps.use_events), &TokenUseProbe::OnSample,
                                  probe.get(), nullptr);
  if (probe->ring_ == nullptr) return ErrnoStatus(errno, "open use_events ring buffer");
  return probe;
}

TokenUseProbe::~TokenUseProbe() {
  if (ring_ != nullptr) ring_buffer__free(ring_);
  for (bpf_link* link : links_) bpf_link__destroy(link);
  if (skel_ != nullptr) token_use_bpf__destroy(skel_);
}

absl::Status TokenUseProbe::SetWatchedDestinations(
    const std::vector<std::pair<tw_endpoint, uint32_t>>& dests) {
  // Delete what is no longer wanted, then add: never a moment with nothing.
  std::vector<tw_endpoint> old;
  tw_endpoint key{}, next{};
  const void* prev = nullptr;
  while (bpf_map__get_next_key(skel_->maps.watched_dests, prev, &next, sizeof(next)) == 0) {
    old.push_back(next);
    key = next;
    prev = &key;
  }
  for (const auto& [dest, kind] : dests) {
    if (bpf_map__update_elem(skel_->maps.watched_dests, &dest, sizeof(dest), &kind, sizeof(kind),
                             BPF_ANY) != 0) {
      return ErrnoStatus(errno, "watch destination");
    }
  }
  for (const tw_endpoint& o : old) {
    bool keep = std::any_of(dests.begin(), dests.end(), [&](const auto& d) {
      return std::memcmp(&d.first, &o, sizeof(o)) == 0;
    });
    if (!keep) bpf_map__delete_elem(skel_->maps.watched_dests, &o, sizeof(o), 0);
  }
  return absl::OkStatus();
}

absl::Status TokenUseProbe::Taint(const tw_proc_key& key, uint64_t read_id, uint64_t expires_ns,
                                  uint64_t cgroup_id) {
  tw_taint value{read_id, expires_ns, cgroup_id};
  if (bpf_map_update_elem(taint_fd_, &key, &value, BPF_ANY) != 0) {
    return ErrnoStatus(errno, "taint process");
  }
  return absl::OkStatus();
}

std::vector<TokenUseProbe::Recent> TokenUseProbe::RecentConnections() const {
  std::vector<Recent> out;
  tw_proc_key key{}, next{};
  const void* prev = nullptr;
  while (bpf_map__get_next_key(skel_->maps.recent_conns, prev, &next, sizeof(next)) == 0) {
    Recent r;
    r.key = next;
    if (bpf_map__lookup_elem(skel_->maps.recent_conns, &next, sizeof(next), &r.conns,
                             sizeof(r.conns), 0) == 0) {
      out.push_back(r);
    }
    key = next;
    prev = &key;
  }
  return out;
}

int TokenUseProbe::OnSample(void* ctx, void* data, size_t size) {
  auto* self = static_cast<TokenUseProbe*>(ctx);
  tw_event_header header;
  if (size < sizeof(header) || self->handlers_ == nullptr) return 0;
  std::memcpy(&header, data, sizeof(header));
  if (header.type == TW_EVENT_CONNECT && size >= TW_CONNECT_FIXED_SIZE &&
      size <= sizeof(tw_connect)) {
    static thread_local tw_connect event;
    std::memset(&event, 0, sizeof(event));
    std::memcpy(&event, data, size);
    size_t room = (size - TW_CONNECT_FIXED_SIZE) / sizeof(tw_proc);
    if (event.n_ancestors > room) event.n_ancestors = static_cast<uint32_t>(room);
    ++self->handled_;
    if (self->handlers_->on_connect) self->handlers_->on_connect(event);
  } else if (header.type == TW_EVENT_ARGV_TOKEN && size >= sizeof(tw_argv_token)) {
    static thread_local tw_argv_token event;
    std::memcpy(&event, data, sizeof(event));
    ++self->handled_;
    if (self->handlers_->on_argv_token) self->handlers_->on_argv_token(event);
    // The copy held a token: wipe it.
    explicit_bzero(&event, sizeof(event));
  }
  return 0;
}

absl::StatusOr<int> TokenUseProbe::Poll(absl::Duration timeout, const Handlers& handlers) {
  handlers_ = &handlers;
  handled_ = 0;
  int err = ring_buffer__poll(ring_, static_cast<int>(absl::ToInt64Milliseconds(timeout)));
  if (err >= 0) err = ring_buffer__consume(ring_);
  handlers_ = nullptr;
  if (err < 0 && err != -EINTR) return ErrnoStatus(err, "poll use_events ring buffer");
  return handled_;
}

std::array<uint64_t, TW_STAT_MAX> TokenUseProbe::ReadStats() const {
  return SumPerCpuStats(skel_->maps.use_stats);
}

}  // namespace tokenwatch::probes
