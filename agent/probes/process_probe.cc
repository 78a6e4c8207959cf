#include "agent/probes/process_probe.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <unordered_map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/log.h"
#include "agent/probes/bpf_util.h"
#include "process.skel.h"

namespace tokenwatch::probes {
namespace {

std::string ReadSmallFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

void CopyString(absl::string_view from, char* to, size_t size, uint32_t* len) {
  size_t n = std::min(from.size(), size - 1);
  std::memcpy(to, from.data(), n);
  to[n] = '\0';
  if (len != nullptr) *len = static_cast<uint32_t>(n);
}

// One /proc/<pid> read into a table entry; false when the process is gone.
bool ReadEntry(const std::string& proc_root, uint32_t pid, const std::string& cgroup2_mount,
               tw_proc* e, uint32_t* ppid) {
  std::string base = absl::StrCat(proc_root, "/", pid);
  std::string stat_text = ReadSmallFile(base + "/stat");
  size_t open = stat_text.find('(');
  size_t close = stat_text.rfind(')');
  if (open == std::string::npos || close == std::string::npos || close < open) return false;
  std::vector<absl::string_view> f =
      absl::StrSplit(absl::string_view(stat_text).substr(close + 2), ' ', absl::SkipEmpty());
  uint64_t ticks = 0;
  if (f.size() < 20 || !absl::SimpleAtoi(f[1], ppid) || !absl::SimpleAtoi(f[19], &ticks)) {
    return false;
  }
  std::memset(e, 0, sizeof(*e));
  e->key.tgid = pid;
  e->key.start_ticks = ticks;
  e->start_boottime_ns = ticks * NsPerTick();
  e->flags = TW_PROC_SEEDED;
  CopyString(absl::string_view(stat_text).substr(open + 1, close - open - 1), e->comm, sizeof(e->comm),
             nullptr);

  char exe[TW_EXE_LEN + 16];
  ssize_t n = readlink((base + "/exe").c_str(), exe, sizeof(exe) - 1);
  if (n > 0) {
    absl::string_view path(exe, static_cast<size_t>(n));
    absl::ConsumeSuffix(&path, " (deleted)");
    CopyString(path, e->exe, sizeof(e->exe), &e->exe_len);
    if (path.size() >= sizeof(e->exe)) e->flags |= TW_PROC_EXE_CUT;
  } else {
    e->flags |= TW_PROC_EXE_CUT;  // kernel threads have no exe
  }
  std::string cmdline = ReadSmallFile(base + "/cmdline");
  e->argv_len = static_cast<uint32_t>(std::min(cmdline.size(), sizeof(e->argv)));
  std::memcpy(e->argv, cmdline.data(), e->argv_len);

  for (absl::string_view line : absl::StrSplit(ReadSmallFile(base + "/status"), '\n')) {
    std::vector<absl::string_view> v =
        absl::StrSplit(line, absl::ByAnyChar("\t "), absl::SkipEmpty());
    if (v.size() < 2) continue;
    if (v[0] == "Uid:") (void)absl::SimpleAtoi(v[1], &e->uid);
    if (v[0] == "Gid:") (void)absl::SimpleAtoi(v[1], &e->gid);
    if (v[0] == "NSpid:") (void)absl::SimpleAtoi(v.back(), &e->ns_pid);
  }
  struct stat st {};
  if (stat((base + "/ns/pid").c_str(), &st) == 0) e->pidns = static_cast<uint32_t>(st.st_ino);
  for (absl::string_view line : absl::StrSplit(ReadSmallFile(base + "/cgroup"), '\n')) {
    if (absl::ConsumePrefix(&line, "0::") && !cgroup2_mount.empty()) {
      // A cgroup v2 id is its directory's inode number.
      if (stat(absl::StrCat(cgroup2_mount, line).c_str(), &st) == 0) e->cgroup_id = st.st_ino;
    }
  }
  return true;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ProcessProbe>> ProcessProbe::Create(const Options& options) {
  InstallLibbpfLogger();
  if (absl::Status s = CheckBtf(options.btf_path); !s.ok()) return s;
  if (absl::Status s = CheckBpfPermission(); !s.ok()) return s;

  std::unique_ptr<ProcessProbe> probe(new ProcessProbe());
  LIBBPF_OPTS(bpf_object_open_opts, open_opts);
  if (!options.btf_path.empty()) open_opts.btf_custom_path = options.btf_path.c_str();
  probe->skel_ = process_bpf__open_opts(&open_opts);
  if (probe->skel_ == nullptr) return ErrnoStatus(errno, "open process.bpf.o");
  process_bpf* skel = probe->skel_;
  skel->rodata->ns_per_tick = NsPerTick();
  skel->rodata->argv_max = std::min<uint32_t>(options.argv_bytes, TW_ARGV_LEN);
  bpf_map__set_max_entries(skel->maps.procs, options.max_processes);
  bpf_map__set_max_entries(skel->maps.exited, options.max_exited);
  if (int err = process_bpf__load(skel); err != 0) return ErrnoStatus(err, "load process.bpf.o");

  struct Hook {
    bpf_program* prog;
    const char* name;
  };
  const Hook hooks[] = {
      {skel->progs.handle_sched_process_fork, "sched_process_fork"},
      {skel->progs.handle_sched_process_exec, "sched_process_exec"},
      {skel->progs.handle_sched_process_exit, "sched_process_exit"},
  };
  for (const Hook& hook : hooks) {
    bpf_link* link = bpf_program__attach(hook.prog);
    if (link == nullptr) {
      return ErrnoStatus(errno, absl::StrCat("attach raw tracepoint ", hook.name));
    }
    probe->links_.push_back(link);
    probe->attached_.push_back(absl::StrCat("raw_tracepoint/", hook.name));
  }
  return probe;
}

ProcessProbe::~ProcessProbe() {
  for (bpf_link* link : links_) bpf_link__destroy(link);
  if (skel_ != nullptr) process_bpf__destroy(skel_);
}

absl::StatusOr<int> ProcessProbe::Seed(const std::string& proc_root,
                                       const std::string& cgroup2_mount) {
  DIR* dir = opendir(proc_root.c_str());
  if (dir == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("seed process table from ", proc_root, ": ", std::strerror(errno)));
  }
  // Read everything first: a parent's key needs the parent's start time.
  std::unordered_map<uint32_t, std::pair<tw_proc, uint32_t>> entries;
  while (dirent* d = readdir(dir)) {
    uint32_t pid = 0;
    if (!absl::SimpleAtoi(d->d_name, &pid) || pid == 0) continue;
    tw_proc e;
    uint32_t ppid = 0;
    if (ReadEntry(proc_root, pid, cgroup2_mount, &e, &ppid)) entries[pid] = {e, ppid};
  }
  closedir(dir);

  int added = 0;
  int fd = procs_fd();
  for (auto& [pid, item] : entries) {
    tw_proc& e = item.first;
    auto parent = entries.find(item.second);
    if (parent != entries.end()) e.parent = parent->second.first.key;
    // BPF_NOEXIST: what the kernel recorded since attach is fresher.
    if (bpf_map_update_elem(fd, &e.key, &e, BPF_NOEXIST) == 0) ++added;
  }
  return added;
}

int ProcessProbe::procs_fd() const { return bpf_map__fd(skel_->maps.procs); }
int ProcessProbe::exited_fd() const { return bpf_map__fd(skel_->maps.exited); }
int ProcessProbe::taint_fd() const { return bpf_map__fd(skel_->maps.taint); }

std::optional<tw_proc> ProcessProbe::Lookup(const tw_proc_key& key) const {
  tw_proc entry;
  for (int fd : {procs_fd(), exited_fd()}) {
    if (bpf_map_lookup_elem(fd, &key, &entry) == 0) return entry;
  }
  return std::nullopt;
}

std::array<uint64_t, TW_STAT_MAX> ProcessProbe::ReadStats() const {
  return SumPerCpuStats(skel_->maps.proc_stats);
}

size_t ProcessProbe::CountEntries() const {
  size_t count = 0;
  tw_proc_key key{}, next{};
  const void* prev = nullptr;
  while (bpf_map__get_next_key(skel_->maps.procs, prev, &next, sizeof(next)) == 0) {
    ++count;
    key = next;
    prev = &key;
  }
  return count;
}

}  // namespace tokenwatch::probes
